"""atmorep import-original: a model of the original AtmoRep code as our model file."""

from __future__ import annotations

import argparse
from pathlib import Path

from atmorep import config as C

HELP = (
    "convert a model of the original AtmoRep code (AtmoRep_id<id>.mod + model_id<id>.json) into a model file "
    "(model.safetensors, with a card from the JSON) that evaluate reads and train.init_from fine-tunes"
)
DESCRIPTION = (
    "Read the original's state_dict without running pickled code (weights_only), map it into the compat "
    "multiformer its JSON describes (every key used, shapes checked; a mismatch names the key), and print the "
    "config keys (data/shard/model/train) that reproduce its training: per-field masking rates and loss weights."
)


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--weights", required=True, type=Path, help="AtmoRep_id<id>.mod (the original's torch.save)")
    p.add_argument("--config", required=True, type=Path, help="model_id<id>.json (the original's configuration)")
    p.add_argument("--output", required=True, type=Path, help="model file to write (model.safetensors)")
    p.add_argument(
        "--rename",
        action="append",
        metavar="ORIGINAL=OURS",
        help="field name mapping, repeatable (default: velocity_u=u, velocity_v=v, velocity_z=w, temperature=t, "
        "specific_humidity=q, total_precip=tp, vorticity=vo, divergence=d, geopotential=z)",
    )
    p.add_argument("--config-out", type=Path, help="also write the printed config keys to this YAML file")


def run(args: argparse.Namespace) -> None:
    from atmorep.train.original import import_original

    rename = {}
    for item in args.rename or []:
        old, sep, new = item.partition("=")
        if not sep or not old or not new:
            raise C.ConfigError(f"--rename {item!r}: expected ORIGINAL=OURS, e.g. velocity_u=u")
        rename[old] = new
    print(import_original(args.weights, args.config, args.output, rename, args.config_out))
