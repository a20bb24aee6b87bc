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
