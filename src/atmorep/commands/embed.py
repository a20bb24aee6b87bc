"""atmorep embed: the encoder's latents of a model over a period and area, a CF zarr store."""

from __future__ import annotations

import argparse
from pathlib import Path

from atmorep import config as C
from atmorep.commands._common import config_args, model_args, stage_slice, stores

HELP = "write the encoder's latents (one vector per token, field, level and layer) over embed.start..end and embed.area"
DESCRIPTION = (
    "Windows tile embed.start..end and embed.area as evaluate's global_forecast tiles the globe; every "
    "token's latent is the encoder output (unmasked inputs) of the window in which it is most central. "
    "Writes OUTPUT_DIR/embeddings.zarr, one group per field (xarray.open_zarr(PATH, group=FIELD)): latent "
    "(time, layer, level, latitude, longitude, channel) at the token centres, window (the window each "
    "latent comes from), optional pooled_window and pooled_area, CF coordinates with bounds, the model's "
    "path and sha256 in the attributes. With embed.case_study the tropical-cyclone case study is written "
    "beside it (cyclone.png, cyclone_track.csv, cyclone_similarity.csv)."
)


def add_arguments(p: argparse.ArgumentParser) -> None:
    config_args(p)
    model_args(p)
    p.add_argument(
        "--output-dir",
        required=True,
        type=Path,
        help="writes embeddings.zarr (and the case study's figure and tables); replaced atomically when complete",
    )


def run(args: argparse.Namespace) -> None:
    from atmorep.eval.embed import embed

    raw = stage_slice(args, "embed")
    embed(C.section(raw, "data"), C.section(raw, "embed"), args.model, stores(args.shards), args.output_dir)
