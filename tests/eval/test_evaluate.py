"""The evaluate stage end to end on the embedded sample with a small untrained model: products,
tables and figures are sane (no skill is expected)."""

import json

import matplotlib.image as mpimg
import numpy as np
import pandas as pd
import pytest
import xarray as xr
from eval_builders import EVAL, eval_config

from atmorep import cli
from atmorep.config import AttentionCaptureConfig, DataConfig, FieldSpec
from atmorep.eval import outputs
from atmorep.eval.evaluate import evaluate

DATA = DataConfig(fields={"t2m": FieldSpec(), "u10": FieldSpec()}, start="2026-03-25T00", end="2026-03-31T23")


@pytest.fixture(scope="module")
def forecast(tmp_path_factory, model_path, stores):
    out = tmp_path_factory.mktemp("forecast")
    evaluate(3, DATA, eval_config(mode="forecast", samples=5), model_path, stores, out)
    return out


def test_scores_table_is_tidy_with_every_baseline(forecast):
    scores = pd.read_csv(forecast / "scores.csv")
    assert list(scores.columns) == [
        "field",
        "level",
        "lead",
        "lead_hours",
        "forecast",
        "metric",
        "value",
        "ci_low",
        "ci_high",
        "samples",
    ]
    assert set(scores.field) == {"t2m", "u10"}
    assert set(scores.forecast) == {"atmorep", "persistence", "climatology"}
    assert {"rmse", "bias", "acc", "crps", "spread", "ssr"} <= set(scores.metric)
    assert np.isfinite(scores.value).all() and (scores.samples == 5).all()
    assert scores.ci_low.isna().all()  # 5 init times are too few for an interval
    rmse = scores[scores.metric == "rmse"]
    assert len(rmse) == 2 * 2 * 3 and (rmse.value > 0).all()  # fields x leads x forecasts
    assert set(scores[scores.metric == "ssr"].forecast) == {"atmorep"}
    pd.testing.assert_frame_equal(pd.read_parquet(forecast / "scores.parquet"), scores, check_exact=False, rtol=1e-12)
    hist = pd.read_csv(forecast / "rank_histogram.csv")
    assert set(hist["rank"]) == set(range(5))  # 4 members
    assert (hist.groupby(["field", "level", "lead"])["count"].sum() == 5 * 27 * 54).all()


def test_comparisons_and_spectra_are_written(forecast):
    c = pd.read_csv(forecast / "comparisons.csv")
    assert set(c.baseline) == {"persistence", "climatology"}
    assert set(c.metric) == {"rmse", "crps", "mae", "mse"}
    assert len(c) == 2 * 2 * 2 * 4 and (c.samples == 5).all()  # fields x leads x baselines x metrics
    np.testing.assert_allclose(c.skill_score, 1 - c.value / c.baseline_value)
    pd.testing.assert_frame_equal(pd.read_parquet(forecast / "comparisons.parquet"), c, check_exact=False, rtol=1e-12)
    spec = pd.read_csv(forecast / "spectra.csv")
    assert set(spec.field) == {"t2m", "u10"} and set(spec.kind) == {"window"} and (spec.samples == 5).all()
    assert (spec[["truth", "ensemble_mean", "member"]] >= 0).all().all()


