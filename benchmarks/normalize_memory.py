"""Peak memory of the normalize stage on a production-size month, without 15 GB of disk.

    python benchmarks/normalize_memory.py [--hours 744] [--levels 5] [--write DIR]

One month of one field at 0.25° hourly on 5 levels is 744 x 5 x 721 x 1440 float32 = 15.4 GB. The
stage holds such a month in a scratch file (pass 1, one message at a time: exercised on real
disk by tests/data/test_normalize.py), then reads it back in time blocks for the statistics
(Welford/Chan in float64) and again to normalize and write. Here the scratch file is replaced by
a generator that synthesises the same blocks on every read, and chunks are discarded instead of
written (unless ``--write DIR``), so only the stage's own working memory is measured.

Last line: ``peak_rss_mb=<MB>`` (ru_maxrss of this process; the target is < 4096).
"""

from __future__ import annotations

import argparse
import resource
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from _checks import require


class SyntheticSlab:
    """Blocks of a smooth, time-varying field, generated on each read (a stand-in for the scratch file)."""

    def __init__(self, shape):
        self.shape = shape
        T, L, Y, X = shape
        lat = np.linspace(90, -90, Y, dtype=np.float32)
        lon = np.arange(X, dtype=np.float32) * 360 / X
        self.base = (250 + 30 * np.cos(np.deg2rad(lat))[:, None] + 5 * np.sin(np.deg2rad(lon))[None]).astype(np.float32)

    def read(self, t0: int, t1: int) -> np.ndarray:
        T, L, Y, X = self.shape
        block = np.empty((t1 - t0, L, Y, X), np.float32)
        for i, t in enumerate(range(t0, t1)):
            for lev in range(L):
                np.add(self.base, np.float32(np.sin(2 * np.pi * t / 24) * 3 + lev), out=block[i, lev])
        return block

    def close(self) -> None:
        pass


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--hours", type=int, default=744)
    ap.add_argument("--levels", type=int, default=5)
    ap.add_argument("--method", choices=("global", "local"), default="local")
    ap.add_argument("--write", type=Path, help="write the store here (needs hours x levels x 4.15 MB of disk)")
    args = ap.parse_args(argv)

    from atmorep.config import NormalizeConfig, QCConfig
    from atmorep.data.normalize import decode, slabs, store
    from atmorep.data.normalize.qc import Gate
    from atmorep.formats import zarrv3
    from atmorep.formats.grib import Grid, Param

    T, L, Y, X = args.hours, args.levels, 721, 1440
    cfg = NormalizeConfig(method=args.method)
    lats, lons = np.linspace(90, -90, Y), np.arange(X) * 0.25
    grid = Grid("regular_ll", ny=Y, nx=X, dlat=0.25, dlon=0.25, lats=lats, lons=lons)
    times = np.datetime64("2021-03-01T00", "s") + np.arange(T) * np.timedelta64(3600, "s")
    levels = [96, 105, 114, 123, 137][:L] if L <= 5 else list(range(L))
    m = decode.Month(
        "t",
        "2021-03",
        Path("synthetic"),
        "0" * 64,
        times,
        levels,
        grid,
        SyntheticSlab((T, L, Y, X)),
        Gate("synthetic", "t", levels, times, QCConfig()),
        Param("t", "t", 130, "K", "Temperature"),
    )
    if args.write is None:
        zarrv3.Array.write_chunk = lambda self, index, values: None  # discard: no 15 GB of disk
    out_root = args.write or Path(tempfile.mkdtemp(prefix="atmorep-mem-"))
    t0 = time.perf_counter()
    try:
        moments = decode.moments_of(m, cfg)
        stats = moments.stats(args.method)
        t1 = time.perf_counter()
        store.write_normalized(
            m,
            stats,
            cfg,
            out_root / "t.zarr",
            {
                "field": "t",
                "month": "2021-03",
                "normalization": args.method,
                "statistics": "monthly",
                "statistics_period": "2021-03",
            },
        )
        t2 = time.perf_counter()
    finally:
        if args.write is None:
            shutil.rmtree(out_root, ignore_errors=True)
    gb = T * L * Y * X * 4 / 1e9
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    nt, chunk_t = slabs.block_steps(cfg, (T, L, Y, X))
    print(
        f"month {T} h x {L} levels x {Y} x {X} = {gb:.1f} GB float32; blocks of {nt} steps "
        f"(block_mb={cfg.block_mb}), chunks of {chunk_t}"
    )
    print(f"statistics {t1 - t0:.1f} s ({gb / (t1 - t0):.2f} GB/s), normalize+write {t2 - t1:.1f} s")
    print(
        f"global mean/std of level {levels[0]}: {float(moments.stats('global').mean[0]):.3f} / "
        f"{float(moments.stats('global').std[0]):.3f}"
    )
    print(f"peak_rss_mb={peak:.0f}")
    require(peak_rss_mb=peak)
    return 0


if __name__ == "__main__":
    sys.exit(main())
