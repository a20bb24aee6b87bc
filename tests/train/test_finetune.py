"""Fine-tuning heads on a backbone, in-process on one rank (seconds): the embedded sample's tp as a new
field from a tiny t2m/u10 backbone; bit-identity of a frozen backbone, the refusals (other fields or
levels, a missing target, a target the backbone reads, a layer it lacks), products in evaluate's schema."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import xarray as xr
from conftest import REPO

from atmorep import config as C
from atmorep.errors import DataError
from atmorep.model.file import read_card

BACKBONE_FIELDS = ("t2m", "u10")
TRAIN = ("2026-03-25T00", "2026-03-30T05")
TEST = ("2026-03-30T06", "2026-03-31T23")


@pytest.fixture(scope="module")
def tp_store(sample_products, tmp_path_factory):
    """tp of the embedded sample, sharded like the sample's t2m and u10."""
    from atmorep.config import AcquireConfig, NormalizeConfig
    from atmorep.data import normalize, shards
    from atmorep.data.acquire import sources

    root = tmp_path_factory.mktemp("tp")
    data = dataclasses.replace(sample_products["data"], fields={"tp": C.FieldSpec()})
    g = sources.acquire(data, AcquireConfig(), "tp", "2026-03", root / "tp.grib")
    n = normalize.normalize(data, NormalizeConfig(), "tp", "2026-03", g, root / "tp-norm.zarr")
    return shards.shard(data, sample_products["shard"], "tp", "2026", [n], root / "tp.zarr")


@pytest.fixture(scope="module")
def stores(sample_products, tp_store) -> dict[str, list[str]]:
    return {**{f: [str(p)] for f, p in sample_products["shards"].items()}, "tp": [str(tp_store)]}


def tiny_backbone(fields=BACKBONE_FIELDS, levels: dict | None = None):
    """A 2-layer, 32-wide multiformer (dropout on: a frozen backbone must not apply it)."""
    from atmorep.model.multiformer import FieldGeometry, Multiformer

    torch.manual_seed(0)
    cfg = C.ModelConfig(
        num_tokens=(3, 3, 6),
        dim=32,
        heads=4,
        encoder_layers=2,
        decoder_layers=1,
        coupling={fields[0]: (fields[1],)},
        ensemble=2,
        dropout=0.1,
        fields=tuple(fields),
    )
    return Multiformer(cfg, {f: FieldGeometry((levels or {}).get(f, 1), (2, 9, 9)) for f in fields})


@pytest.fixture(scope="module")
def backbone(tmp_path_factory) -> Path:
    from atmorep.model.file import save_model

    path = tmp_path_factory.mktemp("backbone") / "model.safetensors"
    save_model(path, tiny_backbone())
    return path


def data_config() -> C.DataConfig:
    return C.DataConfig(fields={f: C.FieldSpec() for f in (*BACKBONE_FIELDS, "tp")}, start=TRAIN[0], end=TEST[1])


def finetune_config(steps: int = 4, **task) -> C.FinetuneConfig:
    return C.section(
        {
            "finetune": {
                "tasks": {"tp": {"target": "tp", **task}},
                "train": {
                    "start": TRAIN[0],
                    "end": TRAIN[1],
                    "steps": steps,
                    "batch_size": 4,
                    "lr_start": 1e-3,
                    "lr": 1e-3,
                    "lr_min": 1e-3,
                    "warmup_epochs": 0,
                    "epoch_steps": 4,
                    "checkpoint_every": 1000,
                    "tensorboard": False,
                    "engine": "torch",
                    "ranks": 1,
                },
                "evaluate": {
                    "start": TEST[0],
                    "end": TEST[1],
                    "samples": 6,
                    "batch_size": 4,
                    "bootstrap_iterations": 0,
                },
            }
        },
        "finetune",
    )


def train(stores, model_path, out, steps=4, **task):
    from atmorep.train.finetune import finetune

    return finetune(5, data_config(), finetune_config(steps, **task), "tp", model_path, stores, out, fresh=True)


def file_state(path) -> dict:
    """The backbone file's encoder side (a task model holds no decoders or tails)."""
    from atmorep.model.file import load_state

    state, _ = load_state(path)
    return {k: v for k, v in state.items() if not k.startswith(("decoders.", "tails."))}


def file_sha256(path) -> str:
    """The bytes of a file, hashed whole (independent of the model file's own digest)."""
    import hashlib

    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


