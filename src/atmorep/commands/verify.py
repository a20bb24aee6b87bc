"""atmorep verify: check shard and normalized stores as they are on disk."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from atmorep import config as C
from atmorep.commands._common import config_args, stage_slice

HELP = (
    "check stores as they are on disk: a shard store against its normalized sources, a normalized store "
    "for finite values"
)
DESCRIPTION = (
    "A shard store is proved equal, bit for bit, to the normalized months it was made from (recorded in its "
    "provenance, or --inputs), through zarr and through the loader's reader; its shard indices' CRC32C "
    "checksums, its layout and every value's finiteness are checked. A normalized store is checked for "
    "non-finite values and statistics. Prints one JSON line per store; the first problem ends it with one "
    "line and exit status 1."
)


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("stores", nargs="+", type=Path, metavar="STORE")
    p.add_argument(
        "--inputs",
        nargs="+",
        type=Path,
        help="normalized monthly stores of a shard store (default: the ones its provenance records)",
    )
    config_args(p)


def run(args: argparse.Namespace) -> None:
    """One JSON line per store, or one error line."""
    from atmorep.data import normalize, shards
    from atmorep.formats import zarrv3

    data = cfg = None
    if args.params is not None or args.config is not None:
        raw = stage_slice(args, "shard")
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
