"""The model's size without building it for real: parameters (on the ``meta`` device), tokens per
sample and matmul FLOPs; what the dry run (:mod:`atmorep.train.dry_run`), the throughput meter and
the planners compute with. Arithmetic on a :class:`~atmorep.config.ModelConfig` and the fields'
:class:`~atmorep.model.multiformer.FieldGeometry` only: reading model files is :mod:`atmorep.architectures`'s.

Legend: N tokens of a field per sample, M tokens of a coupled field, D / D_g widths, P values per
token, E members, K masked tokens.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from atmorep.config import ModelConfig
from atmorep.model.embedding import TOKEN_INFO_DIM
from atmorep.model.multiformer import FieldGeometry, Multiformer, coupling_graph, field_dims


def meta_model(cfg: ModelConfig, fields: dict[str, FieldGeometry]) -> Multiformer:
    """The model on the ``meta`` device: shapes only, no memory, no initialisation cost."""
    with torch.device("meta"):  # every tensor created inside, parameters included, is shape-only
        return Multiformer(cfg, fields)


def parameter_count(cfg: ModelConfig, fields: dict[str, FieldGeometry]) -> int:
    """All parameters (frozen legacy ones of the compat layout included, as the original counted them)."""
    return sum(p.numel() for p in meta_model(cfg, fields).parameters())


def tokens(cfg: ModelConfig, fields: dict[str, FieldGeometry]) -> dict[str, int]:
    """Tokens per sample and field, ``L * T * Y * X``."""
    out = {}
    for f, g in fields.items():
        T, Y, X = g.num_tokens or cfg.num_tokens
        out[f] = g.levels * T * Y * X
    return out


@dataclass(frozen=True)
class Blocks:
    """One field's part of the multiformer as the estimates count it: the FLOP count (:func:`flop_terms`)
    and the memory model (:func:`atmorep.train.memory.activation_bytes`) both read this table."""

    tokens: int  # N per sample, L * T * Y * X
    dim: int  # D
    values: int  # P per token
    coupling_width: int  # c: the coupling heads' width per coupled field
    coupled: tuple[tuple[int, int], ...]  # (M tokens, D_g width) of each field its encoder cross-attends to
    encoder_layers: int
    decoder_layers: int  # 0 for an inputs-only field (model.inputs_only): no decoder
    tail: bool  # the ensemble tail and the loss: predicted fields only


def blocks(cfg: ModelConfig, fields: dict[str, FieldGeometry]) -> dict[str, Blocks]:
    """Per field the blocks the model builds for it (see :class:`Blocks`)."""
    n, dims, coupling = tokens(cfg, fields), field_dims(cfg, list(fields)), coupling_graph(cfg, list(fields))
    out: dict[str, Blocks] = {}
    for f, g in fields.items():
        predicted = f not in cfg.inputs_only  # inputs-only fields have no decoder and no tail
        out[f] = Blocks(
            tokens=n[f],
            dim=dims[f],
            values=g.values_per_token,
            coupling_width=cfg.coupling_heads * (dims[f] // cfg.heads),
            coupled=tuple((n[h], dims[h]) for h in coupling[f]),
            encoder_layers=cfg.encoder_layers,
            decoder_layers=cfg.decoder_layers if predicted else 0,
            tail=predicted,
        )
    return out


def flop_terms(cfg: ModelConfig, fields: dict[str, FieldGeometry]) -> dict[str, tuple[float, float, float]]:
    """Per field the forward matmul FLOPs (2 per multiply-add), attention scores and values included:
    ``(embedding per sample, encoder + decoder per sample, tail per masked token)``."""
    out: dict[str, tuple[float, float, float]] = {}
    for f, b in blocks(cfg, fields).items():
        N, D, P, c = b.tokens, b.dim, b.values, b.coupling_width
        enc = 2 * N * D * 3 * D + 4 * N * N * D + 8 * N * D * D  # self qkv, scores+values, MLP
        # per coupled field (M tokens of width D_g): queries of f, keys and values of it, scores and values
        enc += sum(2 * N * D * c + 2 * M * Dg * 2 * c + 4 * N * M * c for M, Dg in b.coupled)
        enc += 2 * N * (D + c * len(b.coupled)) * D  # proj_out
        dec = 2 * N * D * 3 * D + 2 * N * D * D + 4 * N * N * D + 8 * N * D * D  # q,kv (self+cross), proj, attn, MLP
        embed = 2 * N * (P * (D - TOKEN_INFO_DIM) + 8 * TOKEN_INFO_DIM)  # values and token info
        out[f] = (
            embed,
            b.encoder_layers * enc + b.decoder_layers * dec,
            b.tail * 2 * cfg.ensemble * D * P,  # E members' Linear(D -> P); their LayerNorm is not a matmul
        )
    return out


def forward_flops(cfg: ModelConfig, fields: dict[str, FieldGeometry], masked_fraction: float = 1.0) -> float:
    """Matmul FLOPs of one sample's forward pass; the tail runs on ``masked_fraction`` of the tokens."""
    n = tokens(cfg, fields)
    return sum(e + b + t * n[f] * masked_fraction for f, (e, b, t) in flop_terms(cfg, fields).items())


def training_flops(cfg: ModelConfig, fields: dict[str, FieldGeometry], masked_fraction: float = 1.0) -> float:
    """Forward + backward matmul FLOPs of one training sample (model FLOPs: no checkpoint recompute).

    Backward costs twice the forward (input and weight gradients), except in the embedding, whose
    input (the data) needs no gradient: there only the weight gradient, once the forward.
    """
    n = tokens(cfg, fields)
    terms = flop_terms(cfg, fields)
    return sum(2 * e + 3 * (b + t * n[f] * masked_fraction) for f, (e, b, t) in terms.items())
