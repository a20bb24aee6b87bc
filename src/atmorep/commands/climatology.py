"""atmorep climatology: merge monthly moments into a field's climatology store."""

from __future__ import annotations

import argparse
from pathlib import Path

from atmorep import config as C
from atmorep.commands._common import config_args, stage_slice

HELP = (
    "merge monthly moments stores into a field's climatology store "
    "(per calendar month or overall, normalize.climatology.by_calendar_month)"
)


def add_arguments(p: argparse.ArgumentParser) -> None:
    config_args(p)
    p.add_argument("--field", required=True)
    p.add_argument("--inputs", required=True, nargs="+", type=Path, metavar="MOMENTS", help="from `atmorep moments`")
    p.add_argument("--output", required=True, type=Path, help="climatology store (zarr) to write")


def run(args: argparse.Namespace) -> None:
    from atmorep.data import normalize as N

    raw = stage_slice(args, "normalize")
    N.climatology(C.section(raw, "data"), C.section(raw, "normalize"), args.field, args.inputs, args.output)
