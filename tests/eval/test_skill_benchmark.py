"""``benchmarks/skill.py --quick``: the science benchmark end to end in its smallest setting (real ERA5
of the shared data, seconds of training); its last line is every ratio with its interval."""

import os
import re
import subprocess
import sys

import pytest
from conftest import REPO

pytestmark = pytest.mark.slow


def test_skill_quick_prints_every_ratio_with_its_interval(shared_data, tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    r = subprocess.run(
        [sys.executable, str(REPO / "benchmarks" / "skill.py"), "--quick", "--out", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=900,
        env=env,
    )
    assert r.returncode == 0, (r.stdout + r.stderr)[-5000:]
    last = r.stdout.strip().splitlines()[-1]
    found = re.findall(r"(\w+)=([\d.]+) \[([\d.]+), ([\d.]+)\]", last)
    assert [k for k, *_ in found] == [
        "forecast_rmse_vs_persistence",
        "interp_rmse_vs_linear",
        "spread_skill",
        "crps_vs_climatology",
    ], last
    for k, value, lo, hi in found:
        assert float(lo) <= float(value) <= float(hi) and float(lo) < float(hi), (k, last)
