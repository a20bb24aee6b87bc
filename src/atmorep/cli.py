"""atmorep command line: one subcommand per pipeline stage (``moments`` and ``climatology`` included),
plus the tools around them: ``launch``, ``verify``, ``plan``, ``check``, ``inspect``, ``import-original``.

Each stage subcommand parses its arguments, loads its slice of the configuration (``--config`` a
whole YAML file, or ``--params`` the JSON slice Snakemake passes), and calls one library function.
Every failure ends with one line on stderr naming what failed and the next step, exit status 1 (130
on Ctrl-C, 75 for "checkpointed, requeue"); ``--debug`` or ``ATMOREP_DEBUG=1`` shows the traceback.

Longer than our ~400 lines on purpose: :func:`parser` is the table of every subcommand, its arguments
and their help, read as one (it is what ``atmorep --help`` shows); the ``cmd_*`` functions beside it
are a few lines each (a rule -> its subcommand -> one library function), and splitting either from
the other would only add an indirection.
"""

from __future__ import annotations

import argparse
import logging
import os
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

    # The raw slice, as Snakemake would pass it: the command builds its sections as it would from --params.
    return C.stage_slice(yaml.safe_load(Path(args.config).read_text()), stage)


def _config_args(p: argparse.ArgumentParser) -> None:
    g = p.add_mutually_exclusive_group()
    g.add_argument("--config", type=Path, help="run configuration YAML (e.g. config/config.yaml)")
    g.add_argument("--params", help="this stage's configuration slice as JSON (what Snakemake passes)")


def _stores(paths: list[Path]) -> dict[str, list[str]]:
    """Group shard stores by the field their attributes name."""
    from atmorep.formats import zarrv3

    out: dict[str, list[str]] = {}
    for p in paths:
        field = zarrv3.open_dataset(p).attrs.get("field")  # the store says what it holds, not its path
        if field is None:
            raise C.ConfigError(f"{p}: not an atmorep shard store (no 'field' attribute)")
        out.setdefault(field, []).append(str(p))
    return out


# Each command imports its stage inside: `atmorep --help` and light commands pay for no torch or zarr.


def cmd_acquire(args) -> None:
    raw = _slice(args, "acquire")
    data, cfg = C.section(raw, "data"), C.section(raw, "acquire")
    if args.plan:
        import json

        from atmorep.data.acquire.cds import plan

        for req in plan(data, cfg):
            if args.field in (None, req.field) and args.month in (None, req.month):
                print(json.dumps(req.to_json(), sort_keys=True))
        return
    if not (args.field and args.month and args.output):
        raise C.ConfigError("acquire needs --field, --month and --output (or --plan)")
    from atmorep.data.acquire.sources import acquire

    acquire(data, cfg, args.field, args.month, args.output)


def cmd_normalize(args) -> None:
    from atmorep.data import normalize as N

    raw = _slice(args, "normalize")
    data, cfg = C.section(raw, "data"), C.section(raw, "normalize")
    N.normalize(
        data, cfg, args.field, args.month, args.input, args.output, qc_out=args.qc, climatology=args.climatology
    )


def cmd_moments(args) -> None:
    from atmorep.data import normalize as N

    raw = _slice(args, "normalize")
    N.moments(C.section(raw, "data"), C.section(raw, "normalize"), args.field, args.month, args.input, args.output)


def cmd_climatology(args) -> None:
    from atmorep.data import normalize as N

    raw = _slice(args, "normalize")
    N.climatology(C.section(raw, "data"), C.section(raw, "normalize"), args.field, args.inputs, args.output)


def cmd_shard(args) -> None:
    from atmorep.data.shards import shard, verify

    raw = _slice(args, "shard")
    data, cfg = C.section(raw, "data"), C.section(raw, "shard")
    if args.verify:  # the store as it is on disk: writing it first would hide what happened to it
        import json

        print(json.dumps({"verified": verify(args.output, args.field, args.inputs, data, cfg)}))
        return
    shard(data, cfg, args.field, args.year, args.inputs, args.output)


