"""`atmorep finetune` on 2 gloo ranks (DeepSpeed ZeRO-2, torchrun): exact resume of a fine-tune, the
adapted backbone's base weights unchanged under ZeRO, and bad input as one line with a non-zero exit."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import torch
from test_finetune import TEST, TRAIN, backbone, stores, tp_store  # noqa: F401 (fixtures)

from atmorep.model.file import read_card

pytestmark = [pytest.mark.slow, pytest.mark.distributed]

BIN = Path(sys.executable).parent


def params(**train) -> str:
    return json.dumps(
        {
            "seed": 5,
            "data": {"fields": {f: {"levels": [0]} for f in ("t2m", "u10", "tp")}, "start": TRAIN[0], "end": TEST[1]},
            "finetune": {
                "tasks": {"tp": {"target": "tp", "head": "mlp", "backbone": "lora", "trainable_layers": 2}},
                "train": {
                    "start": TRAIN[0],
                    "end": TRAIN[1],
                    "steps": 8,
                    "batch_size": 2,
                    "lr_start": 1e-4,
                    "lr": 1e-3,
                    "lr_min": 1e-4,
                    "warmup_epochs": 1,
                    "epoch_steps": 4,
                    "checkpoint_every": 4,
                    "tensorboard": False,
                    "zero_stage": 2,
                    "ranks": 2,
                    **train,
                },
                "evaluate": {"start": TEST[0], "end": TEST[1], "samples": 4, "bootstrap_iterations": 0},
            },
        }
    )


def finetune(stores, backbone, out: Path, ranks: int = 2, **train) -> subprocess.CompletedProcess:  # noqa: F811
    env = {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}", "OMP_NUM_THREADS": "1"}
    for k in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(k, None)
    shards = [p for paths in stores.values() for p in paths]
    cmd = ["torchrun", "--standalone", "--nproc_per_node", str(ranks), "-m", "atmorep", "finetune"]
    cmd += ["--params", params(**train), "--backbone", str(backbone), "--shards", *shards, "--output-dir", str(out)]
    return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)


def test_resume_of_a_finetune_is_bit_exact(stores, backbone, tmp_path):  # noqa: F811
    from atmorep.model import heads

    whole = finetune(stores, backbone, tmp_path / "whole")
    assert whole.returncode == 0, whole.stderr[-4000:]
    first = finetune(stores, backbone, tmp_path / "resumed", steps=4)
    assert first.returncode == 0, first.stderr[-4000:]
    again = finetune(stores, backbone, tmp_path / "resumed")
    assert again.returncode == 0 and "resumed from step00000004" in again.stderr, again.stderr[-4000:]
    a, b = (pd.read_csv(tmp_path / d / "metrics.csv") for d in ("whole", "resumed"))
    assert len(a) == len(b) == 8 and (a["loss"].values == b["loss"].values).all(), (a["loss"], b["loss"])
    ha, hb = (heads.read_head(tmp_path / d / "head.safetensors") for d in ("whole", "resumed"))
    assert ha["state_dict"].keys() == hb["state_dict"].keys()
    assert all(torch.equal(ha["state_dict"][k], hb["state_dict"][k]) for k in ha["state_dict"])
    # LoRA under ZeRO-2 on 2 ranks: the adapters trained, the backbone's own weights did not move
    card = ha["card"]["backbone"]
    assert card["weights_sha256_before"] == card["weights_sha256_after"]
    assert card["sha256"] == read_card(backbone)["sha256"]
    assert (tmp_path / "whole" / "scores.csv").is_file() and "mfu" in a.columns


def test_a_missing_target_is_one_line_and_a_non_zero_exit(stores, backbone, tmp_path):  # noqa: F811
    r = finetune({f: s for f, s in stores.items() if f != "tp"}, backbone, tmp_path, ranks=1)
    assert r.returncode == 1
    lines = [line for line in r.stderr.splitlines() if "atmorep finetune: error" in line]
    assert len(lines) == 1 and "target 'tp' is in none of the shard stores" in lines[0], r.stderr[-3000:]
    assert not (tmp_path / "head.safetensors").exists()
