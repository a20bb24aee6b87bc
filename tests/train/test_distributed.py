"""Real 2-rank runs (gloo on CPU): DeepSpeed ZeRO 2/3, exact resume, preemption, world-size change,
mpirun with mpi4py discovery, and the plain-torch engine."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
import torch

pytestmark = [pytest.mark.slow, pytest.mark.distributed]

BIN = Path(sys.executable).parent


def params(sample_products, model: dict | None = None, **train) -> str:
    """The run's parameters: a tiny model (``model`` overrides its keys), ``train`` overrides."""
    data = sample_products["data"]
    return json.dumps(
        {
            "seed": 11,
            "data": {"fields": {f: {"levels": [0]} for f in data.fields}, "start": data.start, "end": data.end},
            "model": {
                "num_tokens": [3, 3, 6],
                "dim": 32,
                "heads": 4,
                "encoder_layers": 1,
                "decoder_layers": 1,
                "coupling": {"t2m": ["u10"]},
                "ensemble": 4,
                "dropout": 0.1,
                **(model or {}),
            },
            "train": {
                "start": "2026-03-25T00",
                "end": "2026-03-30T05",
                "steps": 8,
                "batch_size": 2,
                "lr_start": 1e-4,
                "lr": 1e-3,
                "lr_min": 1e-4,
                "warmup_epochs": 1,
                "epoch_steps": 4,
                "checkpoint_every": 4,
                "tensorboard": False,
                **train,
            },
        }
    )


def launch(sample_products, out: Path, ranks=2, launcher="torchrun", extra=(), wait=True, **train):
    env = {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}", "OMP_NUM_THREADS": "1"}
    for k in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(k, None)
    prefix = {
        "torchrun": ["torchrun", "--standalone", "--nproc_per_node", str(ranks)],
        "mpirun": ["mpirun", "-n", str(ranks), sys.executable],
    }[launcher]
    cmd = [
        *prefix,
        "-m",
        "atmorep",
        "train",
        "--params",
        params(sample_products, **train),
        "--shards",
        *map(str, sample_products["shards"].values()),
        "--output-dir",
        str(out),
        *extra,
    ]
    if not wait:
        return subprocess.Popen(
            cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True
        )
    r = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-5000:]
    return pd.read_csv(out / "metrics.csv")


@pytest.fixture(scope="module")
def uninterrupted(sample_products, tmp_path_factory):
    """8 steps of ZeRO-2 on 2 ranks in one go, and the same with ZeRO-3."""
    root = tmp_path_factory.mktemp("runs")
    return {stage: launch(sample_products, root / f"z{stage}", zero_stage=stage) for stage in (2, 3)}


def test_loss_is_finite_and_model_is_exported(uninterrupted, sample_products, tmp_path):
    m = uninterrupted[2]
    assert len(m) == 8 and m["loss"].notna().all() and (m["skipped"] == 0).all()
    assert {"lr", "samples_per_s", "tokens_per_s", "loader_wait", "t2m/mse_ensemble"} <= set(m.columns)


@pytest.mark.parametrize("stage", [2, 3])
def test_resume_is_bit_exact(uninterrupted, sample_products, tmp_path, stage):
    first = launch(sample_products, tmp_path, zero_stage=stage, steps=4)
    assert len(first) == 4
    resumed = launch(sample_products, tmp_path, zero_stage=stage, steps=8)
    assert (resumed["loss"].values == uninterrupted[stage]["loss"].values).all(), (
        resumed["loss"].values,
        uninterrupted[stage]["loss"].values,
    )


def test_zero3_exports_the_same_kind_of_model(uninterrupted, tmp_path_factory):
    from atmorep.model.file import load_model

    runs = [p for p in tmp_path_factory.getbasetemp().rglob("z3/model.safetensors")]
    model, record = load_model(runs[0])
    assert all(torch.isfinite(p).all() and p.numel() > 0 for p in model.parameters())
    assert record["versions"]["deepspeed"] and record["train"]["zero_stage"] == 3


