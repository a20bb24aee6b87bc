"""atmorep shard: one (field, year) as a token-aligned, sharded zarr v3 store."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from atmorep import config as C
from atmorep.commands._common import config_args, stage_slice

HELP = "write one (field, year) as a token-aligned, sharded zarr v3 store"


def add_arguments(p: argparse.ArgumentParser) -> None:
    config_args(p)
    p.add_argument("--field", required=True)
    p.add_argument("--year", required=True)
    p.add_argument("--inputs", required=True, nargs="+", type=Path, help="normalized monthly stores")
    p.add_argument("--output", required=True, type=Path)
    p.add_argument(
        "--verify",
        action="store_true",
        help="do not write: check the existing --output against the --inputs bit for bit (as atmorep verify does)",
    )


def run(args: argparse.Namespace) -> None:
    from atmorep.data.shards import shard, verify

    raw = stage_slice(args, "shard")
    data, cfg = C.section(raw, "data"), C.section(raw, "shard")
    if args.verify:  # the store as it is on disk: writing it first would hide what happened to it
        print(json.dumps({"verified": verify(args.output, args.field, args.inputs, data, cfg)}))
        return
    shard(data, cfg, args.field, args.year, args.inputs, args.output)
