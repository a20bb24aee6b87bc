"""Token embedding: field values and token info, plus the fixed harmonic positional encoding.

Legend: B batch, L levels, T/Y/X tokens in time/lat/lon, N = L*T*Y*X tokens, P values per token,
I token-info values, D embedding width.
"""

from __future__ import annotations

import math

import torch
from torch import nn

TOKEN_INFO_DIM = 16  # width of the token-info embedding inside D (AtmoRep's size_token_info_net)


def harmonic_encoding(
    num_levels: int,
    num_tokens: tuple[int, int, int],
    dim: int,
    lat_quirk: bool = False,
    original_scale: bool = False,
    float32: bool = False,
) -> torch.Tensor:
    """Fixed positional encoding ``(N, D)`` over (level, time, lat, lon), row-major over [L, T, Y, X].

    With ``w_j = 2*pi*2j/D``, even dims carry ``0.5*sin(s*lat*w) + sin(time*w)`` and odd dims
    ``0.5*cos(s*lon*w) + cos(level*w)`` (AtmoRep, spec §3.5), ``s = 8 * min(1, D/1024)``.

    AtmoRep has ``s = 8``: its lat/lon frequencies are multiples of ``2*pi*16/D``, so the encoding
    repeats every ``D/16`` tokens. At AtmoRep's widths (D >= 1024) that is 64 tokens or more and ``s``
    is 8 here too; at the demo's D = 64 it would repeat every 4 tokens, so a token could not tell
    its own column from the one 4 tokens away (a D = 64 forecast then stayed worse than persistence;
    ``benchmarks/skill.py`` measures that ratio). ``original_scale`` keeps ``s = 8`` at
    every width. ``lat_quirk`` reproduces the original's latitude index ``(y*X + x) // Y`` (it
    divides by the wrong token count); the default is ``y``. ``float32`` computes as the original does
    (float32, its order of operations: bit for bit); the default computes in float64 and rounds once.
    """
    T, Y, X = num_tokens
    lev, t, lat, lon = torch.meshgrid(
        torch.arange(num_levels), torch.arange(T), torch.arange(Y), torch.arange(X), indexing="ij"
    )
    if lat_quirk:
        lat = (lat * X + lon) // Y
    # float64, rounded once by .float(): float32 arguments (index * s * w, many radians) carry their
    # rounding error into sin/cos.
    dtype = torch.float32 if float32 else torch.float64
    lev, t, lat, lon = (v.reshape(-1, 1).to(dtype) for v in (lev, t, lat, lon))
    w = 2.0 * math.pi * torch.arange(0, dim, 2).to(dtype)[None] / dim
    s = 8.0 if original_scale else 8.0 * min(1.0, dim / 1024)
    pe = torch.zeros(lev.shape[0], dim, dtype=dtype)
    pe[:, 0::2] = 0.5 * torch.sin(s * lat * w) + torch.sin(t * w)
    pe[:, 1::2] = 0.5 * torch.cos(s * lon * w) + torch.cos(lev * w)
    return pe.float()


class FieldEmbedding(nn.Module):
    """``Linear(P -> D-16)`` of the values, concatenated with a zero-initialised ``Linear(I -> 16)`` of
    the token info, plus the positional encoding (over all D dims, token-info dims included).

    The encoding is computed from the input's token grid on first use and cached per grid, so one
    model serves any number of levels and tokens (training windows, global tiles).
    """

    def __init__(self, values_per_token: int, info_dim: int, dim: int, compat: bool = False):
        super().__init__()
        if dim <= TOKEN_INFO_DIM:
            raise ValueError(f"model width {dim} must exceed the {TOKEN_INFO_DIM} token-info dims")
        self.dim, self.compat = dim, compat
        self.values = nn.Linear(values_per_token, dim - TOKEN_INFO_DIM)
        self.info = nn.Linear(info_dim, TOKEN_INFO_DIM)
        # Zero at start, as the original initialises it: token info enters only as training finds it useful.
        nn.init.zeros_(self.info.weight)
        nn.init.zeros_(self.info.bias)
        # A dict, not a buffer: the encoding is a function of the grid, so it stays out of the state_dict.
        self._pe: dict[tuple, torch.Tensor] = {}

    def positional(self, grid_LTYX: tuple[int, int, int, int], like: torch.Tensor) -> torch.Tensor:
        """The cached encoding ``(N, D)`` for a token grid, on ``like``'s device and dtype."""
        # Device and dtype in the key: a model moved or cast (.to, bf16) gets its own copy, never a stale one.
        key = (*grid_LTYX, like.device, like.dtype)
        if key not in self._pe:
            L, T, Y, X = grid_LTYX
            self._pe[key] = harmonic_encoding(
                L,
                (T, Y, X),
                self.dim,
                lat_quirk=self.compat,
                original_scale=self.compat,
                float32=self.compat,
            ).to(like.device, like.dtype)
        return self._pe[key]

    def forward(self, tokens_BLTYXP: torch.Tensor, info_BLTYXI: torch.Tensor) -> torch.Tensor:
        """Embedded tokens ``(B, N, D)``; inputs are cast to the weights' dtype (e.g. a bf16 model)."""
        _, L, T, Y, X, _ = tokens_BLTYXP.shape
        grid, dtype = (L, T, Y, X), self.values.weight.dtype
        # flatten(1, 4) is row-major over (L, T, Y, X), the order harmonic_encoding's rows are in.
        values = self.values(tokens_BLTYXP.flatten(1, 4).to(dtype))
        z_BND = torch.cat([values, self.info(info_BLTYXI.flatten(1, 4).to(dtype))], dim=-1)
        return z_BND + self.positional(grid, z_BND)
