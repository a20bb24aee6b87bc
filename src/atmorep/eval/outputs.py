"""Evaluation products on disk: zarr (v2 with consolidated metadata, so plain ``xarray.open_zarr`` and
WeatherBench 2 read them) with CF attributes, one group per field where a store holds several.

- ``windows.zarr/{field}``: the window layout of :mod:`atmorep.eval.inference` (sources, targets,
  predictions = ensemble mean, the full ensemble, masks, baselines) in physical units;
- ``wb2_forecast.zarr`` / ``wb2_ensemble.zarr`` / ``wb2_truth.zarr`` (``global_forecast``): the WB2
  forecast schema ``(time = init time, prediction_timedelta, [level,] latitude increasing, longitude in
  [0, 360)[, number])`` with WB2 variable names, and the truth as ``(time, [level,] latitude, longitude)``;
- ``sample_scores.zarr/{field}``, ``climatology.zarr/{field}``, ``attention.zarr/{field}``.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import xarray as xr

from atmorep.eval import cf

log = logging.getLogger(__name__)

CONVENTIONS = {"Conventions": "CF-1.10", "source": "atmorep evaluate"}
WHAT = {
    "target": "true",
    "prediction": "predicted (ensemble mean)",
    "ensemble": "ensemble member of",
    "source": "model input (masked tokens at the mean)",
    "climatology_mean": "climatological mean of",
    "climatology_std": "climatological standard deviation of",
}


def annotate(ds: xr.Dataset, field: str) -> xr.Dataset:
    """CF attributes on every variable and coordinate of a dataset of ``field``."""
    ds = ds.copy()
    for v in map(str, ds.data_vars):
        if v == "mask":
            ds[v].attrs = {
                "long_name": "target point (masked token)",
                "flag_values": [0, 1],
                "flag_meanings": "context target",
            }
        elif v.startswith("baseline_"):
            ds[v].attrs = cf.attrs(field, f"{v[9:]} baseline forecast of")
        elif v in WHAT:
            ds[v].attrs = cf.attrs(field, WHAT[v])
    for c in ds.coords:
        if c in cf.COORDS:
            ds[c].attrs = {**ds[c].attrs, **cf.COORDS[c]}
    return ds.assign_attrs({**ds.attrs, **CONVENTIONS, "field": field})


def write_groups(datasets: dict[str, xr.Dataset], path: Path, annotate_cf: bool = True) -> Path:
    """One group per field, consolidated at the root; ``path`` is new (evaluate writes its products
    into a fresh temporary directory, :func:`atmorep.eval.evaluate.evaluate`)."""
    import zarr

    path = Path(path)
    root = zarr.open_group(str(path), mode="w", zarr_format=2)  # the root, even when there is nothing to write
    root.attrs["fields"] = list(datasets)  # the groups in the model's field order (read_groups keeps it)
    for f, ds in datasets.items():
        ds = annotate(ds, f) if annotate_cf else ds
        _encoded(ds).to_zarr(path, group=f, mode="w", zarr_format=2, consolidated=False)
    # Once, at the root, after every group: one .zmetadata that covers them all.
    zarr.consolidate_metadata(str(path), zarr_format=2)
    return path


def read_groups(path: str | Path) -> dict[str, xr.Dataset]:
    """The groups :func:`write_groups` wrote, by field, loaded; CF flags (``mask``) back to bools.
    ``windows.zarr`` read so is the window layout :func:`atmorep.eval.evaluate.score` scores."""
    import zarr

    path = Path(path)
    try:
        root = zarr.open_group(str(path), mode="r")
        order = root.attrs.get("fields")
        names = [str(f) for f in order] if isinstance(order, list) else sorted(root.group_keys())
    except (FileNotFoundError, zarr.errors.GroupNotFoundError):
        raise ValueError(f"{path}: no zarr store of forecasts (one group per field)") from None
    out: dict[str, xr.Dataset] = {}
    for f in names:
        ds = xr.open_zarr(path, group=f).load()
        for v in ds.data_vars:
            if ds[v].attrs.get("flag_values") == [0, 1]:
                ds[v] = ds[v].astype(bool).assign_attrs(ds[v].attrs)
        out[f] = ds
    return out


def _encoded(ds: xr.Dataset) -> xr.Dataset:
    """Per-variable encodings: CF time units, bools as int8."""
    for v in ds.variables:
        # Encodings inherited from an opened store (chunks, compressor, units) may not fit what is written.
        ds[v].encoding = {}
        # int8 with flag_values [0, 1] (annotate): CF flags are integers, and netCDF has no bool.
        if ds[v].dtype == bool:
            ds[v] = ds[v].astype(np.int8).assign_attrs(ds[v].attrs)
    # Fixed units rather than xarray's choice per variable: every product encodes time alike; float64
    # keeps sub-hourly steps.
    for c in ("time", "init_time", "window_time"):
        if c in ds.variables:
            ds[c].encoding = {
                "units": "hours since 1970-01-01T00:00:00",
                "calendar": "proleptic_gregorian",
                "dtype": "float64",
            }
    if "lead_time" in ds.variables:
        ds["lead_time"].encoding = {"units": "hours", "dtype": "float64"}
    return ds


def window(ds: xr.Dataset, sample: int) -> xr.Dataset:
    """One window of the window layout with (time, level, latitude, longitude[, member]) dimensions."""
    one = ds.isel(sample=sample)
    # The source spans every window step, not the target steps: it has no place on the "time" dimension.
    return one.swap_dims(lead="time", y="latitude", x="longitude").drop_dims("window_step", errors="ignore")


def wb2(results: dict[str, xr.Dataset]) -> tuple[xr.Dataset, xr.Dataset, xr.Dataset]:
    """Stitched global results as WB2 forecast (mean), ensemble (``number``) and truth datasets."""
    mean, ens, truth = {}, {}, {}
    first = next(iter(results.values()))
    lead = _prediction_timedelta(first)
    for f, ds in results.items():
        name = cf.wb2_name(f)
        # Stitched results have one sample per init time, so init_time can be the dimension (WB2's "time").
        g = ds.swap_dims(sample="init_time", y="latitude", x="longitude").drop_vars(["sample", "time", "lead_time"])
        g = g.rename(init_time="time").assign_coords(lead=lead.values).rename(lead="prediction_timedelta")
        g = g.sortby("latitude").sortby("longitude")  # WB2: latitude increasing; our stores run north to south
        surface = list(ds["level"].values) == [0]  # WB2 surface variables have no level dimension
        sel = (lambda da: da.squeeze("level", drop=True)) if surface else (lambda da: da)
        attrs = cf.attrs(f)
        mean[name] = sel(g["prediction"]).transpose("time", "prediction_timedelta", ...).assign_attrs(attrs)
        ens[name] = (
            sel(g["ensemble"])
            .rename(member="number")
            .transpose("time", "number", "prediction_timedelta", ...)
            .assign_attrs(attrs)
        )
        # Truth by valid time: (init, lead) flattened in C order, as ds["time"] (sample, lead) is; a time
        # that two forecasts reach appears twice with the same truth, kept once.
        valid = ds["time"].values.reshape(-1)
        t = g["target"].stack(valid=("time", "prediction_timedelta")).transpose("valid", ...)
        t = t.drop_vars(["valid", "time", "prediction_timedelta"]).assign_coords(valid=valid).rename(valid="time")
        truth[name] = sel(t.drop_duplicates("time").sortby("time")).assign_attrs(attrs)
    out = []
    for d in (mean, ens, truth):
        x = xr.Dataset(d).drop_vars(["window_time", "mask"], errors="ignore")
        x = x.drop_dims([dim for dim in ("window_step",) if dim in x.dims])
        for c in ("latitude", "longitude", "level"):
            if c in x.coords:
                x[c].attrs = cf.COORDS[c] if c != "level" else {"long_name": "level", "units": "hPa or model level"}
        out.append(x.assign_attrs(CONVENTIONS))
    return out[0], out[1], out[2]


def _prediction_timedelta(ds: xr.Dataset) -> xr.DataArray:
    # WB2 has one prediction_timedelta axis for all init times; the first init time's leads are used.
    lt = ds["lead_time"]
    first = lt.isel(sample=0)
    if "sample" in lt.dims and not (lt == first).all():
        log.warning(
            "lead times differ between init times (irregular steps); WB2 prediction_timedelta uses the "
            "first init time's"
        )
    return first.drop_vars([c for c in first.coords])


def write_wb2(results: dict[str, xr.Dataset], out_dir: Path) -> list[Path]:
    """``wb2_forecast.zarr``, ``wb2_ensemble.zarr`` and ``wb2_truth.zarr``: v2, consolidated, one space chunk."""
    paths = []
    for name, ds in zip(("wb2_forecast", "wb2_ensemble", "wb2_truth"), wb2(results)):
        path = Path(out_dir) / f"{name}.zarr"
        for v in ds.variables:
            ds[v].encoding = {}
        for v in ds.data_vars:  # one init (or valid) time per chunk, the whole globe in it: WB2 reads by time
            ds[v].encoding["chunks"] = tuple(1 if d == "time" else n for d, n in ds[v].sizes.items())
        ds.to_zarr(path, mode="w", zarr_format=2, consolidated=True)
        paths.append(path)
    return paths