def test_products_are_cf_zarr_readable_by_plain_xarray(forecast):
    ds = xr.open_zarr(forecast / "windows.zarr", group="t2m")
    assert {"source", "target", "prediction", "ensemble", "mask"} <= set(ds.data_vars)
    # the baselines are the score stage's: beside the scores, in the same layout
    refs = xr.open_zarr(forecast / "baselines.zarr", group="t2m")
    assert {"baseline_persistence", "baseline_climatology", "climatology_mean"} <= set(refs.data_vars)
    assert refs["baseline_persistence"].attrs["units"] == "K" and refs.sizes["sample"] == ds.sizes["sample"]
    assert ds.attrs["Conventions"].startswith("CF")
    assert ds["prediction"].attrs["standard_name"] == "air_temperature" and ds["prediction"].attrs["units"] == "K"
    assert ds["latitude"].attrs["units"] == "degrees_north" and ds["init_time"].dtype.kind == "M"
    one = outputs.window(ds, 0)
    assert one["ensemble"].dims == ("time", "level", "latitude", "longitude", "member")
    assert one["latitude"].dims == ("latitude",) and one["time"].dtype.kind == "M"
    u = xr.open_zarr(forecast / "windows.zarr", group="u10")
    assert u["target"].attrs["standard_name"] == "eastward_wind"
    per = xr.open_zarr(forecast / "sample_scores.zarr", group="u10")
    assert per["rmse"].dims == ("forecast", "sample", "lead", "level") and per.sizes["sample"] == 5
    clim = xr.open_zarr(forecast / "climatology.zarr", group="t2m")
    assert clim["mean"].dims == ("hour", "level", "latitude", "longitude")
    att = xr.open_zarr(forecast / "attention.zarr", group="t2m")
    assert att["attention"].dims == ("sample", "layer", "head", "query", "key")
    assert {"query_latitude", "key_longitude", "query_time", "key_level"} <= set(att.coords)
    assert "query_latitude_bnds" in att
    # layers captured from 0 on: the rollout over them is written beside the maps, row-stochastic
    assert att["rollout"].dims == ("sample", "query", "key")
    np.testing.assert_allclose(att["rollout"].sum("key").values, 1.0, rtol=1e-5)


def test_figures_are_drawn(forecast):
    names = {p.name for p in forecast.glob("*.png")}
    assert names == {
        "forecast_t2m.png",
        "forecast_u10.png",
        "scores_t2m.png",
        "scores_u10.png",
        "rank_histogram_t2m.png",
        "rank_histogram_u10.png",
        "skill.png",
        "attention_t2m.png",
        "scorecard.png",
        "spectra.png",
    }
    for name in names:
        img = mpimg.imread(forecast / name)
        assert img.shape[0] > 100 and img[..., :3].std() > 0.05, f"{name} looks blank"


@pytest.mark.slow
def test_global_forecast_writes_the_weatherbench2_schema(tmp_path, model_path, stores):
    cfg = eval_config(mode="global_forecast", token_overlap=(1, 2), attention=AttentionCaptureConfig(samples=0))
    evaluate(1, DATA, cfg, model_path, stores, tmp_path)
    fc = xr.open_zarr(tmp_path / "wb2_forecast.zarr")  # consolidated v2, as WB2 reads it
    assert set(fc.data_vars) == {"2m_temperature", "10m_u_component_of_wind"}
    assert fc["2m_temperature"].dims == ("time", "prediction_timedelta", "latitude", "longitude")
    assert (np.diff(fc["latitude"].values) > 0).all()
    assert fc["longitude"].min() >= 0 and fc["longitude"].max() < 360
    assert fc["prediction_timedelta"].dtype.kind == "m" and np.isfinite(fc["2m_temperature"]).all()
    ens = xr.open_zarr(tmp_path / "wb2_ensemble.zarr")
    assert ens.sizes["number"] == 4
    truth = xr.open_zarr(tmp_path / "wb2_truth.zarr")
    valid = fc["time"].values[0] + fc["prediction_timedelta"].values
    np.testing.assert_array_equal(truth["time"].values, valid)
    assert not (tmp_path / "attention.zarr").exists()
    scores = pd.read_csv(tmp_path / "scores.csv")
    assert (scores.samples == 1).all()  # one init time, scored on the stitched globe
    spec = pd.read_csv(tmp_path / "spectra.csv")  # zonal spectra of the stitched globes, k = 1..180 at 1°
    assert set(spec.kind) == {"zonal"} and spec.wavenumber.min() == 1 and spec.wavenumber.max() == 180
    assert (tmp_path / "scorecard.png").exists() and (tmp_path / "spectra.png").exists()


