"""The model's size without building it for real: parameters (on the ``meta`` device), tokens per
sample and matmul FLOPs; what the dry run (:mod:`atmorep.train.dry_run`), the throughput meter and
the planners compute with. Arithmetic on a :class:`~atmorep.config.ModelConfig` and the fields'
:class:`~atmorep.model.multiformer.FieldGeometry` only: reading model files is :mod:`atmorep.architectures`'s.

Legend: N tokens of a field per sample, M tokens of a coupled field, D / D_g widths, P values per
token, E members, K masked tokens.
"""

from __future__ import annotations

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


def flop_terms(cfg: ModelConfig, fields: dict[str, FieldGeometry]) -> dict[str, tuple[float, float, float]]:
    """Per field the forward matmul FLOPs (2 per multiply-add), attention scores and values included:
    ``(embedding per sample, encoder + decoder per sample, tail per masked token)``."""
    n, dims, coupling = tokens(cfg, fields), field_dims(cfg, list(fields)), coupling_graph(cfg, list(fields))
    out: dict[str, tuple[float, float, float]] = {}
    for f, g in fields.items():
        N, D, P = n[f], dims[f], g.values_per_token
        enc = 2 * N * D * 3 * D + 4 * N * N * D + 8 * N * D * D  # self qkv, scores+values, MLP
        c = cfg.coupling_heads * (D // cfg.heads)
        # per coupled field h: queries of f, keys and values of h (M = n[h] tokens), scores and values
        enc += sum(2 * N * D * c + 2 * n[h] * dims[h] * 2 * c + 4 * N * n[h] * c for h in coupling[f])
        enc += 2 * N * (D + c * len(coupling[f])) * D  # proj_out
        dec = 2 * N * D * 3 * D + 2 * N * D * D + 4 * N * N * D + 8 * N * D * D  # q,kv (self+cross), proj, attn, MLP
        predicted = f not in cfg.inputs_only  # inputs-only fields have no decoder and no tail
        embed = 2 * N * (P * (D - TOKEN_INFO_DIM) + 8 * TOKEN_INFO_DIM)  # values and token info
        out[f] = (
            embed,
            cfg.encoder_layers * enc + predicted * cfg.decoder_layers * dec,
            predicted * 2 * cfg.ensemble * D * P,  # E members' Linear(D -> P); their LayerNorm is not a matmul
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
