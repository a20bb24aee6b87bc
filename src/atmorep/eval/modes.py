"""Inference modes behind one interface (AtmoRep spec §6): which windows, which masks, which
baselines, and what to do with the windows afterwards (``global_forecast`` stitches its tiles).

The masks come from the training strategies (:data:`atmorep.model.masking.STRATEGIES`); a mode only
says which time slabs its targets occupy so that outputs keep exactly those steps.

Legend: S samples (windows or times), Y/X rows/columns, ny/nx window points.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import xarray as xr

from atmorep.config import EvaluateConfig, MaskingConfig
from atmorep.data.dataset import WindowDataset
from atmorep.eval import windows as W
from atmorep.model import masking

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Selection:
    """The windows to run; ``tiles`` (per time position) when they tile the globe."""

    indices: np.ndarray
    tiles: dict[int, list[W.Tile]] = field(default_factory=dict)


class Mode:
    """A way to evaluate: masking strategy, target slabs, window choice, post-processing, baselines."""

    name = ""
    baselines: tuple[str, ...] = ()

    def masking(self, cfg: EvaluateConfig, token_sizes: dict) -> masking.Masking:
        # Targets only zeroed: noise and coarsening are training augmentations, not part of the task.
        mc = MaskingConfig(
            strategy=self.name,
            forecast_tokens=cfg.forecast_tokens,
            interpolation_slabs=cfg.interpolation_slabs,
            rate=cfg.bert_rate,
            p_mask=1.0,
            p_noise=0.0,
            p_coarsen=0.0,
        )
        return masking.build(mc, token_sizes)

    def target_slabs(self, cfg: EvaluateConfig) -> Callable[[int], list[int]]:
        """Time slabs (of a field with T of them) that hold targets: what the outputs keep."""
        raise NotImplementedError

    def select(self, dataset: WindowDataset, cfg: EvaluateConfig, seed: int) -> Selection:
        positions = W.at_times(dataset, cfg.times)
        return Selection(W.sample(dataset, positions, samples=cfg.samples, seed=seed))

    def finish(
        self, dataset: WindowDataset, selection: Selection, results: dict[str, xr.Dataset], cfg: EvaluateConfig
    ) -> dict[str, xr.Dataset]:
        return results


class Forecast(Mode):
    """The last ``forecast_tokens`` time slabs of random windows (AtmoRep ``forecast``)."""

    name = "forecast"
    baselines = ("persistence", "climatology")

    def target_slabs(self, cfg):
        return lambda T: list(range(T - cfg.forecast_tokens, T))


class TemporalInterpolation(Mode):
    """Middle (or configured) time slabs of random windows (AtmoRep ``temporal_interpolation``)."""

    name = "temporal_interpolation"
    baselines = ("linear", "persistence", "climatology")

    def target_slabs(self, cfg):
        return lambda T: list(cfg.interpolation_slabs) or [T // 2]


class Bert(Mode):
    """Random tokens of random windows (AtmoRep ``BERT``); outputs keep every step, NaN off the targets."""

    name = "bert"
    baselines = ("climatology",)

    def target_slabs(self, cfg):
        return lambda T: list(range(T))


class GlobalForecast(Forecast):
    """Forecast-masked tiles covering the globe at each time, stitched (AtmoRep ``global_forecast``)."""

    name = "global_forecast"

    def select(self, dataset, cfg, seed):
        store = dataset.stores[dataset.fields[0]][0]
        if not store.periodic:
            raise ValueError(
                f"evaluate.mode global_forecast needs a global grid (longitudes spanning 360°); "
                f"{store.path} is regional"
            )
        positions = W.at_times(dataset, cfg.times)
        # Every tile of every time would be hundreds of windows per time: without evaluate.times, one time.
        if not cfg.times:
            positions = positions[:1]
        tiles = {p.position: W.tiles(dataset, p, cfg.token_overlap) for p in positions}
        indices = np.array([t.index for ts in tiles.values() for t in ts], np.int64)
        log.info("global_forecast: %d time(s) x %d tiles", len(tiles), len(indices) // max(len(tiles), 1))
        return Selection(indices, tiles)

    def finish(self, dataset, selection, results, cfg):
        return {f: stitch(ds, selection.tiles, dataset, f, cfg.token_overlap) for f, ds in results.items()}


#: name -> mode
MODES: dict[str, Mode] = {m.name: m for m in (Forecast(), TemporalInterpolation(), Bert(), GlobalForecast())}


def get(name: str) -> Mode:
    if name not in MODES:
        raise ValueError(f"evaluate.mode: unknown '{name}' (known: {', '.join(MODES)})")
    return MODES[name]


def taper(n: int, ramp: int) -> np.ndarray:
    """Blending weights along one tile axis: 1 inside, a linear ramp over ``ramp`` points at each edge."""
    if ramp <= 0:
        return np.ones(n)
    # Point centres (+0.5): symmetric, and no weight is 0, so a point that only a tile's edge covers
    # (the rows at the poles) still gets a value.
    i = np.arange(n) + 0.5
    return np.clip(np.minimum(i, n - i) / ramp, 1e-3, 1.0)


def _keep_spread(
    stitched: np.ndarray, values: np.ndarray, ts: list[W.Tile], w: np.ndarray, axis: int, nlon: int, nx: int, ny: int
) -> np.ndarray:
    """``stitched`` members (Y X ... member ...) about their mean, scaled to the tiles' weighted variance."""
    if stitched.shape[axis] < 2:
        return stitched
    var_num = np.zeros(np.delete(stitched.shape, axis))
    var_den = np.zeros_like(var_num)
    w = w.squeeze(axis)
    for k, t in enumerate(ts):
        var_k = np.var(values[k], axis=axis, ddof=1, dtype=np.float64)  # unbiased, as the tail's std (model/tail.py)
        known = np.isfinite(var_k)
        cols = (t.x0 + np.arange(nx)) % nlon
        var_num[t.y0 : t.y0 + ny, cols] += w * np.where(known, var_k, 0.0)
        var_den[t.y0 : t.y0 + ny, cols] += w * known
    mean = np.mean(stitched, axis=axis, keepdims=True)
    with np.errstate(invalid="ignore", divide="ignore"):
        now = np.var(stitched, axis=axis, ddof=1, keepdims=True, dtype=np.float64)
        scale = np.sqrt(np.expand_dims(var_num / var_den, axis) / now)
    # Zero spread (all members equal) cannot be scaled up: left as it is, NaN included.
    return mean + (stitched - mean) * np.where(now > 0, scale, 1.0)


