"""atmorep check: the workflow-start checks of a run configuration, without Snakemake."""

from __future__ import annotations

import argparse
from pathlib import Path

from atmorep import config as C

HELP = (
    "check a run configuration before anything runs (what the workflow checks at start): schema, field "
    "names, disjoint train/evaluate periods, one window in each period and on the grid after data.area, "
    "token tiling, and the model built on the meta device (widths, heads, coupling, depths, attention layers)"
)


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", type=Path, required=True, help="run configuration YAML")


def run(args: argparse.Namespace) -> None:
    from atmorep import preflight
    from atmorep.schema import check_names

    cfg = C.load(args.config)
    try:
        check_names(cfg)
        preflight.check(cfg)
    except C.ConfigError as exc:
        raise C.ConfigError(f"{args.config}: {exc}") from None
    months = len(cfg.data.months())
    print(f"{args.config}: run '{cfg.run}' is consistent ({len(cfg.data.fields)} fields, {months} months)")
