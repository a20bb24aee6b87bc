"""Atomic writes leave nothing behind (issue 14, failure 5): what a writer killed with SIGKILL left is
removed by the next write into the same directory; a live writer's temporary is never touched."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import xarray as xr

from atmorep.formats import atomic, zarrv3

pytestmark = pytest.mark.slow

WRITER = """
import sys, time
import numpy as np, xarray as xr
from atmorep.formats import zarrv3
n = int(sys.argv[2])
ds = xr.Dataset({f"v{k}": (("t", "x"), np.random.default_rng(k).random((n, 4096), np.float32))
                 for k in range(64)})
zarrv3.write_dataset(ds, sys.argv[1])
"""

HOLDER = """
import sys, time
from atmorep.formats.atomic import Replacement
with Replacement(sys.argv[1]) as tmp:
    tmp.mkdir()
    print("writing", flush=True)
    time.sleep(600)
"""


def child(code: str, *args, stdout=None) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-c", code, *map(str, args)],
        stdout=stdout,
        text=True,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )


def hidden(directory: Path) -> set[str]:
    return {p.name for p in directory.iterdir() if p.name.startswith(".")}


def test_a_killed_writers_leftovers_are_removed_by_the_next_write(tmp_path):
    out = tmp_path / "stores"
    killed = child(WRITER, out / "big.zarr", 2000)
    deadline = time.time() + 120
    while time.time() < deadline and not (out.exists() and hidden(out)):
        time.sleep(0.05)
    os.kill(killed.pid, signal.SIGKILL)  # mid-write: the temporary store is half written
    killed.wait()
    left = hidden(out)
    assert left and not (out / "big.zarr").exists(), left
    assert all(str(killed.pid) in name for name in left)

    live = child(HOLDER, out / "other.zarr", stdout=subprocess.PIPE)
    try:
        assert live.stdout.readline().strip() == "writing"
        zarrv3.write_dataset(xr.Dataset({"v": ("x", np.arange(3.0))}), out / "small.zarr")
        assert hidden(out) == {f".other.zarr.part-{live.pid}@{socket.gethostname()}"}  # the live one's only
        small = xr.open_zarr(out / "small.zarr", zarr_format=3, consolidated=False)
        assert small["v"].values.tolist() == [0.0, 1.0, 2.0]
    finally:
        live.kill()
        live.wait()


def test_another_hosts_temporary_is_kept_and_a_failed_write_leaves_nothing(tmp_path):
    other = tmp_path / ".x.zarr.part-1@another-host"
    other.mkdir()
    with pytest.raises(RuntimeError):
        with atomic.Replacement(tmp_path / "x.zarr") as tmp:
            tmp.mkdir()
            raise RuntimeError("the writer failed")
    assert hidden(tmp_path) == {other.name} and not (tmp_path / "x.zarr").exists()
    with atomic.Replacement(tmp_path / "x.zarr") as tmp:  # replaces a directory, keeps nothing aside
        tmp.write_text("file now")
    assert (tmp_path / "x.zarr").read_text() == "file now" and hidden(tmp_path) == {other.name}


def test_lock_of_another_host_is_refused_unless_it_is_this_requeued_slurm_job(tmp_path, monkeypatch):
    (tmp_path / ".lock").write_text("4242@node-a\nslurm job 77\n")
    monkeypatch.delenv("SLURM_JOB_ID", raising=False)
    with pytest.raises(atomic.Locked, match="in use by atmorep train of process 4242 on node-a"):
        atomic.DirectoryLock(tmp_path, "atmorep train").acquire()
    monkeypatch.setenv("SLURM_JOB_ID", "77")  # the same job, requeued: its earlier run is over
    with atomic.DirectoryLock(tmp_path, "atmorep train"):
        assert (tmp_path / ".lock").read_text().startswith(f"{os.getpid()}@{socket.gethostname()}\n")
    assert not (tmp_path / ".lock").exists()
