import numpy as np
import pytest
import scoringrules as sr
import xarray as xr

from atmorep.eval import metrics

DIMS = ("y", "x")


def _fields(seed=0, S=4, Y=5, X=6):
    rng = np.random.default_rng(seed)
    lat = xr.DataArray(np.tile(np.linspace(60, -30, Y), (S, 1)), dims=("sample", "y"))
    truth = xr.DataArray(rng.normal(size=(S, Y, X)), dims=("sample", "y", "x"))
    fc = truth + xr.DataArray(rng.normal(0, 0.5, (S, Y, X)), dims=("sample", "y", "x"))
    return fc, truth, lat


def test_latitude_weights_follow_wb2_cell_areas():
    lat = xr.DataArray(np.array([-60.0, -30.0, 0.0, 30.0, 60.0]), dims="y")
    w = metrics.latitude_weights(lat)
    bounds = np.deg2rad([-75.0, -45.0, -15.0, 15.0, 45.0, 75.0])
    expect = np.diff(np.sin(bounds))
    np.testing.assert_allclose(w.values, expect / expect.mean())
    assert np.isclose(float(w.mean()), 1.0)
    np.testing.assert_allclose(metrics.latitude_weights(lat[::-1]).values, w.values[::-1])  # either order
    poles = metrics.latitude_weights(xr.DataArray(np.array([90.0, 0.0, -90.0]), dims="y"))
    assert poles.values[0] == poles.values[2] < poles.values[1]  # polar caps clipped at ±90°


def test_rmse_bias_mae_are_weighted_and_skip_missing_points():
    fc, truth, lat = _fields()
    w = metrics.latitude_weights(lat, "y")
    err = (fc - truth).values
    ww = np.broadcast_to(w.values[:, :, None], err.shape)
    np.testing.assert_allclose(
        metrics.rmse(fc, truth, w, DIMS).values, np.sqrt((ww * err**2).sum((1, 2)) / ww.sum((1, 2)))
    )
    np.testing.assert_allclose(metrics.bias(fc, truth, w, DIMS).values, (ww * err).sum((1, 2)) / ww.sum((1, 2)))
    np.testing.assert_allclose(metrics.mae(fc, truth, w, DIMS).values, (ww * abs(err)).sum((1, 2)) / ww.sum((1, 2)))
    holes = truth.where(truth.x > 2)  # as off-target points of BERT mode
    keep = holes.notnull().values
    expect = np.sqrt((ww * err**2 * keep).sum((1, 2)) / (ww * keep).sum((1, 2)))
    np.testing.assert_allclose(metrics.rmse(fc, holes, w, DIMS).values, expect)
    assert float(metrics.rmse(truth, truth, w, DIMS).max()) == 0


def test_acc_is_one_for_a_perfect_forecast_and_falls_with_noise():
    fc, truth, lat = _fields()
    w = metrics.latitude_weights(lat, "y")
    clim = xr.zeros_like(truth) - 0.3
    np.testing.assert_allclose(metrics.acc(truth, truth, clim, w, DIMS).values, 1.0)
    a = metrics.acc(fc, truth, clim, w, DIMS)
    assert ((a > 0.5) & (a < 1)).all()
    assert float(metrics.acc(-(truth - clim) + clim, truth, clim, w, DIMS).max()) == pytest.approx(-1.0)


def test_crps_comes_from_scoringrules_and_reduces_to_mae_for_a_collapsed_ensemble():
    fc, truth, lat = _fields()
    w = metrics.latitude_weights(lat, "y")
    rng = np.random.default_rng(3)
    ens = fc.expand_dims(member=8).copy(data=fc.values[None] + rng.normal(0, 0.4, (8, *fc.shape)))
    point = sr.crps_ensemble(truth.values, np.moveaxis(ens.values, 0, -1), estimator="fair")
    ww = np.broadcast_to(w.values[:, :, None], point.shape)
    np.testing.assert_allclose(
        metrics.crps_ensemble(ens, truth, w, DIMS).values, (ww * point).sum((1, 2)) / ww.sum((1, 2)), rtol=1e-6
    )
    collapsed = fc.expand_dims(member=4).copy()
    np.testing.assert_allclose(
        metrics.crps_ensemble(collapsed, truth, w, DIMS).values, metrics.mae(fc, truth, w, DIMS).values, rtol=1e-6
    )
    # Gaussian closed form: CRPS(N(0, 1), 0) = (sqrt(2) - 1) / sqrt(pi)
    zero = xr.zeros_like(truth)
    np.testing.assert_allclose(
        metrics.crps_normal(zero, zero + 1, zero, w, DIMS).values, (np.sqrt(2) - 1) / np.sqrt(np.pi), rtol=1e-6
    )


