"""What several commands share: the configuration arguments, a stage's slice, shard stores by field."""

from __future__ import annotations

import argparse
from pathlib import Path

from atmorep import config as C


def config_args(p: argparse.ArgumentParser, params_help: str | None = None) -> None:
    """``--config FILE`` (a whole run configuration) or ``--params JSON`` (what Snakemake passes)."""
    g = p.add_mutually_exclusive_group()
    g.add_argument("--config", type=Path, help="run configuration YAML (e.g. config/config.yaml)")
    g.add_argument("--params", help=params_help or "this stage's configuration slice as JSON (what Snakemake passes)")


def unit_args(p: argparse.ArgumentParser, *, output: str) -> None:
    """The (field, month) unit of a data stage, read from acquire's GRIB file."""
    p.add_argument("--field", required=True)
    p.add_argument("--month", required=True, help="YYYY-MM")
    p.add_argument("--input", required=True, type=Path, help="GRIB file from acquire")
    p.add_argument("--output", required=True, type=Path, help=output)


def model_args(p: argparse.ArgumentParser) -> None:
    """``--model`` (a model file) and ``--shards`` (the stores of its fields): infer, evaluate, embed."""
    p.add_argument(
        "--model", required=True, type=Path, help="model file (model.safetensors) from train or import-original"
    )
    p.add_argument("--shards", required=True, nargs="+", type=Path, help="shard stores (all fields of the model)")


def fit_args(p: argparse.ArgumentParser) -> None:
    """The fit planner's device memory and ranks (``train --dry-run`` and ``plan``)."""
    p.add_argument(
        "--device-memory",
        default="80GiB",
        help="memory of one GPU for the fit planner, e.g. "
        "80GiB, 141GB (default 80GiB, an H100); it recommends the ZeRO stage, micro-batch, activation "
        "checkpointing and offload that fit train.batch_size per rank in 85%% of it (bf16)",
    )
    p.add_argument(
        "--ranks", type=int, help="data-parallel ranks for the fit planner (default train.ranks; 1 for a model file)"
    )


def stage_slice(args: argparse.Namespace, stage: str) -> dict:
    """The raw slice of ``stage``: from ``--params``, or cut from the ``--config`` file as Snakemake would."""
    if args.params is not None:
        raw = C.from_slice(args.params)
        unknown = set(raw) - set(C.STAGE_SECTIONS[stage])
        if unknown:
            raise C.ConfigError(f"unknown config key(s) for stage {stage}: {', '.join(sorted(unknown))}")
        return raw
    if args.config is None:
        raise C.ConfigError("give --config FILE (a run configuration) or --params JSON (a stage slice)")
    C.load(args.config)  # validates the whole file
    # The raw slice, as Snakemake would pass it: the command builds its sections as it would from --params.
    return C.stage_slice(C.read_yaml(args.config), stage)


def stores(paths: list[Path]) -> dict[str, list[str]]:
    """Group shard stores by the field their attributes name."""
    from atmorep.formats import zarrv3

    out: dict[str, list[str]] = {}
    for p in paths:
        field = zarrv3.open_dataset(p).attrs.get("field")  # the store says what it holds, not its path
        if field is None:
            raise C.ConfigError(f"{p}: not an atmorep shard store (no 'field' attribute)")
        out.setdefault(field, []).append(str(p))
    return out
