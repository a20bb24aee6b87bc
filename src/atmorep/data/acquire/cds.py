"""The ``cds`` source: ERA5 from the Copernicus Climate Data Store through ``cdsapi``.

One request per (field, year, month), the unit AtmoRep stores. :func:`plan` turns a campaign into
those requests:

* model levels: ``reanalysis-era5-complete`` with MARS keys (class ea, expver, stream oper, type an,
  levtype ml, levelist, param id, date range, time list, **grid 0.25/0.25**: without a grid ERA5's
  vo, d, t and z on model levels come as spherical-harmonic coefficients);
* pressure levels: ``reanalysis-era5-pressure-levels``; surface: ``reanalysis-era5-single-levels``
  (CDS form names, GRIB, unarchived), with the same explicit grid and optional area.

Politeness and robustness: at most ``acquire.cds.max_concurrent`` requests are in flight over all
jobs sharing ``slots_dir`` (lock files); HTTP 429/5xx and dropped connections are retried inside
``cdsapi`` with exponential back-off, and a failed request as a whole up to ``attempts`` times,
again backing off exponentially (with jitter). The download resumes a partial file with HTTP
ranges, also after the job was killed (the result's location is kept beside the partial file).
What arrived is validated (fields, level type, levels, every requested date and time once, grid)
before anything counts as done. Credentials come from ``~/.cdsapirc`` or ``CDSAPI_URL``/
``CDSAPI_KEY`` (``CDSAPI_RC`` names another file) and are scrubbed from every log record.

One module although it runs past ~400 lines, because it is one protocol client read in the order a
job meets it: the planned :class:`Request` is also the key of the state kept for resuming and says
what must arrive; slots, back-off, credential scrubbing and the resumable download are steps of the
same exchange with the CDS and exist for no other source.
"""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import fcntl
import hashlib
import json
import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from atmorep import fields
from atmorep.config import AcquireConfig, CdsConfig, DataConfig
from atmorep.data.acquire.inventory import Expectation, check_headers
from atmorep.data.acquire.protocol import ConfiguredGrid
from atmorep.data.acquire.retry import TRANSIENT_HTTP, backoff
from atmorep.errors import DataError
from atmorep.formats import grib
from atmorep.formats.atomic import Replacement

log = logging.getLogger(__name__)

DATASETS = {
    "ml": "reanalysis-era5-complete",
    "pl": "reanalysis-era5-pressure-levels",
    "sfc": "reanalysis-era5-single-levels",
}
DEFAULT_GRID = (0.25, 0.25)  # always sent: without a grid, model-level fields come as spectral coefficients


# --------------------------------------------------------------------------------------------
# Planning


@dataclass(frozen=True)
class Request:
    """One CDS request: a field for the days of one month, and what must come back."""

    field: str
    month: str
    dataset: str
    body: dict
    arrival: Expectation = dataclasses.field(compare=False)  # every requested day, time and level

    @property
    def key(self) -> str:
        # What was asked, hashed: a download is resumed only for the very same request (a changed
        # config is a new request).
        return hashlib.sha256(json.dumps([self.dataset, self.body], sort_keys=True).encode()).hexdigest()

    def to_json(self) -> dict:
        return {"field": self.field, "month": self.month, "dataset": self.dataset, "request": self.body}


