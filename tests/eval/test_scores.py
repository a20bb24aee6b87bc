"""Scoring orchestration on synthetic window layouts: which rows exist, over which points they average."""

import numpy as np
import pytest
import xarray as xr

from atmorep.eval import metrics, scores


def layout(S=3, lead=2, Y=5, X=6, M=4, seed=0, clim=True):
    """A window-layout dataset as inference writes it (one level), all points targets."""
    rng = np.random.default_rng(seed)
    dims = ("sample", "lead", "level", "y", "x")
    shape = (S, lead, 1, Y, X)
    truth = rng.normal(size=shape)
    ens = truth[..., None] + rng.normal(size=(*shape, M))
    cm = rng.normal(size=shape) if clim else np.full(shape, np.nan)
    cs = rng.uniform(0.5, 2.0, size=shape) if clim else np.full(shape, np.nan)
    ds = xr.Dataset(
        {
            "target": (dims, truth),
            "prediction": (dims, ens.mean(-1)),
            "mask": (dims, np.ones(shape, bool)),
            "ensemble": ((*dims, "member"), ens),
            "climatology_mean": (dims, cm),
            "climatology_std": (dims, cs),
            "baseline_climatology": (dims, cm),
            "baseline_persistence": (dims, truth + 0.5),
        },
        coords={
            "sample": np.arange(S),
            "lead": np.arange(1, lead + 1),
            "level": [0],
            "member": np.arange(M),
            "latitude": (("sample", "y"), np.tile(np.linspace(50, 40, Y), (S, 1))),
            "longitude": (("sample", "x"), np.tile(np.arange(X) * 0.25, (S, 1))),
            "init_time": ("sample", np.datetime64("2026-01-01T00", "ns") + np.arange(S) * np.timedelta64(1, "h")),
        },
    )
    return ds


def test_the_climatology_spread_averages_over_the_target_points_only():
    ds = layout()
    mask = ds["mask"].copy(data=np.zeros(ds["mask"].shape, bool))
    mask[0, :, :, :2] = True  # sample 0: two target rows; samples 1 and 2: no targets at all
    ds["mask"] = mask
    per = scores.per_sample(ds, ("climatology",)).sel(forecast="climatology")
    w = metrics.latitude_weights(ds["latitude"], "y")
    expect = np.sqrt(metrics.weighted_mean(ds["climatology_std"].where(mask) ** 2, w, ("y", "x")))
    np.testing.assert_allclose(per["spread"].values, expect.values)
    assert np.isnan(per["spread"].isel(sample=[1, 2])).all()
    assert np.isnan(per["rmse"].isel(sample=[1, 2])).all()


