"""profiles/slurm against a real one-node SLURM (munge + slurmctld + slurmd on localhost).

The fixture starts the daemons with tests/slurm/cluster.sh when they are not up (``.ci/run`` starts
them before the suite) and stops what it started. The profile runs as shipped, with only the marked
account and partition values replaced.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
import yaml
from conftest import REPO
from test_workflow import TINY, jobs

pytestmark = [pytest.mark.slow, pytest.mark.slurm, pytest.mark.workflow]

CLUSTER = Path(__file__).with_name("cluster.sh")
BIN = Path(sys.executable).parent


def _up() -> bool:
    return subprocess.run(["bash", str(CLUSTER), "status"], capture_output=True).returncode == 0


@pytest.fixture(scope="module")
def cluster():
    if shutil.which("slurmctld") is None and not Path("/usr/sbin/slurmctld").exists():
        pytest.skip("SLURM is not installed (.ci/run installs slurmctld, slurmd, slurm-client, munge)")
    started = False
    if not _up():
        r = subprocess.run(["bash", str(CLUSTER), "start"], capture_output=True, text=True)
        assert r.returncode == 0, r.stdout + r.stderr
        started = True
    yield
    if started:
        subprocess.run(["bash", str(CLUSTER), "stop"], check=False)


def make_profile(tmp_path) -> Path:
    """The shipped profile with the account and partition (the EDIT-marked values) replaced."""
    src = (REPO / "profiles" / "slurm" / "config.yaml").read_text()
    text = re.sub(r'^(\s*slurm_account: )"[^"]*"', r'\1"atmorep-ci"', src, flags=re.M)
    text = re.sub(r'^(\s*slurm_partition: )"[^"]*"', r'\1"debug"', text, flags=re.M)
    changed = [(a, b) for a, b in zip(src.splitlines(), text.splitlines()) if a != b]
    assert changed and all(("slurm_account" in a or "slurm_partition" in a) and "EDIT" in a for a, _ in changed)
    prof = tmp_path / "profile"
    prof.mkdir(parents=True)
    (prof / "config.yaml").write_text(text)
    return prof


def snakemake(workdir: Path, *args, background=False, timeout=900, env=None):
    cfg = workdir / "tiny.yaml"
    if not cfg.exists():
        cfg.write_text(yaml.safe_dump(TINY))
    env = {**os.environ, **(env or {}), "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}"}
    cmd = [
        sys.executable,
        "-m",
        "snakemake",
        "-s",
        str(REPO / "Snakefile"),
        "--directory",
        str(workdir),
        "--configfile",
        str(cfg),
        *args,
    ]
    if background:
        return subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout)


def slurm_jobs(output: str) -> list[str]:
    return re.findall(r"SLURM jobid (\d+)", output) or re.findall(
        r"Job \d+ has been submitted with SLURM jobid (\d+)", output
    )


def state(job: str) -> str:
    return subprocess.run(
        ["squeue", "--states=all", "-h", "-j", job, "-o", "%T"], capture_output=True, text=True
    ).stdout.strip()


@pytest.fixture(scope="module")
def slurm_run(cluster, tmp_path_factory):
    work = tmp_path_factory.mktemp("slurm")
    prof = make_profile(tmp_path_factory.mktemp("prof"))
    r = snakemake(work, "--profile", str(prof))
    assert r.returncode == 0, (r.stdout + r.stderr)[-6000:]
    return work, r.stdout + r.stderr, prof


def test_all_jobs_completed_in_slurms_view(slurm_run):
    _, out, _ = slurm_run
    ids = slurm_jobs(out)
    assert {i: state(i) for i in ids} == {i: "COMPLETED" for i in ids}
    from atmorep import config as C
    from atmorep.plan import load_profile, plan

    planned = plan(C.build(C.Config, TINY), load_profile(slurm_run[2])).slurm_jobs
    assert len(ids) == sum(planned.values())  # the capacity planner's count: grouped acquire/normalize


def test_pretrain_ran_as_two_srun_tasks(slurm_run):
    work, _, _ = slurm_run
    log = (work / "logs" / "tiny" / "pretrain.log").read_text()
    assert "on 2 ranks" in log


def test_products_equal_a_local_run(slurm_run, tmp_path):
    work, _, _ = slurm_run
    r = snakemake(tmp_path, "--profile", str(REPO / "profiles" / "local"))
    assert r.returncode == 0, r.stderr[-4000:]
    for path, col in (("train/metrics.csv", "loss"), ("evaluate/scores.csv", "value")):
        a = pd.read_csv(work / "results" / "tiny" / path)
        b = pd.read_csv(tmp_path / "results" / "tiny" / path)
        assert (a[col].values == b[col].values).all(), path


def test_scancel_fails_the_workflow_and_a_rerun_finishes_what_is_missing(cluster, tmp_path):
    prof = make_profile(tmp_path / "p")
    work = tmp_path / "w"
    work.mkdir()
    proc = snakemake(work, "--profile", str(prof), background=True)
    deadline, job = time.time() + 600, None
    while time.time() < deadline and job is None:
        time.sleep(2)
        q = subprocess.run(["squeue", "-h", "-o", "%i %k %T"], capture_output=True, text=True).stdout
        job = next((line.split()[0] for line in q.splitlines() if "rule_pretrain" in line and "RUNNING" in line), None)
        assert proc.poll() is None, proc.stdout.read()[-4000:]
    assert job, "the pretrain job never ran"
    subprocess.run(["scancel", job], check=True)
    out, _ = proc.communicate(timeout=600)
    assert proc.returncode != 0
    assert "Error in rule pretrain" in out and job in out
    assert not (work / "results" / "tiny" / "train" / "model.safetensors").exists()
    dry = snakemake(work, "--profile", str(prof), "-n")
    assert jobs(dry.stdout) == {"pretrain", "infer", "score", "embed", "all"}  # what needs the model
    r = snakemake(work, "--profile", str(prof))
    assert r.returncode == 0, (r.stdout + r.stderr)[-4000:]
    assert (work / "results" / "tiny" / "evaluate" / "scores.csv").exists()