def test_activation_checkpointing_trains_the_same_model_under_zero3(
    uninterrupted, sample_products, tmp_path, tmp_path_factory
):
    from atmorep.model.file import load_state

    """model.checkpointing (blocks wrapped by train.ac after construction) on 2 ZeRO-3 ranks: the same
    losses bit for bit, dropout included, and an exported model.safetensors equal to the plain run's."""
    m = launch(sample_products, tmp_path, zero_stage=3, model={"checkpointing": True})
    assert (m["loss"].values == uninterrupted[3]["loss"].values).all(), (m["loss"].values, uninterrupted[3]["loss"])
    plain = next(tmp_path_factory.getbasetemp().rglob("z3/model.safetensors"))
    (a, _), (b, card) = (load_state(p) for p in (plain, tmp_path / "model.safetensors"))
    assert card["model"]["checkpointing"] and list(a) == list(b)
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_signal_checkpoints_at_step_boundary_and_rerun_resumes(uninterrupted, sample_products, tmp_path):
    proc = launch(sample_products, tmp_path, wait=False, steps=400, checkpoint_every=1000)
    metrics_seen = False
    deadline = time.time() + 240
    while time.time() < deadline and not metrics_seen:  # wait until training steps run
        time.sleep(1)
        workers = subprocess.run(
            ["pgrep", "-f", "--", f"-m atmorep train.*{tmp_path}"], capture_output=True, text=True
        ).stdout.split()
        workers = [w for w in workers if int(w) != proc.pid]
        metrics_seen = len(workers) >= 2 and "train:" in _peek(proc)
    assert metrics_seen, "training did not start"
    for w in workers:  # what SLURM's --signal does: every task gets SIGUSR1
        os.kill(int(w), signal.SIGUSR1)
    out, _ = proc.communicate(timeout=120)
    assert "exiting 75 to be requeued" in out
    ckpt = tmp_path / "checkpoints"
    step = json.loads((ckpt / (ckpt / "latest").read_text().strip() / "atmorep.json").read_text())["step"]
    assert 0 < step < 400
    rerun = launch(sample_products, tmp_path, steps=step + 2, checkpoint_every=1000)
    assert len(rerun) == step + 2
    ref = launch(sample_products, tmp_path / "ref", steps=step + 2, checkpoint_every=1000)
    assert (rerun["loss"].values == ref["loss"].values).all()


_buffer: dict[int, str] = {}


def _peek(proc) -> str:
    """Non-blocking read of what a child printed so far."""
    import fcntl

    fd = proc.stdout.fileno()
    fcntl.fcntl(fd, fcntl.F_SETFL, fcntl.fcntl(fd, fcntl.F_GETFL) | os.O_NONBLOCK)
    try:
        chunk = proc.stdout.read() or ""
    except (BlockingIOError, TypeError):
        chunk = ""
    _buffer[proc.pid] = _buffer.get(proc.pid, "") + chunk
    return _buffer[proc.pid]


def test_resume_on_another_world_size(uninterrupted, sample_products, tmp_path):
    launch(sample_products, tmp_path, steps=4)
    one = launch(sample_products, tmp_path, ranks=1, batch_size=4, steps=8)  # same global batch
    assert len(one) == 8 and one["loss"].notna().all()
    assert (one["loss"].values[:4] == uninterrupted[2]["loss"].values[:4]).all()  # history kept
    assert (tmp_path / "checkpoints" / "step00000004_universal").is_dir()  # converted for 1 rank


def test_mpirun_with_mpi4py_discovery_matches_torchrun(uninterrupted, sample_products, tmp_path):
    if shutil.which("mpirun", path=str(BIN)) is None:
        pytest.skip("no mpirun in the environment (pip install '.[mpich]')")
    m = launch(sample_products, tmp_path, launcher="mpirun")
    assert (m["loss"].values == uninterrupted[2]["loss"].values).all()


def test_plain_torch_engine_trains(sample_products, tmp_path):
    m = launch(sample_products, tmp_path, engine="torch")
    assert len(m) == 8 and m["loss"].notna().all()


