"""atmorep moments: count, mean and M2 per grid point of one (field, month), for a climatology."""

from __future__ import annotations

import argparse

from atmorep import config as C
from atmorep.commands._common import config_args, stage_slice, unit_args

HELP = (
    "count, mean and M2 per grid point of one (field, month): the input of `atmorep climatology` "
    "(normalize.climatology)"
)


def add_arguments(p: argparse.ArgumentParser) -> None:
    config_args(p)
    unit_args(p, output="moments store (zarr) to write")


def run(args: argparse.Namespace) -> None:
    from atmorep.data import normalize as N

    raw = stage_slice(args, "normalize")
    N.moments(C.section(raw, "data"), C.section(raw, "normalize"), args.field, args.month, args.input, args.output)
