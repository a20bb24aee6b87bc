"""The ensemble tail: ``E`` independent heads ``LayerNorm(D) -> Linear(D -> P)`` on the masked tokens.

The E heads are stored stacked so that one batched product evaluates all of them; the parameter
layout (per head ``2D + D*P + P``) and the initialisation equal E separate ``nn.LayerNorm`` +
``nn.Linear`` modules (spec §4.2).

Legend: K masked tokens (all samples), E members, D width, P values per token.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn


class Ensemble(NamedTuple):
    """Members ``(K, E, P)``, their mean ``(K, P)`` and unbiased standard deviation ``(K, P)``."""

    members: torch.Tensor
    mean: torch.Tensor
    std: torch.Tensor

    @classmethod
    def of(cls, members_KEP: torch.Tensor) -> Ensemble:
        return cls(members_KEP, *mean_std(members_KEP))


def mean_std(members_KEP: torch.Tensor, min_std: float = 0.0) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean ``(K, P)`` and unbiased standard deviation ``(K, P)`` over the members, the latter at least
    ``min_std``; with ``min_std > 0`` its gradient stays finite for a collapsed ensemble.

    Written out because ``Tensor.std`` over the middle dimension is slower on CPU, forward and backward.
    """
    mean_KP = members_KEP.mean(1)
    # Clamping the variance, not the std: sqrt's gradient at 0 is infinite, at min_std**2 it is not.
    var_KP = (members_KEP - mean_KP[:, None]).square().sum(1) / (members_KEP.shape[1] - 1)
    return mean_KP, var_KP.clamp(min=min_std**2).sqrt()


class EnsembleTail(nn.Module):
    """``E`` heads, each ``LayerNorm(D, affine) -> Linear(D -> P, bias)``; evaluated in fp32."""

    def __init__(self, dim: int, values_per_token: int, members: int, eps: float = 1e-5):
        super().__init__()
        self.eps = eps
        # nn.LayerNorm's initialisation (weight 1, bias 0), one row per member.
        self.ln_weight = nn.Parameter(torch.ones(members, dim))
        self.ln_bias = nn.Parameter(torch.zeros(members, dim))
        bound = 1 / math.sqrt(dim)  # nn.Linear's default initialisation
        self.weight = nn.Parameter(torch.empty(members, values_per_token, dim).uniform_(-bound, bound))
        self.bias = nn.Parameter(torch.empty(members, values_per_token).uniform_(-bound, bound))

    def forward(self, x_KD: torch.Tensor) -> torch.Tensor:
        """The members ``(K, E, P)`` for the selected tokens ``x`` ``(K, D)`` (fp32)."""
        # fp32 even under bf16 autocast: the members' spread is small beside their values, and the loss
        # is computed from it.
        with torch.autocast(device_type=x_KD.device.type, enabled=False):
            # Normalised once for all members; each member's affine is folded into its Linear below.
            n_KD = F.layer_norm(x_KD.float(), x_KD.shape[-1:], eps=self.eps)
            w_EPD, g_ED, b_ED, c_EP = (p.float() for p in (self.weight, self.ln_weight, self.ln_bias, self.bias))
            # (n*g_e + b_e) W_e^T + c_e  ==  n (g_e * W_e)^T + (W_e b_e + c_e): no (K, E, D) intermediate
            offset_EP = torch.einsum("epd,ed->ep", w_EPD, b_ED) + c_EP
            members_KEP = torch.einsum("kd,epd->kep", n_KD, w_EPD * g_ED[:, None, :]) + offset_EP
        return members_KEP
