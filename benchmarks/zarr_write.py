"""Writing a dense sharded token store: atmorep's writer against zarr-python's ``shards=``.

    python benchmarks/zarr_write.py [--grid 0.5] [--steps 96] [--levels 5] [--repeats 3] [--out DIR]
    python benchmarks/zarr_write.py --quick   # seconds: a 4° grid, 12 steps, one repeat

The same float32 values, on a global grid cropped as ``atmorep shard`` crops it (poles excluded,
whole [3, 9, 9] tokens), in the production layout (``shards.layout`` with the ``ShardConfig``
defaults: inner chunks of one token position of every level, 24 x 16 x 32 of them per shard; at the
default 96 steps the last row of shards in time, and the last in latitude, are not full), written
one row of shards at a time as ``atmorep shard`` writes them, by

- ours: ``zarrv3.writing`` + ``Store.create_sharded`` + ``DenseShards.write``;
- zarr-python with the zarrs codec pipeline on every core: ``zarr.create_array(shards=...,
  compressors=None)`` and one ``a[rows] = block`` per row of shards.

The two alternate ``--repeats`` times (page cache warm, nothing synced; the median of each is
compared). After each write, zarr-python's shard files are checked for the layout the mmap reader
needs (``DenseShards.check_all``: every chunk present, in C order): the line ``zarr_python_dense: K
of N`` counts the writes that had it (zarrs stores every chunk, but the order varies from write to
write). Then both last stores are read back through zarr-python and compared
bit for bit with the values.

Last line: ``ours_vs_zarr_python=<zarr-python seconds / ours seconds>`` (the script exits 1 when the
stores differ or a time could not be measured; the dense count is not on it, as 0 is a result there,
not a failed measurement).
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import zarr
from _checks import require

from atmorep.config import ShardConfig
from atmorep.data import shards
from atmorep.formats import zarrv3

TOKEN = (3, 9, 9)
DIMS = ("time", "level", "latitude", "longitude")


def values_of(grid: float, steps: int, levels: int, seed: int = 0) -> np.ndarray:
    """Normalized-like values ``(T, L, Y, X)`` on the cropped global grid."""
    ny, nx = round(180 / grid) + 1, round(360 / grid)
    rows = shards.latitude_rows(ny, TOKEN[1])
    shards.longitude_columns(np.arange(nx) * grid, TOKEN[2])  # whole tokens, or the grid is refused
    return np.random.default_rng(seed).standard_normal((steps, levels, rows.stop - rows.start, nx), np.float32)


def rows_of(shape, shard) -> list[tuple[int, int, int, int]]:
    """(t0, t1, y0, y1) of every row of shards, all levels and longitudes."""
    return [
        (t0, min(t0 + shard[0], shape[0]), y0, min(y0 + shard[2], shape[2]))
        for t0 in range(0, shape[0], shard[0])
        for y0 in range(0, shape[2], shard[2])
    ]


def ours(path: Path, values: np.ndarray, chunk, shard) -> None:
    with zarrv3.writing(path, nbytes=values.nbytes) as store:
        arr = store.create_sharded("data", values.shape, chunk, shard, DIMS)
        for t0, t1, y0, y1 in rows_of(values.shape, shard):
            arr.write((t0, 0, y0, 0), values[t0:t1, :, y0:y1])


def zarr_python(path: Path, values: np.ndarray, chunk, shard) -> None:
    with zarrv3.pipeline(None):
        a = zarr.create_array(
            str(path / "data"),
            shape=values.shape,
            dtype="float32",
            chunks=chunk,
            shards=shard,
            compressors=None,
            fill_value=np.nan,
            dimension_names=DIMS,
        )
        for t0, t1, y0, y1 in rows_of(values.shape, shard):
            a[t0:t1, :, y0:y1] = values[t0:t1, :, y0:y1]


def same(path: Path, values: np.ndarray) -> bool:
    with zarrv3.pipeline(None):
        got = zarr.open_array(str(path / "data"), mode="r")[...]
    return np.array_equal(got.view(np.uint32), values.view(np.uint32))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--grid", type=float, default=0.5, help="grid spacing in degrees (0.5: 351 x 720 after the crop)")
    ap.add_argument("--steps", type=int, default=96, help="hourly steps (96: one full and one partial shard in time)")
    ap.add_argument("--levels", type=int, default=5)
    ap.add_argument("--repeats", type=int, default=3, help="alternating runs of each writer (medians compared)")
    ap.add_argument("--out", type=Path, help="where to write (default: a temporary directory, removed)")
    ap.add_argument(
        "--quick", action="store_true", help="smallest setting (for tests): --grid 4 --steps 12 --repeats 1"
    )
    args = ap.parse_args(argv)
    if args.quick:
        args.grid, args.steps, args.repeats = 4.0, 12, 1

    values = values_of(args.grid, args.steps, args.levels)
    chunk, shard = shards.layout(ShardConfig(token_size=TOKEN), TOKEN, values.shape)
    out = Path(tempfile.mkdtemp(prefix="zarr-write-", dir=args.out))
    writers = {"ours": ours, "zarr_python": zarr_python}
    seconds: dict[str, list[float]] = {k: [] for k in writers}
    print(
        f"{values.nbytes / 1e6:.0f} MB float32 {values.shape}, chunks {chunk}, shards {shard}, "
        f"{len(rows_of(values.shape, shard))} rows of shards",
        flush=True,
    )
    dense = 0  # zarr-python's writes whose files are all dense
    try:
        for _ in range(args.repeats):
            for name, write in writers.items():
                shutil.rmtree(out / name, ignore_errors=True)
                t = time.perf_counter()
                write(out / name, values, chunk, shard)
                seconds[name].append(time.perf_counter() - t)
            try:
                zarrv3.DenseShards(out / "zarr_python" / "data").check_all()
                dense += 1
            except zarrv3.NotDense as exc:
                print(f"zarr-python's shard files are not dense: {exc}", flush=True)
        med = {k: statistics.median(v) for k, v in seconds.items()}
        for name in writers:
            print(
                f"{name}: {med[name]:.2f} s ({values.nbytes / med[name] / 1e6:.0f} MB/s), runs "
                + ", ".join(f"{s:.2f}" for s in seconds[name]),
                flush=True,
            )
        equal = {name: same(out / name, values) for name in writers}
        print(
            "read back through zarr-python, bit-identical to the values: "
            + ", ".join(f"{k} {v}" for k, v in equal.items())
        )
        print(
            f"zarr_python_dense: {dense} of {args.repeats} of zarr-python's stores had every chunk of every "
            "shard file in C order (readable by the mmap reader)"
        )
    finally:
        shutil.rmtree(out, ignore_errors=True)
    ratio = med["zarr_python"] / med["ours"] if all(equal.values()) else float("nan")
    print(f"ours_vs_zarr_python={ratio:.2f}")
    require(ours_vs_zarr_python=ratio)
    return 0


if __name__ == "__main__":
    sys.exit(main())
