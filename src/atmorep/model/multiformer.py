"""The multiformer: one encoder-decoder transformer per field, coupled in the encoder (spec §4).

Per field f (width D_f, heads H, dh = D_f/H):

- embedding ``Linear(P -> D_f-16)`` ++ zero-initialised ``Linear(8 -> 16)`` of the token info, plus
  the harmonic positional encoding;
- encoder blocks: self heads plus ``coupling_heads`` heads per field that f attends to (directed graph
  ``cfg.coupling``), all fields advancing one layer at a time from the same layer input;
- decoder blocks: H/2 self heads and H/2 heads on encoder output ``L_enc-1-l`` (reverse order), the
  decoder input being the last encoder output;
- ensemble tail on the masked tokens only.

Fields in ``cfg.inputs_only`` are read (embedding, encoder, coupling) but not predicted: they have no
decoder and no tail (the original's fields outside ``fields_prediction``).

``cfg.compat`` reproduces the original V2 code (clessig/atmorep @ 055f858): its parameter layout
(the unused legacy token-info Linear, frozen here) and its numerical quirks (positional encoding's
latitude index and float32 arithmetic, GELU after the MLP's second Linear, coupling queries without
query norm), for loading released weights and matching its
logged parameter counts. Off by default: the correct behaviour.

Legend: B batch, L levels, T/Y/X tokens in time/lat/lon, N = L*T*Y*X tokens per field and sample,
P values per token, I token-info values, D width, K masked tokens (all samples), E ensemble members.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, cast

import torch
from torch import nn

from atmorep.config import ModelConfig
from atmorep.model import attention
from atmorep.model.attention import MultiSourceAttention
from atmorep.model.blocks import DecoderBlock, EncoderBlock
from atmorep.model.embedding import TOKEN_INFO_DIM, FieldEmbedding
from atmorep.model.tail import Ensemble, EnsembleTail


@dataclass(frozen=True)
class FieldGeometry:
    """What the model needs to know of a field's data: levels and points per token.

    ``num_tokens`` (time, lat, lon) is informational (size estimates); ``None`` means the model's
    ``cfg.num_tokens``. The model itself takes the token grid from its input.
    """

    levels: int
    token_size: tuple[int, int, int]
    num_tokens: tuple[int, int, int] | None = None

    @property
    def values_per_token(self) -> int:
        tt, ty, tx = self.token_size
        return tt * ty * tx


class Multiformer(nn.Module):
    """Per-field encoder-decoder transformers with directed cross-attention coupling.

    ``forward`` takes per field the (masked) tokens ``(B, L, T, Y, X, P)``, the token info
    ``(B, L, T, Y, X, I)`` and the boolean target mask ``(B, L, T, Y, X)``, and returns per field the
    ensemble for the masked tokens ``(K, E, P)`` in ``mask.nonzero()`` order. :meth:`predict` returns
    the full :class:`Ensemble` (members, mean, std).
    """

    def __init__(self, cfg: ModelConfig, fields: dict[str, FieldGeometry], info_dim: int = 8):
        super().__init__()
        attention.check_names(cfg)
        self.cfg, self.fields = cfg, dict(fields)
        self.coupling = coupling_graph(cfg, list(fields))
        self.dims = field_dims(cfg, list(fields))
        unknown = sorted(set(cfg.inputs_only) - set(fields))
        if unknown:
            raise ValueError(f"model.inputs_only names fields not in the data: {unknown}")
        #: the fields with a decoder and a tail, in data order
        self.predicted = [f for f in fields if f not in cfg.inputs_only]
        if not self.predicted:
            raise ValueError("model.inputs_only lists every field: the model would predict nothing")
        if cfg.decoder_layers > cfg.encoder_layers:
            raise ValueError(
                f"model.decoder_layers ({cfg.decoder_layers}) exceeds model.encoder_layers "
                f"({cfg.encoder_layers}): each decoder layer pairs with one encoder output"
            )
        kw: dict[str, Any] = dict(dropout=cfg.dropout, kernel=cfg.attention, gelu_out=cfg.compat)
        enc_kw = dict(kw, compat=cfg.compat)  # only the encoder has the coupling-query quirk
        self.embed = nn.ModuleDict(
            {f: FieldEmbedding(g.values_per_token, info_dim, self.dims[f], cfg.compat) for f, g in fields.items()}
        )
        self.encoders = nn.ModuleDict(
            {
                f: nn.ModuleList(
                    EncoderBlock(
                        self.dims[f],
                        cfg.heads,
                        [self.dims[g] for g in self.coupling[f]],
                        cfg.coupling_heads,
                        qk_norm=cfg.encoder_qk_norm,
                        **enc_kw,
                    )
                    for _ in range(cfg.encoder_layers)
                )
                for f in fields
            }
        )
        self.decoders = nn.ModuleDict(
            {
                f: nn.ModuleList(
                    DecoderBlock(self.dims[f], cfg.heads, qk_norm=cfg.decoder_qk_norm, **kw)
                    for _ in range(cfg.decoder_layers)
                )
                for f in self.predicted
            }
        )
        self.tails = nn.ModuleDict(
            {f: EnsembleTail(self.dims[f], fields[f].values_per_token, cfg.ensemble) for f in self.predicted}
        )
        if cfg.compat:  # the original's unused shared token-info Linear (weight 0): layout only
            # frozen: no gradient, so training leaves the imported values as they were
            self.legacy_token_info = nn.Linear(info_dim, TOKEN_INFO_DIM).requires_grad_(False)
            nn.init.zeros_(self.legacy_token_info.weight)

    def encoder_attention(
        self, field: str, layer: int, heads: tuple[int, ...] | list[int] = ()
    ) -> MultiSourceAttention:
        """The attention of ``field``'s encoder layer ``layer`` (what attention capture hooks); a field,
        layer or self head the model does not have is refused, naming it."""
        if field not in self.encoders or not 0 <= layer < len(self.encoder_blocks(field)):
            raise ValueError(
                f"evaluate.attention: the model has no encoder layer {layer} for field '{field}' (fields "
                f"{list(self.fields)}, layers 0 .. {self.cfg.encoder_layers - 1} of model.encoder_layers)"
            )
        attn = self.encoder_blocks(field)[layer].attn
        if bad := sorted(h for h in heads if not 0 <= h < attn.self_heads):
            raise ValueError(
                f"evaluate.attention.heads: the encoder has self heads 0 .. {attn.self_heads - 1} (model.heads), "
                f"not {bad}"
            )
        return attn

    def encode(
        self, tokens: dict[str, torch.Tensor], info: dict[str, torch.Tensor], depth: int | None = None
    ) -> dict[str, list[torch.Tensor]]:
        """Per field the outputs of every encoder layer, ``[(B, N, D)] * layers``; with ``depth``, of the
        first ``depth`` layers only (the later ones are not run: ``atmorep embed`` of an early layer).

        All fields advance one layer at a time from the same layer input, so the result does not
        depend on the order of the fields.
        """
        z = {f: self.embed[f](tokens[f], info[f]) for f in self.fields}
        outs: dict[str, list[torch.Tensor]] = {f: [] for f in self.fields}
        for layer in range(self.cfg.encoder_layers if depth is None else depth):
            # a new dict: each field's block couples to the others' previous layer, never to an updated one
            z = {f: self.encoder_blocks(f)[layer](z[f], [z[g] for g in self.coupling[f]]) for f in self.fields}
            for f in self.fields:
                outs[f].append(z[f])
        return outs

    def encoder_blocks(self, field: str) -> list[EncoderBlock]:
        """``field``'s encoder blocks, first to last."""
        return cast(list[EncoderBlock], list(cast(nn.ModuleList, self.encoders[field])))

    def decoder_blocks(self, field: str) -> list[DecoderBlock]:
        """``field``'s decoder blocks, first to last (predicted fields only)."""
        return cast(list[DecoderBlock], list(cast(nn.ModuleList, self.decoders[field])))

    def decode(self, enc_outs: list[torch.Tensor], field: str) -> torch.Tensor:
        """Decoder output ``(B, N, D)``: layer l cross-attends to encoder output ``L_enc-1-l``; the
        input is the last encoder output."""
        y = enc_outs[-1]
        # zip stops at the decoder's depth: with fewer decoder layers the first encoder outputs go unused
        for block, enc in zip(self.decoder_blocks(field), enc_outs[::-1]):
            y = block(y, enc)
        return y

    def forward(
        self, tokens: dict[str, torch.Tensor], info: dict[str, torch.Tensor], mask: dict[str, torch.Tensor]
    ) -> dict[str, torch.Tensor]:
        """Per predicted field the ensemble members ``(K, E, P)`` for the masked tokens (``mask.nonzero()``
        order)."""
        enc = self.encode(tokens, info)
        out = {}
        for f in self.predicted:
            y_BND = self.decode(enc[f], f)
            # (B, L, T, Y, X) -> (B, N) as the tokens were flattened; y[mask] is (K, D), row-major over (B, N)
            out[f] = self.tails[f](y_BND[mask[f].flatten(1)])
        return out

    def predict(
        self, tokens: dict[str, torch.Tensor], info: dict[str, torch.Tensor], mask: dict[str, torch.Tensor]
    ) -> dict[str, Ensemble]:
        """Per predicted field the :class:`Ensemble` (members, mean, std) of the masked tokens."""
        return {f: Ensemble.of(m) for f, m in self(tokens, info, mask).items()}


