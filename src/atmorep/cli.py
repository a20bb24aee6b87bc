"""atmorep command line: one subcommand per pipeline stage, plus ``inspect``.

Each stage subcommand parses its arguments, loads its slice of the configuration (``--config`` a
whole YAML file, or ``--params`` the JSON slice Snakemake passes), and calls one library function.
User errors end with one line on stderr and exit status 1; no traceback.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from atmorep import config as C

log = logging.getLogger("atmorep")

EPILOG = """\
The stages run in this order; Snakemake (`snakemake --cores 2`) chains them from config/config.yaml:
  acquire -> normalize -> shard -> train -> evaluate
Every stage can also run on its own, e.g.
  atmorep acquire --config config/config.yaml --field t2m --month 2026-03 --output t2m.grib
  atmorep inspect t2m.grib
"""


def _slice(args, stage: str) -> dict:
    if args.params is not None:
        raw = C.from_slice(args.params)
        unknown = set(raw) - set(C.STAGE_SECTIONS[stage])
        if unknown:
            raise C.ConfigError(f"unknown config key(s) for stage {stage}: {', '.join(sorted(unknown))}")
        return raw
    if args.config is None:
        raise C.ConfigError("give --config FILE (a run configuration) or --params JSON (a stage slice)")
    C.load(args.config)  # validates the whole file
    import yaml

    return C.stage_slice(yaml.safe_load(Path(args.config).read_text()), stage)


def _config_args(p: argparse.ArgumentParser) -> None:
    g = p.add_mutually_exclusive_group()
    g.add_argument("--config", type=Path, help="run configuration YAML (e.g. config/config.yaml)")
    g.add_argument("--params", help="this stage's configuration slice as JSON (what Snakemake passes)")


def _stores(paths: list[Path]) -> dict[str, list[str]]:
    """Group shard stores by the field their attributes name."""
    from atmorep.data import zarrio

    out: dict[str, list[str]] = {}
    for p in paths:
        field = zarrio.open_dataset(p).attrs.get("field")
        if field is None:
            raise C.ConfigError(f"{p}: not an atmorep shard store (no 'field' attribute)")
        out.setdefault(field, []).append(str(p))
    return out


def cmd_acquire(args) -> None:
    from atmorep.data.sources import acquire

    raw = _slice(args, "acquire")
    acquire(C.section(raw, "data"), C.section(raw, "acquire"), args.field, args.month, args.output)


def cmd_normalize(args) -> None:
    from atmorep.data.normalize import normalize

    raw = _slice(args, "normalize")
    normalize(C.section(raw, "data"), C.section(raw, "normalize"), args.field, args.month, args.input, args.output)


def cmd_shard(args) -> None:
    from atmorep.data.shards import shard

    raw = _slice(args, "shard")
    shard(C.section(raw, "data"), C.section(raw, "shard"), args.field, args.year, args.inputs, args.output)


def cmd_train(args) -> None:
    from atmorep.train.loop import train

    raw = _slice(args, "train")
    train(C.section(raw, "seed"), C.section(raw, "data"), C.section(raw, "model"), C.section(raw, "train"),
          _stores(args.shards), args.output_dir)


def cmd_evaluate(args) -> None:
    from atmorep.eval.evaluate import evaluate

    raw = _slice(args, "evaluate")
    evaluate(C.section(raw, "seed"), C.section(raw, "data"), C.section(raw, "evaluate"), args.model,
             _stores(args.shards), args.output_dir)


def cmd_inspect(args) -> int:
    from atmorep.data.inspect import describe

    status = 0
    for path in args.paths:
        try:
            print(describe(path))
        except ValueError as exc:
            print(f"atmorep inspect: {exc}", file=sys.stderr)
            status = 1
    return status


def parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="atmorep", description="AtmoRep as a reproducible pipeline: ERA5 GRIB -> "
                                 "normalized, token-aligned zarr -> DeepSpeed multiformer -> evaluation.",
                                 epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = ap.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("acquire", help="fetch one (field, month) of ERA5 as GRIB from the configured source")
    _config_args(p)
    p.add_argument("--field", required=True, help="field name as in data.fields (e.g. t2m)")
    p.add_argument("--month", required=True, help="YYYY-MM")
    p.add_argument("--output", required=True, type=Path, help="GRIB file to write")
    p.set_defaults(func=cmd_acquire)

    p = sub.add_parser("normalize", help="decode, check and normalize one (field, month) into zarr v3")
    _config_args(p)
    p.add_argument("--field", required=True)
    p.add_argument("--month", required=True, help="YYYY-MM")
    p.add_argument("--input", required=True, type=Path, help="GRIB file from acquire")
    p.add_argument("--output", required=True, type=Path, help="zarr store to write")
    p.set_defaults(func=cmd_normalize)

    p = sub.add_parser("shard", help="write one (field, year) as a token-aligned, sharded zarr v3 store")
    _config_args(p)
    p.add_argument("--field", required=True)
    p.add_argument("--year", required=True)
    p.add_argument("--inputs", required=True, nargs="+", type=Path, help="normalized monthly stores")
    p.add_argument("--output", required=True, type=Path)
    p.set_defaults(func=cmd_shard)

    p = sub.add_parser("train", help="pretrain the multiformer with DeepSpeed ZeRO (launch with torchrun for "
                       "several ranks: torchrun --nproc_per_node 2 -m atmorep train ...)")
    _config_args(p)
    p.add_argument("--shards", required=True, nargs="+", type=Path, help="shard stores (all fields)")
    p.add_argument("--output-dir", required=True, type=Path, help="writes model.pt, metrics.csv, loss.png")
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("evaluate", help="forecast held-out windows; scores vs persistence, maps, attention")
    _config_args(p)
    p.add_argument("--model", required=True, type=Path, help="model.pt from train")
    p.add_argument("--shards", required=True, nargs="+", type=Path)
    p.add_argument("--output-dir", required=True, type=Path, help="writes scores.csv and figures")
    p.set_defaults(func=cmd_evaluate)

    p = sub.add_parser("inspect", help="print fields, levels, grid and time steps of GRIB/NetCDF/zarr inputs")
    p.add_argument("paths", nargs="+", type=Path)
    p.set_defaults(func=cmd_inspect)
    return ap


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        return args.func(args) or 0
    except (C.ConfigError, ValueError, FileNotFoundError) as exc:
        print(f"atmorep {args.command}: error: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
