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
    raw = _slice(args, "acquire")
    data, cfg = C.section(raw, "data"), C.section(raw, "acquire")
    if args.plan:
        import json

        from atmorep.data.cds import plan

        for req in plan(data, cfg):
            if args.field in (None, req.field) and args.month in (None, req.month):
                print(json.dumps(req.to_json(), sort_keys=True))
        return
    if not (args.field and args.month and args.output):
        raise C.ConfigError("acquire needs --field, --month and --output (or --plan)")
    from atmorep.data.sources import acquire

    acquire(data, cfg, args.field, args.month, args.output)


def cmd_normalize(args) -> None:
    from atmorep.data import normalize as N

    raw = _slice(args, "normalize")
    data, cfg = C.section(raw, "data"), C.section(raw, "normalize")
    if args.climatology_of:
        N.climatology(data, cfg, args.field, args.climatology_of, args.output)
        return
    if args.input is None or args.month is None:
        raise C.ConfigError("normalize needs --month and --input (or --climatology-of MOMENTS...)")
    if args.moments:
        N.moments(data, cfg, args.field, args.month, args.input, args.output)
        return
    N.normalize(data, cfg, args.field, args.month, args.input, args.output, qc_out=args.qc,
                climatology=args.climatology)


def cmd_shard(args) -> None:
    from atmorep.data.shards import shard, verify

    raw = _slice(args, "shard")
    data, cfg = C.section(raw, "data"), C.section(raw, "shard")
    shard(data, cfg, args.field, args.year, args.inputs, args.output)
    if args.verify:
        import json

        print(json.dumps({"verified": verify(args.output, args.field, args.inputs, data, cfg)}))


def cmd_train(args) -> None:
    if args.dry_run:
        from atmorep.model.summary import report

        if args.config is None:
            raise C.ConfigError("--dry-run needs --config FILE (a run configuration or config/models/*.yaml)")
        print(report(args.config))
        return
    if not args.shards or args.output_dir is None:
        raise C.ConfigError("train needs --shards and --output-dir (or --dry-run)")
    from atmorep.train.loop import train

    raw = _slice(args, "train")
    train(C.section(raw, "seed"), C.section(raw, "data"), C.section(raw, "model"), C.section(raw, "train"),
          _stores(args.shards), args.output_dir, fresh=args.fresh)


def cmd_evaluate(args) -> None:
    from atmorep.eval.evaluate import evaluate

    raw = _slice(args, "evaluate")
    evaluate(C.section(raw, "seed"), C.section(raw, "data"), C.section(raw, "evaluate"), args.model,
             _stores(args.shards), args.output_dir)


def cmd_launch(args) -> int:
    from atmorep.train.launch import launch

    rest = args.rest[1:] if args.rest[:1] == ["--"] else args.rest
    if not rest:
        raise C.ConfigError("nothing to launch: give the command after --, e.g. -- train --config FILE ...")
    return launch(args.launcher, args.ranks, rest, args.per_node)


def cmd_plan(args) -> None:
    from atmorep.plan import load_profile, plan

    if args.params is not None:  # the whole configuration as JSON (what `snakemake plan` passes)
        raw = C.from_slice(args.params)
        C.validate_schema(raw)
        cfg = C.build(C.Config, raw)
    elif args.config is not None:
        cfg = C.load(args.config)
    else:
        raise C.ConfigError("plan needs --config FILE (a run configuration)")
    text = plan(cfg, load_profile(args.profile), args.mfu).text(args.mfu)
    print(text)
    if args.output:
        args.output.parent.mkdir(parents=True, exist_ok=True)
        args.output.write_text(text + "\n")


