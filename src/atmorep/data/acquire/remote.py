"""Reading a zarr store at the speed of the link: requests in flight, retries, read-ahead, resume.

Three parts, each in one place:

- :class:`Link` and the store wrapper of :func:`wrap`: every request of the zarr source goes through
  it. At most ``acquire.zarr.concurrency`` requests are in flight at once (an asyncio semaphore on
  zarr's I/O loop, whose requests zarr issues concurrently for the chunks of one selection); HTTP
  408/429/5xx, timeouts and connection resets are retried up to ``acquire.zarr.retries`` times with
  exponential back-off and jitter (:func:`atmorep.data.acquire.retry.backoff`, from
  ``acquire.zarr.backoff_s`` up to :data:`BACKOFF_MAX_S`), each retry logged at debug level; any
  other error (403, a bad request) fails at once in one line naming the URL and the key. It counts
  requests, retries and bytes read for the provenance and the progress bar.
- :func:`transfer`: the unit's time blocks are read ahead of the GRIB writer by a few threads
  (each a zarr selection, so each issues its chunks' requests at once) while the writer writes them
  in order. How many blocks are read ahead follows from ``acquire.zarr.readahead_mb``: a block
  costs its values plus three times the store chunks it touches (the HTTP client joins a body's
  pieces into one buffer, which zarr then decodes),
  and the blocks read ahead plus the one being written fit the budget (at least one block ahead
  whatever the budget: :attr:`Plan.memory_bound` is the bound a job states and keeps).
- :class:`Journal`: the GRIB grows block by block in a directory beside the output; every second
  (and at the end) what was written is flushed to disk and the number of blocks and bytes is
  committed by an atomic rename. A job killed mid-month resumes after the last committed block (a
  partly appended block is cut off), so nothing committed is fetched again, and the file is
  byte-identical to that of an uninterrupted run. The journal is keyed by everything that makes the
  bytes (store, variables and their metadata, field, levels, area, times, writer): a different unit
  starts afresh.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import dataclasses
import hashlib
import json
import logging
import os
import shutil
import time
from collections import deque
from collections.abc import Callable
from pathlib import Path

import numpy as np

from atmorep.config import ZarrSourceConfig
from atmorep.data.acquire.retry import TRANSIENT_HTTP, backoff
from atmorep.errors import DataError

log = logging.getLogger(__name__)

#: the longest wait between two tries of one request
BACKOFF_MAX_S = 15.0
#: seconds between two commits of the journal (and the end of the unit)
COMMIT_EVERY_S = 1.0
#: read-ahead threads at most
MAX_AHEAD = 64


# --------------------------------------------------------------------------------------------
# The link: requests in flight, retries, counters


@dataclasses.dataclass
class Link:
    """What every request of one job shares: the limits, the counters, the URL for messages."""

    url: str
    cfg: ZarrSourceConfig = dataclasses.field(default_factory=ZarrSourceConfig)
    requests: int = 0
    retries: int = 0
    bytes_read: int = 0
    in_flight: int = 0
    max_in_flight: int = 0
    missing: list[str] = dataclasses.field(default_factory=list)  # keys the store does not have (404)
    aborted: bool = False  # set when the unit failed: queued requests stop instead of starting
    _sem: asyncio.Semaphore | None = None

    def semaphore(self) -> asyncio.Semaphore:
        # Made on first use, inside zarr's I/O loop: a semaphore belongs to the loop it waits on.
        if self._sem is None:
            self._sem = asyncio.Semaphore(self.cfg.concurrency)
        return self._sem

    def got(self, key: str, nbytes: int | None) -> None:
        if nbytes is None:
            self.missing.append(key)
            return
        self.bytes_read += nbytes


def transient(exc: BaseException) -> str | None:
    """Why ``exc`` is worth another try ('HTTP 503', 'timeout', 'connection reset'), None if it is not."""
    status = getattr(exc, "status", None) or getattr(exc, "code", None)
    if isinstance(status, int) and 100 <= status < 600:
        return f"HTTP {status}" if status in TRANSIENT_HTTP else None
    if isinstance(exc, (asyncio.TimeoutError, TimeoutError)):
        return "timeout"
    if isinstance(exc, ConnectionError):  # reset, refused, aborted, broken pipe
        return f"connection error ({type(exc).__name__})"
    try:
        import aiohttp
    except ImportError:  # pragma: no cover - aiohttp is a dependency
        return None
    # Disconnects, resets and truncated bodies; ClientResponseError carries a status (above).
    if isinstance(exc, (aiohttp.ClientConnectionError, aiohttp.ClientPayloadError)):
        return f"connection error ({type(exc).__name__})"
    return None


def _describe(exc: BaseException) -> str:
    status = getattr(exc, "status", None)
    if isinstance(status, int):
        reason = {401: "Unauthorized", 403: "Forbidden", 404: "Not Found"}.get(status, getattr(exc, "message", ""))
        return f"HTTP {status} {reason}".strip()
    return f"{type(exc).__name__}: {exc}"


async def _call(link: Link, key: str, make):
    """``await make()`` within the link's limits, retried while it fails transiently."""
    cfg = link.cfg
    for attempt in range(cfg.retries + 1):
        if link.aborted:
            raise DataError(f"zarr store {link.url}: stopped (another request of the unit failed)")
        async with link.semaphore():
            link.requests += 1
            link.in_flight += 1
            link.max_in_flight = max(link.max_in_flight, link.in_flight)
            try:
                return await make()
            except DataError:
                raise
            except Exception as exc:
                why = transient(exc)
                if why is None:
                    hint = (
                        "; the store refuses anonymous access: give credentials with acquire.zarr.storage_options"
                        if getattr(exc, "status", None) in (401, 403)
                        else ""
                    )
                    raise DataError(f"zarr store {link.url}: key '{key}': {_describe(exc)}{hint}") from None
                if attempt == cfg.retries:
                    raise DataError(
                        f"zarr store {link.url}: key '{key}': {why} on all {cfg.retries + 1} tries "
                        "(acquire.zarr.retries); the store is overloaded or unreachable: try again later "
                        "or raise acquire.zarr.retries"
                    ) from None
            finally:
                link.in_flight -= 1
        wait = backoff(attempt, cfg.backoff_s, BACKOFF_MAX_S)
        link.retries += 1
        log.debug("zarr: %s %s: %s; retry %d of %d in %.2f s", link.url, key, why, attempt + 1, cfg.retries, wait)
        await asyncio.sleep(wait)
    raise AssertionError("unreachable")  # pragma: no cover


