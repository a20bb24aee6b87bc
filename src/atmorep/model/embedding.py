"""Token embedding: field values and token info, plus the harmonic positional encoding.

Legend: B batch, L levels, T/Y/X tokens in time/lat/lon, N = L*T*Y*X tokens, P values per token,
I token-info values, D embedding width.
"""

from __future__ import annotations

import math

import torch
from torch import nn

TOKEN_INFO_DIM = 16  # width of the token-info embedding inside D (AtmoRep)


def harmonic_encoding(num_levels: int, num_tokens: tuple[int, int, int], dim: int) -> torch.Tensor:
    """Fixed positional encoding ``(N, D)`` over (level, time, lat, lon), row-major over [L, T, Y, X].

    Even dims carry 0.5*sin(8*lat*w) + sin(time*w), odd dims 0.5*cos(8*lon*w) + cos(level*w), with
    w_j = 2*pi*2j/D (AtmoRep's form, with the latitude index computed correctly).
    """
    T, Y, X = num_tokens
    lev, t, lat, lon = torch.meshgrid(torch.arange(num_levels), torch.arange(T), torch.arange(Y),
                                      torch.arange(X), indexing="ij")
    lev, t, lat, lon = (v.reshape(-1, 1).double() for v in (lev, t, lat, lon))
    w = 2 * math.pi * torch.arange(0, dim, 2, dtype=torch.float64)[None] / dim
    pe = torch.zeros(lev.shape[0], dim, dtype=torch.float64)
    pe[:, 0::2] = 0.5 * torch.sin(8 * lat * w) + torch.sin(t * w)
    pe[:, 1::2] = 0.5 * torch.cos(8 * lon * w) + torch.cos(lev * w)
    return pe.float()


class FieldEmbedding(nn.Module):
    """``Linear(P -> D-16)`` of the values, concatenated with a zero-initialised ``Linear(I -> 16)`` of
    the token info, plus the positional encoding."""

    def __init__(self, values_per_token: int, info_dim: int, dim: int, num_levels: int,
                 num_tokens: tuple[int, int, int]):
        super().__init__()
        self.values = nn.Linear(values_per_token, dim - TOKEN_INFO_DIM)
        self.info = nn.Linear(info_dim, TOKEN_INFO_DIM)
        nn.init.zeros_(self.info.weight)
        nn.init.zeros_(self.info.bias)
        self.register_buffer("pe", harmonic_encoding(num_levels, num_tokens, dim), persistent=False)

    def forward(self, tokens_BNP: torch.Tensor, info_BNI: torch.Tensor) -> torch.Tensor:
        z = torch.cat([self.values(tokens_BNP), self.info(info_BNI)], dim=-1)
        return z + self.pe
