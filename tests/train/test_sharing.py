"""A model file is safe to share (issue 23): no load path runs code (a crafted pickle leaves no trace
and is refused in one line), a damaged file is refused, trained, ZeRO-3 and imported models load bit
for bit, and the card says what the model was trained on."""

from __future__ import annotations

import hashlib
import json
import os
import pickle
import shutil
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import torch
from test_distributed import BIN, params
from tests_helpers import atmorep, write_payload

from atmorep.model import file as F
from atmorep.model.multiformer import FieldGeometry, Multiformer


def tiny() -> Multiformer:
    from atmorep.config import ModelConfig

    torch.manual_seed(0)
    cfg = ModelConfig(num_tokens=(3, 3, 6), dim=32, heads=4, encoder_layers=1, decoder_layers=1, ensemble=4)
    return Multiformer(cfg, {"t2m": FieldGeometry(1, (2, 9, 9)), "u10": FieldGeometry(1, (2, 9, 9))})


def one_error(text: str, command: str) -> str:
    """The one error line of a failed command (and nothing like a traceback)."""
    errors = [line for line in text.splitlines() if line.startswith(f"atmorep {command}: error:")]
    assert len(errors) == 1 and "Traceback" not in text, text[-3000:]
    return errors[0]


@pytest.fixture(params=["torch", "pickle"])
def payload(request, tmp_path) -> tuple[Path, Path]:
    """A crafted model file and the marker its unpickling would create; proven to work when unpickled."""
    marker = tmp_path / "marker"
    path = write_payload(tmp_path / "theirs.pt", marker, request.param)
    if request.param == "pickle":
        with open(path, "rb") as f:
            pickle.load(f)  # what an unsafe loader does: the payload runs
    else:
        torch.load(path, weights_only=False)
    assert marker.exists(), "the payload does not work: the tests below could not fail"
    marker.unlink()
    return path, marker


# -- the file itself ------------------------------------------------------------------------------


def test_library_loaders_refuse_a_payload_without_running_it(payload):
    path, marker = payload
    for load in (F.load_model, F.load_state, F.read_card, F.describe, lambda p: F.load_weights(tiny(), p)):
        with pytest.raises(F.ModelFileError) as err:
            load(path)
        msg = str(err.value)
        assert "\n" not in msg and msg.startswith(f"{path}: refused: a pickle") and "atmorep train" in msg
        assert not marker.exists()


def test_a_model_loads_bit_for_bit_and_its_digest_is_the_whole_files(tmp_path):
    model = tiny()
    digest = F.save_model(tmp_path / "m.safetensors", model, card={"note": "mine"})
    loaded, card = F.load_model(tmp_path / "m.safetensors")
    ours = model.state_dict()
    assert set(loaded.state_dict()) == set(ours)
    assert all(torch.equal(loaded.state_dict()[k], v) for k, v in ours.items())
    assert card["sha256"] == digest and card["note"] == "mine" and card["format"] == F.FORMAT
    # README "Sharing a model": the digest is the file's sha256 with its own 64 characters read as zeros
    raw = (tmp_path / "m.safetensors").read_bytes()
    assert raw.count(digest.encode()) == 1
    assert hashlib.sha256(raw.replace(digest.encode(), b"0" * 64)).hexdigest() == digest


