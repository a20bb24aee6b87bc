"""The cds source against a local server that speaks the CDS retrieve protocol, through the real cdsapi."""

import json
import logging
import subprocess
import sys
import threading
from pathlib import Path

import pytest
from builders import IFS, NATL, UK
from cds_server import FakeCds, subset

from atmorep.config import AcquireConfig, CdsConfig, DataConfig, FieldSpec
from atmorep.data.acquire import cds, sources
from atmorep.errors import DataError
from atmorep.formats import grib


def _fast(tmp_path, **kw) -> AcquireConfig:
    c = dict(backoff_s=0.01, backoff_max_s=0.05, poll_max_s=0.05, timeout_s=10, slots_dir=str(tmp_path / "slots"))
    c.update(kw)
    return AcquireConfig(source="cds", cds=CdsConfig(**c))


UK_DATA = DataConfig(
    fields={"t2m": FieldSpec()},
    start="2019-03-01T00",
    end="2019-03-31T23",
    step_hours=1,
    grid=(0.25, 0.25),
    area=(58, -10, 50, 2),
)
PL_DATA = DataConfig(
    fields={"t": FieldSpec((500, 850), "pl")},
    start="2024-06-03T00",
    end="2024-06-04T18",
    step_hours=6,
    grid=(10.0, 10.0),
)


@pytest.fixture
def server(monkeypatch, shared_data):
    """Serves the real UK t2m month for single-level requests and IFS t for pressure levels."""
    uk = shared_data.joinpath(*UK).read_bytes()
    pl = subset(shared_data.joinpath(*IFS), {"t"}, {500, 850})

    def payload(dataset, request):
        return uk if dataset == "reanalysis-era5-single-levels" else pl

    with FakeCds(payload) as srv:
        monkeypatch.setenv("CDSAPI_URL", srv.url)
        monkeypatch.setenv("CDSAPI_KEY", srv.key)
        monkeypatch.setenv("CDSAPI_RC", str(Path("/nonexistent/cdsapirc")))
        yield srv


# --- the request planner -----------------------------------------------------------------------


def test_model_level_requests_are_mars_style_with_an_explicit_grid():
    data = DataConfig(
        fields={"vo": FieldSpec((96, 105, 114, 123, 137)), "t2m": FieldSpec()},
        start="2021-01-15T06",
        end="2021-03-31T23",
        step_hours=1,
    )
    reqs = cds.plan(data, AcquireConfig(source="cds"))
    assert [(r.field, r.month) for r in reqs] == [
        (f, m) for f in ("vo", "t2m") for m in ("2021-01", "2021-02", "2021-03")
    ]
    vo = reqs[0]
    assert vo.dataset == "reanalysis-era5-complete"
    assert vo.body == {
        "class": "ea",
        "expver": "1",
        "stream": "oper",
        "type": "an",
        "levtype": "ml",
        "levelist": "96/105/114/123/137",
        "param": "138",
        "date": "2021-01-15/to/2021-01-31",
        "time": "/".join(f"{h:02d}" for h in range(24)),
        "grid": "0.25/0.25",
        "data_format": "grib",
    }
    assert len(vo.arrival.times) == 17 * 24  # whole days are requested, the campaign's hours kept
    sfc = reqs[5].body  # t2m, March: the whole month
    assert reqs[5].dataset == "reanalysis-era5-single-levels" and sfc["variable"] == ["2m_temperature"]
    assert sfc["day"][0] == "01" and len(sfc["day"]) == 31 and sfc["grid"] == "0.25/0.25"


def test_pressure_level_request_and_the_plan_command(tmp_path):
    r = cds.request_for(PL_DATA, AcquireConfig(source="cds"), "t", "2024-06")
    assert r.dataset == "reanalysis-era5-pressure-levels"
    assert r.body["pressure_level"] == ["500", "850"] and r.body["time"] == ["00:00", "06:00", "12:00", "18:00"]
    assert r.body["grid"] == "10/10" and r.body["day"] == ["03", "04"]
    cfg = {
        "data": {
            "fields": {"t": {"levels": [500, 850], "levtype": "pl"}},
            "start": "2024-06-03T00",
            "end": "2024-06-04T18",
            "step_hours": 6,
        },
        "acquire": {"source": "cds"},
    }
    out = subprocess.run(
        [sys.executable, "-m", "atmorep", "acquire", "--params", json.dumps(cfg), "--plan"],
        capture_output=True,
        text=True,
    )
    assert out.returncode == 0, out.stderr
    (line,) = out.stdout.splitlines()
    assert json.loads(line)["request"]["pressure_level"] == ["500", "850"]


def test_backoff_doubles_and_is_capped():
    class NoJitter:
        @staticmethod
        def random():
            return 0.0

    assert [cds.backoff(k, 30, 900, rng=NoJitter) for k in range(7)] == [30, 60, 120, 240, 480, 900, 900]
    assert 30 <= cds.backoff(0, 30, 900) <= 37.5


# --- the real client against the local server --------------------------------------------------


def test_queued_running_completed_request_delivers_the_real_month(tmp_path, server, shared_data):
    server.statuses = ["running", "successful"]  # the submission answers 'accepted' (queued)
    out = sources.acquire(UK_DATA, _fast(tmp_path), "t2m", "2019-03", tmp_path / "t2m" / "2019-03.grib")
    assert out.read_bytes() == shared_data.joinpath(*UK).read_bytes()
    (body,) = server.submissions
    assert body["grid"] == "0.25/0.25" and body["area"] == "58/-10/50/2" and body["variable"] == ["2m_temperature"]
    assert server.count("GET", "/api/retrieve/v1/jobs/") >= 3  # polled through running to successful
    assert sorted(p.name for p in out.parent.iterdir()) == ["2019-03.grib"]


