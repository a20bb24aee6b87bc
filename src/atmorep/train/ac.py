"""Activation checkpointing, applied to a built model from outside it (``model.checkpointing``).

Every encoder and decoder block keeps only its inputs for backward and recomputes its activations
there. The blocks get hooks (torch's composable ``checkpoint``), not a wrapper module: parameter
names, state-dict keys and DeepSpeed's recorded parameter names stay those of the plain model, so
model files and checkpoints move between runs with and without it. The recompute draws the same
dropout masks (the RNG state is restored), so the gradients are those of the plain model.
"""

from __future__ import annotations

from torch import nn
from torch.distributed._composable import checkpoint

from atmorep.model.multiformer import Multiformer


def blocks(model: Multiformer) -> list[nn.Module]:
    """The encoder and decoder blocks of every field, the unit of recomputation."""
    return [
        *(b for f in model.encoders for b in model.encoder_blocks(f)),
        *(b for f in model.decoders for b in model.decoder_blocks(f)),
    ]


def apply_ac(model: Multiformer) -> Multiformer:
    """Recompute every block's activations in backward instead of keeping them (in place; returns
    ``model``). Called on the plain model before an engine takes it, as torchtitan applies AC before
    FSDP: the engine's own hooks (ZeRO-3's parameter gathering) then run within each block's
    checkpointed forward, and again in its recompute."""
    for block in blocks(model):
        # The composable checkpoint is the non-reentrant kind: a block's parameters get gradients
        # even when its inputs need none, and hooks of the engine inside it run as usual.
        checkpoint(block)
    return model
