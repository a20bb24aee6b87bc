"""Multi-head attention with extra heads that attend to other token sets (coupled fields or encoder
outputs).

The attention kernel is a plug-in (:data:`KERNELS`): ``sdpa`` is
``torch.nn.functional.scaled_dot_product_attention`` (fused flash / memory-efficient kernels on GPU),
``explicit`` the textbook ``softmax(q k^T / sqrt(dh)) v`` (reference path, and what V1 computed).
Query/key normalisation is a plug-in too (:data:`QK_NORMS`).

Legend: B batch, N query tokens, M key tokens, H heads, dh head width, D model width, C = H*dh (a
projection's width).
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

from atmorep.config import ConfigError, ModelConfig


def explicit_attention(q_BHNd: torch.Tensor, k_BHMd: torch.Tensor, v_BHMd: torch.Tensor) -> torch.Tensor:
    """``softmax(q k^T / sqrt(dh)) v`` with the weights materialised, ``(B, H, N, dh)``."""
    return attention_weights(q_BHNd, k_BHMd) @ v_BHMd


def attention_weights(q_BHNd: torch.Tensor, k_BHMd: torch.Tensor) -> torch.Tensor:
    """``softmax(q k^T / sqrt(dh))``, ``(B, H, N, M)``."""
    return torch.softmax(q_BHNd @ k_BHMd.transpose(-1, -2) / math.sqrt(q_BHNd.shape[-1]), dim=-1)


#: name -> ``kernel(q (B,H,N,dh), k (B,H,M,dh), v (B,H,M,dh)) -> (B,H,N,dh)``
# sdpa's default scale is 1/sqrt(dh), the one explicit_attention uses: the kernels are interchangeable.
KERNELS: dict[str, Callable[..., torch.Tensor]] = {
    "sdpa": F.scaled_dot_product_attention,
    "explicit": explicit_attention,
}

#: name -> factory of the per-head query/key LayerNorm over ``dh``
# The original's encoders normalise q/k without affine ("plain", or "none" without with_qk_lnorm);
# its decoders with affine (train/original.py maps the config).
QK_NORMS: dict[str, Callable[[int], nn.Module]] = {
    "none": lambda dh: nn.Identity(),
    "plain": lambda dh: nn.LayerNorm(dh, elementwise_affine=False),
    "affine": lambda dh: nn.LayerNorm(dh),
}


def check_names(cfg: ModelConfig) -> None:
    """Refuse a model section that names an unknown kernel or q/k norm, naming the key and the choices."""
    for key, names in (("attention", KERNELS), ("encoder_qk_norm", QK_NORMS), ("decoder_qk_norm", QK_NORMS)):
        if (value := getattr(cfg, key)) not in names:
            raise ConfigError(f"model.{key}: '{value}' is not one of {', '.join(names)}")


class MultiSourceAttention(nn.Module):
    """``self_heads`` heads over the input itself plus ``heads_per_source`` heads per extra source.

    All heads have width ``dh``. Self heads use one fused ``Linear(D, 3*H*dh)``; the heads of source
    ``s`` take queries through ``Linear(D, hps*dh)`` and keys/values through ``Linear(D_s, 2*hps*dh)``
    (no biases). Outputs are concatenated, projected back by ``proj_out`` (no bias) and dropped out.
    One query norm and one key norm (per ``qk_norm``) are shared by all heads; ``source_q_norm=False``
    leaves the queries of the source heads unnormalised (the original's coupling heads, ``compat``).

    ``forward``'s first argument is the (already normalised) input ``x``; ``eval/attention.py`` hooks
    it to recompute the self-attention weights on request (:meth:`self_attention_weights`).
    """

    def __init__(
        self,
        dim: int,
        dh: int,
        self_heads: int,
        source_dims: list[int],
        heads_per_source: int,
        qk_norm: str = "plain",
        dropout: float = 0.0,
        kernel: str = "sdpa",
        source_q_norm: bool = True,
    ):
        super().__init__()
        self.dh, self.self_heads, self.hps = dh, self_heads, heads_per_source
        self.source_q_norm = source_q_norm
        self.kernel = KERNELS[kernel]
        # Rows: all q, then all k, then all v (chunk(3) relies on it; the original's are per head, and
        # train/original.py reorders them).
        self.qkv = nn.Linear(dim, 3 * self_heads * dh, bias=False)
        # Queries come from x (width D), keys/values from the source (its own width D_s).
        self.q_src = nn.ModuleList(nn.Linear(dim, heads_per_source * dh, bias=False) for _ in source_dims)
        self.kv_src = nn.ModuleList(nn.Linear(d, 2 * heads_per_source * dh, bias=False) for d in source_dims)
        total = self_heads + heads_per_source * len(source_dims)
        self.proj_out = nn.Linear(total * dh, dim, bias=False)
        self.q_norm, self.k_norm = QK_NORMS[qk_norm](dh), QK_NORMS[qk_norm](dh)
        self.drop = nn.Dropout(dropout)

    def _heads(self, x_BNC: torch.Tensor, heads: int) -> torch.Tensor:
        B, N, _ = x_BNC.shape
        return x_BNC.view(B, N, heads, self.dh).transpose(1, 2)  # B H N dh

    def _self_qkv(self, x_BND: torch.Tensor):
        q, k, v = (self._heads(t, self.self_heads) for t in self.qkv(x_BND).chunk(3, dim=-1))
        return self.q_norm(q), self.k_norm(k), v

    def _source_qkv(self, i: int, x_BND: torch.Tensor, src_BMD: torch.Tensor):
        q = self._heads(self.q_src[i](x_BND), self.hps)
        k, v = (self._heads(t, self.hps) for t in self.kv_src[i](src_BMD).chunk(2, dim=-1))
        return (self.q_norm(q) if self.source_q_norm else q), self.k_norm(k), v

    def forward(self, x_BND: torch.Tensor, sources: list[torch.Tensor]) -> torch.Tensor:
        """Attention output ``(B, N, D)`` for normalised ``x`` and normalised sources ``[(B, M_s, D_s)]``."""
        outs = [self.kernel(*self._self_qkv(x_BND))]
        outs += [self.kernel(*self._source_qkv(i, x_BND, s)) for i, s in enumerate(sources)]
        # Heads in order self, source 0, source 1, ...: proj_out's input columns follow this order.
        o_BHNd = torch.cat(outs, dim=1)
        B, _, N, _ = o_BHNd.shape
        return self.drop(self.proj_out(o_BHNd.transpose(1, 2).reshape(B, N, -1)))

    @torch.no_grad()
    def self_attention_weights(self, x_BND: torch.Tensor) -> torch.Tensor:
        """``softmax(q k^T / sqrt(dh))`` of the self heads, ``(B, H, N, N)``; recomputed on request only."""
        q, k, _ = self._self_qkv(x_BND)
        return attention_weights(q, k)
