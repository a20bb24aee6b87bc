"""Scores as pure xarray functions (WeatherBench 2 definitions): no I/O, no model.

Every function reduces over ``dims`` with latitude weights ``cos(lat)`` normalised to mean 1.
"""

from __future__ import annotations

import numpy as np
import xarray as xr


def latitude_weights(latitude: xr.DataArray) -> xr.DataArray:
    w = np.cos(np.deg2rad(latitude))
    return w / w.mean()


def _wmean(x: xr.DataArray, weights: xr.DataArray, dims) -> xr.DataArray:
    return (x * weights).sum(dims) / weights.broadcast_like(x).sum(dims)


def rmse(forecast: xr.DataArray, truth: xr.DataArray, weights: xr.DataArray, dims) -> xr.DataArray:
    """Latitude-weighted root-mean-square error."""
    return np.sqrt(_wmean((forecast - truth) ** 2, weights, dims))


def bias(forecast: xr.DataArray, truth: xr.DataArray, weights: xr.DataArray, dims) -> xr.DataArray:
    """Latitude-weighted mean error (forecast - truth)."""
    return _wmean(forecast - truth, weights, dims)


def spread(ensemble: xr.DataArray, weights: xr.DataArray, dims, member: str = "member") -> xr.DataArray:
    """Latitude-weighted ensemble spread sqrt(mean variance), with the finite-ensemble correction."""
    n = ensemble.sizes[member]
    var = ensemble.var(member, ddof=1) * (n + 1) / n
    return np.sqrt(_wmean(var, weights, dims))
