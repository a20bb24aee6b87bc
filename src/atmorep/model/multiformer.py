"""The multiformer: one encoder-decoder transformer per field, coupled in the encoder.

Legend: B batch, L levels, T/Y/X tokens in time/lat/lon, N = L*T*Y*X tokens per field and sample,
P values per token, I token-info values, D width, K masked tokens (all samples), E ensemble members.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from atmorep.config import ModelConfig
from atmorep.model.blocks import DecoderBlock, EncoderBlock, EnsembleTail
from atmorep.model.embedding import FieldEmbedding


@dataclass(frozen=True)
class FieldGeometry:
    """What the model needs to know of a field's data: levels and points per token."""

    levels: int
    token_size: tuple[int, int, int]

    @property
    def values_per_token(self) -> int:
        tt, ty, tx = self.token_size
        return tt * ty * tx


class Multiformer(nn.Module):
    """Per-field encoder-decoder transformers with directed cross-attention coupling.

    ``forward`` takes per field the (masked) tokens ``(B, L, T, Y, X, P)``, the token info
    ``(B, L, T, Y, X, I)`` and the boolean target mask ``(B, L, T, Y, X)``, and returns per field the
    ensemble for the masked tokens ``(K, E, P)`` in ``mask.nonzero()`` order.
    """

    def __init__(self, cfg: ModelConfig, fields: dict[str, FieldGeometry], info_dim: int = 8):
        super().__init__()
        self.cfg, self.fields = cfg, dict(fields)
        unknown = {g for f, gs in cfg.coupling.items() for g in (f, *gs)} - set(fields)
        if unknown:
            raise ValueError(f"model.coupling names fields not in the data: {sorted(unknown)}")
        self.coupling = {f: tuple(cfg.coupling.get(f, ())) for f in fields}
        D = cfg.dim
        self.embed = nn.ModuleDict({f: FieldEmbedding(g.values_per_token, info_dim, D, g.levels, cfg.num_tokens)
                                    for f, g in fields.items()})
        self.encoders = nn.ModuleDict({
            f: nn.ModuleList(EncoderBlock(D, cfg.heads, [D] * len(self.coupling[f]), cfg.coupling_heads,
                                          cfg.dropout) for _ in range(cfg.encoder_layers))
            for f in fields})
        self.decoders = nn.ModuleDict({
            f: nn.ModuleList(DecoderBlock(D, cfg.heads, cfg.dropout) for _ in range(cfg.decoder_layers))
            for f in fields})
        self.tails = nn.ModuleDict({f: EnsembleTail(D, g.values_per_token, cfg.ensemble) for f, g in fields.items()})

    def encode(self, tokens: dict[str, torch.Tensor], info: dict[str, torch.Tensor]) -> dict[str, list[torch.Tensor]]:
        """Per field the outputs of every encoder layer, ``[(B, N, D)] * layers``.

        All fields advance one layer at a time from the same layer input, so the result does not
        depend on the order of the fields.
        """
        z = {f: self.embed[f](tokens[f].flatten(1, 4), info[f].flatten(1, 4)) for f in self.fields}
        outs: dict[str, list[torch.Tensor]] = {f: [] for f in self.fields}
        for layer in range(self.cfg.encoder_layers):
            z = {f: self.encoders[f][layer](z[f], [z[g] for g in self.coupling[f]]) for f in self.fields}
            for f in self.fields:
                outs[f].append(z[f])
        return outs

    def decode(self, enc_outs: list[torch.Tensor], field: str) -> torch.Tensor:
        """Decoder layer l cross-attends to encoder output L-1-l; input is the last encoder output."""
        y = enc_outs[-1]
        rev = enc_outs[::-1]
        for layer, block in enumerate(self.decoders[field]):
            y = block(y, rev[layer % len(rev)])
        return y

    def forward(self, tokens: dict[str, torch.Tensor], info: dict[str, torch.Tensor],
                mask: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        enc = self.encode(tokens, info)
        out = {}
        for f in self.fields:
            y_BND = self.decode(enc[f], f)
            out[f] = self.tails[f](y_BND[mask[f].flatten(1)])  # K E P
        return out
