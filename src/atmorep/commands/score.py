"""atmorep score: stored forecasts against baselines; scores, intervals, comparisons, spectra, figures."""

from __future__ import annotations

import argparse
from pathlib import Path

from atmorep import config as C
from atmorep.commands._common import config_args, stage_slice, stores

HELP = (
    "score stored forecasts (a windows.zarr from `atmorep infer`, or any forecast in its schema) in WeatherBench 2 "
    "definitions against the mode's baselines and a climatology of the shard stores: tables with intervals, "
    "comparisons, rank histograms, spectra, figures (CPU only)"
)


def add_arguments(p: argparse.ArgumentParser) -> None:
    config_args(p)
    p.add_argument("--forecasts", required=True, type=Path, help="windows.zarr (from atmorep infer)")
    p.add_argument("--attention", type=Path, help="attention.zarr (from atmorep infer): draws attention_<field>.png")
    p.add_argument(
        "--shards", required=True, nargs="+", type=Path, help="shard stores of the forecasts' fields (climatology)"
    )
    p.add_argument(
        "--output-dir",
        required=True,
        type=Path,
        help="writes scores.csv/.parquet, comparisons.csv/.parquet, rank_histogram.csv, spectra.csv, "
        "sample_scores.zarr, climatology.zarr and figures",
    )


def run(args: argparse.Namespace) -> None:
    from atmorep.eval.evaluate import score

    raw = stage_slice(args, "score")
    score(
        C.section(raw, "seed"),
        C.section(raw, "data"),
        C.section(raw, "evaluate"),
        args.forecasts,
        stores(args.shards),
        args.output_dir,
        args.attention,
    )
