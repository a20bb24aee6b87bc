"""atmorep finetune: train a head for a new target on a pretrained backbone, then score it."""

from __future__ import annotations

import argparse
from pathlib import Path

from atmorep import config as C
from atmorep.commands._common import config_args, stage_slice, stores

HELP = (
    "train a head (linear, mlp, perceiver) for a target the backbone never predicted (a new field, or a finer "
    "grid) on the pretraining engine, then score it on the held-out period against climatology and a linear "
    "model on the raw inputs (several ranks: atmorep launch --with torchrun|mpirun|srun --ranks N -- finetune ...)"
)
DESCRIPTION = (
    HELP + ". Writes head.safetensors (the trained weights and a card naming the backbone), metrics.csv, loss.png, "
    "checkpoints/, and windows.zarr, sample_scores.zarr, scores.csv/.parquet, comparisons.csv/.parquet, "
    "forecast.png, scorecard.png. The settings are the finetune section of the configuration "
    "(README 'Using the representation')."
)


def add_arguments(p: argparse.ArgumentParser) -> None:
    config_args(p)
    p.add_argument("--task", help="the task of finetune.tasks to train (default: the only one)")
    p.add_argument(
        "--backbone",
        type=Path,
        help="the backbone's model file (model.safetensors of atmorep train or import-original; "
        "default finetune.backbone)",
    )
    p.add_argument(
        "--shards",
        required=True,
        nargs="+",
        type=Path,
        help="shard stores of the backbone's fields and of the target field (unless finetune.tasks.*.target_shards)",
    )
    p.add_argument(
        "--output-dir", required=True, type=Path, help="the task's directory (head.safetensors, scores, ...)"
    )
    p.add_argument(
        "--fresh",
        action="store_true",
        help="ignore checkpoints in OUTPUT_DIR/checkpoints (by default a run resumes from the latest one of the same "
        "task, settings and inputs)",
    )


def run(args: argparse.Namespace) -> None:
    from atmorep.train.finetune import finetune, task_of

    raw = stage_slice(args, "finetune")
    seed, data, cfg = C.section(raw, "seed"), C.section(raw, "data"), C.section(raw, "finetune")
    name, _ = task_of(cfg, args.task)
    backbone = args.backbone or cfg.backbone
    if backbone is None:
        raise C.ConfigError("finetune needs a backbone: --backbone MODEL.pt or finetune.backbone")
    by_field = stores(args.shards)
    head = finetune(seed, data, cfg, name, backbone, by_field, args.output_dir, fresh=args.fresh)
    if head is None:  # not rank 0: the scoring is one process's
        return
    from atmorep.eval.finetune import score

    print(score(seed, data, cfg, name, head, by_field, args.output_dir, backbone))