@pytest.mark.parametrize("mode", ["frozen", "lora"])
def test_frozen_backbone_is_bit_identical_after_a_finetune(stores, backbone, tmp_path, mode):
    from atmorep.model import heads

    before = file_sha256(backbone)
    path = train(stores, backbone, tmp_path, backbone=mode, steps=6)
    card = heads.read_head(path)["card"]
    reference = heads.state_digest(file_state(backbone))
    # The consolidated weights after the last step, as the engine held them, against the file's.
    assert card["backbone"]["weights_sha256_before"] == card["backbone"]["weights_sha256_after"] == reference
    assert file_sha256(backbone) == before  # the file itself untouched
    assert card["backbone"]["sha256"] == read_card(backbone)["sha256"]  # the head names that file
    state = heads.read_head(path)["state_dict"]
    assert all(k.startswith("head.") or ".lora_" in k for k in state), sorted(state)[:5]
    assert (mode == "lora") == any(".lora_b" in k and state[k].abs().sum() > 0 for k in state)  # adapters trained


def test_a_full_finetune_moves_the_backbone_and_stores_it(stores, backbone, tmp_path):
    """The digest comparison above can fail: a fully fine-tuned encoder differs from the file."""
    from atmorep.model import heads

    card = heads.read_head(train(stores, backbone, tmp_path, backbone="full"))["card"]
    assert card["backbone"]["weights_sha256_after"] != card["backbone"]["weights_sha256_before"]
    assert card["parameters"]["trainable"] > 0.9 * sum(v.numel() for v in file_state(backbone).values())


@pytest.mark.slow
@pytest.mark.parametrize(
    "head, mode",
    [("linear", "frozen"), ("mlp", "last_k"), ("perceiver", "lora"), ("mlp", "scratch"), ("linear", "raw")],
)
def test_every_head_and_backbone_mode_trains_and_scores(stores, backbone, tmp_path, head, mode):
    from atmorep.eval.finetune import score

    path = train(stores, backbone, tmp_path, head=head, backbone=mode)
    metrics = pd.read_csv(tmp_path / "metrics.csv")
    assert len(metrics) == 4 and np.isfinite(metrics["tp/mse"]).all()
    assert {"samples_per_s", "flop_per_s", "mfu"} <= set(metrics.columns) and (metrics["flop_per_s"] > 0).all()
    scores = pd.read_csv(score(5, data_config(), finetune_config(), "tp", path, stores, tmp_path, backbone))
    assert {"atmorep", "climatology", "raw_linear"} == set(scores.forecast)


@pytest.mark.slow
def test_products_are_evaluates_window_layout_in_physical_units(stores, backbone, tmp_path, tp_store):
    from atmorep.data.dataset import FieldStore
    from atmorep.eval.finetune import score

    path = train(stores, backbone, tmp_path, ensemble=3, loss=["mse_ensemble", "stats"])
    score(5, data_config(), finetune_config(), "tp", path, stores, tmp_path, backbone)
    ds = xr.open_zarr(tmp_path / "windows.zarr", group="tp")
    assert ds.sizes["member"] == 3 and ds.sizes["sample"] == 6 and bool(ds["mask"].all())
    assert {"target", "prediction", "ensemble", "source", "baseline_climatology", "baseline_raw_linear"} <= set(ds)
    assert ds["target"].attrs["units"] == "m" and bool(ds["source"].isnull().all())  # tp is no backbone input
    # The truth is the tp store's values, denormalized: the first window's first step against the store.
    store = FieldStore(tp_store)
    t0 = np.searchsorted(store.times, ds["time"].values[0, 0])
    y0 = int(np.flatnonzero(np.isclose(store.lats, float(ds["latitude"][0, 0])))[0])
    x0 = int(np.flatnonzero(np.isclose(store.lons % 360, float(ds["longitude"][0, 0])))[0])
    raw = store.read(t0, 1, y0, 1, x0, 1)
    expect = store.denormalize(raw, np.array([t0]), np.array([y0]), np.array([x0]))
    np.testing.assert_allclose(float(ds["target"][0, 0, 0, 0, 0]), float(expect.ravel()[0]), rtol=1e-5, atol=1e-9)
    comparisons = pd.read_csv(tmp_path / "comparisons.csv")
    assert set(comparisons.baseline) == {"climatology", "raw_linear"}
    assert (tmp_path / "forecast.png").stat().st_size and (tmp_path / "scorecard.png").stat().st_size


