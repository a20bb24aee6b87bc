"""Builders of the evaluation tests (importable as ``eval_builders``): a small model (untrained, or
trained for a few seconds by :func:`trained_model`) and evaluation configs."""

from __future__ import annotations

import torch

from atmorep.config import EvaluateConfig, ModelConfig
from atmorep.model.batch import Batch
from atmorep.model.multiformer import FieldGeometry, Multiformer

NUM_TOKENS = (3, 3, 6)
EVAL = ("2026-03-30T06", "2026-03-31T23")


def tiny_model(fields=("t2m", "u10"), seed: int = 0, **overrides) -> Multiformer:
    torch.manual_seed(seed)
    cfg = ModelConfig(
        num_tokens=NUM_TOKENS,
        dim=32,
        heads=4,
        encoder_layers=2,
        decoder_layers=1,
        coupling_heads=1,
        coupling={"t2m": ("u10",)} if "u10" in fields else {},
        ensemble=4,
        dropout=0.0,
        **overrides,
    )
    return Multiformer(cfg, {f: FieldGeometry(1, (2, 9, 9)) for f in fields}).eval()


def eval_config(**overrides) -> EvaluateConfig:
    base = dict(start=EVAL[0], end=EVAL[1], samples=6, batch_size=4)
    return EvaluateConfig(**{**base, **overrides})


def trained_model(stores, steps: int = 60, seed: int = 0, start="2026-03-25T00", end="2026-03-30T05"):
    """:func:`tiny_model` fitted briefly (forecast masking, the training loss) on windows before the
    evaluation period: members that learnt something, for checks an untrained model cannot make."""
    import numpy as np

    from atmorep.config import LossConfig, MaskingConfig
    from atmorep.data.dataset import WindowDataset
    from atmorep.model import masking
    from atmorep.train.losses import Loss

    model = tiny_model(seed=seed).train()
    data = WindowDataset(stores, NUM_TOKENS, np.datetime64(start), np.datetime64(end))
    strategy = masking.build(
        MaskingConfig(strategy="forecast", forecast_tokens=1), {f: g.token_size for f, g in model.fields.items()}
    )
    loss_fn = Loss(LossConfig())
    opt = torch.optim.AdamW(model.parameters(), lr=2e-3)
    rng = np.random.default_rng(seed)
    gen = torch.Generator().manual_seed(seed)
    for _ in range(steps):
        batch = Batch.collate([data[int(i)] for i in rng.choice(len(data), 4, replace=False)])
        masks = strategy(batch, gen)
        source = masking.apply(batch, masks)
        ens = model(source.tokens, source.info, masks)
        loss, _ = loss_fn(ens, {f: batch.tokens[f][masks[f]] for f in masks})
        opt.zero_grad()
        loss.backward()
        opt.step()
    return model.eval()
