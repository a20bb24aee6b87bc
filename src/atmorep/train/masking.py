"""Masking strategies behind one interface: which tokens of each field become targets.

A strategy maps a :class:`~atmorep.train.batch.Batch` and a generator to a boolean mask per field
``(B, L, T, Y, X)``; :func:`apply` zeroes the masked tokens of the model input (zero is the mean in
normalized space).
"""

from __future__ import annotations

from typing import Protocol

import torch

from atmorep.config import MaskingConfig
from atmorep.train.batch import Batch


class Masking(Protocol):
    def __call__(self, batch: Batch, gen: torch.Generator) -> dict[str, torch.Tensor]: ...


class BertMasking:
    """Per sample, field and level a rate r ~ U(0, rate); ceil(r * tokens) tokens drawn uniformly."""

    def __init__(self, rate: float):
        self.rate = rate

    def __call__(self, batch: Batch, gen: torch.Generator) -> dict[str, torch.Tensor]:
        masks = {}
        for f, t in batch.tokens.items():
            B, L, T, Y, X, _ = t.shape
            n = T * Y * X
            count = torch.ceil(torch.rand(B, L, 1, generator=gen) * self.rate * n).clamp(min=1)
            rank = torch.rand(B, L, n, generator=gen).argsort(dim=-1).argsort(dim=-1)
            masks[f] = (rank < count).view(B, L, T, Y, X)
        return masks


class ForecastMasking:
    """The last ``slabs`` time slabs of every field and level."""

    def __init__(self, slabs: int):
        self.slabs = slabs

    def __call__(self, batch: Batch, gen: torch.Generator | None = None) -> dict[str, torch.Tensor]:
        masks = {}
        for f, t in batch.tokens.items():
            m = torch.zeros(t.shape[:5], dtype=torch.bool)
            m[:, :, -self.slabs:] = True
            masks[f] = m
        return masks


def build(cfg: MaskingConfig) -> Masking:
    strategies = {"bert": lambda: BertMasking(cfg.rate), "forecast": lambda: ForecastMasking(cfg.forecast_tokens)}
    return strategies[cfg.strategy]()


def apply(batch: Batch, masks: dict[str, torch.Tensor]) -> Batch:
    """The model input: masked tokens set to zero."""
    return Batch({f: t.masked_fill(masks[f][..., None], 0.0) for f, t in batch.tokens.items()}, batch.info)

