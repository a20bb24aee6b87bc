"""Scoring orchestration: the pure functions of :mod:`atmorep.eval.metrics` applied to the window
layout of :mod:`atmorep.eval.inference`, per sample, then aggregated into a tidy table.

Per sample (one window, or one init time of a global forecast) and per level and lead: RMSE, MSE,
bias, MAE, ACC, CRPS and ensemble spread of AtmoRep and of each baseline. The table averages over
samples (WB2's "sqrt before time average" for RMSE and spread) and adds the spread-skill ratio with
the finite-ensemble correction. Point baselines have CRPS = MAE; the climatology baseline is the
Gaussian ``N(mean, std)`` of the target's hour of day.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import xarray as xr

from atmorep.eval import metrics

SPACE = ("y", "x")
METRICS = ("rmse", "mse", "bias", "mae", "acc", "crps", "spread")


def per_sample(ds: xr.Dataset, baselines: tuple[str, ...]) -> xr.Dataset:
    """Scores ``(forecast, sample, lead, level)`` for AtmoRep and each baseline."""
    truth = ds["target"].where(ds["mask"])
    w = metrics.latitude_weights(ds["latitude"], "y")
    clim = ds["climatology_mean"]
    has_clim = bool(np.isfinite(clim).any())
    parts = {"atmorep": _point(ds["prediction"], truth, clim if has_clim else None, w)}
    parts["atmorep"]["crps"] = metrics.crps_ensemble(ds["ensemble"], truth, w, SPACE)
    parts["atmorep"]["spread"] = metrics.spread(ds["ensemble"], w, SPACE)
    for b in baselines:
        if b == "climatology" and not has_clim:
            continue
        forecast = ds[f"baseline_{b}"]
        parts[b] = _point(forecast, truth, clim if has_clim and b != "climatology" else None, w)
        if b == "climatology":
            parts[b]["crps"] = metrics.crps_normal(clim, ds["climatology_std"], truth, w, SPACE)
            std = ds["climatology_std"].where(truth.notnull())  # the points RMSE and CRPS score
            parts[b]["spread"] = np.sqrt(metrics.weighted_mean(std**2, w, SPACE))
        else:
            parts[b]["crps"] = parts[b]["mae"]
    # an object index: written as variable-length strings, which zarrs' codec pipeline reads without a warning
    out = xr.concat([xr.Dataset(v) for v in parts.values()], dim=pd.Index(list(parts), name="forecast", dtype=object),
                    coords="minimal", compat="override")
    keep = [c for c in ("init_time", "lead_time", "time") if c in ds.coords]
    return out.assign_coords({c: ds[c] for c in keep}).transpose("forecast", "sample", "lead", "level").assign_attrs(
        field=ds.attrs.get("field", ""), members=ds.sizes["member"])


def _point(forecast: xr.DataArray, truth: xr.DataArray, clim: xr.DataArray | None, w) -> dict:
    out = {"rmse": metrics.rmse(forecast, truth, w, SPACE), "mse": metrics.mse(forecast, truth, w, SPACE),
           "bias": metrics.bias(forecast, truth, w, SPACE), "mae": metrics.mae(forecast, truth, w, SPACE)}
    out["acc"] = (metrics.acc(forecast, truth, clim, w, SPACE) if clim is not None
                  else xr.full_like(out["rmse"], np.nan))
    return out


def aggregate(scores: xr.Dataset) -> xr.Dataset:
    """Mean over samples, plus ``ssr`` = corrected spread / RMSE of the ensemble mean."""
    mean = scores.mean("sample", skipna=True)
    mean["ssr"] = metrics.spread_skill_ratio(mean["spread"], mean["rmse"], scores.attrs["members"])
    mean["ssr"] = mean["ssr"].where(mean["forecast"] == "atmorep")
    return mean


def table(per_field: dict[str, xr.Dataset]) -> pd.DataFrame:
    """Tidy scores: field, level, lead, lead_hours, forecast, metric, value, samples."""
    rows = []
    for f, scores in per_field.items():
        agg = aggregate(scores)
        hours = (scores["lead_time"] / np.timedelta64(1, "h")).mean("sample").values \
            if "lead_time" in scores.coords else np.full(scores.sizes["lead"], np.nan)
        if hours.ndim > 1:
            hours = hours.mean(tuple(range(1, hours.ndim)))
        for metric in (*METRICS, "ssr"):
            da = agg[metric].transpose("forecast", "level", "lead")
            for i, forecast in enumerate(da["forecast"].values):
                for j, level in enumerate(da["level"].values):
                    for k, lead in enumerate(da["lead"].values):
                        value = float(da.values[i, j, k])
                        if np.isfinite(value):
                            rows.append({"field": f, "level": int(level), "lead": int(lead),
                                         "lead_hours": round(float(hours[k]), 3), "forecast": str(forecast),
                                         "metric": metric, "value": value, "samples": scores.sizes["sample"]})
    return pd.DataFrame(rows)


def rank_histograms(results: dict[str, xr.Dataset], seed: int) -> pd.DataFrame:
    """Rank histogram counts per field, level and lead (over samples and grid points)."""
    frames = []
    for f, ds in results.items():
        hist = metrics.rank_histogram(ds["ensemble"], ds["target"].where(ds["mask"]), ("sample", *SPACE), seed=seed)
        df = hist.rename("count").to_dataframe().reset_index()[["level", "lead", "rank", "count"]]
        total = df.groupby(["level", "lead"])["count"].transform("sum")
        frames.append(df.assign(field=f, frequency=df["count"] / total.where(total > 0)))
    return pd.concat(frames, ignore_index=True)[["field", "level", "lead", "rank", "count", "frequency"]]
