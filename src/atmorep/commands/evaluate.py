"""atmorep evaluate: `atmorep infer` then `atmorep score` into one directory (for runs by hand)."""

from __future__ import annotations

import argparse
from pathlib import Path

from atmorep import config as C
from atmorep.commands._common import config_args, model_args, stage_slice, stores

HELP = (
    "run evaluate.mode (forecast, temporal_interpolation, bert, global_forecast) on the held-out period; "
    "WeatherBench 2 scores vs baselines, CF zarr products, figures, attention (infer, then score, into one "
    "directory; the workflow runs them as two rules)"
)


def add_arguments(p: argparse.ArgumentParser) -> None:
    config_args(p)
    model_args(p)
    p.add_argument(
        "--output-dir",
        required=True,
        type=Path,
        help="writes scores.csv, rank_histogram.csv, windows.zarr, sample_scores.zarr, climatology.zarr "
        "(+ wb2_*.zarr, attention.zarr) and figures",
    )


def run(args: argparse.Namespace) -> None:
    from atmorep.eval.evaluate import evaluate

    raw = stage_slice(args, "evaluate")
    evaluate(
        C.section(raw, "seed"),
        C.section(raw, "data"),
        C.section(raw, "evaluate"),
        args.model,
        stores(args.shards),
        args.output_dir,
    )