def request_for(data: DataConfig, cfg: AcquireConfig, field_name: str, month: str) -> Request:
    """The request for ``field_name`` in ``month``: whole days of the month inside the campaign."""
    info = fields.info(field_name)
    if info is None:
        raise DataError(f"field '{field_name}' has no known ERA5 parameter (see src/atmorep/fields.py)")
    spec = data.fields[field_name]
    kind = spec.kind
    if kind not in DATASETS:
        raise DataError(
            f"field '{field_name}': the cds source serves ERA5 levtype ml, pl or sfc, not "
            f"'{kind}' (data.fields.{field_name}.levtype)"
        )
    step = data.step_hours or 1
    if 24 % step:
        raise DataError(f"data.step_hours {step} does not divide a day")
    final = Expectation.for_month(data, field_name, month)
    # Whole days (the CDS asks for days and times, not a time range); _keep_campaign trims the ends.
    days = np.arange(final.first.astype("datetime64[D]"), final.last.astype("datetime64[D]") + 1)
    hours = list(range(0, 24, step))
    dlat, dlon = data.grid or DEFAULT_GRID
    grid = f"{dlat:g}/{dlon:g}"
    area = "/".join(f"{a:g}" for a in data.area) if data.area else None
    body: dict[str, Any]
    if kind == "ml":
        body = {
            "class": "ea",
            "expver": cfg.cds.expver,
            "stream": "oper",
            "type": "an",
            "levtype": "ml",
            "levelist": "/".join(str(lev) for lev in spec.levels),
            "param": str(info.param_id),
            "date": f"{days[0]}/to/{days[-1]}",
            "time": "/".join(f"{h:02d}" for h in hours),
            "grid": grid,
            "data_format": "grib",
        }
        if area:
            body["area"] = area
    else:
        if info.cds_variable is None:
            raise DataError(
                f"field '{field_name}' ({info.long_name}, paramId {info.param_id}) has no CDS form name in "
                "src/atmorep/fields.py (_OURS); add it there, or use levtype ml (requests by paramId)"
            )
        body = {
            "product_type": ["reanalysis"],
            "variable": [info.cds_variable],
            "year": [month[:4]],
            "month": [month[5:7]],
            "day": [str(d)[8:10] for d in days],
            "time": [f"{h:02d}:00" for h in hours],
            "grid": grid,
            "data_format": "grib",
            "download_format": "unarchived",  # the GRIB itself, not a zip holding it
        }
        if kind == "pl":
            body["pressure_level"] = [str(lev) for lev in spec.levels]
        if area:
            body["area"] = area
    # What must arrive is what was asked (every day x hour), checked before the trim to the campaign.
    times = (days.astype("datetime64[s]")[:, None] + np.array(hours) * np.timedelta64(3600, "s")).ravel()
    arrival = Expectation(
        field_name,
        kind,
        tuple(spec.levels),
        times[0],
        times[-1],
        times,
        (dlat, dlon),
        data.area,
    )
    return Request(field_name, month, DATASETS[kind], body, arrival)


def plan(data: DataConfig, cfg: AcquireConfig) -> list[Request]:
    """Every request of the campaign: one per (field, year, month)."""
    return [request_for(data, cfg, f, m) for f in data.fields for m in data.months()]


# --------------------------------------------------------------------------------------------
# Credentials, logging, concurrency, back-off


def credentials() -> tuple[str, str]:
    """(url, key) as cdsapi finds them: CDSAPI_URL/CDSAPI_KEY, else CDSAPI_RC or ~/.cdsapirc."""
    import cdsapi.api

    try:
        url, key, _ = cdsapi.api.get_url_key_verify(None, None, None)
    except Exception:
        rc = os.environ.get("CDSAPI_RC", "~/.cdsapirc")
        raise DataError(
            f"no CDS credentials: write 'url: https://cds.climate.copernicus.eu/api' and "
            f"'key: <your personal access token>' into {rc}, or set CDSAPI_URL and CDSAPI_KEY"
        ) from None
    if ":" in key:
        raise DataError(
            "the CDS key has the old 'UID:KEY' form; the current CDS takes the personal access "
            "token shown on your CDS profile page"
        )
    return url, key


class _Scrub(logging.Filter):
    """Replaces the secret in every record that passes a handler."""

    def __init__(self, secret: str):
        super().__init__()
        self.secret = secret

    def filter(self, record: logging.LogRecord) -> bool:
        if self.secret:
            try:
                text = record.getMessage()
            except Exception:  # a record that cannot be formatted is the handler's to report, not ours
                return True
            if self.secret in text:
                # args cleared: the scrubbed text is final and must not be %-formatted again.
                record.msg, record.args = text.replace(self.secret, "***"), None
        return True


@contextlib.contextmanager
def scrubbed(secret: str):
    """Scrub ``secret`` from everything logged through the root logger's handlers meanwhile."""
    f = _Scrub(secret)
    # On the handlers, not a logger: a handler sees the records of every logger (cdsapi's,
    # urllib3's), a logger's filter only its own.
    handlers = list(logging.getLogger().handlers)
    for h in handlers:
        h.addFilter(f)
    try:
        yield f
    finally:
        for h in handlers:
            h.removeFilter(f)


def _relay(level: int, secret: str):
    def emit(msg, *args, **kwargs):
        text = str(msg) % args if args else str(msg)
        log.log(level, "cdsapi: %s", text.replace(secret, "***") if secret else text)

    return emit


