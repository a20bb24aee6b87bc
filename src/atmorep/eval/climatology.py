"""Climatology of the training period: mean and standard deviation per grid point and hour of day.

The reference of the ACC and the climatology baseline (a Gaussian forecast ``N(mean, std)``, scored
with the closed-form CRPS). WeatherBench 2 uses a day-of-year x hour climatology of 30 years; a
campaign of weeks has no seasons to resolve, so this keeps the diurnal cycle: for hour h, the times
whose hour of day lies within ``window_hours // 2`` of h (circularly) count. Computed in time blocks
from the shard stores, in physical units; never from the held-out period (the caller's period).

Legend: H hours of day (24), L levels, Y/X grid rows/columns of the store, T time steps.
"""

from __future__ import annotations

import logging

import numpy as np
import xarray as xr

from atmorep.data.dataset import FieldStore
from atmorep.data.normalize.statistics import Moments

log = logging.getLogger(__name__)

HOURS = np.arange(24)


def hour_of_day(times: np.ndarray) -> np.ndarray:
    t = np.asarray(times).astype("datetime64[h]")
    return (t - t.astype("datetime64[D]")).astype(int)


def climatology(
    stores: list[FieldStore], start: np.datetime64, end: np.datetime64, *, window_hours: int, block: int = 96
) -> xr.Dataset:
    """``mean`` and ``std`` ``(hour, level, latitude, longitude)`` over ``start``..``end`` (inclusive).

    Accumulated as :class:`~atmorep.data.normalize.statistics.Moments` per hour of day, merged over
    each hour's window: a variance from sums of squares would cancel for a field whose mean dwarfs
    its spread (geopotential).
    """
    first = stores[0]
    L, Y, X = len(first.levels), len(first.lats), len(first.lons)
    by_hour = [Moments.empty(L, Y, X) for _ in HOURS]
    y_idx, x_idx = np.arange(Y), np.arange(X)
    for store in stores:
        t_idx = np.flatnonzero((store.times >= start) & (store.times <= end))
        for a in range(0, len(t_idx), block):
            t = t_idx[a : a + block]
            values = store.denormalize(
                store.read(int(t[0]), int(t[-1] - t[0] + 1), 0, Y, 0, X)[:, t - t[0]], t, y_idx, x_idx
            )  # L T Y X
            hours = hour_of_day(store.times[t])
            for h in np.unique(hours):
                by_hour[h].update(values[:, hours == h].swapaxes(0, 1))
    count = np.array([m.count for m in by_hour])
    if not count.sum():
        raise ValueError(f"no time step of field '{first.field}' lies in the climatology period {start} .. {end}")
    kernel = _circular_window(window_hours)  # H H: which hour bins feed each hour
    n = kernel @ count
    if (n == 0).any():
        log.warning(
            "climatology of '%s': hours %s have no data within +-%d h; using all hours there",
            first.field,
            HOURS[n == 0].tolist(),
            window_hours // 2,
        )
        kernel[n == 0] = 1.0
    mean, std = np.empty((2, len(HOURS), L, Y, X), np.float32)
    for h, row in enumerate(kernel):
        m = _merged(by_hour, row, (L, Y, X))
        mean[h], std[h] = m.mean, np.sqrt(m.m2 / m.count)
    coords = {"hour": HOURS, "level": first.levels, "latitude": first.lats, "longitude": first.lons}
    dims = ("hour", "level", "latitude", "longitude")
    return xr.Dataset(
        {
            "mean": (dims, mean),
            "std": (dims, std),
            "count": ("hour", (kernel @ count).astype(np.int64)),
        },
        coords=coords,
        attrs={
            "field": first.field,
            "period": f"{start} .. {end}",
            "window_hours": window_hours,
            "description": "mean and std per grid point and hour of day (circular window)",
        },
    )


def _merged(by_hour: list[Moments], row: np.ndarray, shape: tuple[int, int, int]) -> Moments:
    """The moments of the hour bins ``row`` selects."""
    out = Moments.empty(*shape)
    for h in np.flatnonzero(row):
        out.merge(by_hour[h])
    return out


def _circular_window(window_hours: int) -> np.ndarray:
    d = np.abs(HOURS[:, None] - HOURS[None, :])
    d = np.minimum(d, 24 - d)
    return (d <= window_hours // 2).astype(np.float64)


def at(clim: xr.Dataset, times: np.ndarray, y_idx: np.ndarray, x_idx: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Climatological mean and std ``(L, T, Y, X)`` for valid ``times`` at store rows/columns."""
    h = hour_of_day(times)
    mean = clim["mean"].values[h][:, :, y_idx][:, :, :, x_idx]
    std = clim["std"].values[h][:, :, y_idx][:, :, :, x_idx]
    return mean.transpose(1, 0, 2, 3), std.transpose(1, 0, 2, 3)


def add(ds: xr.Dataset, clim: xr.Dataset | None) -> xr.Dataset:
    """``climatology_mean`` and ``climatology_std`` ``(sample, level, lead, y, x)`` of a forecast in the
    window layout: ``clim`` at each target's valid time and point (found by its latitude and longitude
    on the climatology's grid), NaN without a climatology."""
    dims = ("sample", "level", "lead", "y", "x")
    shape = tuple(ds.sizes[d] for d in dims)
    if clim is None:
        nan = np.full(shape, np.nan, np.float32)
        return ds.assign(climatology_mean=(dims, nan), climatology_std=(dims, nan.copy()))
    mean, std = np.empty((2, *shape), np.float32)
    lat_grid, lon_grid = clim["latitude"].values, clim["longitude"].values % 360.0
    for s in range(ds.sizes["sample"]):
        y_idx = _points(lat_grid, ds["latitude"].values[s] if ds["latitude"].ndim == 2 else ds["latitude"].values)
        lons = ds["longitude"].values[s] if ds["longitude"].ndim == 2 else ds["longitude"].values
        x_idx = _points(lon_grid, lons % 360.0)
        mean[s], std[s] = at(clim, ds["time"].values[s], y_idx, x_idx)
    return ds.assign(climatology_mean=(dims, mean), climatology_std=(dims, std))


def _points(grid: np.ndarray, values: np.ndarray) -> np.ndarray:
    """Indices of ``values`` on the coordinate ``grid``; a value off the grid is an error."""
    idx = np.abs(grid[None, :] - values[:, None]).argmin(1)
    if (off := np.abs(grid[idx] - values) > 1e-6).any():
        raise ValueError(f"coordinate {values[off][0]:g} is not on the climatology's grid")
    return idx
