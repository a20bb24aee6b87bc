"""The whole DAG through Snakemake on a tiny config: real GRIB, zarr v3, 2-rank DeepSpeed ZeRO-2."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import matplotlib.image as mpimg
import numpy as np
import pandas as pd
import pytest
import xarray as xr
import yaml
from conftest import REPO

pytestmark = [pytest.mark.slow, pytest.mark.workflow, pytest.mark.distributed]

TINY = {
    "run": "tiny",
    "seed": 3,
    "data": {
        "fields": {"t2m": {"levels": [0]}, "u10": {"levels": [0]}},
        "start": "2026-03-25T00",
        "end": "2026-03-31T23",
    },
    "acquire": {"source": "sample"},
    "normalize": {"method": "global", "local": ["t2m"]},
    "shard": {"token_size": [2, 9, 9], "shard_tokens": [12, 19, 40]},
    "model": {
        "num_tokens": [3, 3, 6],
        "dim": 32,
        "heads": 4,
        "encoder_layers": 1,
        "decoder_layers": 1,
        "coupling_heads": 1,
        "coupling": {"t2m": ["u10"], "u10": ["t2m"]},
        "ensemble": 4,
        "dropout": 0.0,
    },
    "train": {
        "start": "2026-03-25T00",
        "end": "2026-03-30T05",
        "steps": 80,
        "batch_size": 4,
        "lr_start": 0.0002,
        "lr": 0.002,
        "lr_min": 0.0005,
        "warmup_epochs": 1,
        "epoch_steps": 10,
        "checkpoint_every": 40,
        "masking": {"strategy": "bert", "rate": 0.5},
        "zero_stage": 2,
        "ranks": 2,
    },
    "evaluate": {"start": "2026-03-30T06", "end": "2026-03-31T23", "samples": 8, "batch_size": 4},
}


def snakemake(workdir: Path, config: Path, *args, timeout=900):
    env = {
        **os.environ,
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
        "OMP_NUM_THREADS": "1",
    }
    return subprocess.run(
        [
            sys.executable,
            "-m",
            "snakemake",
            "-s",
            str(REPO / "Snakefile"),
            "--directory",
            str(workdir),
            "--configfile",
            str(config),
            "--cores",
            "2",
            *args,
        ],
        capture_output=True,
        text=True,
        env=env,
        timeout=timeout,
    )


def jobs(dry_run_output: str) -> set[str]:
    """Rule names a dry run would execute (from its job-stats table)."""
    table = dry_run_output.split("Job stats:")[1].split("\n\n")[0].splitlines()[3:]
    return {line.split()[0] for line in table if line.split() and line.split()[0] != "total"}


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    work = tmp_path_factory.mktemp("workflow")
    cfg = work / "tiny.yaml"
    cfg.write_text(yaml.safe_dump(TINY))
    r = snakemake(work, cfg)
    assert r.returncode == 0, r.stderr[-6000:]
    return work, cfg


def test_dag_produces_sane_products(run):
    work, _ = run
    res = work / "results" / "tiny"
    scores = pd.read_csv(res / "evaluate" / "scores.csv")
    assert set(scores["field"]) == {"t2m", "u10"}
    assert set(scores["forecast"]) == {"atmorep", "persistence", "climatology"}
    assert np.isfinite(scores["value"]).all()
    rmse = scores[scores.metric == "rmse"]
    assert (rmse["value"] > 0).all() and len(rmse) == 2 * 2 * 3  # fields x leads x forecasts
    for png in [*(res / "evaluate").glob("*.png"), res / "train" / "loss.png"]:
        img = mpimg.imread(png)
        assert img.shape[0] > 100 and img[..., :3].std() > 0.05, f"{png} looks blank"
    assert {p.name for p in (res / "evaluate").glob("*.png")} == {
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
    for table in ("comparisons.csv", "spectra.csv"):
        assert len(pd.read_csv(res / "evaluate" / table)), table
    store = xr.open_zarr(work / "resources" / "tiny" / "shards" / "u10" / "2026.zarr", consolidated=False)
    assert store["data"].shape == (24, 1, 171, 360) and np.isfinite(store["data"].values).all()
    assert '"verified"' in (work / "logs" / "tiny" / "shard" / "u10_2026.log").read_text()  # checked on disk
    emb = xr.open_zarr(res / "embed" / "embeddings.zarr", group="u10")  # rule all's embed: the last layer
    assert emb["latent"].sizes["layer"] == 1 and np.isfinite(emb["latent"].values).all()


def test_two_rank_training_lowers_the_loss(run):
    work, _ = run
    metrics = pd.read_csv(work / "results" / "tiny" / "train" / "metrics.csv")
    assert len(metrics) == TINY["train"]["steps"]
    first, last = metrics["loss"][:15].mean(), metrics["loss"][-15:].mean()
    assert last < 0.9 * first, (first, last)
    log = (work / "logs" / "tiny" / "pretrain.log").read_text()
    assert "on 2 ranks" in log


def test_training_logs_throughput_and_mfu(run):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    work, _ = run
    train = work / "results" / "tiny" / "train"
    metrics = pd.read_csv(train / "metrics.csv")
    for col in ("samples_per_s", "tokens_per_s", "flop_per_s", "mfu"):
        assert (metrics[col] > 0).all(), col
    assert (metrics["mfu"] < 1).all()
    events = EventAccumulator(str(train / "tensorboard")).Reload()
    assert {"flop_per_s", "mfu", "samples_per_s"} <= set(events.Tags()["scalars"])
    log = (work / "logs" / "tiny" / "pretrain.log").read_text()
    assert "GFLOP/s, MFU" in log.split("trained 80 steps (0 -> 80) on 2 ranks")[1].split("throughput:")[1]


def test_every_rule_has_log_and_benchmark(run):
    work, _ = run
    logs = work / "logs" / "tiny"  # everything of a run lives under its name
    for rule in ("acquire", "normalize", "shard", "pretrain", "infer", "score", "embed"):
        assert list(logs.glob(f"{rule}*.log")) + list(logs.glob(f"{rule}/*.log")), rule
        bench = list(logs.glob(f"{rule}*.benchmark.tsv")) + list(logs.glob(f"{rule}/*.benchmark.tsv"))
        assert bench and "max_rss" in bench[0].read_text(), rule


def test_reruns_are_exactly_the_changed_stage_and_descendants(run):
    work, cfg = run
    r = snakemake(work, cfg, "-n")
    assert "Nothing to be done" in r.stdout + r.stderr
    r = snakemake(work, cfg, "-n", "--forcerun", "shard")
    assert jobs(r.stdout) == {"shard", "pretrain", "infer", "score", "embed", "all"}
    changed = yaml.safe_load(cfg.read_text())
    changed["evaluate"]["bootstrap_iterations"] = 200  # a scoring key: the stored forecasts stay
    cfg2 = work / "changed.yaml"
    cfg2.write_text(yaml.safe_dump(changed))
    assert jobs(snakemake(work, cfg2, "-n").stdout) == {"score", "all"}
    changed["evaluate"]["samples"] = 5
    cfg2.write_text(yaml.safe_dump(changed))
    assert jobs(snakemake(work, cfg2, "-n").stdout) == {"infer", "score", "all"}
    changed["embed"] = {"layers": [0]}
    cfg2.write_text(yaml.safe_dump(changed))
    # infer and score: evaluate.samples above
    assert jobs(snakemake(work, cfg2, "-n").stdout) == {"infer", "score", "embed", "all"}
    changed["normalize"]["local"] = []
    cfg2.write_text(yaml.safe_dump(changed))
    assert jobs(snakemake(work, cfg2, "-n").stdout) == {
        "normalize",
        "shard",
        "pretrain",
        "infer",
        "score",
        "embed",
        "all",
    }


def test_fine_tuning_reads_its_starting_model_as_an_input(run):
    work, cfg = run
    changed = yaml.safe_load(cfg.read_text())
    changed["train"]["init_from"] = str(work / "pretrained.safetensors")
    cfg3 = work / "finetune.yaml"
    cfg3.write_text(yaml.safe_dump({**changed, "run": "tuned"}))
    r = snakemake(work, cfg3, "-n", timeout=120)
    assert r.returncode != 0 and "pretrained.safetensors" in r.stdout + r.stderr  # a missing input, named
    shutil.copy(work / "results" / "tiny" / "train" / "model.safetensors", work / "pretrained.safetensors")
    cfg3.write_text(yaml.safe_dump(changed))
    assert jobs(snakemake(work, cfg3, "-n").stdout) == {"pretrain", "infer", "score", "embed", "all"}


def test_unknown_config_key_fails_fast_naming_it(tmp_path):
    bad = dict(TINY, shard={**TINY["shard"], "chunk_tokns": [1, 1, 1]})
    cfg = tmp_path / "bad.yaml"
    cfg.write_text(yaml.safe_dump(bad))
    t0 = time.perf_counter()
    r = snakemake(tmp_path, cfg, "-n", timeout=120)
    assert r.returncode != 0
    assert "unknown config key 'shard.chunk_tokns'" in r.stdout + r.stderr
    assert time.perf_counter() - t0 < 30


def test_capacity_plan_matches_what_the_run_produced(run):
    from atmorep import config as C
    from atmorep.plan import STORE_FILES, load_profile, plan

    work, cfg = run
    p = plan(C.build(C.Config, yaml.safe_load(cfg.read_text())), load_profile(REPO / "profiles" / "slurm"))
    grib = sum(f.stat().st_size for f in (work / "resources" / "tiny" / "grib").rglob("*.grib"))
    assert p.grib_bytes == grib and p.grib_files == 2
    stores = list((work / "resources" / "tiny" / "shards").glob("*/*.zarr"))
    files = [f for s in stores for f in s.rglob("*") if f.is_file() and not f.name.startswith(".snakemake")]
    # data shard files exactly; metadata and coordinate chunks at most (zarr skips all-fill chunks)
    assert p.zarr_inodes - 2 * len(stores) <= len(files) <= p.zarr_inodes
    shard_files = [f for s in stores for f in (s / "data" / "c").rglob("*") if f.is_file()]
    assert len(shard_files) == p.zarr_inodes - STORE_FILES * len(stores)
    data_bytes = sum(f.stat().st_size for s in stores for f in (s / "data").rglob("*") if f.is_file())
    assert abs(p.zarr_bytes - data_bytes) / data_bytes < 0.05
    assert p.slurm_jobs == {"acquire": 1, "normalize": 1, "shard": 2, "pretrain": 1, "infer": 1, "score": 1, "embed": 1}
    assert p.gpu_hours > 0 and all(v > 0 for v in p.core_hours.values())


def test_another_run_name_shares_no_output(run):
    work, cfg = run
    other = yaml.safe_load(cfg.read_text())
    other["run"] = "tiny-b"
    cfg2 = work / "other.yaml"
    cfg2.write_text(yaml.safe_dump(other))
    r = snakemake(work, cfg2, "-n")
    assert jobs(r.stdout) == {"acquire", "normalize", "shard", "pretrain", "infer", "score", "embed", "all"}
    assert "resources/tiny-b/" in r.stdout and "resources/tiny/" not in r.stdout


def test_a_killed_forced_pretrain_is_rerun_with_what_depends_on_it(run, tmp_path):
    """kill -9 of a forced pretrain deletes its outputs and leaves the old evaluate products: a plain
    rerun must plan pretrain, infer and score again, not report "Nothing to be done"."""
    import psutil

    work, cfg = run
    copy = Path(shutil.copytree(work, tmp_path / "copy", symlinks=True))
    env = {
        **os.environ,
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
        "OMP_NUM_THREADS": "1",
    }
    forced = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "snakemake",
            "-s",
            str(REPO / "Snakefile"),
            "--directory",
            str(copy),
            "--configfile",
            str(copy / cfg.name),
            "--cores",
            "2",
            "--forcerun",
            "pretrain",
        ],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    ranks, deadline = [], time.time() + 300
    while time.time() < deadline and len(ranks) < 2 and forced.poll() is None:
        time.sleep(0.5)
        try:
            ranks = [
                p
                for p in psutil.Process(forced.pid).children(recursive=True)  # not the launchers
                if {"atmorep", "train"} <= set(p.cmdline())
                and "launch" not in p.cmdline()
                and not any(a.startswith("--nproc_per_node") for a in p.cmdline())
            ]
        except psutil.Error:
            pass
    assert len(ranks) == 2, "the forced pretrain did not start its ranks"
    for p in ranks:
        os.kill(p.pid, signal.SIGKILL)
    assert forced.wait(timeout=300) != 0
    assert not (copy / "results" / "tiny" / "train" / "model.safetensors").exists()
    assert (copy / "results" / "tiny" / "evaluate" / "scores.csv").exists()  # the old products remain
    r = snakemake(copy, copy / cfg.name, "-n")
    assert "Nothing to be done" not in r.stdout + r.stderr
    assert jobs(r.stdout) == {"pretrain", "infer", "score", "embed", "all"}