@pytest.mark.slow
def test_two_heads_predict_the_same_test_windows_for_paired_scores(stores, backbone, tmp_path):
    """eval.finetune.predictions: what score writes (sample_scores.zarr is its per_sample), nothing written
    itself, the same windows for every head of a task (the label-efficiency benchmark pairs them)."""
    from atmorep.eval import scores
    from atmorep.eval.finetune import BASELINES, predictions, score

    probe = train(stores, backbone, tmp_path / "frozen", head="linear", backbone="frozen")
    raw = train(stores, backbone, tmp_path / "raw", head="linear", backbone="raw")
    cfg = finetune_config(head="linear", backbone="frozen")
    a = predictions(5, data_config(), cfg, "tp", probe, stores, backbone)
    b = predictions(5, data_config(), finetune_config(head="linear", backbone="raw"), "tp", raw, stores, backbone)
    assert not (tmp_path / "frozen" / "windows.zarr").exists()  # predictions writes nothing
    np.testing.assert_array_equal(a["sample"].values, b["sample"].values)
    np.testing.assert_array_equal(a["target"].values, b["target"].values)
    assert not np.allclose(a["prediction"].values, b["prediction"].values)  # two heads, two forecasts
    score(5, data_config(), cfg, "tp", probe, stores, tmp_path / "frozen", backbone)
    written = xr.open_zarr(tmp_path / "frozen" / "sample_scores.zarr", group="tp")
    np.testing.assert_allclose(scores.per_sample(a, BASELINES)["rmse"].values, written["rmse"].values, rtol=1e-6)


