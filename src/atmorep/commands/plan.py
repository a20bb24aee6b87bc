"""atmorep plan: the capacity plan of a campaign before anything runs."""

from __future__ import annotations

import argparse
from pathlib import Path

from atmorep import config as C
from atmorep.commands._common import config_args, fit_args

HELP = (
    "capacity planner: download volume, zarr bytes and inodes, core-hours, GPU-hours and SLURM jobs of a "
    "campaign, before anything runs"
)


def add_arguments(p: argparse.ArgumentParser) -> None:
    config_args(p, params_help="the whole run configuration as JSON (what `snakemake plan` passes)")
    p.add_argument(
        "--profile",
        type=Path,
        default=Path("profiles/slurm"),
        help="Snakemake profile whose job grouping counts SLURM jobs (default profiles/slurm)",
    )
    p.add_argument("--mfu", type=float, default=0.45, help="model FLOPs utilisation assumed for GPU-hours")
    fit_args(p)
    p.add_argument("--output", type=Path, help="also write the plan to this file")


def run(args: argparse.Namespace) -> None:
    from atmorep.formats.atomic import Replacement
    from atmorep.plan import load_profile, report
    from atmorep.schema import check_names

    if args.params is not None:  # the whole configuration, not a stage's slice
        cfg = C.build(C.Config, C.from_slice(args.params))
    elif args.config is not None:
        cfg = C.load(args.config)
    else:
        raise C.ConfigError("plan needs --config FILE (a run configuration)")
    check_names(cfg)
    text = report(cfg, load_profile(args.profile), args.mfu, args.device_memory, args.ranks)
    print(text)
    if args.output:
        args.output.parent.mkdir(parents=True, exist_ok=True)
        with Replacement(args.output) as tmp:  # a rule output: never half-written
            tmp.write_text(text + "\n")