def wrap(store, link: Link):
    """A read-only zarr store around ``store`` whose every request goes through ``link``."""
    from zarr.storage import WrapperStore

    class RemoteStore(WrapperStore):
        """Counts, limits and retries the requests of the store it wraps (see :class:`Link`)."""

        def __init__(self, inner, shared: Link):
            super().__init__(inner)
            self.link = shared

        def _with_store(self, inner):
            # zarr derives stores from this one (paths, modes): they share the link, or reads go uncounted.
            return type(self)(inner, self.link)

        @property
        def bytes_read(self) -> int:
            return self.link.bytes_read

        async def get(self, key, prototype, byte_range=None):
            buf = await _call(self.link, key, lambda: self._store.get(key, prototype, byte_range))
            self.link.got(key, None if buf is None else len(buf))
            return buf

        async def get_partial_values(self, prototype, key_ranges):
            key_ranges = list(key_ranges)
            keys = ", ".join(sorted({k for k, _ in key_ranges}))
            bufs = await _call(self.link, keys, lambda: self._store.get_partial_values(prototype, key_ranges))
            for (key, _), b in zip(key_ranges, bufs):
                self.link.got(key, None if b is None else len(b))
            return bufs

        async def exists(self, key):
            return await _call(self.link, key, lambda: self._store.exists(key))

        async def _listing(self, what: str, items):
            async def collect():
                return [x async for x in items()]

            for x in await _call(self.link, what, collect):
                yield x

        def list(self):
            return self._listing("(listing)", self._store.list)

        def list_prefix(self, prefix):
            return self._listing(f"{prefix} (listing)", lambda: self._store.list_prefix(prefix))

        def list_dir(self, prefix):
            return self._listing(f"{prefix or '/'} (listing)", lambda: self._store.list_dir(prefix))

    return RemoteStore(store, link)


