"""atmorep train: pretrain the multiformer on the launched ranks (or a dry run on the meta device)."""

from __future__ import annotations

import argparse
from pathlib import Path

from atmorep import config as C
from atmorep.commands._common import config_args, fit_args, stage_slice, stores

HELP = (
    "pretrain the multiformer with DeepSpeed ZeRO on the launched ranks "
    "(several ranks: atmorep launch --with torchrun|mpirun|srun --ranks N -- train ...)"
)


def add_arguments(p: argparse.ArgumentParser) -> None:
    config_args(p)
    p.add_argument("--shards", nargs="+", type=Path, help="shard stores (all fields); required unless --dry-run")
    p.add_argument(
        "--output-dir", type=Path, help="writes model.safetensors, metrics.csv, loss.png; required unless --dry-run"
    )
    p.add_argument(
        "--fresh",
        action="store_true",
        help="ignore checkpoints in OUTPUT_DIR/checkpoints (by default a run resumes from the latest one made "
        "with the same configuration and inputs; OUTPUT_DIR is locked while a training runs)",
    )
    p.add_argument(
        "--dry-run",
        action="store_true",
        help="build the model on the meta device and print its parameter count, tokens per sample and "
        "estimated memory (--config may be config/models/*.yaml), and the fit planner's ZeRO stage, "
        "micro-batch, checkpointing and offload",
    )
    fit_args(p)


def run(args: argparse.Namespace) -> None:
    if args.dry_run:
        if args.config is None:
            raise C.ConfigError("--dry-run needs --config FILE (a run configuration or config/models/*.yaml)")
        from atmorep.train.dry_run import dry_run

        print(dry_run(args.config, args.device_memory, args.ranks))
        return
    if not args.shards or args.output_dir is None:
        raise C.ConfigError("train needs --shards and --output-dir (or --dry-run)")
    from atmorep.train.loop import train

    raw = stage_slice(args, "train")
    train(
        C.section(raw, "seed"),
        C.section(raw, "data"),
        C.section(raw, "model"),
        C.section(raw, "train"),
        stores(args.shards),
        args.output_dir,
        fresh=args.fresh,
    )
