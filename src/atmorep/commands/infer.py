"""atmorep infer: the model on the held-out period in one mode; stored forecasts, ensembles, attention."""

from __future__ import annotations

import argparse
from pathlib import Path

from atmorep import config as C
from atmorep.commands._common import config_args, model_args, stage_slice, stores

HELP = (
    "run evaluate.mode (forecast, temporal_interpolation, bert, global_forecast) on the held-out period and "
    "store the forecasts (windows.zarr: targets, ensemble mean and members, masks, the model input; wb2_*.zarr; "
    "attention.zarr): the GPU part of evaluation, scored by `atmorep score`"
)


def add_arguments(p: argparse.ArgumentParser) -> None:
    config_args(p)
    model_args(p)
    p.add_argument(
        "--output-dir",
        required=True,
        type=Path,
        help="writes windows.zarr (+ wb2_*.zarr for global_forecast, attention.zarr when evaluate.attention is on)",
    )


def run(args: argparse.Namespace) -> None:
    from atmorep.eval.evaluate import infer

    raw = stage_slice(args, "infer")
    infer(
        C.section(raw, "seed"),
        C.section(raw, "data"),
        C.section(raw, "evaluate"),
        args.model,
        stores(args.shards),
        args.output_dir,
    )