def cmd_inspect(args) -> int:
    from atmorep.data.inspect import describe

    status = 0
    for path in args.paths:
        try:
            print(describe(path, regrid=args.regrid))
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

    p = sub.add_parser("acquire", help="fetch one (field, month) of ERA5 as GRIB from the configured source "
                       "(sample, files or cds), validated before it counts as done")
    _config_args(p)
    p.add_argument("--field", help="field name as in data.fields (e.g. t2m)")
    p.add_argument("--month", help="YYYY-MM")
    p.add_argument("--output", type=Path, help="GRIB file to write")
    p.add_argument("--plan", action="store_true", help="print the CDS requests of the campaign (one JSON per "
                   "field and month; --field/--month filter) and fetch nothing")
    p.set_defaults(func=cmd_acquire)

    p = sub.add_parser("normalize", help="decode, check and normalize one (field, month) into zarr v3; or the "
                       "moments and climatology of the climatological option")
    _config_args(p)
    p.add_argument("--field", required=True)
    p.add_argument("--month", help="YYYY-MM")
    p.add_argument("--input", type=Path, help="GRIB file from acquire")
    p.add_argument("--output", required=True, type=Path, help="zarr store to write")
    p.add_argument("--qc", type=Path, help="write the quality-control summary (JSON) here")
    p.add_argument("--climatology", type=Path, help="climatology store (fields in normalize.climatology.fields)")
    p.add_argument("--moments", action="store_true", help="write the month's moments (count, mean, M2 per grid "
                   "point) instead of normalized data: the input of --climatology-of")
    p.add_argument("--climatology-of", nargs="+", type=Path, metavar="MOMENTS",
                   help="merge these monthly moments stores into the field's climatology store")
    p.set_defaults(func=cmd_normalize)

    p = sub.add_parser("shard", help="write one (field, year) as a token-aligned, sharded zarr v3 store")
    _config_args(p)
    p.add_argument("--field", required=True)
    p.add_argument("--year", required=True)
    p.add_argument("--inputs", required=True, nargs="+", type=Path, help="normalized monthly stores")
    p.add_argument("--output", required=True, type=Path)
    p.add_argument("--verify", action="store_true", help="then prove the store equals the normalized inputs bit "
                   "for bit (coordinates, statistics, every value through zarr and through the loader's reader, "
                   "every shard index); reads the store twice")
    p.set_defaults(func=cmd_shard)

    p = sub.add_parser("train", help="pretrain the multiformer with DeepSpeed ZeRO on the launched ranks "
                       "(several ranks: atmorep launch --with torchrun|mpirun|srun --ranks N -- train ...)")
    _config_args(p)
    p.add_argument("--shards", nargs="+", type=Path, help="shard stores (all fields); required unless --dry-run")
    p.add_argument("--output-dir", type=Path, help="writes model.pt, metrics.csv, loss.png; required unless --dry-run")
    p.add_argument("--fresh", action="store_true", help="ignore checkpoints in OUTPUT_DIR/checkpoints "
                   "(by default a run resumes from the latest one made with the same configuration and "
                   "inputs; OUTPUT_DIR is locked while a training runs)")
    p.add_argument("--dry-run", action="store_true", help="build the model on the meta device and print its "
                   "parameter count, tokens per sample and estimated memory (--config may be config/models/*.yaml)")
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("launch", help="start N ranks of an atmorep command with torchrun, srun or mpirun",
                       description="Start --ranks processes of `python -m atmorep COMMAND ...` with a launcher; "
                       "e.g. atmorep launch --with srun --ranks 8 -- train --config run.yaml ...")
    p.add_argument("--with", dest="launcher", default="torchrun", choices=["torchrun", "srun", "mpirun", "none"],
                   help="torchrun (one machine), srun (inside a SLURM job), mpirun (any MPI), none (one process)")
    p.add_argument("--ranks", type=int, default=1, help="number of ranks (processes) in all")
    p.add_argument("--per-node", type=int, help="srun: ranks per node on multi-node jobs (one per GPU)")
    p.add_argument("rest", nargs=argparse.REMAINDER, help="-- COMMAND ARGS (the atmorep command to start)")
    p.set_defaults(func=cmd_launch)

    p = sub.add_parser("evaluate", help="run evaluate.mode (forecast, temporal_interpolation, bert, global_forecast) "
                       "on the held-out period; WeatherBench 2 scores vs baselines, CF zarr products, figures, attention")
    _config_args(p)
    p.add_argument("--model", required=True, type=Path, help="model.pt from train")
    p.add_argument("--shards", required=True, nargs="+", type=Path, help="shard stores (all fields of the model)")
    p.add_argument("--output-dir", required=True, type=Path, help="writes scores.csv, rank_histogram.csv, windows.zarr, "
                   "sample_scores.zarr, climatology.zarr (+ wb2_*.zarr, attention.zarr) and figures")
    p.set_defaults(func=cmd_evaluate)

    p = sub.add_parser("plan", help="capacity planner: download volume, zarr bytes and inodes, core-hours, "
                       "GPU-hours and SLURM jobs of a campaign, before anything runs")
    g = p.add_mutually_exclusive_group()
    g.add_argument("--config", type=Path, help="run configuration YAML")
    g.add_argument("--params", help="the whole run configuration as JSON")
    p.add_argument("--profile", type=Path, default=Path("profiles/slurm"),
                   help="Snakemake profile whose job grouping counts SLURM jobs (default profiles/slurm)")
    p.add_argument("--mfu", type=float, default=0.45, help="model FLOPs utilisation assumed for GPU-hours")
    p.add_argument("--output", type=Path, help="also write the plan to this file")
    p.set_defaults(func=cmd_plan)

    p = sub.add_parser("inspect", help="print fields, levels, grid and time steps of GRIB (files or directories), "
                       "NetCDF or zarr inputs, or say in one line why one is unusable")
    p.add_argument("paths", nargs="+", type=Path)
    p.add_argument("--regrid", choices=("none", "linear"), default="none",
                   help="accept Gaussian grids as acquire.regrid: linear would (default: reject them)")
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