@contextlib.contextmanager
def slot(directory: Path, n: int, poll_s: float = 1.0):
    """Hold one of ``n`` request slots (flock'ed files in ``directory``) while the block runs."""
    directory.mkdir(parents=True, exist_ok=True)
    waited = False
    # flock, not a count in a file: the kernel releases a killed job's lock, so no slot leaks.
    while True:
        for i in range(n):
            fd = os.open(directory / f"slot-{i}.lock", os.O_RDWR | os.O_CREAT, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError as exc:
                os.close(fd)
                if exc.errno in (errno.EAGAIN, errno.EACCES, errno.EWOULDBLOCK):
                    continue
                raise
            try:
                yield i
            finally:
                fcntl.flock(fd, fcntl.LOCK_UN)
                os.close(fd)
            return
        if not waited:
            log.info("all %d CDS request slots in %s are busy; waiting", n, directory)
            waited = True
        time.sleep(poll_s)


# --------------------------------------------------------------------------------------------
# The source


class _Stale(Exception):
    """A remembered download location that no longer serves the file."""


def _is_transient(exc: BaseException) -> bool:
    import requests
    from ecmwf.datastores.processing import DownloadError, ProcessingFailedError

    if isinstance(exc, requests.HTTPError):
        code = exc.response.status_code if exc.response is not None else None
        return code is None or code in TRANSIENT_HTTP  # no response at all: the network, worth a retry
    return isinstance(exc, (requests.RequestException, ProcessingFailedError, DownloadError, _Incomplete))


class _Incomplete(Exception):
    pass


def _describe(exc: BaseException, secret: str) -> str:
    import requests

    text = f"{type(exc).__name__}: {exc}".splitlines()[0]
    if isinstance(exc, requests.HTTPError) and exc.response is not None and exc.response.status_code in (401, 403):
        text = (
            f"HTTP {exc.response.status_code}: the CDS rejected the credentials (check the key in ~/.cdsapirc "
            "or CDSAPI_KEY, and that the dataset's licence is accepted on your profile)"
        )
    return text.replace(secret, "***") if secret else text


class CdsSource(ConfiguredGrid):
    """Fetches one (field, month) through cdsapi, resumably and politely."""

    name = "the Copernicus CDS"
    default_grid = DEFAULT_GRID  # ERA5 as the CDS packs it: 16 bits per value

    def times(self, data: DataConfig, month: str) -> np.ndarray:
        return data.times(month, data.step_hours or 1)  # hourly without data.step_hours, as request_for asks

    @staticmethod
    def client(cfg: CdsConfig, url: str, key: str):
        import cdsapi

        c = cdsapi.Client(
            url=url,
            key=key,
            quiet=True,
            progress=False,
            retry_max=cfg.http_retries,
            sleep_max=cfg.poll_max_s,
            timeout=cfg.timeout_s,
            wait_until_complete=True,
            delete=False,  # the result stays on the CDS: a killed job's download can resume
            info_callback=_relay(logging.INFO, key),
            warning_callback=_relay(logging.WARNING, key),
            error_callback=_relay(logging.ERROR, key),
            debug_callback=_relay(logging.DEBUG, key),
        )
        # cdsapi >= 0.7 runs on ecmwf-datastores-client: exponential HTTP back-off instead of a fixed pause
        if cfg.backoff_max_s > cfg.backoff_s:
            c.client.retry_after = (cfg.backoff_s, cfg.backoff_max_s, 2.0)
        return c

    def fetch(self, data: DataConfig, cfg: AcquireConfig, field_name: str, month: str, out: Path) -> None:
        req = request_for(data, cfg, field_name, month)
        url, key = credentials()
        # Beside the output (one filesystem: os.replace works), hidden, and named by the unit so that a
        # rerun of the job finds them.
        part = out.parent / f".cds-{field_name}-{month}.part"
        state = out.parent / f".cds-{field_name}-{month}.json"
        c = cfg.cds
        slots = (
            Path(os.path.expanduser(c.slots_dir)) if c.slots_dir else Path.home() / ".cache" / "atmorep" / "cds-slots"
        )
        with scrubbed(key):
            self._retrieve(req, c, url, key, part, state, slots)
            try:
                headers = grib.scan(part)
                check_headers(headers, req.arrival, f"CDS {req.dataset} {field_name} {month}")
            except DataError as exc:
                # Both gone: a retry asks again instead of resuming the rejected file.
                part.unlink(missing_ok=True)
                state.unlink(missing_ok=True)
                raise DataError(f"rejected what the CDS delivered: {exc}") from None
            self._keep_campaign(part, headers, Expectation.for_month(data, field_name, month), out)
            part.unlink(missing_ok=True)
            state.unlink(missing_ok=True)

    def _retrieve(self, req: Request, c: CdsConfig, url: str, key: str, part: Path, state: Path, slots: Path):
        client = None
        last: Exception = RuntimeError("no attempt ran")  # each failed attempt replaces it
        for attempt in range(c.attempts):
            if attempt:
                wait = backoff(attempt - 1, c.backoff_s, c.backoff_max_s)
                log.warning(
                    "CDS %s %s: attempt %d of %d failed (%s); retrying in %.1f s",
                    req.field,
                    req.month,
                    attempt,
                    c.attempts,
                    _describe(last, key),
                    wait,
                )
                time.sleep(wait)
            try:
                with slot(slots, c.max_concurrent):
                    location, size = self._remembered(req, state)
                    if location is None:
                        # Made only to submit: a resumed download needs no client.
                        client = client or self.client(c, url, key)
                        location, size = self._submit(client, req, state)
                    self._download(location, size, part, c)
                return
            except _Stale as exc:
                log.warning("CDS %s %s: %s; submitting the request again", req.field, req.month, exc)
                state.unlink(missing_ok=True)
                part.unlink(missing_ok=True)
                last = exc
            except Exception as exc:
                if not _is_transient(exc):
                    raise DataError(
                        f"CDS request for '{req.field}' {req.month} ({req.dataset}) failed: {_describe(exc, key)}"
                    ) from None
                last = exc
        raise DataError(
            f"CDS request for '{req.field}' {req.month} ({req.dataset}) failed {c.attempts} times; "
            f"last: {_describe(last, key)}"
        )

    @staticmethod
    def _remembered(req: Request, state: Path) -> tuple[str | None, int]:
        try:
            s = json.loads(state.read_text())
        except (OSError, ValueError):
            return None, 0
        if s.get("key") != req.key:
            return None, 0
        log.info("CDS %s %s: resuming the finished request's download", req.field, req.month)
        return s["location"], int(s["size"])

    @staticmethod
    def _submit(client, req: Request, state: Path) -> tuple[str, int]:
        log.info("CDS %s %s: submitting to %s", req.field, req.month, req.dataset)
        t0 = time.monotonic()
        result = client.retrieve(req.dataset, req.body)
        location, size = result.location, int(result.content_length)
        log.info("CDS %s %s: ready after %.0f s (%.1f MB)", req.field, req.month, time.monotonic() - t0, size / 1e6)
        # Recorded before the download starts: a job killed while downloading resumes instead of
        # queueing the request again.
        with Replacement(state) as tmp:
            tmp.write_text(json.dumps({"key": req.key, "location": location, "size": size}))
        return location, size

    @staticmethod
    def _download(location: str, size: int, part: Path, c: CdsConfig) -> None:
        """Fetch ``location`` into ``part``, continuing a partial file with an HTTP range request."""
        import requests

        have = part.stat().st_size if part.exists() else 0
        if have > size:  # not a prefix of this result: start over
            part.unlink()
            have = 0
        if have == size:
            return
        headers = {"Range": f"bytes={have}-"} if have else {}
        with requests.get(location, headers=headers, stream=True, timeout=c.timeout_s) as r:
            if r.status_code in (404, 410):
                raise _Stale(f"the result at its download location is gone (HTTP {r.status_code})")
            r.raise_for_status()
            if have and r.status_code != 206:  # the server ignored the range: start over
                have = 0
            if have:
                log.info("resuming the download at byte %d of %d", have, size)
            with open(part, "ab" if have else "wb") as f:
                for chunk in r.iter_content(chunk_size=64 << 10):  # small: little is lost if the connection drops
                    f.write(chunk)
        got = part.stat().st_size
        if got != size:
            raise _Incomplete(f"downloaded {got} of {size} bytes")

    @staticmethod
    def _keep_campaign(part: Path, headers, final: Expectation, out: Path) -> None:
        """Copy the messages inside the campaign (whole days were requested) to ``out``."""
        keep = [h for h in headers if final.first <= h.time <= final.last]
        if len(keep) == len(headers):
            os.replace(part, out)  # nothing to trim: a rename, no copy
            return
        with open(part, "rb") as src, open(out, "wb") as dst:
            for h in keep:
                src.seek(h.offset)
                dst.write(src.read(h.length))