def coupling_graph(cfg: ModelConfig, fields: list[str]) -> dict[str, tuple[str, ...]]:
    """Field -> the fields its encoder attends to; checks that every name is a model field."""
    unknown = {g for f, gs in cfg.coupling.items() for g in (f, *gs)} - set(fields)  # targets and sources
    if unknown:
        raise ValueError(f"model.coupling names fields not in the data: {sorted(unknown)}")
    loops = sorted(f for f, gs in cfg.coupling.items() if f in gs)
    if loops:
        raise ValueError(f"model.coupling: fields cannot attend to themselves: {loops}")
    return {f: tuple(cfg.coupling.get(f, ())) for f in fields}


def field_dims(cfg: ModelConfig, fields: list[str]) -> dict[str, int]:
    """Width per field (``cfg.field_dims`` overrides ``cfg.dim``); checks divisibility by the heads."""
    unknown = set(cfg.field_dims) - set(fields)
    if unknown:
        raise ValueError(f"model.field_dims names fields not in the data: {sorted(unknown)}")
    dims = {f: cfg.field_dims.get(f, cfg.dim) for f in fields}
    bad = {f: d for f, d in dims.items() if d % cfg.heads}
    if bad:
        raise ValueError(f"model widths {bad} are not divisible by model.heads = {cfg.heads}")
    return dims