def stitch(
    ds: xr.Dataset, tiles: dict[int, list[W.Tile]], dataset: WindowDataset, f: str, overlap_tokens: tuple[int, int]
) -> xr.Dataset:
    """Global fields per time from the tiles (window layout in, window layout out: one sample per time).

    Overlapping tiles are averaged with :func:`taper` weights, so a point near a tile's edge takes
    most of its value from the neighbouring tile's interior. Averaging member k of two tiles would
    shrink the ensemble spread there (their members are not the same draw), so the stitched members'
    deviations from the stitched mean are rescaled to the taper-weighted mean of the tiles' variances.
    """
    store = dataset.stores[f][0]
    nlat, nlon = len(store.lats), len(store.lons)
    _, ny, nx = dataset.extent
    ty, tx = store.token_size[1:]
    w_YX = np.outer(taper(ny, overlap_tokens[0] * ty), taper(nx, overlap_tokens[1] * tx))
    by_index = {int(s): k for k, s in enumerate(ds["sample"].values)}
    gridded = [v for v in ds.data_vars if {"y", "x"} <= set(ds[v].dims)]
    out = []
    for position, ts in tiles.items():
        rows = [by_index[t.index] for t in ts]
        acc = {}
        for v in gridded:
            da = ds[v].isel(sample=rows).transpose("sample", "y", "x", ...)
            values = da.values.astype(np.float64)  # float64 sums: many overlapping float32 tiles
            num = np.zeros((nlat, nlon) + values.shape[3:])
            den = np.zeros_like(num)
            w = w_YX.reshape(w_YX.shape + (1,) * (values.ndim - 3))  # broadcast over lead, level, member
            for k, t in enumerate(ts):
                cols = (t.x0 + np.arange(nx)) % nlon  # the last column of tiles wraps past 360°
                known = np.isfinite(values[k])  # a missing value (no climatology) stays missing
                num[t.y0 : t.y0 + ny, cols] += w * np.where(known, values[k], 0.0)
                den[t.y0 : t.y0 + ny, cols] += w * known
            with np.errstate(invalid="ignore"):
                stitched = num / den
            if v == "ensemble":
                # values[k] and stitched lack da's sample dim: member's axis is one less.
                stitched = _keep_spread(stitched, values, ts, w, da.dims.index("member") - 1, nlon, nx, ny)
            # the mask: the weighted majority of the tiles over the point
            value = stitched > 0.5 if v == "mask" else stitched
            acc[v] = (("y", "x", *da.dims[3:]), value.astype(ds[v].dtype))
        first = ds.isel(sample=rows[0])
        part = xr.Dataset(acc, coords={"latitude": ("y", store.lats), "longitude": ("x", store.lons % 360.0)})
        part = part.expand_dims(sample=[position]).assign_coords(
            {
                c: (("sample", *first[c].dims), first[c].values[None])
                for c in ("time", "init_time", "lead_time", "window_time")
            }
        )
        out.append(part)
    # join="exact": every time's stitched grid must be the same; no silent alignment.
    merged = xr.concat(out, dim="sample", coords="minimal", compat="equals", join="exact")
    # Points where tiles disagreed on being a target follow the stitched mask: NaN off it, as in run().
    merged["prediction"] = merged["prediction"].where(merged["mask"])
    merged["ensemble"] = merged["ensemble"].where(merged["mask"])
    return (
        merged.assign_coords(level=ds["level"], member=ds["member"], lead=ds["lead"])
        .transpose("sample", "lead", "window_step", "level", "y", "x", "member")
        .assign_attrs(ds.attrs, stitched_tiles=len(next(iter(tiles.values()))), token_overlap=list(overlap_tokens))
    )
