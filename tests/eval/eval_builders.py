"""Builders of the evaluation tests (importable as ``eval_builders``): a small, untrained model and
evaluation configs. Nothing here needs a trained model."""

from __future__ import annotations

import torch

from atmorep.config import EvaluateConfig, ModelConfig
from atmorep.model.multiformer import FieldGeometry, Multiformer

NUM_TOKENS = (3, 3, 6)
EVAL = ("2026-03-30T06", "2026-03-31T23")


def tiny_model(fields=("t2m", "u10"), seed: int = 0, **overrides) -> Multiformer:
    torch.manual_seed(seed)
    cfg = ModelConfig(num_tokens=NUM_TOKENS, dim=32, heads=4, encoder_layers=2, decoder_layers=1,
                      coupling_heads=1, coupling={"t2m": ("u10",)} if "u10" in fields else {}, ensemble=4,
                      dropout=0.0, **overrides)
    return Multiformer(cfg, {f: FieldGeometry(1, (2, 9, 9)) for f in fields}).eval()


def eval_config(**overrides) -> EvaluateConfig:
    base = dict(start=EVAL[0], end=EVAL[1], samples=6, batch_size=4)
    return EvaluateConfig(**{**base, **overrides})