def test_cli_runs_a_mode_from_the_config_slice(tmp_path, model_path, stores):
    params = {
        "seed": 2,
        "data": {
            "fields": {"t2m": {"levels": [0]}, "u10": {"levels": [0]}},
            "start": "2026-03-25T00",
            "end": "2026-03-31T23",
        },
        "evaluate": {
            "start": "2026-03-30T06",
            "end": "2026-03-31T23",
            "mode": "temporal_interpolation",
            "samples": 2,
            "batch_size": 2,
            "attention": {"layers": []},
        },
    }
    rc = cli.main(
        [
            "evaluate",
            "--params",
            json.dumps(params),
            "--model",
            str(model_path),
            "--shards",
            *[s for v in stores.values() for s in v],
            "--output-dir",
            str(tmp_path),
        ]
    )
    assert rc == 0
    scores = pd.read_csv(tmp_path / "scores.csv")
    assert set(scores.forecast) == {"atmorep", "linear", "persistence", "climatology"}
    assert not (tmp_path / "attention_t2m.png").exists()
    params["evaluate"]["mode"] = "nowcast"
    assert (
        cli.main(
            [
                "evaluate",
                "--params",
                json.dumps(params),
                "--model",
                str(model_path),
                "--shards",
                *[s for v in stores.values() for s in v],
                "--output-dir",
                str(tmp_path),
            ]
        )
        == 1
    )


def test_without_a_climatology_period_the_climatology_is_left_out(tmp_path, model_path, stores):
    cfg = eval_config(
        start="2026-03-25T00", end="2026-03-26T12", samples=2, attention=AttentionCaptureConfig(layers=())
    )
    evaluate(1, DATA, cfg, model_path, stores, tmp_path)
    scores = pd.read_csv(tmp_path / "scores.csv")
    assert set(scores.forecast) == {"atmorep", "persistence"} and "acc" not in set(scores.metric)
    assert xr.open_zarr(tmp_path / "climatology.zarr") is not None


def test_a_failed_evaluation_leaves_the_earlier_products_untouched(forecast, model_path, stores, tmp_path, monkeypatch):
    """Killed or failed half-way (here: the last figure raises), evaluate leaves nothing that looks
    complete: an earlier run's products stay as they were, no new table appears beside them."""
    import shutil

    from atmorep.eval import plots

    out = tmp_path / "evaluate"
    shutil.copytree(forecast, out)
    before = sorted(p.relative_to(out) for p in out.rglob("*"))
    scores = (out / "scores.csv").read_bytes()

    def fail(*args, **kwargs):
        raise OSError("disk gone")

    monkeypatch.setattr(plots, "spectra", fail)
    with pytest.raises(OSError, match="disk gone"):
        evaluate(4, DATA, eval_config(mode="temporal_interpolation", samples=3), model_path, stores, out)
    assert sorted(p.relative_to(out) for p in out.rglob("*")) == before
    assert (out / "scores.csv").read_bytes() == scores
    assert not [p for p in out.parent.iterdir() if p.name.startswith(".")]  # no temporary left behind


def _cli(*argv) -> int:
    return cli.main([str(a) for a in argv])


def test_infer_then_score_on_the_command_line_is_evaluate(forecast, model_path, stores, tmp_path):
    """The two stages the workflow runs as rules give exactly what `evaluate` gives: score reads the
    stored forecasts (windows.zarr), never the model."""
    params = json.dumps(
        {
            "seed": 3,
            "data": {"fields": {"t2m": {"levels": [0]}, "u10": {"levels": [0]}}, "start": DATA.start, "end": DATA.end},
            "evaluate": {"start": EVAL[0], "end": EVAL[1], "batch_size": 4, "mode": "forecast", "samples": 5},
        }
    )
    shards = [s for v in stores.values() for s in v]
    infer_dir, score_dir = tmp_path / "infer", tmp_path / "score"
    assert _cli("infer", "--params", params, "--model", model_path, "--shards", *shards, "--output-dir", infer_dir) == 0
    assert {p.name for p in infer_dir.iterdir()} == {"windows.zarr", "attention.zarr"}
    argv = ["score", "--params", params, "--forecasts", infer_dir / "windows.zarr"]
    argv += ["--attention", infer_dir / "attention.zarr", "--shards", *shards, "--output-dir", score_dir]
    assert _cli(*argv) == 0
    for table in ("scores.csv", "comparisons.csv", "rank_histogram.csv", "spectra.csv"):
        pd.testing.assert_frame_equal(pd.read_csv(score_dir / table), pd.read_csv(forecast / table), obj=table)
    assert {p.name for p in score_dir.glob("*.png")} == {p.name for p in forecast.glob("*.png")}
    assert not (score_dir / "windows.zarr").exists()


