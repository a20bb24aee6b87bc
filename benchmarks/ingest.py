"""Ingest throughput: the normalize stage against bare ecCodes decoding of the same real GRIB.

    python benchmarks/ingest.py [--grib FILE] [--repeats 9]

Bare ecCodes is the usual loop (``codes_grib_new_from_file`` + ``codes_get_values`` per message),
the physical limit of GRIB decoding here. The normalize stage decodes the same file *and* checks
it (QC), computes the AtmoRep statistics, normalizes and writes the zarr v3 store and the QC
summary. Both run interleaved ``--repeats`` times in one process (warm page cache, imports done);
the medians are compared. A second baseline decodes messages already split in memory
(``codes_new_from_message``), the fastest pure-ecCodes variant, for reference.

The last line is ``ingest_vs_eccodes=<bare seconds / stage seconds>`` (1.0: as fast as bare decoding).
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
from _checks import require

REPO = Path(__file__).resolve().parents[1]
DEFAULT = REPO.parent / "shared" / "data" / "era5-t2m-uk-hourly" / "era5-2mt-2019-03-uk.grib"


def bare_eccodes(path: Path) -> int:
    import eccodes

    n = 0
    with open(path, "rb") as f:
        while (gid := eccodes.codes_grib_new_from_file(f)) is not None:
            n += eccodes.codes_get_values(gid).size
            eccodes.codes_release(gid)
    return n


def bare_eccodes_in_memory(path: Path) -> int:
    import eccodes

    from atmorep.formats.grib import iter_raw

    n = 0
    for raw in iter_raw(path):
        gid = eccodes.codes_new_from_message(raw.data)
        n += eccodes.codes_get_values(gid).size
        eccodes.codes_release(gid)
    return n


def campaign(path: Path):
    """The data config that describes the file: its one field, levels, period, step and grid."""
    from atmorep.config import DataConfig, FieldSpec
    from atmorep.formats import grib

    headers = grib.scan(path)
    h0 = headers[0]
    times = np.unique([h.time for h in headers])
    step = np.unique(np.diff(times).astype("timedelta64[h]").astype(int))
    g = h0.grid
    area = None if g.is_global else (float(g.lats[0]), g.file_lons[0], float(g.lats[-1]), g.file_lons[1])
    data = DataConfig(
        fields={
            h0.param.name: FieldSpec(
                tuple(sorted({h.level.level for h in headers})), h0.level.kind if h0.level.kind != "sfc" else "ml"
            )
        },
        start=str(times[0])[:16],
        end=str(times[-1])[:16],
        step_hours=int(step[0]) if len(step) == 1 else 0,
        grid=(g.dlat, g.dlon),
        area=area,
    )
    return data, h0.param.name, str(times[0].astype("datetime64[M]")), len(headers)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--grib", type=Path, default=DEFAULT, help=f"one field and month of GRIB (default: {DEFAULT.name})")
    ap.add_argument("--repeats", type=int, default=9)
    ap.add_argument("--method", choices=("global", "local"), default="local")
    args = ap.parse_args(argv)
    if not args.grib.exists():
        print(f"{args.grib}: no such file (pass --grib)", file=sys.stderr)
        return 1

    from atmorep.config import NormalizeConfig
    from atmorep.data import normalize

    data, field, month, messages = campaign(args.grib)
    cfg = NormalizeConfig(method=args.method)
    work = Path(tempfile.mkdtemp(prefix="atmorep-ingest-"))

    def stage() -> None:
        out = work / "out.zarr"
        shutil.rmtree(out, ignore_errors=True)
        normalize.normalize(data, cfg, field, month, args.grib, out, qc_out=work / "qc.json")

    runs = {"bare": bare_eccodes, "bare_in_memory": bare_eccodes_in_memory, "stage": None}
    times: dict[str, list[float]] = {k: [] for k in runs}
    cpu: dict[str, list[float]] = {k: [] for k in runs}
    try:
        stage()  # warm-up: imports, page cache, ecCodes definitions
        bare_eccodes(args.grib)
        for _ in range(args.repeats):
            for name, fn in runs.items():
                t0, c0 = time.perf_counter(), time.process_time()
                stage() if fn is None else fn(args.grib)
                times[name].append(time.perf_counter() - t0)
                cpu[name].append(time.process_time() - c0)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    med = {k: statistics.median(v) for k, v in times.items()}
    size = args.grib.stat().st_size
    print(
        f"input {args.grib.name}: {messages} messages, {size / 1e6:.1f} MB, field {field} {month}, "
        f"{args.repeats} interleaved repeats (medians)"
    )
    for k in runs:
        print(
            f"{k:15s} wall {med[k] * 1e3:8.1f} ms  cpu {statistics.median(cpu[k]) * 1e3:8.1f} ms  "
            f"{messages / med[k]:8.0f} messages/s"
        )
    print(f"stage_vs_bare_in_memory={med['bare_in_memory'] / med['stage']:.2f}")
    print(f"ingest_vs_eccodes={med['bare'] / med['stage']:.2f}")
    require(stage_vs_bare_in_memory=med["bare_in_memory"] / med["stage"], ingest_vs_eccodes=med["bare"] / med["stage"])
    return 0


if __name__ == "__main__":
    sys.exit(main())
