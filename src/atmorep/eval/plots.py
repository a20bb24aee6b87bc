"""Figures: maps of truth vs prediction, and attention maps on the map."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import xarray as xr  # noqa: E402


def _extent(lats: np.ndarray, lons: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    lons = np.unwrap(np.deg2rad(lons)) * 180 / np.pi  # continuous across 0°/360°
    return lats, lons


def forecast_map(ds: xr.Dataset, sample: int, path: Path, lead: int = 1) -> Path:
    """Truth, ensemble mean, persistence, error and spread of one window at one lead."""
    s = ds.isel(sample=sample, level=0).sel(lead=lead)
    lats, lons = _extent(s["latitude"].values, s["longitude"].values)
    panels = [("truth", s["truth"]), ("AtmoRep ensemble mean", s["forecast"]), ("persistence", s["persistence"]),
              ("error (mean - truth)", s["forecast"] - s["truth"]), ("ensemble spread", s["ensemble"].std("member"))]
    vmin, vmax = float(s["truth"].min()), float(s["truth"].max())
    fig, axes = plt.subplots(1, len(panels), figsize=(4 * len(panels), 3.6), constrained_layout=True)
    for ax, (title, da) in zip(axes, panels):
        same_scale = title in ("truth", "AtmoRep ensemble mean", "persistence")
        m = ax.pcolormesh(lons, lats, da.values, shading="nearest", cmap="viridis" if same_scale else "RdBu_r",
                          **({"vmin": vmin, "vmax": vmax} if same_scale else _symmetric(da.values)))
        ax.set(title=title, xlabel="longitude [°E]", ylabel="latitude [°N]", aspect="equal")
        fig.colorbar(m, ax=ax, shrink=0.8)
    when = str(s["valid_time"].values)[:16]
    fig.suptitle(f"{ds.attrs['field']} forecast, lead {lead} step(s), valid {when}")
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path


def _symmetric(values: np.ndarray) -> dict:
    v = float(np.nanmax(np.abs(values))) or 1.0
    return {"vmin": -v, "vmax": v} if values.min() < 0 else {"vmin": 0, "vmax": v}


def attention_map(weights_LTYX: np.ndarray, query: tuple[int, int, int, int], lats_Y: np.ndarray,
                  lons_X: np.ndarray, title: str, path: Path) -> Path:
    """Where one query token looks: attention weight of every key token, one panel per time slab."""
    L, T, Y, X = weights_LTYX.shape
    lats, lons = _extent(lats_Y, lons_X)
    fig, axes = plt.subplots(1, T, figsize=(3.8 * T, 3.4), constrained_layout=True, squeeze=False)
    vmax = float(weights_LTYX.max())
    for t, ax in enumerate(axes[0]):
        m = ax.pcolormesh(lons, lats, weights_LTYX[query[0], t], shading="nearest", cmap="magma", vmin=0, vmax=vmax)
        if t == query[1]:
            ax.plot(lons[query[3]], lats[query[2]], marker="x", color="cyan", ms=10, mew=2)
        ax.set(title=f"key time slab {t}", xlabel="longitude [°E]", ylabel="latitude [°N]", aspect="equal")
    fig.colorbar(m, ax=axes[0].tolist(), shrink=0.8, label="attention weight (mean over heads)")
    fig.suptitle(title)
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path
