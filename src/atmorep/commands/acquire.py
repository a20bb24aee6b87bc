"""atmorep acquire: one (field, month) of ERA5 as GRIB from the configured source."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from atmorep import config as C
from atmorep.commands._common import config_args, stage_slice

HELP = (
    "fetch one (field, month) of ERA5 as GRIB from the configured source "
    "(sample, files, cds or zarr), validated before it counts as done"
)


def add_arguments(p: argparse.ArgumentParser) -> None:
    config_args(p)
    p.add_argument("--field", help="field name as in data.fields (e.g. t2m)")
    p.add_argument("--month", help="YYYY-MM")
    p.add_argument("--output", type=Path, help="GRIB file to write")
    p.add_argument(
        "--plan",
        action="store_true",
        help="print the CDS requests of the campaign (one JSON per field and month; --field/--month filter) "
        "and fetch nothing",
    )


def run(args: argparse.Namespace) -> None:
    raw = stage_slice(args, "acquire")
    data, cfg = C.section(raw, "data"), C.section(raw, "acquire")
    if args.plan:
        from atmorep.data.acquire.cds import plan

        for req in plan(data, cfg):
            if args.field in (None, req.field) and args.month in (None, req.month):
                print(json.dumps(req.to_json(), sort_keys=True))
        return
    if not (args.field and args.month and args.output):
        raise C.ConfigError("acquire needs --field, --month and --output (or --plan)")
    from atmorep.data.acquire.sources import acquire

    acquire(data, cfg, args.field, args.month, args.output)