def test_every_score_has_a_bootstrap_interval_over_init_times():
    ds = layout(S=40)
    ds = ds.assign_coords(init_time=ds["init_time"].copy(data=ds["init_time"].values[np.arange(40) // 2]))
    table = scores.table({"t2m": scores.per_sample(ds, ("persistence", "climatology"))}, iterations=200)
    assert {"ci_low", "ci_high"} <= set(table.columns)
    finite = table.dropna(subset=["ci_low"])
    assert len(finite) == len(table)  # every score, ssr too
    assert (finite.ci_low <= finite.value + 1e-12).all() and (finite.value <= finite.ci_high + 1e-12).all()
    assert (table[table.forecast == "climatology"].eval("ci_high - ci_low") > 0).all()
    few = scores.table({"t2m": scores.per_sample(layout(S=5), ("persistence",))}, iterations=200)
    assert few[["ci_low", "ci_high"]].isna().all().all()  # 5 init times: no interval


def test_comparisons_pair_atmorep_with_each_baseline_on_the_same_samples():
    ds = layout(S=40)
    ds["baseline_persistence"] = ds["prediction"].copy()  # equal skill by construction
    ds["baseline_persistence"][0] = np.nan  # not scored on sample 0: left out of the pairs
    ds["baseline_climatology"] = ds["target"] + 3.0  # far worse
    per = scores.per_sample(ds, ("persistence", "climatology"))
    c = scores.comparisons({"t2m": per}, iterations=200)
    c = c.set_index(["baseline", "metric", "lead"]).sort_index()
    assert set(c.index.get_level_values("metric")) == set(scores.PAIRED)
    same = c.loc["persistence"].drop(index="crps")  # (its CRPS is the mean's MAE, not the ensemble's)
    assert (same["samples"] == 39).all() and (same["inits"] == 39).all()
    np.testing.assert_allclose(same["difference"], 0, atol=1e-12)
    assert (same["p_value"] == 1).all() and (same["skill_score"].abs() < 1e-12).all()
    worse = c.loc["climatology"]
    assert (worse["difference"] < 0).all() and (worse["p_value"] < 0.01).all()
    assert (worse["skill_ci_low"] > 0).all() and (worse["difference_ci_high"] < 0).all()
    np.testing.assert_allclose(worse["skill_score"], 1 - worse["value"] / worse["baseline_value"])
    np.testing.assert_allclose(worse["relative_difference"], -worse["skill_score"])


def test_spectra_sum_to_the_variance_and_show_a_blurred_mean():
    from atmorep.eval import spectra

    rng = np.random.default_rng(4)
    white = rng.normal(size=(3, 171, 360))
    k, p = spectra.zonal(white, np.ones(171))
    assert k[0] == 1 and len(k) == 180
    np.testing.assert_allclose(p.sum(-1), white.var(-1).mean(-1), rtol=1e-10)  # Parseval
    wave = np.sin(2 * np.pi * 7 * np.arange(360) / 360)[None, None].repeat(5, 1)
    assert int(np.argmax(spectra.zonal(wave, np.ones(5))[1][0])) + 1 == 7
    ds = layout(S=4, Y=24, X=48)
    smooth = ds["target"].rolling(x=9, y=3, center=True, min_periods=1).mean()
    ds["prediction"] = smooth
    df = spectra.spectra(ds, "t2m")
    assert set(df.kind) == {"window"} and (df.samples == 4).all()
    one = df[df.lead == 1].sort_values("wavelength_km")
    small = one.head(3)  # the shortest wavelengths: the smoothed mean has far less power there
    assert (small.ensemble_mean < 0.3 * small.truth).all()
    y, x = np.meshgrid(np.arange(32) * 25.0, np.arange(64) * 25.0, indexing="ij")  # km
    plane = np.sin(2 * np.pi * (x * 0.6 + y * 0.8) / 200.0)[None]  # 200 km waves, variance 1/2
    k, p = spectra.radial(plane, 25.0, 25.0)
    assert 1 / k[np.argmax(p[0])] == pytest.approx(200, rel=0.1)
    assert p[0].sum() == pytest.approx(0.5, rel=0.15)  # Parseval, up to the taper's leakage
    ds["mask"][0, 0, 0, 0, 0] = False  # an incomplete target: that sample is left out at lead 1
    assert set(spectra.spectra(ds, "t2m").groupby("lead").samples.first()) == {3, 4}


def test_headline_ratios_come_with_an_interval():
    ds = layout(S=40)
    ds["baseline_persistence"] = ds["target"] + 2.0
    per = scores.per_sample(ds, ("persistence",))
    value, lo, hi = scores.ratio(per, "rmse", "persistence", iterations=200)
    table = scores.table({"t2m": per}, iterations=0)
    rmse = table[table.metric == "rmse"].groupby("forecast")["value"].mean()
    assert value == pytest.approx(rmse["atmorep"] / rmse["persistence"])
    assert lo < value < hi and hi - lo < 0.2
    ssr, lo, hi = scores.ratio(per, "ssr", iterations=200)
    assert ssr == pytest.approx(table[table.metric == "ssr"]["value"].mean()) and lo < ssr < hi
    assert np.isnan(scores.ratio(scores.per_sample(layout(S=4), ()), "ssr")[1])


def test_one_forecasts_headline_score_is_the_tables_mean_with_an_interval():
    """scores.headline: the mean over leads of the table's score, inside its interval; the interval
    narrows with more init times and is NaN with fewer than MIN_INITS."""
    ds = layout(S=40)
    ds["baseline_persistence"] = ds["target"] + 2.0 + np.random.default_rng(1).normal(size=ds["target"].shape)
    per = scores.per_sample(ds, ("persistence",))
    table = scores.table({"t2m": per}, iterations=0)
    for forecast in ("atmorep", "persistence"):
        value, lo, hi = scores.headline(per, "rmse", forecast, iterations=200)
        expect = table[(table.metric == "rmse") & (table.forecast == forecast)]["value"].mean()
        assert value == pytest.approx(expect) and lo < value < hi
    crps = scores.headline(per, "crps", iterations=200)[0]
    assert crps == pytest.approx(table[(table.metric == "crps") & (table.forecast == "atmorep")]["value"].mean())
    _, lo, hi = scores.headline(per, "rmse", iterations=200)
    _, few_lo, few_hi = scores.headline(scores.per_sample(layout(S=10), ()), "rmse", iterations=200)
    assert few_hi - few_lo > hi - lo  # fewer init times: a wider interval
    assert np.isnan(scores.headline(scores.per_sample(layout(S=4), ()), "rmse")[1])
