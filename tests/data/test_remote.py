"""The zarr source at a distance (issue 24), over a real HTTP server on 127.0.0.1 (range_server.py):
requests in flight at once, 503 storms survived up to the retry limit and then one line, 404 and 403
at once, a killed job resumed without refetching to the same bytes, memory within the stated bound
while the writer is slow."""

from __future__ import annotations

import json
import logging
import signal
import subprocess
import sys
import time
import tracemalloc
from pathlib import Path

import numpy as np
import pytest
import xarray as xr

from atmorep.config import AcquireConfig, DataConfig, FieldSpec, ZarrSourceConfig
from atmorep.data.acquire import gridded, remote, sources, zarrsource
from atmorep.errors import DataError

sys.path.append(str(Path(__file__).parent))  # appended: `from conftest import` must find tests/conftest.py
from range_server import RangeServer  # noqa: E402

REPO = Path(__file__).resolve().parents[2]
sys.path.append(str(REPO / "benchmarks"))
from remote_read import LEVELS, build_store  # noqa: E402

FAST = dict(backoff_s=0.001)  # back-off in tests: milliseconds, the doubling and the limit as configured


def unit(hours: int) -> DataConfig:
    end = str(np.datetime64("2021-01-01T00", "h") + hours - 1)
    return DataConfig(
        fields={"t": FieldSpec(levels=LEVELS, levtype="ml")}, start="2021-01-01T00", end=end, step_hours=1
    )


def acquire(url: str, out: Path, hours: int, **zarr_kw) -> Path:
    cfg = AcquireConfig(source="zarr", zarr=ZarrSourceConfig(url=url, **{**FAST, **zarr_kw}))
    return sources.acquire(unit(hours), cfg, "t", "2021-01", out)


def prov(out: Path) -> dict:
    return json.loads(sources.provenance_path(out).read_text())


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    """An ARCO-layout store of 8 hours on a 10° grid (3 level chunks of 49 KB per hour)."""
    root = tmp_path_factory.mktemp("arco")
    keys = build_store(root / "arco.zarr", 19, 36, 8)
    return root, keys


@pytest.fixture(scope="module")
def local_grib(store, tmp_path_factory):
    """The unit read from the store's path: the bytes every remote read must give."""
    root, _ = store
    out = acquire(str(root / "arco.zarr"), tmp_path_factory.mktemp("local") / "t.grib", 8)
    return out.read_bytes()


def test_requests_overlap_up_to_the_concurrency_and_the_provenance_counts_them(store, local_grib, tmp_path):
    root, keys = store
    with RangeServer(root, rtt_s=0.02) as srv:
        out = acquire(f"{srv.url}/arco.zarr", tmp_path / "t.grib", 8, concurrency=4)
        served, requests = srv.bytes_served, srv.requests
    p = prov(out)
    assert out.read_bytes() == local_grib
    assert p["max_in_flight"] == 4  # the limit is reached, never passed
    assert p["requests"] == requests and p["retries"] == 0
    assert p["bytes_read"] == served
    chunk = 18 * 19 * 36 * 4
    assert len(keys) * chunk <= p["bytes_read"] < len(keys) * chunk + 20_000  # the chunks and the metadata
    assert p["bytes_used"] == 8 * 5 * 19 * 36 * 4
    assert not zarrsource.parts_dir(out, "t", "2021-01").exists()  # the journal is gone with the unit done


@pytest.mark.parametrize("fault", [503, 429, 500, "reset"])
def test_a_storm_is_survived_up_to_the_retry_limit(store, local_grib, tmp_path, fault):
    root, _ = store
    with RangeServer(root) as srv:
        srv.storm(3, fault, "arco.zarr/.zmetadata")  # the consolidated metadata fails 3 times
        out = acquire(f"{srv.url}/arco.zarr", tmp_path / "t.grib", 8, retries=3)
        left = srv.httpd.storm["arco.zarr/.zmetadata"]
    assert out.read_bytes() == local_grib and left == []
    # aiohttp itself tries a dropped connection once more before it reports it
    assert prov(out)["retries"] == 3 if fault != "reset" else 1 <= prov(out)["retries"] <= 3


def test_a_storm_past_the_retry_limit_fails_in_one_line_naming_url_and_key(store, tmp_path, caplog):
    root, _ = store
    out = tmp_path / "t.grib"
    with RangeServer(root) as srv:
        srv.storm(4, 503, "arco.zarr/.zmetadata")
        with caplog.at_level(logging.DEBUG, logger="atmorep.data.acquire.remote"):
            with pytest.raises(DataError) as err:
                acquire(f"{srv.url}/arco.zarr", out, 8, retries=3)
        asked = srv.paths["arco.zarr/.zmetadata"]
    msg = str(err.value)
    assert "\n" not in msg
    assert msg.startswith(f"zarr store {srv.url}/arco.zarr: key '.zmetadata': HTTP 503 on all 4 tries")
    assert "acquire.zarr.retries" in msg
    assert asked == 4  # 1 + 3 retries, then nothing more
    retries = [r for r in caplog.records if "retry" in r.getMessage()]
    assert len(retries) == 3 and all(r.levelno == logging.DEBUG for r in retries)
    assert not out.exists() and not sources.provenance_path(out).exists()