def cmd_verify(args) -> None:
    """Check stores as they are on disk; one JSON line per store, or one error line."""
    import json

    from atmorep.data import normalize, shards
    from atmorep.formats import zarrv3

    data = cfg = None
    if args.params is not None or args.config is not None:
        raw = _slice(args, "shard")
        data, cfg = C.section(raw, "data"), C.section(raw, "shard")
    for store in args.stores:
        if not (Path(store) / "zarr.json").is_file():
            raise C.ConfigError(f"{store}: not a zarr v3 store")
        attrs = zarrv3.open_dataset(store, threads=None).attrs
        if "year" in attrs and "provenance" in attrs:
            summary = shards.verify(store, None, args.inputs, data, cfg)
        elif "month" in attrs and "source_sha256" in attrs and "normalization" in attrs:
            summary = normalize.check(store)
        else:
            raise C.ConfigError(
                f"{store}: neither a normalized nor a shard store of atmorep (attributes {sorted(attrs)})"
            )
        print(json.dumps({"verified": summary}), flush=True)  # before a later store's error line on stderr


def cmd_train(args) -> None:
    if args.dry_run:
        if args.config is None:
            raise C.ConfigError("--dry-run needs --config FILE (a run configuration or config/models/*.yaml)")
        from atmorep.train.dry_run import dry_run

        print(dry_run(args.config, args.device_memory, args.ranks))
        return
    if not args.shards or args.output_dir is None:
        raise C.ConfigError("train needs --shards and --output-dir (or --dry-run)")
    from atmorep.train.loop import train

    raw = _slice(args, "train")
    train(
        C.section(raw, "seed"),
        C.section(raw, "data"),
        C.section(raw, "model"),
        C.section(raw, "train"),
        _stores(args.shards),
        args.output_dir,
        fresh=args.fresh,
    )


def cmd_evaluate(args) -> None:
    from atmorep.eval.evaluate import evaluate

    raw = _slice(args, "evaluate")
    evaluate(
        C.section(raw, "seed"),
        C.section(raw, "data"),
        C.section(raw, "evaluate"),
        args.model,
        _stores(args.shards),
        args.output_dir,
    )


def cmd_launch(args) -> int:
    from atmorep.train.launch import launch

    rest = args.rest[1:] if args.rest[:1] == ["--"] else args.rest  # REMAINDER keeps the separator
    if not rest:
        raise C.ConfigError("nothing to launch: give the command after --, e.g. -- train --config FILE ...")
    return launch(args.launcher, args.ranks, rest, args.per_node)


def cmd_plan(args) -> None:
    from atmorep.plan import load_profile, report

    if args.params is not None:  # the whole configuration as JSON (what `snakemake plan` passes)
        raw = C.from_slice(args.params)
        C.validate_schema(raw)
        cfg = C.build(C.Config, raw)
    elif args.config is not None:
        cfg = C.load(args.config)
    else:
        raise C.ConfigError("plan needs --config FILE (a run configuration)")
    text = report(cfg, load_profile(args.profile), args.mfu, args.device_memory, args.ranks)
    print(text)
    if args.output:
        args.output.parent.mkdir(parents=True, exist_ok=True)
        args.output.write_text(text + "\n")


def cmd_check(args) -> None:
    from atmorep import preflight

    cfg = C.load(args.config)
    try:
        preflight.check(cfg)
    except C.ConfigError as exc:
        raise C.ConfigError(f"{args.config}: {exc}") from None
    print(
        f"{args.config}: run '{cfg.run}' is consistent ({len(cfg.data.fields)} fields, {len(cfg.data.months())} months)"
    )


def cmd_inspect(args) -> int:
    from atmorep.data.acquire.inspect import describe

    status = 0
    for path in args.paths:
        try:  # one unusable input is reported and the others are still described
            print(describe(path, regrid=args.regrid, variables=dict(v.split("=", 1) for v in args.variable)))
        except ValueError as exc:
            print(f"atmorep inspect: {exc}", file=sys.stderr)
            status = 1
    return status


def cmd_import_original(args) -> None:
    from atmorep.train.original import import_original

    rename = {}
    for item in args.rename or []:
        old, sep, new = item.partition("=")
        if not sep or not old or not new:
            raise C.ConfigError(f"--rename {item!r}: expected ORIGINAL=OURS, e.g. velocity_u=u")
        rename[old] = new
    print(import_original(args.weights, args.config, args.output, rename, args.config_out))


