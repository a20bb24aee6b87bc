"""Encoder and decoder blocks (pre-LayerNorm without affine) and the ensemble tail.

Legend: B batch, N tokens of this field, M tokens of another token set, D width, P values per token,
K masked tokens, E ensemble members.
"""

from __future__ import annotations

import torch
from torch import nn

from atmorep.model.attention import MultiSourceAttention


class MLP(nn.Module):
    """``x + Linear(2D -> D)(Dropout(GELU(Linear(D -> 2D)(LN(x)))))``."""

    def __init__(self, dim: int, dropout: float):
        super().__init__()
        self.net = nn.Sequential(nn.LayerNorm(dim, elementwise_affine=False), nn.Linear(dim, 2 * dim), nn.GELU(),
                                 nn.Dropout(dropout), nn.Linear(2 * dim, dim), nn.Dropout(dropout))

    def forward(self, x_BND: torch.Tensor) -> torch.Tensor:
        return x_BND + self.net(x_BND)


class EncoderBlock(nn.Module):
    """Self heads plus ``coupling_heads`` heads per coupled field, then the MLP."""

    def __init__(self, dim: int, heads: int, coupled_dims: list[int], coupling_heads: int, dropout: float,
                 qk_norm: bool = True):
        super().__init__()
        self.ln = nn.LayerNorm(dim, elementwise_affine=False)
        self.ln_src = nn.ModuleList(nn.LayerNorm(d, elementwise_affine=False) for d in coupled_dims)
        self.attn = MultiSourceAttention(dim, dim // heads, heads, coupled_dims, coupling_heads, qk_norm, dropout)
        self.mlp = MLP(dim, dropout)

    def forward(self, x_BND: torch.Tensor, coupled: list[torch.Tensor]) -> torch.Tensor:
        srcs = [ln(c) for ln, c in zip(self.ln_src, coupled)]
        return self.mlp(x_BND + self.attn(self.ln(x_BND), srcs))


class DecoderBlock(nn.Module):
    """Half the heads attend to the decoder stream, half to one encoder output; then the MLP."""

    def __init__(self, dim: int, heads: int, dropout: float, qk_norm: bool = True):
        super().__init__()
        self.ln = nn.LayerNorm(dim, elementwise_affine=False)
        self.ln_enc = nn.LayerNorm(dim, elementwise_affine=False)
        half = max(heads // 2, 1)
        self.attn = MultiSourceAttention(dim, dim // heads, half, [dim], heads - half, qk_norm, dropout)
        self.mlp = MLP(dim, dropout)

    def forward(self, y_BND: torch.Tensor, enc_BND: torch.Tensor) -> torch.Tensor:
        return self.mlp(y_BND + self.attn(self.ln(y_BND), [self.ln_enc(enc_BND)]))


class EnsembleTail(nn.Module):
    """``E`` independent heads ``LayerNorm(D) -> Linear(D -> P)`` on the masked tokens only."""

    def __init__(self, dim: int, values_per_token: int, members: int):
        super().__init__()
        self.heads = nn.ModuleList(nn.Sequential(nn.LayerNorm(dim), nn.Linear(dim, values_per_token))
                                   for _ in range(members))

    def forward(self, x_KD: torch.Tensor) -> torch.Tensor:
        """Ensemble ``(K, E, P)``."""
        return torch.stack([h(x_KD) for h in self.heads], dim=1)