def test_fine_tuning_starts_from_a_trained_model(sample_products, tmp_path):
    """train.init_from: AtmoRep's fine-tuning (BERT-pretrained weights, then forecast masking)."""
    from atmorep.model.file import load_model

    launch(sample_products, tmp_path / "base", ranks=1, engine="torch", steps=3)
    base, _ = load_model(tmp_path / "base" / "model.safetensors")
    tiny = dict(lr_start=1e-12, lr=1e-12, lr_min=1e-12, steps=1, masking={"strategy": "forecast"})
    launch(
        sample_products,
        tmp_path / "tuned",
        ranks=1,
        engine="torch",
        init_from=str(tmp_path / "base" / "model.safetensors"),
        **tiny,
    )
    launch(sample_products, tmp_path / "fresh", ranks=1, engine="torch", **tiny)
    tuned, _ = load_model(tmp_path / "tuned" / "model.safetensors")
    fresh, _ = load_model(tmp_path / "fresh" / "model.safetensors")
    for (name, b), t, _ in zip(base.state_dict().items(), tuned.state_dict().values(), fresh.state_dict().values()):
        torch.testing.assert_close(t, b, atol=1e-6, rtol=0, msg=name)  # the trained weights, barely moved
    assert any(not torch.allclose(f, b) for b, f in zip(base.state_dict().values(), fresh.state_dict().values()))