def _fit_args(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--device-memory",
        default="80GiB",
        help="memory of one GPU for the fit planner, e.g. "
        "80GiB, 141GB (default 80GiB, an H100); it recommends the ZeRO stage, micro-batch, activation "
        "checkpointing and offload that fit train.batch_size per rank in 85%% of it (bf16)",
    )
    p.add_argument(
        "--ranks", type=int, help="data-parallel ranks for the fit planner (default train.ranks; 1 for a model file)"
    )


def parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(
        prog="atmorep",
        description="AtmoRep as a reproducible pipeline: ERA5 GRIB -> "
        "normalized, token-aligned zarr -> DeepSpeed multiformer -> evaluation.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    ap.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    ap.add_argument(
        "--debug",
        action="store_true",
        help="show tracebacks (also of launched ranks) instead of "
        "one-line errors; the environment variable ATMOREP_DEBUG=1 does the same",
    )
    sub = ap.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser(
        "acquire",
        help="fetch one (field, month) of ERA5 as GRIB from the configured source "
        "(sample, files or cds), validated before it counts as done",
    )
    _config_args(p)
    p.add_argument("--field", help="field name as in data.fields (e.g. t2m)")
    p.add_argument("--month", help="YYYY-MM")
    p.add_argument("--output", type=Path, help="GRIB file to write")
    p.add_argument(
        "--plan",
        action="store_true",
        help="print the CDS requests of the campaign (one JSON per "
        "field and month; --field/--month filter) and fetch nothing",
    )
    p.set_defaults(func=cmd_acquire)

    p = sub.add_parser("normalize", help="decode, check and normalize one (field, month) into zarr v3")
    _config_args(p)
    p.add_argument("--field", required=True)
    p.add_argument("--month", required=True, help="YYYY-MM")
    p.add_argument("--input", required=True, type=Path, help="GRIB file from acquire")
    p.add_argument("--output", required=True, type=Path, help="zarr store to write")
    p.add_argument("--qc", type=Path, help="write the quality-control summary (JSON) here")
    p.add_argument("--climatology", type=Path, help="climatology store (fields in normalize.climatology.fields)")
    p.set_defaults(func=cmd_normalize)

    p = sub.add_parser(
        "moments",
        help="count, mean and M2 per grid point of one (field, month): the input of "
        "`atmorep climatology` (normalize.climatology)",
    )
    _config_args(p)
    p.add_argument("--field", required=True)
    p.add_argument("--month", required=True, help="YYYY-MM")
    p.add_argument("--input", required=True, type=Path, help="GRIB file from acquire")
    p.add_argument("--output", required=True, type=Path, help="moments store (zarr) to write")
    p.set_defaults(func=cmd_moments)

    p = sub.add_parser(
        "climatology",
        help="merge monthly moments stores into a field's climatology store "
        "(per calendar month or overall, normalize.climatology.by_calendar_month)",
    )
    _config_args(p)
    p.add_argument("--field", required=True)
    p.add_argument("--inputs", required=True, nargs="+", type=Path, metavar="MOMENTS", help="from `atmorep moments`")
    p.add_argument("--output", required=True, type=Path, help="climatology store (zarr) to write")
    p.set_defaults(func=cmd_climatology)

    p = sub.add_parser("shard", help="write one (field, year) as a token-aligned, sharded zarr v3 store")
    _config_args(p)
    p.add_argument("--field", required=True)
    p.add_argument("--year", required=True)
    p.add_argument("--inputs", required=True, nargs="+", type=Path, help="normalized monthly stores")
    p.add_argument("--output", required=True, type=Path)
    p.add_argument(
        "--verify",
        action="store_true",
        help="do not write: check the existing --output against the --inputs bit for bit (as atmorep verify does)",
    )
    p.set_defaults(func=cmd_shard)

    p = sub.add_parser(
        "verify",
        help="check stores as they are on disk: a shard store against its normalized "
        "sources, a normalized store for finite values",
        description="A shard store is proved equal, bit for bit, to the normalized months it was "
        "made from (recorded in its provenance, or --inputs), through zarr and through the "
        "loader's reader; its shard indices' CRC32C checksums, its layout and every value's "
        "finiteness are "
        "checked. A normalized store is checked for non-finite values and statistics. Prints one "
        "JSON line per store; the first problem ends it with one line and exit status 1.",
    )
    p.add_argument("stores", nargs="+", type=Path, metavar="STORE")
    p.add_argument(
        "--inputs",
        nargs="+",
        type=Path,
        help="normalized monthly stores of a shard store (default: the ones its provenance records)",
    )
    _config_args(p)
    p.set_defaults(func=cmd_verify)

    p = sub.add_parser(
        "train",
        help="pretrain the multiformer with DeepSpeed ZeRO on the launched ranks "
        "(several ranks: atmorep launch --with torchrun|mpirun|srun --ranks N -- train ...)",
    )
    _config_args(p)
    p.add_argument("--shards", nargs="+", type=Path, help="shard stores (all fields); required unless --dry-run")
    p.add_argument("--output-dir", type=Path, help="writes model.pt, metrics.csv, loss.png; required unless --dry-run")
    p.add_argument(
        "--fresh",
        action="store_true",
        help="ignore checkpoints in OUTPUT_DIR/checkpoints "
        "(by default a run resumes from the latest one made with the same configuration and "
        "inputs; OUTPUT_DIR is locked while a training runs)",
    )
    p.add_argument(
        "--dry-run",
        action="store_true",
        help="build the model on the meta device and print its "
        "parameter count, tokens per sample and estimated memory (--config may be config/models/*.yaml)"
        ", and the fit planner's ZeRO stage, micro-batch, checkpointing and offload",
    )
    _fit_args(p)
    p.set_defaults(func=cmd_train)

    p = sub.add_parser(
        "launch",
        help="start N ranks of an atmorep command with torchrun, srun or mpirun",
        description="Start --ranks processes of `python -m atmorep COMMAND ...` with a launcher; "
        "e.g. atmorep launch --with srun --ranks 8 -- train --config run.yaml ...",
    )
    p.add_argument(
        "--with",
        dest="launcher",
        default="torchrun",
        choices=["torchrun", "srun", "mpirun", "none"],
        help="torchrun (one machine), srun (inside a SLURM job), mpirun (any MPI), none (one process)",
    )
    p.add_argument("--ranks", type=int, default=1, help="number of ranks (processes) in all")
    p.add_argument("--per-node", type=int, help="srun: ranks per node on multi-node jobs (one per GPU)")
    p.add_argument("rest", nargs=argparse.REMAINDER, help="-- COMMAND ARGS (the atmorep command to start)")
    p.set_defaults(func=cmd_launch)

    p = sub.add_parser(
        "evaluate",
        help="run evaluate.mode (forecast, temporal_interpolation, bert, global_forecast) "
        "on the held-out period; WeatherBench 2 scores vs baselines, CF zarr products, figures, attention",
    )
    _config_args(p)
    p.add_argument("--model", required=True, type=Path, help="model.pt from train")
    p.add_argument("--shards", required=True, nargs="+", type=Path, help="shard stores (all fields of the model)")
    p.add_argument(
        "--output-dir",
        required=True,
        type=Path,
        help="writes scores.csv, rank_histogram.csv, windows.zarr, "
        "sample_scores.zarr, climatology.zarr (+ wb2_*.zarr, attention.zarr) and figures",
    )
    p.set_defaults(func=cmd_evaluate)

    p = sub.add_parser(
        "plan",
        help="capacity planner: download volume, zarr bytes and inodes, core-hours, "
        "GPU-hours and SLURM jobs of a campaign, before anything runs",
    )
    g = p.add_mutually_exclusive_group()
    g.add_argument("--config", type=Path, help="run configuration YAML")
    g.add_argument("--params", help="the whole run configuration as JSON")
    p.add_argument(
        "--profile",
        type=Path,
        default=Path("profiles/slurm"),
        help="Snakemake profile whose job grouping counts SLURM jobs (default profiles/slurm)",
    )
    p.add_argument("--mfu", type=float, default=0.45, help="model FLOPs utilisation assumed for GPU-hours")
    _fit_args(p)
    p.add_argument("--output", type=Path, help="also write the plan to this file")
    p.set_defaults(func=cmd_plan)

    p = sub.add_parser(
        "check",
        help="check a run configuration before anything runs (what the workflow checks at "
        "start): schema, field names, disjoint train/evaluate periods, one window in each "
        "period and on the grid after data.area, token tiling",
    )
    p.add_argument("--config", type=Path, required=True, help="run configuration YAML")
    p.set_defaults(func=cmd_check)

    p = sub.add_parser(
        "inspect",
        help="print fields, levels, grid and time steps of GRIB (files or directories), "
        "NetCDF or zarr inputs, or say in one line why one is unusable",
    )
    p.add_argument("paths", nargs="+", type=Path)
    p.add_argument(
        "--regrid",
        choices=("none", "linear"),
        default="none",
        help="accept Gaussian grids as acquire.regrid: linear would (default: reject them)",
    )
    p.add_argument(
        "--variable",
        action="append",
        default=[],
        metavar="FIELD=NAME",
        help="as acquire.variables: read NetCDF/zarr variable NAME as FIELD (repeatable), e.g. --variable t2m=air",
    )
    p.set_defaults(func=cmd_inspect)

    p = sub.add_parser(
        "import-original",
        help="convert a model of the original AtmoRep code (AtmoRep_id<id>.mod "
        "+ model_id<id>.json) into a model.pt that evaluate reads and train.init_from fine-tunes",
        description="Read the original's state_dict without running pickled code (weights_only), "
        "map it into the compat multiformer its JSON describes (every key used, shapes checked; "
        "a mismatch names the key), and print the config keys (data/shard/model/train) that "
        "reproduce its training: per-field masking rates and loss weights.",
    )
    p.add_argument("--weights", required=True, type=Path, help="AtmoRep_id<id>.mod (the original's torch.save)")
    p.add_argument("--config", required=True, type=Path, help="model_id<id>.json (the original's configuration)")
    p.add_argument("--output", required=True, type=Path, help="model file to write (model.pt)")
    p.add_argument(
        "--rename",
        action="append",
        metavar="ORIGINAL=OURS",
        help="field name mapping, repeatable "
        "(default: velocity_u=u, velocity_v=v, velocity_z=w, temperature=t, specific_humidity=q, "
        "total_precip=tp, vorticity=vo, divergence=d, geopotential=z)",
    )
    p.add_argument("--config-out", type=Path, help="also write the printed config keys to this YAML file")
    p.set_defaults(func=cmd_import_original)
    return ap


