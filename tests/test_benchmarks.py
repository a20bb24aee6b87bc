"""Every benchmark runs at its smallest setting and prints finite figures as its last line; one whose
measurement or baseline fails exits non-zero (issue 14, failure 6: loader.py printed headroom=nan
and exited 0)."""

from __future__ import annotations

import math
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[1]
BENCH = REPO / "benchmarks"
SHARED_GRIB = REPO.parent / "shared" / "data" / "era5-t2m-uk-hourly" / "era5-2mt-2019-03-uk.grib"

#: benchmark -> (arguments of its smallest setting, what it needs besides the CPU)
SMALLEST = {
    "attention": (["--models", "demo", "--repeats", "1", "--threads", "1"], None),
    "model": (["--batch", "2", "--steps", "1", "--rounds", "1", "--threads", "1"], None),
    "normalize_memory": (["--hours", "24", "--levels", "1"], None),
    "ingest": (["--repeats", "1"], "shared"),
    "loader": (["--quick"], None),
    "zarr_write": (["--quick"], None),
    "remote_read": (["--quick"], None),
    "skill": (["--quick"], "shared"),
    "train_throughput": (["--quick"], None),
    "gpu_mfu": (["--batch", "2", "--steps", "2", "--warmup", "1"], "gpu"),
    "embed": (["--quick"], None),
    "model_file": (["--quick"], None),
    "label_efficiency": (["--quick"], "shared"),  # the sample and ../shared/data/era5-sfc-natl-hourly
}


def run(name: str, args: list[str], timeout=300) -> subprocess.CompletedProcess:
    env = {
        **os.environ,
        "OMP_NUM_THREADS": "1",
        "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO / "src"), os.environ.get("PYTHONPATH")])),
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
    }
    return subprocess.run(
        [sys.executable, str(BENCH / f"{name}.py"), *args],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def figures(stdout: str) -> dict[str, float]:
    """The machine-readable last line: its ``name=value`` pairs (a value may be followed by its
    interval, ``name=value [low, high]``, as skill.py prints)."""
    last = stdout.strip().splitlines()[-1]
    pairs = re.findall(r"(\w+)=(\S+)", last)
    assert pairs, f"no name=value figures in the last line: {last!r}"
    # yes/no verdicts (remote_read's identical=) count as 1/0: a 'no' fails the positivity check
    verdicts = {"yes": 1.0, "no": 0.0}
    return {k: verdicts[v] if v in verdicts else float(v) for k, v in pairs}


@pytest.mark.parametrize("name", list(SMALLEST))
def test_benchmark_runs_at_its_smallest_setting(name):
    args, needs = SMALLEST[name]
    if needs == "shared" and not SHARED_GRIB.exists():
        pytest.skip(f"{SHARED_GRIB} is not present")
    if needs == "gpu":
        import torch

        if not torch.cuda.is_available():
            pytest.skip("gpu_mfu measures a CUDA GPU; none here (benchmarks/gpu_mfu.sh on a GPU machine)")
    r = run(name, args)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    got = figures(r.stdout)
    assert got and all(math.isfinite(v) and v > 0 for v in got.values()), got


def test_a_figure_that_was_not_measured_fails_the_benchmark(tmp_path):
    """What loader.py did when its baseline broke: nan on the last line, exit 0."""
    script = tmp_path / "broken.py"
    script.write_text(
        "import sys\nsys.path.insert(0, sys.argv[1])\nfrom _checks import require\n"
        "print('headroom=nan speedup=2.0')\nrequire(headroom=float('nan'), speedup=2.0)\n"
    )
    r = subprocess.run([sys.executable, str(script), str(BENCH)], capture_output=True, text=True, timeout=60)
    assert r.returncode != 0
    assert r.stdout.strip().splitlines()[-1] == "headroom=nan speedup=2.0"
    assert "headroom=nan" in r.stderr and "speedup" not in r.stderr