def test_a_storm_on_the_chunks_keeps_what_was_committed(store, local_grib, tmp_path, monkeypatch):
    """The storm outlasts the retries mid-unit: the job fails in one line, and the blocks written
    before are kept for the next run, which fetches only the rest."""
    root, keys = store
    out = tmp_path / "t.grib"
    real = gridded.write_block

    def storm_after_two(path, field, exp, block, values, append):
        real(path, field, exp, block, values, append)
        if block.times[0] == np.datetime64("2021-01-01T01"):
            srv.storm(10_000)

    monkeypatch.setattr(remote, "COMMIT_EVERY_S", 0.0)
    with RangeServer(root) as srv:
        url = f"{srv.url}/arco.zarr"
        monkeypatch.setattr(gridded, "write_block", storm_after_two)
        with pytest.raises(DataError, match=r"arco.zarr: key 'temperature/\d\.\d\.0\.0': HTTP 503 on all 1 tries"):
            acquire(url, out, 8, retries=0, concurrency=1, readahead_mb=1)
        monkeypatch.setattr(gridded, "write_block", real)
        committed = json.loads((zarrsource.parts_dir(out, "t", "2021-01") / "state.json").read_text())["blocks"]
        srv.storm(0)
        srv.reset()
        out = acquire(url, out, 8)
        again = [k for k in srv.paths if k.startswith("arco.zarr/temperature/")]
    assert out.read_bytes() == local_grib
    assert committed >= 2 and prov(out)["blocks_resumed"] == committed
    assert not [k for k in again if int(k.split("/")[-1].split(".")[0]) < committed]
    assert len(again) == len(keys) - committed * 3


def test_not_found_and_forbidden_fail_at_once(store, tmp_path):
    root, keys = store
    with RangeServer(root, deny=(f"arco.zarr/{keys[5]}",)) as srv:
        with pytest.raises(DataError) as err:
            acquire(f"{srv.url}/nothing.zarr", tmp_path / "t.grib", 8)
        msg = str(err.value)
        assert msg.startswith(f"zarr store {srv.url}/nothing.zarr: not a zarr store: ") and "not found" in msg
        assert "\n" not in msg and "acquire.zarr.url" in msg
        assert max(srv.paths.values()) == 1  # every key asked once: nothing retried
        srv.reset()
        with pytest.raises(DataError) as err:
            acquire(f"{srv.url}/arco.zarr", tmp_path / "t.grib", 8)
        msg = str(err.value)
        assert msg.startswith(f"zarr store {srv.url}/arco.zarr: key '{keys[5]}': HTTP 403 Forbidden")
        assert "\n" not in msg and "acquire.zarr.storage_options" in msg
        assert srv.paths[f"arco.zarr/{keys[5]}"] == 1
    assert not (tmp_path / "t.grib").exists()


def test_a_missing_variable_fails_at_once(store, tmp_path):
    root, _ = store
    with RangeServer(root) as srv:
        cfg = AcquireConfig(source="zarr", zarr=ZarrSourceConfig(url=f"{srv.url}/arco.zarr", **FAST))
        data = DataConfig(
            fields={"q": FieldSpec(levels=LEVELS, levtype="ml")}, start="2021-01-01T00", end="2021-01-01T07"
        )
        with pytest.raises(DataError, match=r"arco.zarr: no variable for field 'q' .* it holds \['temperature'\]"):
            sources.acquire(data, cfg, "q", "2021-01", tmp_path / "q.grib")
        assert not [k for k in srv.paths if k.startswith("arco.zarr/temperature/")]  # no chunk was read


