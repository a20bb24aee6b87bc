"""Scores as pure xarray functions, in WeatherBench 2 definitions: no I/O, no model, no loops over samples.

Every spatial score reduces over ``dims`` with area weights (:func:`latitude_weights`) and skips
missing values (points that are not targets, e.g. unmasked tokens in BERT mode, are NaN). Scores of
one init time / window are computed first; averaging over samples is the caller's business, which
gives WB2's "sqrt before time average" RMSE and spread.

The ensemble dimension is ``member`` unless told otherwise. CRPS comes from ``scoringrules`` (the
fair estimator, equal to WB2's probability-weighted-moment CRPS); nothing here hand-writes it.
"""

from __future__ import annotations

from typing import cast

import numpy as np
import scoringrules as sr
import xarray as xr


def latitude_weights(latitude: xr.DataArray, dim: str | None = None) -> xr.DataArray:
    """Cell-area weights along ``dim`` (default: latitude's last dim), normalised to mean 1 there.

    As WB2's ``get_lat_weights``: ``sin(upper bound) - sin(lower bound)`` with the bounds half-way
    between neighbouring latitudes (the outer ones mirrored, clipped to the poles). Works for either
    latitude order and for a per-sample latitude ``(sample, y)``.
    """
    dim = dim or str(latitude.dims[-1])
    lat = np.deg2rad(latitude.transpose(..., dim).values)
    if lat.shape[-1] == 1:  # one row has no neighbours to place bounds at: weight 1
        return xr.ones_like(latitude, dtype=float)
    mid = (lat[..., 1:] + lat[..., :-1]) / 2
    first = 2 * lat[..., :1] - mid[..., :1]
    last = 2 * lat[..., -1:] - mid[..., -1:]
    bounds = np.clip(np.concatenate([first, mid, last], axis=-1), -np.pi / 2, np.pi / 2)
    w = np.abs(np.sin(bounds[..., 1:]) - np.sin(bounds[..., :-1]))  # abs: north-to-south rows too
    w = w / w.mean(axis=-1, keepdims=True)
    return xr.DataArray(w, dims=latitude.transpose(..., dim).dims, coords=latitude.coords).transpose(*latitude.dims)


def weighted_mean(x: xr.DataArray, weights: xr.DataArray, dims) -> xr.DataArray:
    """Weighted mean over ``dims``, skipping NaN (the weights of missing points do not count)."""
    # Masking the weights too keeps the denominator to the points present: a partly masked window is
    # the mean of its targets, not shrunk towards 0.
    w = weights.broadcast_like(x).where(x.notnull())
    return (x * w).sum(dims, skipna=True) / w.sum(dims)


def mse(forecast: xr.DataArray, truth: xr.DataArray, weights: xr.DataArray, dims) -> xr.DataArray:
    """Area-weighted mean squared error."""
    return weighted_mean((forecast - truth) ** 2, weights, dims)


def rmse(forecast: xr.DataArray, truth: xr.DataArray, weights: xr.DataArray, dims) -> xr.DataArray:
    """Area-weighted root-mean-square error (of one sample: average the result over samples)."""
    return cast(xr.DataArray, np.sqrt(mse(forecast, truth, weights, dims)))


def bias(forecast: xr.DataArray, truth: xr.DataArray, weights: xr.DataArray, dims) -> xr.DataArray:
    """Area-weighted mean error ``forecast - truth``."""
    return weighted_mean(forecast - truth, weights, dims)


def mae(forecast: xr.DataArray, truth: xr.DataArray, weights: xr.DataArray, dims) -> xr.DataArray:
    """Area-weighted mean absolute error; the CRPS of a deterministic (point) forecast."""
    return weighted_mean(abs(forecast - truth), weights, dims)


def acc(
    forecast: xr.DataArray, truth: xr.DataArray, climatology: xr.DataArray, weights: xr.DataArray, dims
) -> xr.DataArray:
    """Anomaly correlation coefficient (WB2's uncentred ACC) against ``climatology``."""
    fa, ta = forecast - climatology, truth - climatology
    # The same points in all three means, else numerator and norms would not match (|ACC| could pass 1).
    valid = fa.notnull() & ta.notnull()
    fa, ta = fa.where(valid), ta.where(valid)
    return weighted_mean(fa * ta, weights, dims) / np.sqrt(
        weighted_mean(fa**2, weights, dims) * weighted_mean(ta**2, weights, dims)
    )


