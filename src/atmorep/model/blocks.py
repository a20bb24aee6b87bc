"""Encoder and decoder blocks (pre-LayerNorm without affine parameters), AtmoRep spec §4.2.

Legend: B batch, N tokens of this field, M tokens of another token set, D width of this field,
D_g width of a coupled field.
"""

from __future__ import annotations

import torch
from torch import nn

from atmorep.model.attention import MultiSourceAttention


class MLP(nn.Module):
    """``x + Linear(2D -> D)(Dropout(GELU(Linear(D -> 2D)(LN(x)))))``.

    ``gelu_out`` adds the original's GELU after the second Linear (a quirk, spec §4.2); only for
    reproducing released weights.
    """

    def __init__(self, dim: int, dropout: float, gelu_out: bool = False):
        super().__init__()
        self.ln = nn.LayerNorm(dim, elementwise_affine=False)
        self.fc1, self.fc2 = nn.Linear(dim, 2 * dim), nn.Linear(2 * dim, dim)
        self.act, self.drop = nn.GELU(), nn.Dropout(dropout)
        self.out = nn.GELU() if gelu_out else nn.Identity()

    def forward(self, x_BND: torch.Tensor) -> torch.Tensor:
        # the residual is inside the MLP: the blocks below call it on their attention's sum
        return x_BND + self.out(self.fc2(self.drop(self.act(self.fc1(self.ln(x_BND))))))


class EncoderBlock(nn.Module):
    """``heads`` self heads plus ``coupling_heads`` heads per coupled field, then the MLP.

    Each coupled stream is normalised by its own LayerNorm (no affine); head width is ``D/heads``
    for the self and the coupling heads alike. ``compat``: the coupling queries are not q-normalised
    (the original normalizes only their keys).
    """

    def __init__(
        self,
        dim: int,
        heads: int,
        coupled_dims: list[int],
        coupling_heads: int,
        dropout: float,
        qk_norm: str = "plain",
        kernel: str = "sdpa",
        gelu_out: bool = False,
        compat: bool = False,
    ):
        super().__init__()
        self.ln = nn.LayerNorm(dim, elementwise_affine=False)
        # each coupled field's stream has its own scale: normalised on its own, not with this field's
        self.ln_src = nn.ModuleList(nn.LayerNorm(d, elementwise_affine=False) for d in coupled_dims)
        self.attn = MultiSourceAttention(  # every head dim // heads wide: coupling adds heads, not width
            dim, dim // heads, heads, coupled_dims, coupling_heads, qk_norm, dropout, kernel, source_q_norm=not compat
        )
        self.mlp = MLP(dim, dropout, gelu_out)

    def forward(self, x_BND: torch.Tensor, coupled: list[torch.Tensor]) -> torch.Tensor:
        """Next stream ``(B, N, D)`` from this field's stream and the coupled ones ``[(B, M_g, D_g)]``."""
        srcs = [ln(c) for ln, c in zip(self.ln_src, coupled)]
        return self.mlp(x_BND + self.attn(self.ln(x_BND), srcs))


class DecoderBlock(nn.Module):
    """``heads - heads//2`` self heads on the decoder stream and ``heads//2`` heads on one encoder
    output of the same field (AtmoRep: 8 + 8), then the MLP. Head width is ``D/heads``.
    """

    def __init__(
        self,
        dim: int,
        heads: int,
        dropout: float,
        qk_norm: str = "affine",
        kernel: str = "sdpa",
        gelu_out: bool = False,
    ):
        super().__init__()
        if heads < 2:
            raise ValueError(f"a decoder block needs at least 2 heads (self and cross), got {heads}")
        self.ln = nn.LayerNorm(dim, elementwise_affine=False)
        self.ln_enc = nn.LayerNorm(dim, elementwise_affine=False)
        cross = heads // 2  # an odd count gives the extra head to self-attention
        # One attention over two sources: the decoder stream (self) and the encoder output (cross).
        self.attn = MultiSourceAttention(dim, dim // heads, heads - cross, [dim], cross, qk_norm, dropout, kernel)
        self.mlp = MLP(dim, dropout, gelu_out)

    def forward(self, y_BND: torch.Tensor, enc_BND: torch.Tensor) -> torch.Tensor:
        """Next decoder stream ``(B, N, D)``."""
        return self.mlp(y_BND + self.attn(self.ln(y_BND), [self.ln_enc(enc_BND)]))
