"""A rerun of training never hands back a stale model (issue 14, failure 1): checkpoints record the
inputs they were trained on and the step target; a rerun on changed inputs starts afresh, a finished
run is not "trained" again, and a checkpoint past train.steps is refused."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from test_distributed import BIN, params

pytestmark = [pytest.mark.slow, pytest.mark.distributed]


def run(products: dict, out: Path, ranks=1, extra=(), **train) -> subprocess.CompletedProcess:
    """`atmorep train` on one process or ``ranks`` gloo ranks (plain torch engine: quick), 2 steps
    unless told."""
    env = {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}", "OMP_NUM_THREADS": "1"}
    for k in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(k, None)
    train = {"engine": "torch", "steps": 2, "checkpoint_every": 2, **train}
    launcher = ["torchrun", "--standalone", "--nproc_per_node", str(ranks)] if ranks > 1 else [sys.executable]
    cmd = [
        *launcher,
        "-m",
        "atmorep",
        "train",
        "--params",
        params(products, **train),
        "--shards",
        *map(str, products["shards"].values()),
        "--output-dir",
        str(out),
        *extra,
    ]
    return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)


def weights(path: Path) -> dict:
    from atmorep.model.file import load_state

    return load_state(path)[0]


def same(a: dict, b: dict) -> bool:
    return all(torch.equal(a[k], b[k]) for k in a)


def ok(r: subprocess.CompletedProcess) -> str:
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-5000:]
    return r.stdout + r.stderr


def test_rebuilt_shards_train_afresh(products, tmp_path):
    """Shards rebuilt from other normalized data → the rerun trains from scratch and says so."""
    from atmorep.config import NormalizeConfig
    from atmorep.data import normalize
    from atmorep.data import shards as S

    out = tmp_path / "train"
    ok(run(products, out, ranks=2))
    old = weights(out / "model.safetensors")
    data = products["data"]
    n = normalize.normalize(
        data, NormalizeConfig(method="local"), "u10", "2026-03", products["grib"]["u10"], tmp_path / "norm" / "u10.zarr"
    )
    S.shard(data, products["shard"], "u10", "2026", [n], products["shards"]["u10"])
    log = ok(run(products, out, ranks=2))
    assert "trained on other inputs (u10 2026: another provenance)" in log and "starting afresh" in log
    assert "resumed" not in log and "trained 2 steps (0 -> 2)" in log
    assert not same(old, weights(out / "model.safetensors"))


def test_corrupt_shards_fail_although_a_finished_checkpoint_exists(products, tmp_path):
    """Bytes of a shard file overwritten in place (NaNs) → the rerun does not 'pass' on the old
    checkpoint: it trains on what is there and fails."""
    out = tmp_path / "train"
    ok(run(products, out, max_bad_steps=1))
    for f in (products["shards"]["t2m"] / "data" / "c").rglob("*"):
        if f.is_file():
            with open(f, "r+b") as fh:  # the whole shard but its index (the last bytes)
                n = f.stat().st_size - 1024
                fh.write(np.full(n // 4, np.nan, np.float32).tobytes())
    r = run(products, out, max_bad_steps=1)
    assert r.returncode != 0, r.stdout[-2000:] + r.stderr[-2000:]
    assert "t2m 2026: store rewritten since" in r.stderr


def test_lowered_steps_are_refused_and_fresh_trains_them(products, tmp_path):
    out = tmp_path / "train"
    ok(run(products, out, steps=4))
    before = weights(out / "model.safetensors")
    r = run(products, out, steps=2)
    assert r.returncode != 0
    line = [x for x in r.stderr.splitlines() if "past train.steps=2" in x]
    assert line and "step00000004" in line[0] and "--fresh" in line[0], r.stderr[-3000:]
    assert "trained" not in r.stderr.replace("past train.steps", "")
    assert same(before, weights(out / "model.safetensors"))  # the 4-step model, still consistent with its checkpoints
    log = ok(run(products, out, steps=2, extra=["--fresh"]))
    assert "trained 2 steps (0 -> 2)" in log
    assert not same(before, weights(out / "model.safetensors"))


def test_rerun_of_a_finished_run_trains_nothing_and_says_so(products, tmp_path):
    """What `--forcerun pretrain` does: the same run again. No "trained N steps" when none were; the
    model is the finished run's; more steps continue it."""
    out = tmp_path / "train"
    ok(run(products, out))
    first = weights(out / "model.safetensors")
    (out / "model.safetensors").unlink()  # Snakemake removes the outputs of a job it reruns
    log = ok(run(products, out))
    assert "already reached train.steps=2" in log and "no step to train" in log
    assert "trained 2 steps" not in log and "resumed" not in log
    assert same(first, weights(out / "model.safetensors"))
    log = ok(run(products, out, steps=3))
    assert "resumed from step00000002 at step 2 of 3" in log and "trained 1 steps (2 -> 3)" in log
    assert len((out / "metrics.csv").read_text().splitlines()) == 4  # header + 3 steps