@pytest.mark.slow
def test_a_job_killed_mid_month_resumes_without_refetching_to_the_same_bytes(tmp_path):
    """SIGKILL after some blocks were committed (a journal commit every second, one block every 0.2 s):
    the rerun fetches none of their chunks again and writes the bytes of an uninterrupted run."""
    hours = 24
    keys = build_store(tmp_path / "arco.zarr", 19, 36, hours)
    whole = acquire(str(tmp_path / "arco.zarr"), tmp_path / "local" / "t.grib", hours).read_bytes()
    with RangeServer(tmp_path, rtt_s=0.2) as srv:
        url = f"{srv.url}/arco.zarr"
        cfg = {
            "run": "x",
            "data": {
                "fields": {"t": {"levels": list(LEVELS), "levtype": "ml"}},
                "start": "2021-01-01T00",
                "end": str(np.datetime64("2021-01-01T00", "h") + hours - 1),
                "step_hours": 1,
            },
            "acquire": {"source": "zarr", "zarr": {"url": url, "concurrency": 3, "readahead_mb": 1}},
        }
        (tmp_path / "c.yaml").write_text(json.dumps(cfg))
        out = tmp_path / "grib" / "t.grib"
        parts = zarrsource.parts_dir(out, "t", "2021-01")
        cmd = [sys.executable, "-m", "atmorep", "acquire", "--config", str(tmp_path / "c.yaml")]
        cmd += ["--field", "t", "--month", "2021-01", "--output", str(out)]
        job = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        deadline = time.monotonic() + 120
        committed = 0
        while committed < 3 and time.monotonic() < deadline and job.poll() is None:
            time.sleep(0.05)
            try:
                committed = json.loads((parts / "state.json").read_text())["blocks"]
            except (FileNotFoundError, ValueError):
                pass
        job.send_signal(signal.SIGKILL)
        job.wait()
        assert 3 <= committed < hours, job.stderr.read().decode()[-2000:]
        assert not out.exists()
        committed = json.loads((parts / "state.json").read_text())["blocks"]
        first = dict(srv.paths)
        srv.reset()
        out = acquire(url, out, hours)
        second = dict(srv.paths)
    assert out.read_bytes() == whole
    assert prov(out)["blocks_resumed"] == committed
    again = [k for k in second if k.startswith("arco.zarr/temperature/")]
    assert not [k for k in again if int(k.split("/")[-1].split(".")[0]) < committed]  # nothing committed again
    assert {f"arco.zarr/{k}" for k in keys} <= set(first) | set(second)  # every chunk came in one of the runs
    assert not parts.exists()


def test_a_journal_of_another_unit_is_not_resumed(store, local_grib, tmp_path, caplog):
    root, _ = store
    out = tmp_path / "t.grib"
    parts = zarrsource.parts_dir(out, "t", "2021-01")
    stale = remote.Journal(parts, {"another": "unit"})
    stale.open()
    stale.data.write_bytes(b"GRIB of something else")
    stale.written(5, last=True)
    with caplog.at_level(logging.INFO, logger="atmorep.data.acquire.remote"):
        out = acquire(str(root / "arco.zarr"), out, 8)
    assert out.read_bytes() == local_grib and prov(out)["blocks_resumed"] == 0
    assert "holds parts of another unit" in caplog.text


def test_memory_stays_under_the_stated_bound_with_a_slow_writer(tmp_path, monkeypatch):
    """24 hours of 3 chunks of 1.2 MB each (85 MB) read through a writer that takes 30 ms a block: the
    reads run ahead, and what the job holds until its last block is written (the metadata, the
    blocks ahead, the requests in flight: everything tracemalloc sees) stays under the bound it states."""
    build_store(tmp_path / "arco.zarr", 91, 180, 24)
    real = gridded.write_block
    asked, peaks = [], []

    def slow(path, field, exp, block, values, append):
        time.sleep(0.03)
        asked.append(srv.requests)
        peaks.append(tracemalloc.get_traced_memory()[1])
        real(path, field, exp, block, values, append)

    monkeypatch.setattr(gridded, "write_block", slow)
    with RangeServer(tmp_path, rtt_s=0.005) as srv:
        tracemalloc.start()
        try:
            base = tracemalloc.get_traced_memory()[0]
            out = acquire(f"{srv.url}/arco.zarr", tmp_path / "t.grib", 24, readahead_mb=36)
        finally:
            tracemalloc.stop()
    p = prov(out)
    peak = max(peaks) - base
    chunk = 18 * 91 * 180 * 4
    assert p["readahead_blocks"] == 2 and p["memory_bound_bytes"] <= 36 * 2**20
    assert peak < p["memory_bound_bytes"], (peak, p)
    assert peak < 24 * 3 * chunk / 4  # far from holding the unit's chunks
    # metadata (1 + 4 coordinates) and block 0's 3 chunks: what a reader without read-ahead had asked
    assert asked[0] >= 5 + 3 + 3, asked  # when the first block was written, the next ones were being read


def test_progress_lines_in_a_log_give_rate_in_flight_and_retries(store, tmp_path, caplog, monkeypatch):
    root, _ = store
    monkeypatch.setattr(remote._Progress, "EVERY_S", 0.0)
    with caplog.at_level(logging.INFO, logger="atmorep.data.acquire.remote"):
        acquire(str(root / "arco.zarr"), tmp_path / "t.grib", 8)
    lines = [r.getMessage() for r in caplog.records if "blocks," in r.getMessage()]
    assert len(lines) == 8 and lines[-1].startswith("zarr: t 2021-01: 8 of 8 blocks, ")
    assert " MB/s, " in lines[-1] and "requests in flight" in lines[-1] and "retries" in lines[-1]


def test_reference_values(store, local_grib, tmp_path):
    """The local read itself is the store's values (so every byte-equality above compares to truth)."""
    from atmorep.formats import grib

    root, _ = store
    (tmp_path / "t.grib").write_bytes(local_grib)
    got = grib.decode(tmp_path / "t.grib")
    ref = xr.open_zarr(root / "arco.zarr", chunks=None)["temperature"].sel(hybrid=list(LEVELS))
    np.testing.assert_array_equal(got.values, ref.values)