def main(argv: list[str] | None = None) -> int:
    from atmorep.train import launch

    args = parser().parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    if args.debug:
        os.environ["ATMOREP_DEBUG"] = "1"  # also for the ranks `launch` starts
    launch.watch_launcher()  # a rank started by `atmorep launch` dies with it
    try:
        return args.func(args) or 0
    except BaseException as exc:  # KeyboardInterrupt too: one line and 130, not a traceback
        if isinstance(exc, SystemExit) or launch.debug():  # SystemExit: a chosen status (75: requeue)
            raise
        code, line = failure(args.command, exc)
        if not launch.report(code, line):  # a launched rank leaves its line to the launcher
            print(line, file=sys.stderr)
        return code


def failure(command: str, exc: BaseException) -> tuple[int, str]:
    """Exit status and the one line that names what failed and what to do next."""
    import errno

    from atmorep.train.launch import EXIT_INTERRUPTED

    if isinstance(exc, KeyboardInterrupt):
        return EXIT_INTERRUPTED, f"atmorep {command}: interrupted; nothing unfinished is left looking complete"
    if isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT):  # before OSError below
        from atmorep.formats.atomic import DiskFull

        return 1, f"atmorep {command}: error: {DiskFull.describe(exc)}"
    # Errors the user can act on (incl. DataError, TooManyBadSteps, Locked); anything else is our bug.
    if isinstance(exc, (C.ConfigError, ValueError, OSError)):
        return 1, f"atmorep {command}: error: {exc}"
    return 1, (
        f"atmorep {command}: internal error: {type(exc).__name__}: {exc} (rerun with --debug or "
        "ATMOREP_DEBUG=1 for the traceback, and report it)"
    )


if __name__ == "__main__":
    sys.exit(main())
