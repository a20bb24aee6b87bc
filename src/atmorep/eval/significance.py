"""Uncertainty of the scores: confidence intervals from a circular block bootstrap over initialisation
times, and paired tests of AtmoRep against each baseline on the same samples.

Both come from the ``scores`` package (``block_bootstrap``; ``diebold_mariano``, Hering-Genton HAC
variance): it works on plain xarray objects, so it takes our per-sample tables as they are, where
xskillscore's resampling is i.i.d. and WeatherBench-X's bootstrap is tied to its own data loaders and
aggregation state.

Samples that share an init time (several windows at one time) are one element of the resampled time
series: every score's interval comes from resampling per-init sums and counts in blocks of consecutive
init times, so the statistic of each resample is exactly the table's (a mean over samples) and the
blocks keep the autocorrelation of neighbouring init times. The block length follows Politis & White
(2004) for an AR(1) series with the pooled lag-1 autocorrelation of the per-init scores.

Legend: ``init`` the init times (sorted), ``iteration`` the bootstrap resamples.
"""

from __future__ import annotations

import warnings

import numpy as np
import xarray as xr
from scipy import stats
from scores.processing import block_bootstrap
from scores.stats.statistical_tests import diebold_mariano

CONFIDENCE = 0.95
#: fewer init times than this: no interval, no p-value (nothing to estimate an autocorrelation from)
MIN_INITS = 8


def by_init(per: xr.Dataset) -> tuple[xr.Dataset, xr.Dataset]:
    """Per-init sums and counts of the finite per-sample scores (dimension ``init``, in time order)."""
    # Without init times (modes that keep none) each sample is its own element.
    key = "init_time" if "init_time" in per.coords else "sample"
    keep = per.drop_vars([c for c in per.coords if c not in per.dims and c != key])
    # Sums and counts, not means: a resample's sum / count is the table's mean over samples exactly,
    # however many windows each init time holds.
    sums = keep.fillna(0).groupby(key).sum("sample")
    counts = keep.notnull().astype(float).groupby(key).sum("sample")
    return sums.rename({key: "init"}), counts.rename({key: "init"})


def block_length(series: xr.Dataset | xr.DataArray) -> int:
    """Circular-block length for the mean of ``series`` (``init`` in time order), from the lag-1
    autocorrelation pooled over every series: ``(3/2)^(1/3) (2 rho / (1 - rho^2))^(2/3) n^(1/3)``."""
    da = series.to_array() if isinstance(series, xr.Dataset) else series
    n = da.sizes["init"]
    if n < 4:  # too short to estimate a lag-1 correlation
        return 1
    x = da - da.mean("init")
    with np.errstate(invalid="ignore", divide="ignore"):
        r1 = ((x * x.shift(init=1)).sum("init") / (x**2).sum("init")).values
    # Negative correlation needs no blocks (0: length 1); the 0.95 cap keeps 1 / (1 - rho^2) finite.
    rho = float(np.clip(np.nan_to_num(np.nanmean(r1)) if np.isfinite(r1).any() else 0.0, 0.0, 0.95))
    b = 1.5 ** (1 / 3) * (2 * rho / (1 - rho**2)) ** (2 / 3) * n ** (1 / 3)
    return int(np.clip(np.ceil(b), 1, n // 2))  # at least two blocks, or there is nothing to resample


def resampled_means(
    sums: xr.Dataset, counts: xr.Dataset, *, iterations: int, seed: int, block: int | None = None
) -> xr.Dataset:
    """Means over samples of ``iterations`` circular block resamples of the init times (``iteration``)."""
    block = block or block_length(sums / counts.where(counts > 0))
    # One dataset, so that sums and counts are resampled with the same blocks.
    both = xr.merge([sums, counts.rename({v: f"count_{v}" for v in counts.data_vars})])
    state = np.random.get_state()  # scores draws from numpy's global generator
    np.random.seed(seed)
    try:
        boot = block_bootstrap(both, blocks={"init": block}, n_iteration=iterations, circular=True)
    finally:
        np.random.set_state(state)
    total = boot.sum("init")
    with np.errstate(invalid="ignore", divide="ignore"):
        return xr.Dataset(
            {v: total[v] / total[f"count_{v}"].where(total[f"count_{v}"] > 0) for v in sums.data_vars}
        ).assign_attrs(block_length=block)


def interval(
    boot: xr.DataArray, estimate: xr.DataArray, *, inits: int, block: int, confidence: float = CONFIDENCE
) -> tuple[xr.DataArray, xr.DataArray]:
    """Percentile interval over ``iteration``, widened about ``estimate`` by ``t_{k-1} / z`` for the
    ``k = inits / block`` blocks (the bootstrap's own variance is that of a few blocks: plain percentiles
    cover 0.82-0.92 of AR(1) means (lag-1 correlation 0.2-0.8, 40-150 init times), these 0.88-0.93;
    ``tests/eval/test_significance.py`` checks the coverage on one such series)."""
    tail = (1 - confidence) / 2
    q = boot.quantile([tail, 1 - tail], "iteration", skipna=False)
    k = max(inits // block, 2)  # t needs at least one degree of freedom
    c = stats.t.ppf(1 - tail, k - 1) / stats.norm.ppf(1 - tail)
    lo, hi = q.isel(quantile=0, drop=True), q.isel(quantile=1, drop=True)
    return estimate - (estimate - lo) * c, estimate + (hi - estimate) * c


def paired_test(diffs: xr.DataArray, confidence: float = CONFIDENCE) -> xr.Dataset:
    """Diebold-Mariano test (Hering-Genton autocovariance model, Student t) of per-init score differences
    ``diffs`` (``init`` in time order, NaN where the two forecasts were not both scored): two-sided
    ``p_value`` for equal skill, and the interval of the mean difference."""
    other = [d for d in diffs.dims if d != "init"]
    flat = diffs.stack(series=other) if other else diffs.expand_dims(series=[0])
    flat = flat.transpose("series", "init")
    n = flat.notnull().sum("init").values
    out = {k: np.full(flat.sizes["series"], np.nan) for k in ("p_value", "ci_low", "ci_high")}
    for i in range(flat.sizes["series"]):
        d = flat.values[i][np.isfinite(flat.values[i])]
        if n[i] < MIN_INITS:
            continue
        # Checked first: the test statistic divides by the differences' variance.
        if np.ptp(d) == 0:  # no variability: the difference is what it is
            out["p_value"][i] = 1.0 if d[0] == 0 else 0.0
            out["ci_low"][i] = out["ci_high"][i] = d[0]
            continue
        one = xr.DataArray(d[None], dims=("series", "init"), coords={"h": ("series", [1])})
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            dm = diebold_mariano(
                one, "series", "h", method="HG", confidence_level=confidence, statistic_distribution="t"
            )
        t = float(dm["dm_test_stat"][0])
        # Two-sided, from the statistic: scores reports only the one-sided confidence_gt_0.
        out["p_value"][i] = 2 * stats.t.sf(abs(t), len(d) - 1)
        out["ci_low"][i], out["ci_high"][i] = float(dm["ci_lower"][0]), float(dm["ci_upper"][0])
    ds = xr.Dataset({k: ("series", v) for k, v in out.items()}, coords={"series": flat["series"]})
    ds["inits"] = ("series", n)
    return ds.unstack("series") if other else ds.isel(series=0, drop=True)