# --------------------------------------------------------------------------------------------
# Blocks, the plan of a unit and its read-ahead


@dataclasses.dataclass
class Block:
    """Consecutive time steps of a unit: what :attr:`read` returns is written as one GRIB append."""

    times: np.ndarray  # datetime64[s], the valid times it holds
    read: Callable[[], np.ndarray]  # values T L Y X in the field's units, ready to write
    lats: np.ndarray  # Y, as written
    lons: np.ndarray  # X, as written
    out_bytes: int  # bytes read() may hold at once (its values, and a copy while they are converted)
    chunk_bytes: int = 0  # bytes of the store chunks it touches (decoded); 0 when unknown
    chunks: int = 1  # how many chunks (requests) that is


def touched(chunks, itemsize: int, selection) -> tuple[int, int]:
    """(bytes, number) of the chunks of shape ``chunks`` that an orthogonal ``selection`` (one index
    array per dimension) touches."""
    n = 1
    for size, idx in zip(chunks, selection):
        n *= len(np.unique(np.asarray(idx) // int(size)))
    return n * int(np.prod(chunks)) * itemsize, n


@dataclasses.dataclass(frozen=True)
class Plan:
    """How many blocks are read ahead, and the memory that keeps the job within."""

    blocks: int
    ahead: int  # blocks read ahead of the one being written
    block_cost: int  # the most one block costs in memory (values + 3 x its chunks)
    concurrency: int

    @property
    def memory_bound(self) -> int:
        """Bytes the read-ahead holds at most: the blocks ahead and the one being written."""
        return (self.ahead + 1) * self.block_cost

    @classmethod
    def of(cls, blocks: list[Block], cfg: ZarrSourceConfig) -> Plan:
        cost = max((b.out_bytes + 3 * b.chunk_bytes for b in blocks), default=0)
        chunks = min((b.chunks for b in blocks), default=1)
        # Enough blocks ahead to keep every request slot busy twice over (a retried request waits
        # while the others go on), no more than the budget allows, and at least one.
        wanted = 2 * -(-cfg.concurrency // max(chunks, 1))
        affordable = cfg.readahead_mb * 2**20 // max(cost, 1) - 1
        ahead = max(1, min(len(blocks), wanted, affordable, MAX_AHEAD))
        return cls(len(blocks), int(ahead), int(cost), cfg.concurrency)


def _key_digest(key: dict) -> str:
    return hashlib.sha256(json.dumps(key, sort_keys=True, default=str).encode()).hexdigest()


class Journal:
    """A unit's GRIB grown block by block in ``directory``, with what was committed (see module doc)."""

    def __init__(self, directory: Path, key: dict):
        self.dir = Path(directory)
        self.data = self.dir / "data.grib"
        self.state = self.dir / "state.json"
        self.digest = _key_digest(key)
        self.blocks, self.size = 0, 0
        self._last = time.monotonic()

    def open(self) -> int:
        """Blocks already committed for this unit (0: a fresh start); a partial append is cut off."""
        try:
            state = json.loads(self.state.read_text())
        except (FileNotFoundError, ValueError):
            state = None
        if state is not None and state.get("key") == self.digest and self.data.exists():
            self.blocks, self.size = int(state["blocks"]), int(state["size"])
            with open(self.data, "r+b") as f:
                f.truncate(self.size)
            return self.blocks
        if state is not None or self.dir.exists():
            log.info(
                "zarr: %s holds parts of another unit (store, levels, area or times changed); starting afresh", self.dir
            )
        shutil.rmtree(self.dir, ignore_errors=True)
        self.dir.mkdir(parents=True)
        self.data.touch()
        self._commit(0)
        return 0

    def _commit(self, blocks: int) -> None:
        with open(self.data, "rb") as f:
            os.fsync(f.fileno())
            size = os.fstat(f.fileno()).st_size
        tmp = self.state.with_suffix(".tmp")
        tmp.write_text(json.dumps({"key": self.digest, "blocks": blocks, "size": size}))
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        os.replace(tmp, self.state)
        self.blocks, self.size, self._last = blocks, size, time.monotonic()

    def written(self, blocks: int, last: bool) -> None:
        """``blocks`` blocks are appended to :attr:`data`: commit them when a second has passed or at the end."""
        if last or time.monotonic() - self._last >= COMMIT_EVERY_S:
            self._commit(blocks)

    def finish(self, out: Path) -> None:
        """Move the finished GRIB to ``out`` and remove the journal."""
        os.replace(self.data, out)
        shutil.rmtree(self.dir, ignore_errors=True)


class _Progress:
    """Blocks written, MB/s, requests in flight and retries: a bar on a terminal; in a log (Snakemake's),
    a line every 30 s."""

    EVERY_S = 30.0

    def __init__(self, link: Link, desc: str, total: int, done: int):
        from tqdm import tqdm

        self.link, self.desc = link, desc
        self.bar = tqdm(total=total, initial=done, unit="block", desc=desc, mininterval=0.5, disable=None)
        self.n, self.total = done, total
        self.t0 = self._last = time.monotonic()

    def tick(self) -> None:
        now = time.monotonic()
        mb_s = self.link.bytes_read / 1e6 / max(now - self.t0, 1e-9)
        state = f"{mb_s:.1f} MB/s, {self.link.in_flight} requests in flight, {self.link.retries} retries"
        self.n += 1
        self.bar.update(1)
        if not self.bar.disable:
            self.bar.set_postfix_str(state, refresh=False)
        elif now - self._last >= self.EVERY_S:
            self._last = now
            log.info("zarr: %s: %d of %d blocks, %s", self.desc, self.n, self.total, state)

    def close(self) -> None:
        self.bar.close()


def transfer(
    blocks: list[Block],
    write: Callable[[Path, Block, np.ndarray], None],
    out: Path,
    journal: Journal,
    link: Link,
    desc: str,
) -> dict:
    """Read ``blocks`` ahead (see :class:`Plan`) and ``write(path, block, values)`` them in order into
    the journal, then move the GRIB to ``out``; returns what the provenance records."""
    plan = Plan.of(blocks, link.cfg)
    done = journal.open()
    if done:
        log.info("zarr: %s: resuming after %d of %d blocks (committed by an earlier run)", desc, done, len(blocks))
    t0 = time.perf_counter()
    bar = _Progress(link, desc, len(blocks), done)
    # ahead + 1 readers: while one block is written, ``ahead`` are read.
    pool = concurrent.futures.ThreadPoolExecutor(plan.ahead + 1, thread_name_prefix="zarr-read")
    pending: deque[concurrent.futures.Future] = deque()
    try:
        nxt = done
        for i in range(done, len(blocks)):
            while nxt < len(blocks) and len(pending) <= plan.ahead:
                pending.append(pool.submit(blocks[nxt].read))
                nxt += 1
            values = pending.popleft().result()
            write(journal.data, blocks[i], values)
            del values
            journal.written(i + 1, last=i + 1 == len(blocks))
            bar.tick()
    except BaseException:
        link.aborted = True  # queued requests stop; the committed blocks stay for the next run
        for f in pending:
            f.cancel()
        raise
    finally:
        pool.shutdown(wait=True, cancel_futures=True)
        bar.close()
    journal.finish(out)
    took = time.perf_counter() - t0
    return {
        "requests": link.requests,
        "retries": link.retries,
        "bytes_read": link.bytes_read,
        "blocks": len(blocks),
        "blocks_resumed": done,
        "concurrency": plan.concurrency,
        "max_in_flight": link.max_in_flight,
        "readahead_blocks": plan.ahead,
        "memory_bound_bytes": plan.memory_bound,
        "seconds": round(took, 3),
    }
