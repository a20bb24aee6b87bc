"""The intervals and the paired test are calibrated on synthetic autocorrelated series."""

import numpy as np
import pytest
import xarray as xr
from scipy import stats

from atmorep.eval import significance as S


def ar1(rng, reps, n, rho, sigma=1.0):
    """``reps`` stationary AR(1) series of length ``n`` (dims rep, init)."""
    x = np.empty((reps, n))
    x[:, 0] = rng.normal(0, sigma / np.sqrt(1 - rho**2), reps)
    for t in range(1, n):
        x[:, t] = rho * x[:, t - 1] + rng.normal(0, sigma, reps)
    return xr.DataArray(x, dims=("rep", "init"))


def test_block_length_grows_with_the_autocorrelation():
    rng = np.random.default_rng(0)
    assert S.block_length(ar1(rng, 50, 200, 0.0)) <= 2
    assert S.block_length(ar1(rng, 50, 200, 0.5)) > S.block_length(ar1(rng, 50, 200, 0.2))
    assert S.block_length(ar1(rng, 50, 200, 0.8)) >= 10


@pytest.mark.slow
def test_block_bootstrap_interval_covers_the_true_mean_at_the_nominal_rate():
    rng = np.random.default_rng(1)
    mu, reps = 2.0, 200
    x = mu + ar1(rng, reps, 150, 0.5)
    sums, counts = xr.Dataset({"rmse": x}), xr.Dataset({"rmse": xr.ones_like(x)})
    boot = S.resampled_means(sums, counts, iterations=500, seed=0)
    lo, hi = S.interval(boot["rmse"], x.mean("init"), inits=150, block=boot.attrs["block_length"])
    coverage = float(((lo <= mu) & (mu <= hi)).mean())
    assert 0.90 <= coverage <= 0.98, coverage
    # i.i.d. resampling (blocks of 1) ignores the autocorrelation and covers far too rarely
    iid = S.resampled_means(sums, counts, iterations=500, seed=0, block=1)["rmse"]
    lo1, hi1 = S.interval(iid, x.mean("init"), inits=150, block=1)
    assert float(((lo1 <= mu) & (mu <= hi1)).mean()) < 0.85


@pytest.mark.slow
def test_paired_test_is_uniform_under_equal_skill_and_rejects_a_real_difference():
    rng = np.random.default_rng(2)
    d = ar1(rng, 300, 100, 0.5)  # score differences of two equally skilful forecasts
    null = S.paired_test(d)
    p = null["p_value"].values
    assert np.isfinite(p).all()
    assert stats.kstest(p, "uniform").pvalue > 0.01
    assert 0.02 <= (p < 0.05).mean() <= 0.09
    better = S.paired_test(d.isel(rep=slice(0, 50)) - 1.0)
    assert (better["p_value"] < 0.05).mean() > 0.9 and (better["ci_high"] < 0).mean() > 0.9


def test_too_few_init_times_give_no_p_value():
    short = xr.DataArray(np.arange(5.0), dims="init")
    assert np.isnan(float(S.paired_test(short)["p_value"]))
    assert float(S.paired_test(xr.zeros_like(xr.DataArray(np.arange(20.0), dims="init")))["p_value"]) == 1.0
