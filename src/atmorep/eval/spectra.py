"""Power spectra of truth, ensemble mean and single members: how much the mean blurs small scales.

- ``global_forecast`` (stitched globes): zonal spectra, the FFT along each latitude circle, averaged
  over latitudes with area weights; wavenumber in cycles per circle, wavelength at the equator.
- windows (every other mode): 2-D spectra of each window (mean removed, Hann-tapered because a window
  is not periodic), summed over rings of equal horizontal wavenumber (radially averaged) on the
  window's km grid at its mean latitude.

Spectra are one-sided and normalised so that they sum to the field's variance (Parseval); they are
averaged over the samples whose truth and prediction are complete at that lead and level (BERT
windows, with targets at random tokens only, have none and get no spectrum). Members: the mean of the
members' spectra. numpy's FFT is all this needs (xrft would add dask and five more packages).

Legend: N fields stacked (samples, leads, levels, members), Y/X grid rows/columns, K wavenumbers.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import xarray as xr

from atmorep.eval import metrics

EARTH_RADIUS_KM = 6371.0
KM_PER_DEGREE = np.pi * EARTH_RADIUS_KM / 180


def zonal(values_NYX: np.ndarray, weights_Y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Area-weighted mean over latitudes of the zonal spectra; returns (wavenumbers 1.., power N K)."""
    nx = values_NYX.shape[-1]
    # / nx: then sum |f_k|^2 over all k (both signs) is the mean square along the circle (Parseval).
    f = np.fft.rfft(values_NYX, axis=-1) / nx
    p = np.abs(f) ** 2
    p[..., 1 : (nx + 1) // 2] *= 2  # one-sided: both signs of k but the Nyquist
    power = (p * weights_Y[:, None]).sum(-2) / weights_Y.sum()
    return np.arange(1, p.shape[-1]), power[..., 1:]  # k = 0 (the circle's mean) is not a scale


def radial(values_NYX: np.ndarray, dy_km: float, dx_km: float) -> tuple[np.ndarray, np.ndarray]:
    """Radially summed 2-D spectra of tapered windows; returns (wavenumber [1/km] per ring, power N K)."""
    ny, nx = values_NYX.shape[-2:]
    # n + 2 points with the two zero ends dropped: no row or column of the window is weighted 0.
    taper = np.outer(np.hanning(ny + 2)[1:-1], np.hanning(nx + 2)[1:-1])
    taper /= np.sqrt((taper**2).mean())  # keeps the variance of a stationary field
    anomaly = values_NYX - values_NYX.mean((-2, -1), keepdims=True)
    p = np.abs(np.fft.fft2(anomaly * taper) / (ny * nx)) ** 2
    k = np.hypot(*np.meshgrid(np.fft.fftfreq(ny, dy_km), np.fft.fftfreq(nx, dx_km), indexing="ij"))
    # Ring width: the coarser of the two axes' frequency steps, so that no ring falls between samples.
    dk = max(1 / (ny * dy_km), 1 / (nx * dx_km))
    ring = np.rint(k / dk).astype(int).reshape(-1)
    rings = np.arange(1, int(min(0.5 / dy_km, 0.5 / dx_km) / dk) + 1)  # up to the coarser axis' Nyquist
    onehot = (ring[:, None] == rings[None, :]).astype(float)  # ring 0 (the mean) is left out
    return rings * dk, p.reshape(*p.shape[:-2], -1) @ onehot


def spectra(ds: xr.Dataset, field: str) -> pd.DataFrame:
    """Spectra of ``target``, ``prediction`` and ``ensemble`` per level and lead (window layout in)."""
    glob = "stitched_tiles" in ds.attrs
    order = ("sample", "lead", "level", "y", "x")
    # Truth only where it was a target, so that truth and prediction are complete at the same points.
    truth = ds["target"].where(ds["mask"]).transpose(*order).values.astype(np.float64)
    mean = ds["prediction"].transpose(*order).values.astype(np.float64)
    ens = ds["ensemble"].transpose("member", *order).values.astype(np.float64)
    complete = np.asarray(np.isfinite(truth).all((-2, -1)) & np.isfinite(mean).all((-2, -1)))  # S L V
    # The first sample's coordinates set the km grid of every sample: exact when the windows share
    # a latitude band, an approximation otherwise (dx shrinks poleward).
    lat = ds["latitude"].values if ds["latitude"].ndim == 1 else ds["latitude"].values[0]
    lon = ds["longitude"].values if ds["longitude"].ndim == 1 else ds["longitude"].values[0]
    if glob:
        w = metrics.latitude_weights(xr.DataArray(lat, dims="y")).values
        k = np.arange(1, truth.shape[-1] // 2 + 1)

        def spectrum(a):
            # NaN -> 0 only so that the FFT runs: incomplete fields are left out by ``complete`` below.
            return zonal(np.nan_to_num(a), w)[1]

        wavelength = 2 * np.pi * EARTH_RADIUS_KM / k
    else:
        dy = abs(float(lat[1] - lat[0])) * KM_PER_DEGREE
        dlon = abs(float((lon[1] - lon[0] + 180) % 360 - 180))  # right also across 0°/360°
        # At the mean latitude: within a window, too, dx shrinks poleward.
        dx = dlon * KM_PER_DEGREE * np.cos(np.deg2rad(np.mean(lat)))

        def spectrum(a):
            return radial(np.nan_to_num(a), dy, dx)[1]

        k = radial(truth[:1, :1, :1], dy, dx)[0]  # the wavenumbers only (they depend on the grid)
        wavelength = 1 / k
    rows = []
    parts = {"truth": spectrum(truth), "ensemble_mean": spectrum(mean), "member": spectrum(ens).mean(0)}
    for li, lead in enumerate(ds["lead"].values):
        for vi, level in enumerate(ds["level"].values):
            use = complete[:, li, vi]
            if not use.any():
                continue
            power = {name: p[use, li, vi].mean(0) for name, p in parts.items()}
            rows.append(
                pd.DataFrame(
                    {
                        "field": field,
                        "level": int(level),
                        "lead": int(lead),
                        "kind": "zonal" if glob else "window",
                        "wavenumber": k,
                        "wavelength_km": wavelength,
                        **power,
                        "samples": int(use.sum()),
                    }
                )
            )
    columns = [
        "field",
        "level",
        "lead",
        "kind",
        "wavenumber",
        "wavelength_km",
        "truth",
        "ensemble_mean",
        "member",
        "samples",
    ]
    return pd.concat(rows, ignore_index=True)[columns] if rows else pd.DataFrame(columns=columns)