def test_fine_tuning_refuses_another_architecture(sample_products, tmp_path):
    launch(sample_products, tmp_path / "base", ranks=1, engine="torch", steps=1)
    p = json.loads(
        params(sample_products, engine="torch", steps=1, init_from=str(tmp_path / "base" / "model.safetensors"))
    )
    p["model"]["dim"] = 48
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    r = subprocess.run(
        [
            sys.executable,
            "-m",
            "atmorep",
            "train",
            "--params",
            json.dumps(p),
            "--shards",
            *map(str, sample_products["shards"].values()),
            "--output-dir",
            str(tmp_path / "x"),
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert r.returncode != 0
    assert "init_from" in r.stderr and "['dim']" in r.stderr and "model.safetensors" in r.stderr
    assert not (tmp_path / "x" / "model.safetensors").exists()


def test_metrics_have_throughput_and_mfu(uninterrupted, sample_products):
    from atmorep.config import ModelConfig
    from atmorep.model import summary
    from atmorep.model.multiformer import FieldGeometry

    model = json.loads(params(sample_products))["model"]
    cfg = ModelConfig(
        **{
            **model,
            "num_tokens": tuple(model["num_tokens"]),
            "coupling": {k: tuple(v) for k, v in model["coupling"].items()},
        }
    )
    geo = {f: FieldGeometry(1, sample_products["shard"].token_size) for f in sample_products["data"].fields}
    lo, hi = (summary.training_flops(cfg, geo, masked) for masked in (0.0, 1.0))
    for m in uninterrupted.values():
        assert {"samples_per_s", "tokens_per_s", "flop_per_s", "mfu"} <= set(m.columns)
        per_sample = m.flop_per_s / m.samples_per_s  # FLOPs of a sample, its tail on the masked tokens
        assert ((per_sample > lo) & (per_sample < hi)).all()
        per_sample_tokens = sum(summary.tokens(cfg, geo).values())
        assert list(m.tokens_per_s) == pytest.approx(list(m.samples_per_s * per_sample_tokens))
        assert ((m.mfu > 0) & (m.mfu < 1)).all()


# -- atmorep launch: signals, ranks that never outlive it, one-line reports ---------------------------


def start_launch(sample_products, out: Path, launcher="torchrun", ranks=2, **train):
    """``atmorep launch --with LAUNCHER`` as a user starts it (its own process, stderr captured)."""
    env = {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}", "OMP_NUM_THREADS": "1"}
    for k in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT", "ATMOREP_DEBUG"):
        env.pop(k, None)
    cmd = [
        sys.executable,
        "-m",
        "atmorep",
        "launch",
        "--with",
        launcher,
        "--ranks",
        str(ranks),
        "--",
        "train",
        "--params",
        params(sample_products, **train),
        "--shards",
        *map(str, sample_products["shards"].values()),
        "--output-dir",
        str(out),
    ]
    return subprocess.Popen(
        cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True
    )


def ranks_of(out: Path) -> list[int]:
    """Pids of the training ranks writing into ``out`` (``python -m atmorep train``, not srun or a launcher)."""
    found = []
    for proc in Path("/proc").glob("[0-9]*"):
        try:
            argv = (proc / "cmdline").read_bytes().decode().split("\0")
        except OSError:
            continue
        at = next((i for i in range(len(argv)) if argv[i : i + 3] == ["-m", "atmorep", "train"]), None)
        if (
            at is not None
            and str(out) in argv
            and Path(argv[0]).name.startswith("python")
            and not any("launch" in a for a in argv[:at])
        ):  # not the launcher nor the torchrun wrapper
            found.append(int(proc.name))
    return found


def wait_for_training(proc, out: Path, ranks=2, timeout=300) -> list[int]:
    """The ranks' pids once they have trained and checkpointed a few steps (srun holds back the
    progress bar's output until a newline, so the first checkpoint is the sign)."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        time.sleep(1)
        assert proc.poll() is None, _peek(proc)[-3000:]
        pids = ranks_of(out)
        if len(pids) >= ranks and (out / "checkpoints" / "latest").exists():
            return pids
    raise AssertionError("training did not start: " + _peek(proc)[-3000:])


def gone(pids: list[int], timeout=20) -> bool:
    deadline = time.time() + timeout
    while time.time() < deadline:
        alive = [
            p
            for p in pids
            if Path(f"/proc/{p}").exists() and "Z" not in Path(f"/proc/{p}/stat").read_text().split(")")[-1][:3]
        ]
        if not alive:
            return True
        time.sleep(0.5)
    return False


def slurm_up() -> bool:
    cluster = Path(__file__).parents[1] / "slurm" / "cluster.sh"
    return (
        shutil.which("srun") is not None
        and subprocess.run(["bash", str(cluster), "status"], capture_output=True).returncode == 0
    )


@pytest.mark.parametrize("launcher", ["torchrun", "mpirun", pytest.param("srun", marks=pytest.mark.slurm)])
def test_sigusr1_to_the_launcher_checkpoints_the_ranks_and_exits_75(sample_products, tmp_path, launcher):
    """Issue 14.2: SIGUSR1 by pid to `atmorep launch` killed torchrun (exit 246) and left the ranks training.
    srun runs outside a job here, so it makes its own allocation on the test cluster (tests/slurm)."""
    if launcher == "mpirun" and shutil.which("mpirun", path=str(BIN)) is None:
        pytest.skip("no mpirun in the environment (pip install '.[mpich]')")
    if launcher == "srun" and not slurm_up():
        pytest.skip("no SLURM cluster answering (tests/slurm/cluster.sh start)")
    proc = start_launch(sample_products, tmp_path, launcher, steps=400, checkpoint_every=10, engine="torch")
    pids = wait_for_training(proc, tmp_path)
    os.kill(proc.pid, signal.SIGUSR1)
    out, _ = proc.communicate(timeout=120)
    out = _buffer.pop(proc.pid, "") + out
    assert proc.returncode == 75, out[-3000:]
    assert gone(pids, timeout=5), f"ranks {pids} outlived the launcher"
    assert "checkpointed, requeue" in out.strip().splitlines()[-1] and "Traceback" not in out, out[-3000:]
    assert "ChildFailedError" not in out and "FAILED" not in out
    ckpt = tmp_path / "checkpoints"
    step = json.loads((ckpt / (ckpt / "latest").read_text().strip() / "atmorep.json").read_text())["step"]
    assert 0 < step < 400 and not (tmp_path / "model.safetensors").exists()


def test_no_rank_outlives_a_killed_launcher(sample_products, tmp_path):
    proc = start_launch(sample_products, tmp_path, steps=400, checkpoint_every=10, engine="torch")
    pids = wait_for_training(proc, tmp_path)
    os.kill(proc.pid, signal.SIGKILL)
    proc.communicate(timeout=60)
    assert gone(pids), f"ranks {pids} kept training after kill -9 of their launcher"
    assert not (tmp_path / "model.safetensors").exists()


def test_ctrl_c_of_the_launcher_checkpoints_and_says_so_in_one_line(sample_products, tmp_path):
    proc = start_launch(sample_products, tmp_path, steps=400, checkpoint_every=10, engine="torch")
    pids = wait_for_training(proc, tmp_path)
    os.kill(proc.pid, signal.SIGINT)  # the terminal's Ctrl-C: the ranks have a session of their own
    out, _ = proc.communicate(timeout=120)
    out = _buffer.pop(proc.pid, "") + out
    assert proc.returncode == 130 and gone(pids, timeout=5), out[-3000:]
    assert out.strip().splitlines()[-1].startswith("atmorep launch: interrupted: SIGTERM: checkpoint at step")
    assert "Traceback" not in out and "KeyboardInterrupt" not in out, out[-3000:]


def test_an_error_inside_the_ranks_is_one_line_from_the_launcher(sample_products, tmp_path):
    """Issue 13.6: a window that does not fit the training period sat under a 40-line torchrun traceback."""
    proc = start_launch(sample_products, tmp_path, start="2026-03-25T00", end="2026-03-25T02", engine="torch")
    out, _ = proc.communicate(timeout=300)
    assert proc.returncode == 1, out[-3000:]
    errors = [line for line in out.splitlines() if "error" in line.lower()]
    assert len(errors) == 1 and errors[0].startswith("atmorep train: error: no complete window"), out[-3000:]
    assert "Traceback" not in out and "ChildFailedError" not in out, out[-3000:]


def corrupt(sample_products, tmp_path, value: float) -> dict:
    """Shard stores whose t2m shard files hold ``value`` everywhere (indices intact)."""
    import numpy as np

    from atmorep.formats.zarrv3 import DenseShards

    stores = {f: tmp_path / "shards" / f"{f}.zarr" for f in sample_products["shards"]}
    for f, s in stores.items():
        shutil.copytree(sample_products["shards"][f], s)
    dense = DenseShards(stores["t2m"] / "data")
    for key in dense.shard_keys():
        path = dense.key_path(key)
        raw = bytearray(path.read_bytes())
        body = len(raw) - dense.index_bytes
        raw[:body] = np.full(body // 4, value, "<f4").tobytes()
        path.write_bytes(bytes(raw))
    return {**sample_products, "shards": stores}


@pytest.mark.parametrize("value", [float("nan"), 1e30])
def test_bad_training_data_is_named_by_field_store_and_window(sample_products, tmp_path, value):
    """Issue 14.3: heavy corruption surfaced as an unnamed TooManyBadSteps traceback."""
    bad = corrupt(sample_products, tmp_path, value)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    env.pop("ATMOREP_DEBUG", None)
    r = subprocess.run(
        [
            sys.executable,
            "-m",
            "atmorep",
            "train",
            "--params",
            params(bad, engine="torch", steps=4, max_bad_steps=2),
            "--shards",
            *map(str, bad["shards"].values()),
            "--output-dir",
            str(tmp_path / "out"),
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    errors = [line for line in r.stderr.splitlines() if line.startswith("atmorep train: error:")]
    assert r.returncode == 1 and len(errors) == 1 and "Traceback" not in r.stderr, r.stderr[-3000:]
    store = str(bad["shards"]["t2m"])
    assert f"{store}: field 't2m', window " in errors[0] and f"atmorep verify {store}" in errors[0], errors
    if value != value:  # NaN: refused when the batch is read
        assert "non-finite or implausible values" in errors[0]
    else:  # huge but finite: the loss overflows, the steps are skipped, then the run stops
        assert errors[0].startswith("atmorep train: error: 2 steps in a row had a non-finite loss"), errors
    assert not (tmp_path / "out" / "model.safetensors").exists()


def test_a_full_disk_during_training_is_one_line(sample_products, tmp_path):
    """Issue 14.4 on a real full disk: a 128 KiB tmpfs holds no checkpoint of even this tiny model."""
    disk = tmp_path / "disk"
    disk.mkdir()
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=128k", "tmpfs", str(disk)], capture_output=True, text=True)
    if r.returncode != 0:
        pytest.skip(f"cannot mount a small tmpfs here: {r.stderr.strip()}")
    try:
        env = {**os.environ, "OMP_NUM_THREADS": "1"}
        env.pop("ATMOREP_DEBUG", None)
        r = subprocess.run(
            [
                sys.executable,
                "-m",
                "atmorep",
                "train",
                "--params",
                params(sample_products, engine="torch", steps=2),
                "--shards",
                *map(str, sample_products["shards"].values()),
                "--output-dir",
                str(disk / "out"),
            ],
            env=env,
            capture_output=True,
            text=True,
            timeout=300,
        )
    finally:
        subprocess.run(["umount", "-l", str(disk)], check=False)
    errors = [line for line in r.stderr.splitlines() if line.startswith("atmorep train: error:")]
    assert r.returncode == 1 and len(errors) == 1 and "Traceback" not in r.stderr, r.stderr[-3000:]
    assert f"{disk}/out/checkpoints/step00000002: no space left on device" in errors[0], errors
    assert "needs about" in errors[0] and "free on its file system" in errors[0]
