"""atmorep inspect: what acquire would make of GRIB, NetCDF or zarr inputs, and what a model file is."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

HELP = (
    "print fields, levels, grid and time steps of GRIB (files or directories), NetCDF or zarr inputs, or a "
    "model file's verified card; or say in one line why one is unusable"
)


def add_arguments(p: argparse.ArgumentParser) -> None:
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


def run(args: argparse.Namespace) -> int:
    from atmorep.data.acquire.inspect import describe
    from atmorep.model import file

    status = 0
    for path in args.paths:
        try:  # one unusable input is reported and the others are still described
            if file.is_model_file(path):  # by its first bytes: nothing is unpickled
                print(file.describe(path))
                continue
            print(describe(path, regrid=args.regrid, variables=dict(v.split("=", 1) for v in args.variable)))
        except ValueError as exc:
            print(f"atmorep inspect: {exc}", file=sys.stderr)
            status = 1
    return status
