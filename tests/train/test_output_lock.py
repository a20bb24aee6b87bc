"""One training per output directory (issue 14, failure 5): a second `atmorep train` into the directory
of a running one is refused naming the holder; the lock of a run killed with SIGKILL is taken over."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time

import pytest
from test_distributed import params
from test_stale_model import ok, run

pytestmark = [pytest.mark.slow, pytest.mark.distributed]


def test_second_training_into_a_running_ones_directory_is_refused(products, tmp_path):
    out = tmp_path / "train"
    cmd = [
        sys.executable,
        "-m",
        "atmorep",
        "train",
        "--params",
        params(products, engine="torch", steps=100000, checkpoint_every=10**6),
        "--shards",
        *map(str, products["shards"].values()),
        "--output-dir",
        str(out),
    ]
    first = subprocess.Popen(
        cmd, env={**os.environ, "OMP_NUM_THREADS": "1"}, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    try:
        deadline = time.time() + 120
        while time.time() < deadline and not (out / ".lock").exists():
            time.sleep(0.2)
        assert (out / ".lock").read_text().split("\n")[0] == f"{first.pid}@{socket.gethostname()}"
        second = run(products, out)
        assert second.returncode != 0
        assert f"in use by atmorep train of process {first.pid} on {socket.gethostname()}" in second.stderr
        assert "Traceback" not in second.stderr and first.poll() is None  # the first one trains on
    finally:
        os.kill(first.pid, signal.SIGKILL)
        first.wait()
    log = ok(run(products, out))  # the dead run's lock is taken over
    assert f"taking over the lock of process {first.pid}@" in log and "trained 2 steps" in log
    assert not (out / ".lock").exists()  # released at the end
