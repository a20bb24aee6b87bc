"""Losses behind one signature: ``loss(ens (K, E, P), target (K, P)) -> scalar``.

All are computed on the masked tokens only, in normalized units. K masked tokens, E members,
P values per token.
"""

from __future__ import annotations

import torch

from atmorep.config import LossConfig


def mse(ens_KEP: torch.Tensor, target_KP: torch.Tensor) -> torch.Tensor:
    """MSE of the ensemble mean."""
    return ((ens_KEP.mean(1) - target_KP) ** 2).mean()


def mse_ensemble(ens_KEP: torch.Tensor, target_KP: torch.Tensor) -> torch.Tensor:
    """Mean over members of each member's MSE (AtmoRep)."""
    return ((ens_KEP - target_KP[:, None]) ** 2).mean()


def stats(ens_KEP: torch.Tensor, target_KP: torch.Tensor) -> torch.Tensor:
    """AtmoRep's statistical term: the error should lie within the spread, and the spread be small.

    mean((exp(-(t - mu)^2 / (2 sigma^2)) - 1)^2) + mean(sqrt(sigma)).
    """
    mu, sigma = ens_KEP.mean(1), ens_KEP.std(1).clamp(min=1e-6)
    return ((torch.exp(-0.5 * (target_KP - mu) ** 2 / sigma**2) - 1) ** 2).mean() + sigma.sqrt().mean()


def crps(ens_KEP: torch.Tensor, target_KP: torch.Tensor) -> torch.Tensor:
    """Fair ensemble CRPS: E|x - y| - E|x - x'| / 2 with the unbiased (E(E-1)) spread term."""
    E = ens_KEP.shape[1]
    skill = (ens_KEP - target_KP[:, None]).abs().mean(1)
    spread = (ens_KEP[:, :, None] - ens_KEP[:, None]).abs().sum((1, 2)) / (2 * E * (E - 1))
    return (skill - spread).mean()


LOSSES = {"mse": mse, "mse_ensemble": mse_ensemble, "stats": stats, "crps": crps}


class Loss:
    """Sum of the configured terms, averaged over fields; returns the loss and per-term diagnostics."""

    def __init__(self, cfg: LossConfig):
        self.terms = {name: LOSSES[name] for name in cfg.terms}

    def __call__(self, ens: dict[str, torch.Tensor], targets: dict[str, torch.Tensor]):
        total, diag = 0.0, {}
        for f in ens:
            for name, fn in self.terms.items():
                value = fn(ens[f], targets[f])
                diag[f"{f}/{name}"] = float(value.detach())
                total = total + value
        total = total / len(ens)
        return total, diag