def test_scoring_keys_are_left_out_of_inference_and_read_by_scoring(model_path, stores, tmp_path):
    """config.SCORING_KEYS, the one declaration: the infer stage's slice lacks them, inference does not
    depend on them (the workflow reruns only `score` when one changes), scoring does."""
    import dataclasses

    from atmorep import config as C
    from atmorep.eval.evaluate import infer, score

    raw = {"seed": 1, "data": {}, "evaluate": {"bootstrap_iterations": 10, "mode": "bert", "climatology_end": "x"}}
    assert C.stage_slice(raw, "infer")["evaluate"] == {"mode": "bert"}
    assert C.stage_slice(raw, "score") == raw
    assert set(C.SCORING_KEYS) <= {f.name for f in dataclasses.fields(C.EvaluateConfig)}
    base = eval_config(mode="forecast", samples=3, attention=AttentionCaptureConfig(layers=()))
    other = dataclasses.replace(
        base,
        bootstrap_iterations=7,
        climatology_start="2026-03-26T00",
        climatology_end="2026-03-28T00",
        climatology_window_hours=24,
    )
    a = infer(3, DATA, base, model_path, stores, tmp_path / "a")
    b = infer(3, DATA, other, model_path, stores, tmp_path / "b")
    for f in DATA.fields:
        xr.testing.assert_identical(xr.open_zarr(a, group=f).load(), xr.open_zarr(b, group=f).load())
    sa = pd.read_csv(score(3, DATA, base, a, stores, tmp_path / "sa"))
    sb = pd.read_csv(score(3, DATA, other, a, stores, tmp_path / "sb"))
    acc = (sa.metric == "acc") & (sa.forecast == "atmorep")
    assert not np.allclose(sa[acc].value, sb[acc].value)  # another climatology period: another ACC


def test_score_takes_any_forecast_in_the_windows_schema(forecast, stores, tmp_path):
    """A deterministic forecast (no ensemble, e.g. a fine-tuned head's) is scored as one member: CRPS
    equals MAE; its ensemble scores are those of its prediction."""
    from atmorep.eval.evaluate import score

    stored = outputs.read_groups(forecast / "windows.zarr")
    point = {f: ds.drop_vars("ensemble").drop_dims("member") for f, ds in stored.items()}
    outputs.write_groups(point, tmp_path / "point.zarr")
    table = pd.read_csv(
        score(3, DATA, eval_config(mode="forecast", samples=5), tmp_path / "point.zarr", stores, tmp_path / "s")
    )
    mine = table[table.forecast == "atmorep"].pivot_table(index=["field", "lead"], columns="metric", values="value")
    np.testing.assert_allclose(mine["crps"], mine["mae"], rtol=1e-6)
    assert (mine["spread"] == 0).all()
    full = pd.read_csv(forecast / "scores.csv")
    rmse = lambda t: t[(t.forecast == "atmorep") & (t.metric == "rmse")].value.values  # noqa: E731
    np.testing.assert_allclose(rmse(table), rmse(full))
    with pytest.raises(ValueError, match="holds forecast forecasts; evaluate.mode is bert"):
        score(3, DATA, eval_config(mode="bert"), forecast / "windows.zarr", stores, tmp_path / "bert")