def crps_ensemble(
    ensemble: xr.DataArray, truth: xr.DataArray, weights: xr.DataArray, dims, member: str = "member"
) -> xr.DataArray:
    """Area-weighted CRPS of a finite ensemble (scoringrules, fair estimator).

    One member is a point forecast: its CRPS is the MAE (the fair estimator's member-pair term is 0/0).
    """
    if ensemble.sizes[member] == 1:
        return mae(ensemble.squeeze(member, drop=True), truth, weights, dims)
    point = xr.apply_ufunc(
        lambda obs, fct: sr.crps_ensemble(obs, fct, m_axis=-1, estimator="fair", backend="numpy"),
        truth,
        ensemble,
        input_core_dims=[[], [member]],
        dask="allowed",
    )
    return weighted_mean(point.where(truth.notnull()), weights, dims)


def crps_normal(
    mean: xr.DataArray, std: xr.DataArray, truth: xr.DataArray, weights: xr.DataArray, dims
) -> xr.DataArray:
    """Area-weighted CRPS of Gaussian forecasts ``N(mean, std)`` (scoringrules' closed form)."""
    point = xr.apply_ufunc(
        # A zero std (a point with a constant climatology) would divide by 0; at 1e-12 the closed form
        # is the absolute error, its limit.
        lambda obs, mu, sigma: sr.crps_normal(obs, mu, np.maximum(sigma, 1e-12), backend="numpy"),
        truth,
        mean,
        std,
        dask="allowed",
    )
    return weighted_mean(point, weights, dims)


def spread(ensemble: xr.DataArray, weights: xr.DataArray, dims, member: str = "member") -> xr.DataArray:
    """Ensemble spread ``sqrt(weighted mean of the unbiased member variance)`` (WB2 EnsembleStddev).

    One member has no spread (0, not the 0/0 of the unbiased variance).
    """
    one = ensemble.sizes[member] == 1
    # float64: in float32 a 0.005 K spread of 280 K members is off by ~4e-6 relative (WB2 computes in float64)
    var = xr.zeros_like(ensemble.isel({member: 0})) if one else ensemble.astype(np.float64).var(member, ddof=1)
    # Mean of variances, then sqrt (WB2): the mean of per-point stds would understate the spread.
    return cast(xr.DataArray, np.sqrt(weighted_mean(var.where(ensemble.notnull().all(member)), weights, dims)))


def spread_skill_ratio(spread_: xr.DataArray, rmse_of_mean: xr.DataArray, members: int) -> xr.DataArray:
    """``sqrt((M+1)/M) * spread / RMSE(ensemble mean)``: 1 for a perfectly calibrated M-member ensemble
    (the finite-ensemble factor of Fortin et al. 2014, J. Hydrometeor.).

    Takes the (sample-averaged) spread and RMSE so the caller decides how to average them.
    """
    return np.sqrt((members + 1) / members) * spread_ / rmse_of_mean


def rank_histogram(
    ensemble: xr.DataArray, truth: xr.DataArray, dims, member: str = "member", seed: int = 0
) -> xr.DataArray:
    """Counts of the truth's rank among the members (0..M), reduced over ``dims``; ties broken at random.

    A flat histogram means a calibrated ensemble; U-shaped, under-dispersive; dome-shaped, over-dispersive.
    """
    rng = np.random.default_rng(seed)
    M = ensemble.sizes[member]

    def ranks(obs, fct):
        below = (fct < obs[..., None]).sum(-1)
        # Ties (e.g. zero precipitation in truth and members) take a uniform rank among the tied
        # positions; always counting them below would pile them into one end bin.
        ties = (fct == obs[..., None]).sum(-1)
        r = below + np.floor(rng.random(obs.shape) * (ties + 1)).astype(int)
        return np.where(np.isnan(obs), -1, r)  # -1: in no bin below

    r = xr.apply_ufunc(ranks, truth, ensemble, input_core_dims=[[], [member]])
    hist = xr.concat([(r == k).sum(dims) for k in range(M + 1)], dim="rank")
    return hist.assign_coords(rank=np.arange(M + 1))
