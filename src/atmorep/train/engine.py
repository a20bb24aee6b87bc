"""The DeepSpeed engine. This is the only module that imports deepspeed.

:func:`deepspeed_config` turns our config into DeepSpeed's (a pure function: no hand-edited JSON).
"""

from __future__ import annotations

import logging
import os

import torch

from atmorep.config import TrainConfig

log = logging.getLogger(__name__)


def deepspeed_config(cfg: TrainConfig, world: int, gpu: bool) -> dict:
    """DeepSpeed's config for ``cfg`` on ``world`` ranks (bf16 on GPUs, fp32 on CPUs)."""
    return {
        "train_micro_batch_size_per_gpu": cfg.batch_size,
        "gradient_accumulation_steps": 1,
        "train_batch_size": cfg.batch_size * world,
        "zero_optimization": {"stage": cfg.zero_stage},
        "zero_allow_untested_optimizer": True,  # a torch AdamW avoids JIT-compiling DeepSpeed's (+84 s on CPU)
        "bf16": {"enabled": gpu},
        "steps_per_print": 2**31 - 1,
        "wall_clock_breakdown": False,
    }


def schedule(cfg: TrainConfig):
    """Linear warm-up to the peak rate, then linear decay to a tenth of it at the last step."""
    def factor(step: int) -> float:
        if step < cfg.warmup_steps:
            return (step + 1) / cfg.warmup_steps
        rest = max(cfg.steps - cfg.warmup_steps, 1)
        return 1.0 - 0.9 * min(step - cfg.warmup_steps, rest) / rest
    return factor


class DeepSpeedEngine:
    """ZeRO data parallelism around a plain ``nn.Module``: ``step(loss)`` does backward and update."""

    def __init__(self, model: torch.nn.Module, cfg: TrainConfig, world: int):
        gpu = torch.cuda.is_available()
        os.environ.setdefault("DS_ACCELERATOR", "cuda" if gpu else "cpu")
        import deepspeed

        optimizer = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, schedule(cfg))
        self.engine, self.optimizer, _, self.scheduler = deepspeed.initialize(
            model=model, optimizer=optimizer, lr_scheduler=scheduler,
            config=deepspeed_config(cfg, world, gpu))

    @property
    def module(self) -> torch.nn.Module:
        return self.engine.module

    def __call__(self, *args, **kwargs):
        return self.engine(*args, **kwargs)

    def step(self, loss: torch.Tensor) -> None:
        self.engine.backward(loss)
        self.engine.step()

    @property
    def lr(self) -> float:
        return self.optimizer.param_groups[0]["lr"]
