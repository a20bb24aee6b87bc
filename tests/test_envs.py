"""Software deployment: workflow/envs/*.yaml agree with pyproject.toml, `snakemake --lint` is clean,
and a job runs under real environment modules (Lmod) with atmorep taken from this checkout."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
import yaml
from conftest import REPO

ENVS = REPO / "workflow" / "envs"
# what runs the workflow rather than its jobs: not in any job environment
RUNNERS = {"snakemake>=9,<10", "snakemake-executor-plugin-slurm>=2"}
LMOD_INIT = Path("/usr/share/lmod/lmod/init/bash")


def _pip(env: Path) -> list[str]:
    deps = yaml.safe_load(env.read_text())["dependencies"]
    assert "python=3.11" in deps and "pip" in deps, env.name
    return next(d["pip"] for d in deps if isinstance(d, dict))


def test_environments_hold_exactly_pyprojects_dependencies():
    project = set(tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["dependencies"])
    envs = {p.stem: _pip(p) for p in sorted(ENVS.glob("*.yaml"))}
    assert set(envs) == {"data", "train", "evaluate"}
    for name, deps in envs.items():
        assert len(deps) == len(set(deps)), f"{name}.yaml lists a package twice"
        assert set(deps) <= project, f"{name}.yaml: {sorted(set(deps) - project)} are not pyproject's requirements"
    used = set().union(*map(set, envs.values()))
    assert project - RUNNERS == used, f"in pyproject but in no environment: {sorted(project - RUNNERS - used)}"
    # every job imports the data stack (config, stores); only train gets DeepSpeed
    assert set(envs["data"]) <= set(envs["train"]) and set(envs["data"]) <= set(envs["evaluate"])
    assert not any(d.startswith("deepspeed") for d in envs["evaluate"] + envs["data"])


def test_snakemake_lint_is_clean():
    r = subprocess.run(
        [sys.executable, "-m", "snakemake", "-s", str(REPO / "Snakefile"), "--lint"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert r.returncode == 0 and "Congratulations" in r.stdout + r.stderr, r.stdout[-4000:] + r.stderr[-2000:]


@pytest.mark.slow
@pytest.mark.skipif(not LMOD_INIT.exists(), reason="Lmod is not installed (.ci/run installs Debian's lmod)")
def test_a_job_runs_under_environment_modules(tmp_path):
    """The site's module provides Python and the packages; the job finds nothing else (its PATH has
    no venv), so acquire succeeds only if `module load` ran and workflow/bin supplied atmorep."""
    venv_bin = Path(sys.executable).parent
    modules = tmp_path / "modules" / "atmorep-stack"
    modules.mkdir(parents=True)
    (modules / "1.0.lua").write_text(f'prepend_path("PATH", "{venv_bin}")\nsetenv("ATMOREP_SITE_STACK", "1.0")\n')
    cfg = yaml.safe_load((REPO / "config" / "config.yaml").read_text())
    cfg["run"] = "modules"
    cfg["software"] = {"modules": {"data": ["atmorep-stack/1.0"]}}
    (tmp_path / "run.yaml").write_text(yaml.safe_dump(cfg))
    target = "resources/modules/grib/t2m/2026-03.grib"
    snakemake = (
        f"source {LMOD_INIT} && export MODULEPATH={tmp_path / 'modules'} && "
        f"exec {sys.executable} -m snakemake -s {REPO / 'Snakefile'} --directory {tmp_path} "
        f"--configfile {tmp_path / 'run.yaml'} --cores 1 --sdm env-modules -- {target}"
    )
    env = {
        "PATH": "/usr/bin:/bin",
        "HOME": os.environ.get("HOME", "/root"),
        "OMP_NUM_THREADS": "1",
        **{k: os.environ[k] for k in ("PYTHONPATH",) if k in os.environ},
    }
    r = subprocess.run(["bash", "-c", snakemake], capture_output=True, text=True, env=env, timeout=600)
    log = tmp_path / "logs" / "modules" / "acquire" / "t2m_2026-03.log"
    assert r.returncode == 0, r.stderr[-4000:] + (log.read_text()[-2000:] if log.exists() else "")
    assert (tmp_path / target).stat().st_size > 0
    # without the module the same job has no atmorep to run: the module is what made it work
    shutil.rmtree(tmp_path / "resources")
    plain = snakemake.replace("--sdm env-modules ", "")
    r = subprocess.run(["bash", "-c", plain], capture_output=True, text=True, env=env, timeout=600)
    assert r.returncode != 0 and not (tmp_path / target).exists()
