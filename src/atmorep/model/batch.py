"""A typed batch that checks itself at construction.

Legend: B batch, L levels, T/Y/X tokens in time/lat/lon, P values per token, I token-info values.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch


@dataclass(frozen=True)
class Batch:
    """Per field: tokens ``(B, L, T, Y, X, P)`` (normalized) and token info ``(B, L, T, Y, X, I)``."""

    tokens: dict[str, torch.Tensor]
    info: dict[str, torch.Tensor]

    def __post_init__(self):
        if set(self.tokens) != set(self.info) or not self.tokens:
            raise ValueError(f"tokens and info name different fields: {sorted(self.tokens)} vs {sorted(self.info)}")
        sizes = {t.shape[0] for t in self.tokens.values()}
        if len(sizes) != 1:
            raise ValueError(f"fields disagree on the batch size: {sizes}")
        for f, t in self.tokens.items():
            i = self.info[f]
            if t.ndim != 6 or i.ndim != 6 or t.shape[:5] != i.shape[:5]:
                raise ValueError(
                    f"field '{f}': tokens {tuple(t.shape)} and info {tuple(i.shape)} "
                    "must be (B, L, T, Y, X, P) and (B, L, T, Y, X, I)"
                )
            # Here, naming the field, rather than as a NaN loss steps later. Token info is made from
            # coordinates, never read from data, so only the values are checked.
            if not torch.isfinite(t).all():
                raise ValueError(f"field '{f}': non-finite token values")

    @classmethod
    def from_numpy(cls, sample: dict) -> Batch:
        """From a collated loader batch ``{field: (tokens, info)}``."""
        # as_tensor shares the arrays' memory: no copy of the batch on the way in.
        return cls(
            {f: torch.as_tensor(v[0]) for f, v in sample.items()}, {f: torch.as_tensor(v[1]) for f, v in sample.items()}
        )

    @classmethod
    def collate(cls, samples: list[dict]) -> Batch:
        """Stack loader samples ``{field: (tokens (L, T, Y, X, P), info (L, T, Y, X, I))}`` into a batch."""
        return cls.from_numpy(
            {f: (np.stack([s[f][0] for s in samples]), np.stack([s[f][1] for s in samples])) for f in samples[0]}
        )

    @property
    def size(self) -> int:
        return next(iter(self.tokens.values())).shape[0]

    def to(self, device) -> Batch:
        return Batch({f: t.to(device) for f, t in self.tokens.items()}, {f: t.to(device) for f, t in self.info.items()})
