"""Multi-head attention with extra heads that attend to other token sets (coupled fields or encoder
outputs), through ``scaled_dot_product_attention`` (fused kernels on GPU).

Legend: B batch, N query tokens, M key tokens, H heads, dh head width, D model width.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn


class MultiSourceAttention(nn.Module):
    """``self_heads`` heads over the input itself plus ``heads_per_source`` heads per extra source.

    All heads have width ``dh``; their outputs are concatenated and projected back to ``dim``.
    Optional query/key LayerNorm (no affine) per head.
    """

    def __init__(self, dim: int, dh: int, self_heads: int, source_dims: list[int], heads_per_source: int,
                 qk_norm: bool = True, dropout: float = 0.0):
        super().__init__()
        self.dh, self.self_heads, self.hps = dh, self_heads, heads_per_source
        self.qkv = nn.Linear(dim, 3 * self_heads * dh, bias=False)
        self.q_src = nn.ModuleList(nn.Linear(dim, heads_per_source * dh, bias=False) for _ in source_dims)
        self.kv_src = nn.ModuleList(nn.Linear(d, 2 * heads_per_source * dh, bias=False) for d in source_dims)
        total = self_heads + heads_per_source * len(source_dims)
        self.proj_out = nn.Linear(total * dh, dim, bias=False)
        self.norm = nn.LayerNorm(dh, elementwise_affine=False) if qk_norm else nn.Identity()
        self.drop = nn.Dropout(dropout)

    def _split(self, x: torch.Tensor, heads: int) -> torch.Tensor:
        B, N, _ = x.shape
        return x.view(B, N, heads, self.dh).transpose(1, 2)  # B H N dh

    def _self_qkv(self, x_BND):
        q, k, v = self.qkv(x_BND).chunk(3, dim=-1)
        q, k, v = (self._split(t, self.self_heads) for t in (q, k, v))
        return self.norm(q), self.norm(k), v

    def _source_qkv(self, i: int, x_BND, src_BMD):
        q = self._split(self.q_src[i](x_BND), self.hps)
        k, v = (self._split(t, self.hps) for t in self.kv_src[i](src_BMD).chunk(2, dim=-1))
        return self.norm(q), self.norm(k), v

    def forward(self, x_BND: torch.Tensor, sources: list[torch.Tensor]) -> torch.Tensor:
        outs = [F.scaled_dot_product_attention(*self._self_qkv(x_BND))]
        outs += [F.scaled_dot_product_attention(*self._source_qkv(i, x_BND, s)) for i, s in enumerate(sources)]
        o = torch.cat(outs, dim=1)  # B H_total N dh
        B, _, N, _ = o.shape
        return self.drop(self.proj_out(o.transpose(1, 2).reshape(B, N, -1)))

    @torch.no_grad()
    def self_attention_weights(self, x_BND: torch.Tensor) -> torch.Tensor:
        """softmax(q k^T / sqrt(dh)) of the self heads, ``(B, H, N, N)``; recomputed on request only."""
        q, k, _ = self._self_qkv(x_BND)
        return torch.softmax(q @ k.transpose(-1, -2) / math.sqrt(self.dh), dim=-1)

    def explicit(self, x_BND: torch.Tensor, sources: list[torch.Tensor]) -> torch.Tensor:
        """Same result as :meth:`forward` with an explicit softmax (reference path for tests)."""
        def att(q, k, v):
            return torch.softmax(q @ k.transpose(-1, -2) / math.sqrt(self.dh), dim=-1) @ v
        outs = [att(*self._self_qkv(x_BND))] + [att(*self._source_qkv(i, x_BND, s)) for i, s in enumerate(sources)]
        o = torch.cat(outs, dim=1)
        B, _, N, _ = o.shape
        return self.drop(self.proj_out(o.transpose(1, 2).reshape(B, N, -1)))