def test_linear_baseline_is_least_squares_on_the_raw_tokens(stores, backbone):
    """fit_linear solves the normal equations: its residual is orthogonal to every input feature."""
    import torch

    from atmorep.data.targets import TARGET
    from atmorep.eval.finetune import _design, _target_rows, fit_linear
    from atmorep.model.batch import Batch
    from atmorep.model.file import load_model
    from atmorep.model.task import task_dataset

    model, _ = load_model(backbone)
    task = finetune_config().tasks["tp"]
    ds = task_dataset(
        model, backbone, task, "tp", stores, stores["tp"], np.datetime64(TRAIN[0]), np.datetime64(TRAIN[1])
    )
    windows = np.arange(0, len(ds), max(1, len(ds) // 40))
    w = fit_linear(ds, windows, list(BACKBONE_FIELDS), batch=16)
    b = Batch.collate([ds[int(i)] for i in windows])
    x, y = _design(b, list(BACKBONE_FIELDS)), _target_rows(b)
    assert TARGET in b.tokens and w.shape == (x.shape[1], y.shape[1])
    residual = y - x @ torch.from_numpy(w)
    assert float((x.T @ residual).abs().max()) < 1e-6 * float((x.T @ y).abs().max())


def _dataset(stores, backbone, **task):
    from atmorep.model.file import load_model
    from atmorep.model.task import target_stores, task_dataset

    cfg = dataclasses.replace(finetune_config().tasks["tp"], **task)
    model, _ = load_model(backbone)
    return task_dataset(
        model, backbone, cfg, "tp", stores, target_stores(cfg, stores), np.datetime64(TRAIN[0]), np.datetime64(TRAIN[1])
    )


def test_a_backbone_of_other_fields_or_levels_is_refused_naming_them(stores, tmp_path):
    from atmorep.model.file import save_model

    save_model(tmp_path / "v10.safetensors", tiny_backbone(("t2m", "v10")))
    with pytest.raises(DataError, match=r"field\(s\) v10 that no shard store"):
        _dataset(stores, tmp_path / "v10.safetensors")
    save_model(tmp_path / "levels.safetensors", tiny_backbone(levels={"t2m": 2}))
    with pytest.raises(DataError, match=r"field 't2m' with 2 level\(s\).*holds 1 level\(s\) \[0\]"):
        _dataset(stores, tmp_path / "levels.safetensors")


def test_bad_tasks_are_refused_naming_the_key(stores, backbone):
    with pytest.raises(DataError, match=r"target 'tp' is in none of the shard stores.*target_shards is empty"):
        _dataset({f: s for f, s in stores.items() if f != "tp"}, backbone)
    with pytest.raises(C.ConfigError, match=r"target 'u10' is a field the backbone .* reads on the same grid"):
        _dataset({**stores, "tp": stores["u10"]}, backbone, target="u10")
    with pytest.raises(C.ConfigError, match=r"finetune.tasks.tp.layers \[2\]: the backbone .* has 2 encoder layers"):
        _dataset(stores, backbone, layers=(2,))
    with pytest.raises(C.ConfigError, match=r"finetune.tasks.tp.inputs names msl"):
        _dataset(stores, backbone, inputs=("msl",))
    with pytest.raises(C.ConfigError, match=r"loss \['crps'\] needs an ensemble"):
        _dataset(stores, backbone, loss=("crps",))
    with pytest.raises(DataError, match="holds field 'u10', not the target 'tp'"):
        _dataset(stores, backbone, target_shards=tuple(stores["u10"]))


def test_preflight_refuses_bad_finetune_settings(tmp_path):
    from atmorep import preflight

    raw = C.read_yaml(REPO / "config" / "config.yaml")
    assert not preflight.problems(C.build(C.Config, raw))  # the demo is consistent

    def problems(**patch) -> str:
        bad = json.loads(json.dumps(raw))
        for key, value in patch.items():
            node, *path = key.split("__")
            target = bad
            for part in [node, *path[:-1]]:
                target = target.setdefault(part, {})
            target[path[-1]] = value
        return "; ".join(preflight.problems(C.build(C.Config, bad)))

    assert "target 'q' is not in data.fields" in problems(finetune__tasks={"x": {"target": "q"}})
    assert "target 'msl' is a field the backbone reads" in problems(finetune__tasks={"x": {"target": "msl"}})
    assert "finetune.tasks.x.layers [5]: model.encoder_layers is 2" in problems(
        finetune__tasks={"x": {"target": "tp", "layers": [5]}}
    )
    assert "target_shards: /nonexistent.zarr is not a shard store" in problems(
        finetune__tasks={"x": {"target": "tp", "target_shards": ["/nonexistent.zarr"]}}
    )
    assert "finetune.train.start .. finetune.train.end" in problems(finetune__train__end="2026-03-31T00")
    assert "train.start .. train.end" in problems(finetune__evaluate__start="2026-03-29T00")
    assert "finetune.train.masking do not apply" in problems(finetune__train__masking={"strategy": "forecast"})
    assert "model.fields names q, not in data.fields" in problems(model__fields=["t2m", "q"])
    assert "model.coupling names tp, not in model.fields" in problems(model__coupling={"t2m": ["tp"]})


def test_model_fields_keep_a_target_out_of_pretraining(sample_products, tp_store, tmp_path):
    """model.fields: pretraining reads only those stores, and the model file records them."""
    from atmorep.model.file import load_model
    from atmorep.train.loop import train as pretrain

    data = data_config()
    model = dataclasses.replace(finetune_config().train, steps=1)
    cfg = C.ModelConfig(num_tokens=(3, 3, 6), dim=32, heads=4, encoder_layers=1, decoder_layers=1, ensemble=2)
    stores = {**{f: [str(p)] for f, p in sample_products["shards"].items()}, "tp": [str(tp_store)]}
    pretrain(1, data, dataclasses.replace(cfg, fields=BACKBONE_FIELDS), model, stores, tmp_path)
    trained, record = load_model(tmp_path / "model.safetensors")
    assert list(trained.fields) == list(BACKBONE_FIELDS) and list(record["model"]["fields"]) == list(BACKBONE_FIELDS)
    assert not any("tp" in k for k in record["inputs"])  # the tp store is not an input of pretraining


def test_a_rerun_resumes_only_the_same_task_on_the_same_inputs(stores, backbone, tmp_path, caplog):
    """The stale-run refusal of pretraining (train.checkpoint's identity) holds for a fine-tune."""
    import logging
    import os
    import shutil

    from atmorep.train.finetune import finetune

    def run(model_path=backbone, **task):
        cfg = finetune_config(4, **task)
        return finetune(5, data_config(), cfg, "tp", model_path, stores, tmp_path / "out")

    caplog.set_level(logging.INFO)
    run()
    first = pd.read_csv(tmp_path / "out" / "metrics.csv")
    caplog.clear()
    run()  # the finished run: nothing trained again, the same history
    assert "already reached train.steps=4" in caplog.text
    assert (pd.read_csv(tmp_path / "out" / "metrics.csv")["loss"] == first["loss"]).all()
    caplog.clear()
    run(head="linear")  # another task: its checkpoints are not this one's
    assert "made with another configuration: starting afresh" in caplog.text
    copy = Path(shutil.copy(backbone, tmp_path / "backbone.safetensors"))
    run(copy)  # back to the mlp task, whose checkpoint was replaced by the linear one's
    caplog.clear()
    os.utime(copy, ns=(1, 1))  # the backbone file rewritten (its time changed): another input
    run(copy)
    assert "trained on other inputs (init_from: another file): starting afresh" in caplog.text