def test_http_429_and_503_are_retried(tmp_path, server):
    server.post_failures = [429, 503]
    out = sources.acquire(PL_DATA, _fast(tmp_path), "t", "2024-06", tmp_path / "t.grib")
    assert len(server.submissions) == 3 and len(grib.scan(out)) == 16


def test_dropped_connection_resumes_with_a_range_request(tmp_path, server, shared_data):
    server.drop_after = 300_000
    out = sources.acquire(UK_DATA, _fast(tmp_path), "t2m", "2019-03", tmp_path / "t2m.grib")
    assert out.read_bytes() == shared_data.joinpath(*UK).read_bytes()
    ranges = [b["range"] for m, p, b in server.log if m == "GET" and p.startswith("/download/") and b["range"]]
    assert ranges and int(ranges[0].split("=")[1].rstrip("-")) >= 262_144
    assert len(server.submissions) == 1  # the finished request was not submitted again


def test_a_killed_job_resumes_the_partial_file_without_resubmitting(tmp_path, server, shared_data):
    server.drop_after = 300_000
    with pytest.raises(DataError, match="failed 1 times"):
        sources.acquire(UK_DATA, _fast(tmp_path, attempts=1), "t2m", "2019-03", tmp_path / "t2m.grib")
    assert not (tmp_path / "t2m.grib").exists()
    assert (tmp_path / ".cds-t2m-2019-03.part").stat().st_size >= 262_144  # kept for the next job
    out = sources.acquire(UK_DATA, _fast(tmp_path), "t2m", "2019-03", tmp_path / "t2m.grib")
    assert out.read_bytes() == shared_data.joinpath(*UK).read_bytes()
    assert len(server.submissions) == 1
    assert sorted(p.name for p in tmp_path.iterdir() if p.name != "slots") == ["t2m.grib"]


def test_the_wrong_field_is_rejected_and_nothing_is_kept(tmp_path, server, shared_data):
    server.payload = lambda dataset, request: subset(shared_data.joinpath(*NATL), {"10u"})
    with pytest.raises(
        DataError,
        match=r"rejected what the CDS delivered: .*holds u10 \(paramId 165\); "
        r"expected only field 't2m'",
    ):
        sources.acquire(UK_DATA, _fast(tmp_path), "t2m", "2019-03", tmp_path / "t2m.grib")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["slots"]


def test_an_incomplete_delivery_is_rejected(tmp_path, server, shared_data):
    server.payload = lambda dataset, request: subset(shared_data.joinpath(*IFS), {"t"}, {500})
    with pytest.raises(DataError, match=r"rejected what the CDS delivered: .*has 8 messages, expected 16"):
        sources.acquire(PL_DATA, _fast(tmp_path), "t", "2024-06", tmp_path / "t.grib")


def test_a_bad_request_fails_at_once(tmp_path, server):
    server.post_failures = [400]
    with pytest.raises(DataError, match="failed: HTTPError: 400"):
        sources.acquire(PL_DATA, _fast(tmp_path), "t", "2024-06", tmp_path / "t.grib")
    assert len(server.submissions) == 1


def test_credentials_never_appear_in_logs_or_outputs(tmp_path, server, caplog, capfd):
    caplog.set_level(logging.DEBUG)
    out = sources.acquire(PL_DATA, _fast(tmp_path), "t", "2024-06", tmp_path / "t.grib")
    assert any("cdsapi" in r.getMessage() for r in caplog.records)  # the client's messages are relayed
    captured = capfd.readouterr()
    assert server.key not in caplog.text + captured.out + captured.err
    for p in tmp_path.rglob("*"):
        if p.is_file():
            assert server.key.encode() not in p.read_bytes(), p
    assert out.exists()


def test_wrong_and_missing_credentials_fail_clearly(tmp_path, server, monkeypatch, capfd):
    monkeypatch.setenv("CDSAPI_KEY", "not-the-key-42")
    with pytest.raises(DataError, match="rejected the credentials") as e:
        sources.acquire(PL_DATA, _fast(tmp_path), "t", "2024-06", tmp_path / "t.grib")
    assert "not-the-key-42" not in str(e.value) + capfd.readouterr().err
    monkeypatch.delenv("CDSAPI_KEY")
    with pytest.raises(DataError, match="no CDS credentials"):
        sources.acquire(PL_DATA, _fast(tmp_path), "t", "2024-06", tmp_path / "t.grib")


@pytest.mark.slow
def test_requests_in_flight_respect_the_concurrency_limit(tmp_path, server):
    server.hold_s = 0.3
    data = DataConfig(
        fields={"t": FieldSpec((500, 850), "pl")},
        start="2024-06-03T00",
        end="2024-06-04T18",
        step_hours=6,
        grid=(10.0, 10.0),
    )
    errors = []

    def job(i):
        try:
            sources.acquire(data, _fast(tmp_path, max_concurrent=2), "t", "2024-06", tmp_path / f"{i}" / "t.grib")
        except Exception as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=job, args=(i,)) for i in range(4)]
    [t.start() for t in threads]
    [t.join(60) for t in threads]
    assert not errors and len(server.submissions) == 4
    assert server.max_active == 2
