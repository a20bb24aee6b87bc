"""atmorep normalize: decode, check (QC) and normalize one (field, month) into zarr v3."""

from __future__ import annotations

import argparse
from pathlib import Path

from atmorep import config as C
from atmorep.commands._common import config_args, stage_slice, unit_args

HELP = "decode, check and normalize one (field, month) into zarr v3"


def add_arguments(p: argparse.ArgumentParser) -> None:
    config_args(p)
    unit_args(p, output="zarr store to write")
    p.add_argument("--qc", type=Path, help="write the quality-control summary (JSON) here")
    p.add_argument("--climatology", type=Path, help="climatology store (fields in normalize.climatology.fields)")


def run(args: argparse.Namespace) -> None:
    from atmorep.data import normalize as N

    raw = stage_slice(args, "normalize")
    data, cfg = C.section(raw, "data"), C.section(raw, "normalize")
    N.normalize(
        data, cfg, args.field, args.month, args.input, args.output, qc_out=args.qc, climatology=args.climatology
    )
