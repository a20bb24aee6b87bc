import numpy as np
import xarray as xr

from atmorep.eval import metrics


def _fields(seed=0):
    rng = np.random.default_rng(seed)
    lat = np.array([60.0, 0.0, -30.0])
    truth = xr.DataArray(rng.normal(size=(4, 3, 5)), dims=("sample", "y", "x"))
    fc = truth + xr.DataArray(rng.normal(0, 0.5, (4, 3, 5)), dims=("sample", "y", "x"))
    latitude = xr.DataArray(np.tile(lat, (4, 1)), dims=("sample", "y"))
    return fc, truth, latitude


def test_rmse_and_bias_are_latitude_weighted():
    fc, truth, latitude = _fields()
    w = metrics.latitude_weights(latitude)
    dims = ("sample", "y", "x")
    cw = np.cos(np.deg2rad(latitude.values))[:, :, None] * np.ones((1, 1, 5))
    err = (fc - truth).values
    expect_rmse = np.sqrt((cw * err**2).sum() / cw.sum())
    assert np.isclose(float(metrics.rmse(fc, truth, w, dims)), expect_rmse)
    assert np.isclose(float(metrics.bias(fc, truth, w, dims)), (cw * err).sum() / cw.sum())
    assert float(metrics.rmse(truth, truth, w, dims)) == 0


def test_spread_uses_finite_ensemble_correction():
    rng = np.random.default_rng(1)
    ens = xr.DataArray(rng.normal(size=(4, 3, 2, 2)), dims=("member", "sample", "y", "x"))
    lat = xr.DataArray(np.zeros((3, 2)), dims=("sample", "y"))
    s = metrics.spread(ens, metrics.latitude_weights(lat), ("sample", "y", "x"))
    var = ens.values.var(axis=0, ddof=1) * 5 / 4
    assert np.isclose(float(s), np.sqrt(var.mean()))
