"""Remote read efficiency of the zarr source: one (field, month) through a distant, loaded link.

Builds an ARCO-ERA5 model-level store (zarr v2, consolidated metadata, ``temperature`` on ``hybrid``
1..137, chunks 1 × 18 × lat × lon, float32, uncompressed, so the bytes on the wire are the chunk
bytes; only the 3 level chunks that AtmoRep's levels 96/105/114/123/137 touch are written, the
others are never read), then acquires one field over ``--hours`` of a month (the campaign) twice
with ``acquire.source: zarr``:

- **local**: from the store's path (the same reader: read-ahead, journal, GRIB writer);
- **remote**: over HTTP from tests/data/range_server.py (a process of its own) on 127.0.0.1, which waits ``--rtt-ms``
  before every answer, caps the link at ``--mb-s`` over all connections and answers a fraction
  ``--fail`` of the requests 503 (seeded).

ideal = max(local time, bytes read / link cap): the remote read cannot beat the local one (same
decoding and GRIB writing) nor the link. Last line:
``remote_efficiency=<ideal / remote time> retries=<n> identical=<yes|no>`` (identical: the two GRIB
files are byte-equal). Defaults are the scenario of issue 24: 1° grid, 48 h (675 MB), 60 ms, 150 MB/s,
2 % 503s. ``--compare`` first times the raw transfer of the unit's chunk files through each client
considered (one after another; fsspec's async ``cat`` of all URLs; obstore's ``get_async`` with the
same concurrency, when obstore is importable). Exits non-zero when a read fails, when the outputs
differ or when a figure is not a measured number.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
SERVER = REPO / "tests" / "data" / "range_server.py"  # the server the tests use, run as a process of its own
sys.path.append(str(Path(__file__).parent))

from _arco import LEVEL_CHUNK, LEVELS, NLEV, arco_layout  # noqa: E402 (beside this script)


def build_store(path: Path, ny: int, nx: int, hours: int) -> list[str]:
    """The ARCO layout with the level chunks LEVELS touch; returns the keys of those chunks."""
    import zarr

    t, lats, _ = arco_layout(path, ny, nx, hours)
    first = (min(LEVELS) - 1) // LEVEL_CHUNK * LEVEL_CHUNK  # level index where the touched chunks begin
    rng = np.random.default_rng(0)
    noise = rng.standard_normal((NLEV - first, ny, nx), dtype=np.float32)
    profile = (200.0 + 60.0 * np.cos(np.deg2rad(lats)))[:, None].astype("f4")
    for it in range(hours):  # every value differs: a block written twice or out of place would show
        t[it, first:] = profile[None] + noise + np.float32(0.01 * it)
    zarr.consolidate_metadata(path, zarr_format=2)
    chunks = sorted({(lev - 1) // LEVEL_CHUNK for lev in LEVELS})
    return [f"temperature/{it}.{c}.0.0" for it in range(hours) for c in chunks]


def acquire(url: str, root: Path, name: str, hours: int, **zarr_kw) -> tuple[float, dict, bytes]:
    from atmorep.config import AcquireConfig, DataConfig, FieldSpec, ZarrSourceConfig
    from atmorep.data.acquire import sources

    end = str(np.datetime64("2021-01-01T00", "h") + hours - 1)
    data = DataConfig(
        fields={"t": FieldSpec(levels=LEVELS, levtype="ml")}, start="2021-01-01T00", end=end, step_hours=1
    )
    cfg = AcquireConfig(source="zarr", zarr=ZarrSourceConfig(url=url, **zarr_kw))
    out = root / f"{name}.grib"
    t0 = time.perf_counter()
    sources.acquire(data, cfg, "t", "2021-01", out)
    took = time.perf_counter() - t0
    prov = json.loads(sources.provenance_path(out).read_text())
    blob = out.read_bytes()
    out.unlink()
    return took, prov, blob


def compare_clients(url: str, keys: list[str], concurrency: int) -> list[str]:
    """Seconds to move the unit's chunk files through each client (transfer only, no decoding)."""
    import fsspec

    urls = [f"{url}/{k}" for k in keys]
    lines = []
    fs = fsspec.filesystem("http", skip_instance_cache=True)
    t0 = time.perf_counter()
    n = sum(len(fs.cat_file(u)) for u in urls)
    lines.append(f"  one request after another (the reader before issue 24): {time.perf_counter() - t0:.2f} s")
    t0 = time.perf_counter()
    got = fs.cat(urls, batch_size=concurrency, on_error="raise")
    lines.append(f"  fsspec async cat, {concurrency} in flight: {time.perf_counter() - t0:.2f} s")
    assert sum(map(len, got.values())) == n
    try:
        from obstore.store import HTTPStore
    except ImportError:
        lines.append("  obstore: not installed (pip install obstore)")
        return lines
    import obstore

    async def fetch_all():
        store = HTTPStore.from_url(url, client_options={"allow_http": True})
        sem = asyncio.Semaphore(concurrency)

        async def one(k):
            async with sem:
                r = await obstore.get_async(store, k)
                return len(await r.bytes_async())

        return sum(await asyncio.gather(*(one(k) for k in keys)))

    t0 = time.perf_counter()
    try:
        m = asyncio.run(fetch_all())
        lines.append(f"  obstore get_async, {concurrency} in flight: {time.perf_counter() - t0:.2f} s ({m == n})")
    except Exception as exc:  # its own retries exhausted, or an API change
        lines.append(f"  obstore: failed after {time.perf_counter() - t0:.2f} s ({type(exc).__name__}: {exc})")
    return lines


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--hours", type=int, default=48, help="hours of the month read (default 48)")
    ap.add_argument("--grid", type=float, default=1.0, help="grid spacing in degrees (default 1: 181x360)")
    ap.add_argument("--rtt-ms", type=float, default=60.0, help="round trip before every answer (default 60)")
    ap.add_argument("--mb-s", type=float, default=150.0, help="link cap in MB/s (default 150)")
    ap.add_argument("--fail", type=float, default=0.02, help="fraction of requests answered 503 (default 0.02)")
    ap.add_argument("--concurrency", type=int, default=None, help="acquire.zarr.concurrency (default: the config's)")
    ap.add_argument("--readahead-mb", type=int, default=None, help="acquire.zarr.readahead_mb (default: the config's)")
    ap.add_argument("--compare", action="store_true", help="first time the raw transfer through each client")
    ap.add_argument("--quick", action="store_true", help="12 h on a 2° grid with 5 %% 503s: seconds")
    args = ap.parse_args(argv)
    if args.quick:
        args.hours, args.grid, args.fail = 12, 2.0, 0.05
    ny, nx = int(round(180 / args.grid)) + 1, int(round(360 / args.grid))
    zarr_kw = {k: v for k, v in (("concurrency", args.concurrency), ("readahead_mb", args.readahead_mb)) if v}

    from _checks import require

    from atmorep.config import ZarrSourceConfig

    cap = args.mb_s * 1e6
    with tempfile.TemporaryDirectory(prefix="remote_read_") as tmp:
        root = Path(tmp)
        t0 = time.perf_counter()
        keys = build_store(root / "arco.zarr", ny, nx, args.hours)
        print(
            f"store {args.hours} h x {NLEV} levels x {ny}x{nx}, {len(keys)} chunks to read, "
            f"built in {time.perf_counter() - t0:.1f} s"
        )
        local, lprov, lblob = acquire(str(root / "arco.zarr"), root, "local", args.hours, **zarr_kw)
        print(f"local:  {local:.2f} s, {lprov['bytes_read'] / 1e6:.0f} MB read, {lprov['requests']} requests")
        # The server runs in a process of its own: a remote store does not share the reader's interpreter.
        server = subprocess.Popen(
            [sys.executable, str(SERVER), str(root), "--rtt-ms", str(args.rtt_ms), "--mb-s", str(args.mb_s)]
            + ["--fail", "0" if args.compare else str(args.fail)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        try:
            url = server.stdout.readline().strip()

            def tell(cmd: str) -> None:
                server.stdin.write(cmd + "\n")
                server.stdin.flush()
                server.stdout.readline()

            conc = zarr_kw.get("concurrency", ZarrSourceConfig.concurrency)
            if args.compare:  # without 503s: of these clients only the zarr source retries
                print(f"raw transfer of the {len(keys)} chunk files (no 503s):")
                print("\n".join(compare_clients(f"{url}/arco.zarr", keys, conc)))
                tell(f"fail {args.fail}")
                tell("reset")
            remote, rprov, rblob = acquire(f"{url}/arco.zarr", root, "remote", args.hours, **zarr_kw)
            server.stdin.close()
            stats = json.loads(server.stdout.readline())
        finally:
            server.kill() if server.poll() is None else None
            server.wait()
        failures, most = stats["failures"], stats["max_in_flight"]
    read = rprov["bytes_read"]
    ideal = max(local, read / cap)
    print(
        f"remote: {remote:.2f} s, {read / 1e6:.0f} MB read ({read / 1e6 / remote:.0f} MB/s), {rprov['requests']} "
        f"requests, {rprov['retries']} retries for {failures} answers 503, at most {most} in flight "
        f"(concurrency {rprov['concurrency']}, {rprov['readahead_blocks']} blocks ahead, memory bound "
        f"{rprov['memory_bound_bytes'] / 2**20:.0f} MiB)"
    )
    print(
        f"ideal:  max(local {local:.2f} s, {read / 1e6:.0f} MB / {args.mb_s:g} MB/s = {read / cap:.2f} s) "
        f"= {ideal:.2f} s"
    )
    identical = lblob == rblob and len(lblob) > 0
    efficiency = ideal / remote
    print(f"remote_efficiency={efficiency:.3f} retries={rprov['retries']} identical={'yes' if identical else 'no'}")
    require(remote_efficiency=efficiency)
    if not identical:
        sys.exit("remote_read: the remote GRIB differs from the local one")
    return 0


if __name__ == "__main__":
    sys.exit(main())
