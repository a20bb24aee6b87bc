"""Scoring orchestration: the pure functions of :mod:`atmorep.eval.metrics` applied to the window
layout of :mod:`atmorep.eval.inference`, per sample, then aggregated into a tidy table.

Per sample (one window, or one init time of a global forecast) and per level and lead: RMSE, MSE,
bias, MAE, ACC, CRPS and ensemble spread of AtmoRep and of each baseline. The table averages over
samples (WB2's "sqrt before time average" for RMSE and spread) and adds the spread-skill ratio with
the finite-ensemble correction. Point baselines have CRPS = MAE; the climatology baseline is the
Gaussian ``N(mean, std)`` of the target's hour of day.

Every aggregated score has a 95 % interval, and :func:`comparisons` pairs AtmoRep with each baseline
(:mod:`atmorep.eval.significance`: block bootstrap over init times, Diebold-Mariano test).
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import xarray as xr

from atmorep.eval import metrics, significance

SPACE = ("y", "x")
METRICS = ("rmse", "mse", "bias", "mae", "acc", "crps", "spread")


def per_sample(ds: xr.Dataset, baselines: tuple[str, ...]) -> xr.Dataset:
    """Scores ``(forecast, sample, lead, level)`` for AtmoRep and each baseline."""
    # Truth only at targets: every forecast is scored on the points the model had to predict.
    truth = ds["target"].where(ds["mask"])
    w = metrics.latitude_weights(ds["latitude"], "y")
    clim = ds["climatology_mean"]
    # All NaN when evaluation starts with the campaign (no period left for a climatology): then no ACC
    # and no climatology baseline, rather than NaN rows.
    has_clim = bool(np.isfinite(clim).any())
    parts = {"atmorep": _point(ds["prediction"], truth, clim if has_clim else None, w)}
    parts["atmorep"]["crps"] = metrics.crps_ensemble(ds["ensemble"], truth, w, SPACE)
    parts["atmorep"]["spread"] = metrics.spread(ds["ensemble"], w, SPACE)
    for b in baselines:
        if b == "climatology" and not has_clim:
            continue
        forecast = ds[f"baseline_{b}"]
        # The climatology's anomaly against itself is 0: its ACC is 0/0, left NaN.
        parts[b] = _point(forecast, truth, clim if has_clim and b != "climatology" else None, w)
        if b == "climatology":
            parts[b]["crps"] = metrics.crps_normal(clim, ds["climatology_std"], truth, w, SPACE)
            std = ds["climatology_std"].where(truth.notnull())  # the points RMSE and CRPS score
            # As metrics.spread: the root of the mean variance.
            parts[b]["spread"] = np.sqrt(metrics.weighted_mean(std**2, w, SPACE))
        else:
            parts[b]["crps"] = parts[b]["mae"]
    # an object index: written as variable-length strings, which zarrs' codec pipeline reads without a warning
    out = xr.concat(
        [xr.Dataset(v) for v in parts.values()],
        dim=pd.Index(list(parts), name="forecast", dtype=object),
        coords="minimal",
        compat="override",
    )
    keep = [c for c in ("init_time", "lead_time", "time") if c in ds.coords]
    return (
        out.assign_coords({c: ds[c] for c in keep})
        .transpose("forecast", "sample", "lead", "level")
        .assign_attrs(field=ds.attrs.get("field", ""), members=ds.sizes["member"])
    )


def _point(forecast: xr.DataArray, truth: xr.DataArray, clim: xr.DataArray | None, w) -> dict:
    out = {
        "rmse": metrics.rmse(forecast, truth, w, SPACE),
        "mse": metrics.mse(forecast, truth, w, SPACE),
        "bias": metrics.bias(forecast, truth, w, SPACE),
        "mae": metrics.mae(forecast, truth, w, SPACE),
    }
    out["acc"] = metrics.acc(forecast, truth, clim, w, SPACE) if clim is not None else xr.full_like(out["rmse"], np.nan)
    return out


def aggregate(scores: xr.Dataset) -> xr.Dataset:
    """Mean over samples, plus ``ssr`` = corrected spread / RMSE of the ensemble mean."""
    mean = scores.mean("sample", skipna=True)
    mean["ssr"] = metrics.spread_skill_ratio(mean["spread"], mean["rmse"], scores.attrs["members"])
    # The M-member correction fits AtmoRep's ensemble only: a baseline has no members.
    mean["ssr"] = mean["ssr"].where(mean["forecast"] == "atmorep")
    return mean


def table(per_field: dict[str, xr.Dataset], iterations: int = 1000, seed: int = 0) -> pd.DataFrame:
    """Tidy scores: field, level, lead, lead_hours, forecast, metric, value, ci_low, ci_high, samples.

    ``ci_low``/``ci_high``: the 95 % interval of :mod:`atmorep.eval.significance` (NaN with fewer than
    ``MIN_INITS`` init times or ``iterations`` 0).
    """
    rows = []
    for f, scores in per_field.items():
        agg = aggregate(scores)
        lo, hi = _intervals(scores, agg, iterations=iterations, seed=seed)
        hours = _lead_hours(scores)
        for metric in (*METRICS, "ssr"):
            da = agg[metric].transpose("forecast", "level", "lead")
            for i, forecast in enumerate(da["forecast"].values):
                for j, level in enumerate(da["level"].values):
                    for k, lead in enumerate(da["lead"].values):
                        value = float(da.values[i, j, k])
                        if np.isfinite(value):
                            at = {"forecast": forecast, "level": level, "lead": lead}
                            rows.append(
                                {
                                    "field": f,
                                    "level": int(level),
                                    "lead": int(lead),
                                    "lead_hours": round(float(hours[k]), 3),
                                    "forecast": str(forecast),
                                    "metric": metric,
                                    "value": value,
                                    "ci_low": float(lo[metric].sel(at)),
                                    "ci_high": float(hi[metric].sel(at)),
                                    "samples": scores.sizes["sample"],
                                }
                            )
    return pd.DataFrame(rows)


def _lead_hours(scores: xr.Dataset) -> np.ndarray:
    # A mean over samples: with irregular time steps a lead index is not the same duration everywhere.
    hours = (
        (scores["lead_time"] / np.timedelta64(1, "h")).mean("sample").values
        if "lead_time" in scores.coords
        else np.full(scores.sizes["lead"], np.nan)
    )
    if hours.ndim > 1:
        hours = hours.mean(tuple(range(1, hours.ndim)))
    return hours


def _intervals(scores: xr.Dataset, agg: xr.Dataset, *, iterations: int, seed: int) -> tuple[xr.Dataset, xr.Dataset]:
    """Bootstrap intervals of every aggregated score (``ssr`` recomputed per resample)."""
    sums, counts = significance.by_init(scores[list(METRICS)])
    inits = sums.sizes["init"]
    if inits < significance.MIN_INITS or not iterations:
        nan = xr.full_like(agg, np.nan)
        return nan, nan
    boot = significance.resampled_means(sums, counts, iterations=iterations, seed=seed)
    # ssr is a ratio of means, not a mean: built from each resample's means, as aggregate() does.
    boot["ssr"] = metrics.spread_skill_ratio(boot["spread"], boot["rmse"], scores.attrs["members"]).where(
        boot["forecast"] == "atmorep"
    )
    block = boot.attrs["block_length"]
    bounds = {m: significance.interval(boot[m], agg[m], inits=inits, block=block) for m in agg.data_vars}
    return xr.Dataset({m: b[0] for m, b in bounds.items()}), xr.Dataset({m: b[1] for m, b in bounds.items()})


#: scores compared pairwise (lower is better for each)
PAIRED = ("rmse", "crps", "mae", "mse")


def comparisons(per_field: dict[str, xr.Dataset], iterations: int = 1000, seed: int = 0) -> pd.DataFrame:
    """AtmoRep against each baseline on the samples both scored, per field, level, lead and metric.

    ``difference`` = AtmoRep - baseline (negative: AtmoRep better) with the Diebold-Mariano interval
    ``difference_ci_low/high`` and two-sided ``p_value`` on the per-init differences;
    ``relative_difference`` = difference / baseline; ``skill_score`` = 1 - AtmoRep / baseline with its
    paired block-bootstrap interval ``skill_ci_low/high`` (the same resamples for both forecasts).
    """
    rows = []
    for f, scores in per_field.items():
        hours = _lead_hours(scores)
        for b in [str(x) for x in scores["forecast"].values if x != "atmorep"]:
            parts = {}
            for m in PAIRED:
                ours, ref = scores[m].sel(forecast="atmorep", drop=True), scores[m].sel(forecast=b, drop=True)
                # Paired: a sample the baseline cannot score (persistence without context) counts for neither.
                both = ours.notnull() & ref.notnull()
                parts.update(
                    {f"{m}_ours": ours.where(both), f"{m}_ref": ref.where(both), f"{m}_diff": (ours - ref).where(both)}
                )
            sums, counts = significance.by_init(xr.Dataset(parts))
            with np.errstate(invalid="ignore", divide="ignore"):
                mean = sums.sum("init") / counts.sum("init")
                series = sums / counts.where(counts > 0)
            inits = sums.sizes["init"]
            boot = (
                significance.resampled_means(sums, counts, iterations=iterations, seed=seed)
                if inits >= significance.MIN_INITS and iterations
                else None
            )
            for m in PAIRED:
                # 1 - ratio of the means, not a mean of per-sample ratios (one bad sample could dominate).
                skill = 1 - mean[f"{m}_ours"] / mean[f"{m}_ref"]
                if boot is not None:
                    lo, hi = significance.interval(
                        1 - boot[f"{m}_ours"] / boot[f"{m}_ref"], skill, inits=inits, block=boot.attrs["block_length"]
                    )
                else:
                    lo = hi = xr.full_like(skill, np.nan)
                test = significance.paired_test(series[f"{m}_diff"])
                for level in scores["level"].values:
                    for k, lead in enumerate(scores["lead"].values):
                        at = {"level": level, "lead": lead}
                        n = int(counts[f"{m}_diff"].sel(at).sum())
                        if not n:
                            continue
                        diff = float(mean[f"{m}_diff"].sel(at))
                        ref_value = float(mean[f"{m}_ref"].sel(at))
                        rows.append(
                            {
                                "field": f,
                                "level": int(level),
                                "lead": int(lead),
                                "lead_hours": round(float(hours[k]), 3),
                                "metric": m,
                                "forecast": "atmorep",
                                "baseline": b,
                                "value": float(mean[f"{m}_ours"].sel(at)),
                                "baseline_value": ref_value,
                                "difference": diff,
                                "difference_ci_low": float(test["ci_low"].sel(at)),
                                "difference_ci_high": float(test["ci_high"].sel(at)),
                                "relative_difference": diff / ref_value if ref_value else np.nan,
                                "skill_score": float(skill.sel(at)),
                                "skill_ci_low": float(lo.sel(at)),
                                "skill_ci_high": float(hi.sel(at)),
                                "p_value": float(test["p_value"].sel(at)),
                                "samples": n,
                                "inits": int(test["inits"].sel(at)),
                            }
                        )
    return pd.DataFrame(rows, columns=COMPARISON_COLUMNS)


COMPARISON_COLUMNS = [
    "field",
    "level",
    "lead",
    "lead_hours",
    "metric",
    "forecast",
    "baseline",
    "value",
    "baseline_value",
    "difference",
    "difference_ci_low",
    "difference_ci_high",
    "relative_difference",
    "skill_score",
    "skill_ci_low",
    "skill_ci_high",
    "p_value",
    "samples",
    "inits",
]


def rank_histograms(results: dict[str, xr.Dataset], seed: int) -> pd.DataFrame:
    """Rank histogram counts per field, level and lead (over samples and grid points)."""
    frames = []
    for f, ds in results.items():
        hist = metrics.rank_histogram(ds["ensemble"], ds["target"].where(ds["mask"]), ("sample", *SPACE), seed=seed)
        df = hist.rename("count").to_dataframe().reset_index()[["level", "lead", "rank", "count"]]
        total = df.groupby(["level", "lead"])["count"].transform("sum")
        frames.append(df.assign(field=f, frequency=df["count"] / total.where(total > 0)))
    return pd.concat(frames, ignore_index=True)[["field", "level", "lead", "rank", "count", "frequency"]]


def ratio(
    scores: xr.Dataset, metric: str, baseline: str | None = None, *, iterations: int = 1000, seed: int = 0
) -> tuple[float, float, float]:
    """A headline ratio with its 95 % bootstrap interval: AtmoRep's ``metric`` over ``baseline``'s (each
    the mean over leads and levels of the sample means, on the samples both scored), or without a
    baseline the mean over leads and levels of ``metric`` ``"ssr"``. Returns (value, low, high)."""
    if baseline is None:
        if metric != "ssr":
            raise ValueError(f"ratio: {metric} needs a baseline (only ssr is a ratio by itself)")
        atmorep = scores.sel(forecast="atmorep", drop=True)
        parts = xr.Dataset({"num": atmorep["spread"], "den": atmorep["rmse"]})
    else:
        ours = scores[metric].sel(forecast="atmorep", drop=True)
        ref = scores[metric].sel(forecast=baseline, drop=True)
        both = ours.notnull() & ref.notnull()
        parts = xr.Dataset({"num": ours.where(both), "den": ref.where(both)})
    members = scores.attrs["members"]

    def statistic(means: xr.Dataset) -> xr.DataArray:
        if baseline is None:
            return metrics.spread_skill_ratio(means["num"], means["den"], members).mean(("lead", "level"))
        return means["num"].mean(("lead", "level")) / means["den"].mean(("lead", "level"))

    return _bootstrapped(parts, statistic, iterations, seed)


def headline(
    scores: xr.Dataset, metric: str, forecast: str = "atmorep", *, iterations: int = 1000, seed: int = 0
) -> tuple[float, float, float]:
    """One forecast's ``metric`` as one figure with its 95 % bootstrap interval: the mean over leads and
    levels of the sample means (as :func:`ratio` averages; for ``rmse`` WB2's root before the mean over
    samples). Returns (value, low, high); the interval is NaN with fewer than ``MIN_INITS`` init times."""
    parts = xr.Dataset({"num": scores[metric].sel(forecast=forecast, drop=True)})
    return _bootstrapped(parts, lambda means: means["num"].mean(("lead", "level")), iterations, seed)


def _bootstrapped(parts: xr.Dataset, statistic, iterations: int, seed: int) -> tuple[float, float, float]:
    """``statistic`` of the per-sample ``parts``' means, and its interval from block resamples of the init times."""
    sums, counts = significance.by_init(parts)
    value = statistic(sums.sum("init") / counts.sum("init"))
    inits = sums.sizes["init"]
    if inits < significance.MIN_INITS or not iterations:
        return float(value), np.nan, np.nan
    boot = significance.resampled_means(sums, counts, iterations=iterations, seed=seed)
    # Every part from the same resample: a ratio's interval keeps the correlation of its terms.
    lo, hi = significance.interval(statistic(boot), value, inits=inits, block=boot.attrs["block_length"])
    return float(value), float(lo), float(hi)