def test_spread_skill_ratio_is_one_for_a_calibrated_ensemble():
    rng = np.random.default_rng(0)
    M, S, Y, X = 4, 200, 6, 8
    centre = rng.normal(size=(S, Y, X))
    truth = xr.DataArray(centre + rng.normal(size=(S, Y, X)), dims=("sample", "y", "x"))
    ens = xr.DataArray(centre[..., None] + rng.normal(size=(S, Y, X, M)), dims=("sample", "y", "x", "member"))
    lat = xr.DataArray(np.tile(np.linspace(50, -50, Y), (S, 1)), dims=("sample", "y"))
    w = metrics.latitude_weights(lat, "y")
    spread = metrics.spread(ens, w, DIMS).mean("sample")
    skill = metrics.rmse(ens.mean("member"), truth, w, DIMS).mean("sample")
    assert float(metrics.spread_skill_ratio(spread, skill, M)) == pytest.approx(1.0, abs=0.05)
    # without the finite-ensemble correction the ratio is biased low by sqrt(M / (M + 1))
    assert float(spread / skill) == pytest.approx(np.sqrt(M / (M + 1)), abs=0.05)


def test_rank_histogram_is_flat_for_a_calibrated_ensemble_and_u_shaped_for_an_overconfident_one():
    rng = np.random.default_rng(1)
    M, N = 5, 20000
    truth = xr.DataArray(rng.normal(size=N), dims="x")
    calibrated = xr.DataArray(rng.normal(size=(N, M)), dims=("x", "member"))
    h = metrics.rank_histogram(calibrated, truth, ("x",))
    assert list(h["rank"].values) == list(range(M + 1)) and int(h.sum()) == N
    np.testing.assert_allclose(h.values / N, 1 / (M + 1), atol=0.01)
    narrow = metrics.rank_histogram(calibrated * 0.2, truth, ("x",))
    assert narrow.values[0] > 2 * narrow.values[M // 2] and narrow.values[-1] > 2 * narrow.values[M // 2]
    missing = metrics.rank_histogram(calibrated, truth.where(truth.x < 100), ("x",))
    assert int(missing.sum()) == 100


def test_a_one_member_ensemble_is_a_point_forecast():
    fc, truth, lat = _fields()
    w = metrics.latitude_weights(lat, "y")
    one = fc.expand_dims(member=1)
    np.testing.assert_allclose(
        metrics.crps_ensemble(one, truth, w, DIMS).values, metrics.mae(fc, truth, w, DIMS).values, rtol=1e-6
    )
    np.testing.assert_array_equal(metrics.spread(one, w, DIMS).values, 0.0)


def test_spread_of_float32_members_is_computed_in_float64():
    # 280 K members 0.005 K apart: float32 variances were off by ~4e-6 relative; WB2 computes in float64
    rng = np.random.default_rng(0)
    ens = (280.0 + 0.005 * rng.standard_normal((8, 16, 32))).astype(np.float32)
    da = xr.DataArray(ens, dims=("member", *DIMS))
    exact = np.sqrt(np.var(ens.astype(np.float64), axis=0, ddof=1).mean())
    spread = metrics.spread(da, xr.DataArray(np.ones(16), dims="y"), DIMS)
    assert spread.dtype == np.float64
    assert float(spread) == pytest.approx(exact, rel=1e-12)
