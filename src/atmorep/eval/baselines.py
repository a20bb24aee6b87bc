"""Reference forecasts computed on the same windows as the model, behind one interface.

A baseline maps a :class:`Context` (one window's truth in physical units, its valid times, the target
steps and the climatology there) to a point forecast ``(L, S, Y, X)`` of the target steps; NaN where
it has nothing to say (e.g. persistence of a window whose first step is a target). Modes name the
baselines that make sense for them (:data:`BASELINES`).

Legend: L levels, T window time steps, S target steps, Y/X grid rows/columns of the window.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import xarray as xr


@dataclass(frozen=True)
class Context:
    truth: np.ndarray  # L T Y X, the whole window
    times: np.ndarray  # T valid times
    steps: np.ndarray  # S indices of the target steps in the window (sorted)
    clim_mean: np.ndarray  # L S Y X
    clim_std: np.ndarray  # L S Y X


def persistence(ctx: Context) -> np.ndarray:
    """Each target step gets the last context (non-target) step before it."""
    out = np.full(ctx.truth.shape[:1] + (len(ctx.steps),) + ctx.truth.shape[2:], np.nan, ctx.truth.dtype)
    # Only steps the model saw unmasked: a baseline must not read a target step's truth.
    context = np.setdiff1d(np.arange(len(ctx.times)), ctx.steps)
    for k, s in enumerate(ctx.steps):
        before = context[context < s]
        if len(before):
            out[:, k] = ctx.truth[:, before[-1]]
    return out


def linear(ctx: Context) -> np.ndarray:
    """Linear interpolation in time between the context steps either side of each target step."""
    out = np.full(ctx.truth.shape[:1] + (len(ctx.steps),) + ctx.truth.shape[2:], np.nan, ctx.truth.dtype)
    context = np.setdiff1d(np.arange(len(ctx.times)), ctx.steps)
    # Weights from valid times, not step indices: right also when the steps are unevenly spaced.
    t = (ctx.times - ctx.times[0]) / np.timedelta64(1, "s")
    for k, s in enumerate(ctx.steps):
        before, after = context[context < s], context[context > s]
        if len(before) and len(after):
            a, b = before[-1], after[0]
            w = (t[s] - t[a]) / (t[b] - t[a])
            out[:, k] = (1 - w) * ctx.truth[:, a] + w * ctx.truth[:, b]
    return out


def climatology(ctx: Context) -> np.ndarray:
    """The climatological mean of the target's hour of day (its std makes it probabilistic)."""
    return ctx.clim_mean


#: name -> baseline
BASELINES: dict[str, Callable[[Context], np.ndarray]] = {
    "persistence": persistence,
    "linear": linear,
    "climatology": climatology,
}


def add(ds: xr.Dataset, names: tuple[str, ...]) -> xr.Dataset:
    """``baseline_<name>`` for each of ``names`` on a forecast in the window layout
    (:mod:`atmorep.eval.inference`), computed as the model saw the window: from ``source`` (its input,
    equal to the truth at every context step) at the valid times ``window_time``, and from the
    ``climatology_mean``/``climatology_std`` at the target points (:func:`atmorep.eval.climatology.add`)."""
    if not names:
        return ds
    if missing := {"source", "window_time", "climatology_mean", "climatology_std"} - set(ds.variables):
        raise ValueError(
            f"field '{ds.attrs.get('field', '')}': the baselines {list(names)} need {sorted(missing)} of the "
            "window layout"
        )
    dims = ("sample", "level", "lead", "y", "x")
    source = ds["source"].transpose("sample", "level", "window_step", "y", "x").values
    clim_mean = ds["climatology_mean"].transpose(*dims).values
    clim_std = ds["climatology_std"].transpose(*dims).values
    window_time, time = ds["window_time"].values, ds["time"].values
    out = {b: np.empty(clim_mean.shape, np.float32) for b in names}
    for s in range(ds.sizes["sample"]):
        # The target steps: where the leads' valid times lie in the window.
        steps = np.searchsorted(window_time[s], time[s])
        ctx = Context(source[s], window_time[s], steps, clim_mean[s], clim_std[s])
        for b in names:
            out[b][s] = BASELINES[b](ctx)
    return ds.assign({f"baseline_{b}": (dims, v) for b, v in out.items()})