@pytest.mark.parametrize(
    "damage", ["truncated", "truncated header", "data byte", "header byte", "card byte", "appended"]
)
def test_a_damaged_file_is_refused_in_one_line(tmp_path, damage):
    path = tmp_path / "m.safetensors"
    F.save_model(path, tiny())
    raw = bytearray(path.read_bytes())
    n = int.from_bytes(raw[:8], "little")
    if damage == "truncated":
        raw = raw[: len(raw) // 2]
    elif damage == "truncated header":
        raw = raw[:100]
    elif damage == "data byte":
        raw[-100] ^= 0x01
    elif damage == "header byte":
        raw[8 + raw[8 : 8 + n].index(b'"dtype":"F32"') + 10] ^= 0x01  # F32 -> F22: still JSON
    elif damage == "card byte":
        key = b'encoder_layers\\": '  # inside the card, a JSON string in the JSON header
        at = 8 + raw[8 : 8 + n].index(key) + len(key)  # the layer count's digit: the file stays well-formed
        raw[at : at + 1] = b"7"
    else:
        raw += b"\0" * 8
    path.write_bytes(bytes(raw))
    with pytest.raises(F.ModelFileError) as err:
        F.load_model(path)
    msg = str(err.value)
    assert "\n" not in msg and msg.startswith(str(path)) and "copy" in msg, msg


def test_other_files_are_named_for_what_they_are(tmp_path):
    from safetensors.torch import save_file

    save_file({"w": torch.zeros(2)}, str(tmp_path / "other.safetensors"))
    with pytest.raises(F.ModelFileError, match="a safetensors file but not an atmorep model file"):
        F.load_model(tmp_path / "other.safetensors")
    (tmp_path / "x.grib").write_bytes(b"GRIB" + b"\0" * 100)
    with pytest.raises(F.ModelFileError, match="not an atmorep model file"):
        F.load_model(tmp_path / "x.grib")
    with pytest.raises(FileNotFoundError, match="does not exist"):
        F.load_model(tmp_path / "missing.safetensors")
    assert not F.is_model_file(tmp_path / "x.grib") and F.is_model_file(tmp_path / "other.safetensors")


def test_describe_prints_the_verified_card(tmp_path):
    path = tmp_path / "m.safetensors"
    digest = F.save_model(path, tiny(), card={"periods": {"train": ["2026-03-25T00", "2026-03-30T05"]}})
    text = F.describe(path)
    params = sum(p.numel() for p in tiny().parameters())
    assert f"sha256 {digest} (verified)" in text and f"architecture: {params:,} parameters" in text
    assert "periods: train 2026-03-25T00 .. 2026-03-30T05" in text and "field u10: 1 level(s)" in text


# -- the load paths of the commands ---------------------------------------------------------------


@pytest.mark.slow
def test_evaluate_refuses_a_payload_model_in_one_line(payload, sample_products, tmp_path):
    path, marker = payload
    data = sample_products["data"]
    slice_ = {
        "seed": 1,
        "data": {"fields": {f: {"levels": [0]} for f in data.fields}, "start": data.start, "end": data.end},
    }
    shards = [str(p) for p in sample_products["shards"].values()]
    r = atmorep(
        "evaluate",
        "--params",
        json.dumps(slice_),
        "--model",
        path,
        "--shards",
        *shards,
        "--output-dir",
        tmp_path / "ev",
    )
    assert r.returncode == 1 and str(path) in one_error(r.stderr, "evaluate")
    assert not marker.exists() and not (tmp_path / "ev").exists()


@pytest.mark.slow
def test_embed_refuses_a_payload_model_in_one_line(payload, sample_products, tmp_path):
    path, marker = payload
    data = sample_products["data"]
    slice_ = {"data": {"fields": {f: {"levels": [0]} for f in data.fields}, "start": data.start, "end": data.end}}
    shards = [str(p) for p in sample_products["shards"].values()]
    out = tmp_path / "emb"
    r = atmorep("embed", "--params", json.dumps(slice_), "--model", path, "--shards", *shards, "--output-dir", out)
    assert r.returncode == 1 and str(path) in one_error(r.stderr, "embed")
    assert not marker.exists() and not out.exists()


def run_train(products, out: Path, ranks: int = 1, **train) -> subprocess.CompletedProcess:
    """`atmorep launch --with torchrun -- train` as a user runs it (the ranks' one error line, once)."""
    env = {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}", "OMP_NUM_THREADS": "1"}
    for k in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT", "ATMOREP_DEBUG"):
        env.pop(k, None)
    train = {"engine": "torch", "steps": 2, "checkpoint_every": 2, **train}
    cmd = [sys.executable, "-m", "atmorep", "launch", "--with", "torchrun", "--ranks", str(ranks), "--", "train"]
    cmd += ["--params", params(products, **train), "--shards", *map(str, products["shards"].values())]
    return subprocess.run([*cmd, "--output-dir", str(out)], env=env, capture_output=True, text=True, timeout=600)


@pytest.fixture(scope="module")
def trained(sample_products, tmp_path_factory):
    """Two finished runs: plain torch on one rank, and DeepSpeed ZeRO-3 on two (partitioned weights)."""
    root = tmp_path_factory.mktemp("trained")
    runs = {"torch": ({}, 1), "z3": ({"engine": "deepspeed", "zero_stage": 3}, 2)}
    for name, (train, ranks) in runs.items():
        r = run_train(sample_products, root / name, ranks, **train)
        assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    return root


@pytest.mark.slow
def test_init_from_refuses_a_payload_in_one_line(payload, trained, sample_products, tmp_path):
    path, marker = payload
    r = run_train(sample_products, tmp_path / "out", init_from=str(path))
    err = one_error(r.stdout + r.stderr, "train")
    assert r.returncode == 1 and "train.init_from" in err and str(path) in err
    assert not marker.exists() and not (tmp_path / "out" / F.NAME).exists()


@pytest.mark.slow
@pytest.mark.parametrize(
    "run, victim", [("torch", "torch_state.pt"), ("z3", "zero_pp_rank_0_mp_rank_00_model_states.pt")]
)
def test_resume_refuses_a_checkpoint_with_a_payload(trained, sample_products, tmp_path, run, victim):
    """A checkpoint file replaced by a payload (its atmorep.json intact, so the rerun resumes it)."""
    out = Path(shutil.copytree(trained / run, tmp_path / run))
    (out / F.NAME).unlink()
    marker = tmp_path / "marker"
    write_payload(out / "checkpoints" / "step00000002" / victim, marker)
    train = {"engine": "deepspeed", "zero_stage": 3} if run == "z3" else {}
    r = run_train(sample_products, out, 2 if run == "z3" else 1, steps=3, **train)
    err = one_error(r.stdout + r.stderr, "train")
    assert r.returncode == 1 and f"step00000002/{victim}: refused: loading it would call" in err, err
    assert "system" in err  # the global it names (posix.system)
    assert "--fresh" in err and not marker.exists() and not (out / F.NAME).exists()


def test_universal_conversion_refuses_a_payload(tmp_path):
    from atmorep.train.engine import CheckpointError, _to_universal

    marker = tmp_path / "marker"
    (tmp_path / "ckpt").mkdir()
    write_payload(tmp_path / "ckpt" / "mp_rank_00_model_states.pt", marker)
    with pytest.raises(CheckpointError, match="mp_rank_00_model_states.pt: refused"):
        _to_universal(str(tmp_path / "ckpt"), str(tmp_path / "universal"))
    assert not marker.exists() and not (tmp_path / "universal").exists()


# -- trained models load unchanged, and say what they are -----------------------------------------


@pytest.mark.slow
def test_a_trained_model_is_its_checkpoints_weights(trained):
    """Plain torch: the model file holds the checkpoint's weights bit for bit."""
    state, card = F.load_state(trained / "torch" / F.NAME)
    ckpt = torch.load(trained / "torch" / "checkpoints" / "step00000002" / "torch_state.pt", weights_only=True)
    assert set(state) == set(ckpt["model"]) and all(torch.equal(state[k], v) for k, v in ckpt["model"].items())
    model, _ = F.load_model(trained / "torch" / F.NAME)
    assert all(torch.equal(state[k], v) for k, v in model.state_dict().items())


@pytest.mark.slow
def test_a_zero3_model_is_deepspeeds_own_consolidation(trained):
    """ZeRO-3: the gathered partitions in the model file equal DeepSpeed's zero_to_fp32 of the
    checkpoint (fp32 on CPU: the master weights are the module's), bit for bit."""
    from deepspeed.utils.zero_to_fp32 import get_fp32_state_dict_from_zero_checkpoint

    from atmorep.train.engine import checkpoint_globals, weights_only

    with weights_only(checkpoint_globals()):
        theirs = get_fp32_state_dict_from_zero_checkpoint(str(trained / "z3" / "checkpoints"), tag="step00000002")
    state, card = F.load_state(trained / "z3" / F.NAME)
    assert card["train"]["zero_stage"] == 3 and set(state) == set(theirs)
    assert all(torch.equal(state[k], theirs[k].float()) for k in state)


@pytest.mark.slow
def test_the_card_says_what_the_model_was_trained_on(trained, sample_products):
    from atmorep.data import shards
    from atmorep.formats import zarrv3
    from atmorep.train.card import statistics_digest

    card = F.read_card(trained / "z3" / F.NAME)
    assert card["periods"] == {
        "campaign": ["2026-03-25T00", "2026-03-31T23"],
        "train": ["2026-03-25T00", "2026-03-30T05"],
        "validation": None,
    }
    metrics = pd.read_csv(trained / "z3" / "metrics.csv")
    final = card["training"]["final"]
    assert card["training"]["steps"] == 2 and card["training"]["ranks"] == 2 and final["step"] == len(metrics)
    assert (
        final["loss"] == metrics["loss"].iloc[-1] and final["t2m/mse_ensemble"] == metrics["t2m/mse_ensemble"].iloc[-1]
    )
    for f, store in sample_products["shards"].items():
        norm = card["normalization"][f]["stores"]["2026"]
        assert norm["statistics_sha256"] == statistics_digest(store)
        assert card["inputs"][f"{f} 2026"]["provenance"] == shards.identity(store)["provenance"] == norm["provenance"]
    assert (
        card["normalization"]["t2m"]["method"] == "local"
        and "mean" not in card["normalization"]["t2m"]["stores"]["2026"]
    )
    u10 = zarrv3.open_dataset(sample_products["shards"]["u10"])
    assert card["normalization"]["u10"]["stores"]["2026"]["mean"] == u10["mean"].values.tolist()
    assert card["versions"]["deepspeed"] and card["versions"]["safetensors"] and card["code"]["python"]
    r = atmorep("inspect", trained / "z3" / F.NAME)
    assert r.returncode == 0 and f"sha256 {card['sha256']} (verified)" in r.stdout, r.stderr
    assert "normalization t2m: local; 2026 statistics sha256" in r.stdout


@pytest.mark.slow
def test_inspect_refuses_a_payload_in_one_line(payload):
    path, marker = payload
    r = atmorep("inspect", path)
    assert r.returncode == 1 and r.stderr.strip().count("\n") == 0 and str(path) in r.stderr and "refused" in r.stderr
    assert not marker.exists()
