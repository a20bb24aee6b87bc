"""Read amplification of the zarr source on the ARCO-ERA5 model-level layout.

Builds locally a store in the layout of ``gs://gcp-public-data-arco-era5/ar/model-level-1h-0p25deg.zarr-v1``
(zarr v2, consolidated metadata, long variable names, dims time × hybrid × latitude × longitude with
137 model levels, chunks 1 × 18 × 721 × 1440, float32; synthetic values, uncompressed so that the bytes
on the wire are the chunk bytes), serves it over HTTP on 127.0.0.1 (byte ranges, counting bytes
served) and cuts one field-month of AtmoRep's 5 model levels (96, 105, 114, 123, 137) with
``acquire.source: zarr``.

A month is represented by a few hours: the time chunk is 1 step, so every hour of the month reads
the same chunks (3 of the 8 level chunks of 18: 91-108, 109-126, 127-144 padded) for the same bytes
used, and the ratio of a 744-hour month equals the ratio of any number of its hours. The store's
time axis is those hours; the campaign is them.

Last line: ``zarr_source_read_amplification=<bytes read / bytes used>``; bytes used (the 5 selected
levels at float32) is the baseline, measured in the same run. Exits non-zero when the acquire fails,
when the reader's byte count and the server's disagree, or when the ratio is off the chunk arithmetic.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.append(
    str(REPO / "tests" / "data")
)  # the RangeServer the tests use (appended: never shadows tests/conftest.py)

from _arco import LEVEL_CHUNK, LEVELS, NLEV, arco_layout  # noqa: E402 (beside this script)


def build_arco_store(path: Path, ny: int, nx: int, hours: int, start: str = "2021-01-01T00") -> None:
    """An ARCO-ERA5 model-level store: 'temperature' on hybrid 1..137, chunks (1, 18, ny, nx)."""
    import zarr

    t, lats, lons = arco_layout(path, ny, nx, hours, start)
    profile = (200.0 + 60.0 * np.cos(np.deg2rad(lats)))[:, None] + 0.001 * lons[None, :]
    for it in range(hours):  # one hour at a time: 137 levels at 0.25° are 569 MB
        t[it] = (profile[None] + 0.2 * np.arange(NLEV)[:, None, None] + it).astype("f4")
    zarr.consolidate_metadata(path, zarr_format=2)


def predicted_ratio(ny: int, nx: int) -> tuple[int, float]:
    chunks = len({(lev - 1) // LEVEL_CHUNK for lev in LEVELS})
    return chunks, chunks * LEVEL_CHUNK / len(LEVELS)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--hours", type=int, default=2, help="hours of the month in the store (default 2)")
    ap.add_argument("--quick", action="store_true", help="1 hour on a 1° grid (181x360): seconds")
    args = ap.parse_args(argv)
    ny, nx, hours = (181, 360, 1) if args.quick else (721, 1440, args.hours)

    from range_server import RangeServer

    from atmorep.config import AcquireConfig, DataConfig, FieldSpec, ZarrSourceConfig
    from atmorep.data.acquire import sources
    from atmorep.formats import grib

    with tempfile.TemporaryDirectory(prefix="zarr_source_") as tmp:
        root = Path(tmp)
        t0 = time.perf_counter()
        build_arco_store(root / "arco.zarr", ny, nx, hours)
        built = time.perf_counter() - t0
        end = str(np.datetime64("2021-01-01T00", "h") + hours - 1)
        data = DataConfig(
            fields={"t": FieldSpec(levels=LEVELS, levtype="ml")}, start="2021-01-01T00", end=end, step_hours=1
        )
        with RangeServer(root) as srv:
            cfg = AcquireConfig(source="zarr", zarr=ZarrSourceConfig(url=f"{srv.url}/arco.zarr"))
            t0 = time.perf_counter()
            out = sources.acquire(data, cfg, "t", "2021-01", root / "t.grib")
            took = time.perf_counter() - t0
            served = srv.bytes_served
        prov = json.loads(sources.provenance_path(out).read_text())
        headers = grib.scan(out)
        if len(headers) != hours * len(LEVELS):
            print(f"zarr_source: {len(headers)} GRIB messages, expected {hours * len(LEVELS)}", file=sys.stderr)
            return 1
    read, used = prov["bytes_read"], prov["bytes_used"]
    chunk_mb = LEVEL_CHUNK * ny * nx * 4 / 1e6
    nchunks, want = predicted_ratio(ny, nx)
    ratio = read / used
    print(
        f"store {hours} h x {NLEV} levels x {ny}x{nx}, chunks 1x{LEVEL_CHUNK}x{ny}x{nx} = {chunk_mb:.1f} "
        "MB "
        f"(built in {built:.1f} s); levels {list(LEVELS)} touch {nchunks} level chunks per hour"
    )
    print(
        f"acquire {took:.1f} s: read {read / 1e6:.1f} MB (server sent {served / 1e6:.1f} MB), used "
        f"{used / 1e6:.1f} MB; chunk arithmetic {nchunks} x {LEVEL_CHUNK} / {len(LEVELS)} = {want:.2f}"
    )
    if abs(served - read) > 0.01 * read:
        print(f"zarr_source: the reader counted {read} bytes, the server sent {served}", file=sys.stderr)
        return 1
    if not math.isfinite(ratio) or abs(ratio - want) > 0.02 * want:
        print(f"zarr_source: ratio {ratio:.3f} is off the chunk arithmetic {want:.3f}", file=sys.stderr)
        return 1
    print(f"zarr_source_read_amplification={ratio:.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
