"""Attention maps on request: softmax(q k^T) recomputed for one encoder layer of one field.

Training and plain inference keep the fused kernel; this captures the normalized input of the
chosen layer with a forward hook and recomputes the weights of its self-attention heads.
Legend: B batch, H heads, N tokens (L*T*Y*X).
"""

from __future__ import annotations

import torch

from atmorep.model.multiformer import Multiformer


@torch.no_grad()
def encoder_self_attention(model: Multiformer, field: str, layer: int, tokens, info) -> torch.Tensor:
    """Self-attention weights ``(B, H, N, N)`` of ``field``'s encoder layer ``layer``."""
    block = model.encoders[field][layer]
    captured = {}

    def hook(module, args):
        captured["x"] = args[0]

    handle = block.attn.register_forward_pre_hook(hook)
    try:
        model.encode(tokens, info)
    finally:
        handle.remove()
    return block.attn.self_attention_weights(captured["x"])
