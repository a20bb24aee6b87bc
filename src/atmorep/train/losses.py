"""Losses behind one signature (AtmoRep spec §5.2).

A loss term maps the ensemble ``(K, E, P)`` of one field and its target ``(K, P)`` to
``(value, diagnostics)``: a scalar tensor and a dict of scalar tensors (detached by the caller).
Terms are registered in :data:`TERMS` by name; :class:`Loss` combines the configured terms over the
fields with per-field weights. All are computed on the masked tokens only, in normalized units.

Legend: K masked tokens, E ensemble members, P values per token.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch

from atmorep.config import LossConfig
from atmorep.model.tail import mean_std

Term = Callable[[torch.Tensor, torch.Tensor], tuple[torch.Tensor, dict[str, torch.Tensor]]]

_SIGMA_MIN = 1e-6  # keeps 1/sigma and d sqrt(sigma) finite for a collapsed ensemble


def mse(ens_KEP: torch.Tensor, target_KP: torch.Tensor):
    """MSE of the ensemble mean."""
    return ((ens_KEP.mean(1) - target_KP) ** 2).mean(), {}


def mse_ensemble(ens_KEP: torch.Tensor, target_KP: torch.Tensor):
    """Mean over members of each member's MSE, ``(1/E) sum_e mean((x_e - t)^2)`` (AtmoRep)."""
    return ((ens_KEP - target_KP[:, None]) ** 2).mean(), {}


def stats(ens_KEP: torch.Tensor, target_KP: torch.Tensor):
    """AtmoRep's statistical term: the error should lie within the spread, and the spread be small.

    ``mean((exp(-(t - mu)^2 / (2 sigma^2)) - 1)^2) + mean(sqrt(sigma))`` with the ensemble's mean mu
    and unbiased standard deviation sigma (the Gaussian is unnormalised: peak 1).
    """
    mu, sigma = mean_std(ens_KEP, _SIGMA_MIN)
    # 0 for a target at the mean, 1 far outside the spread: bounded, so one outlier cannot dominate
    # (unlike a Gaussian NLL); the sqrt(sigma) term keeps the spread from growing to cover everything.
    calibration = ((torch.exp(-0.5 * (target_KP - mu) ** 2 / sigma**2) - 1) ** 2).mean()
    spread = sigma.sqrt().mean()
    return calibration + spread, {"calibration": calibration, "sqrt_spread": spread}


def crps(ens_KEP: torch.Tensor, target_KP: torch.Tensor):
    """Fair (unbiased) ensemble CRPS, ``mean_e |x_e - t| - sum_{e,e'} |x_e - x_e'| / (2 E (E-1))``,
    averaged over tokens and values; differentiable in every member (spread term included).

    The pairwise sum is computed from the sorted members, ``sum_{e,e'} |x_e - x_e'| =
    2 sum_i (2i - E + 1) x_(i)`` (i = 0..E-1), so memory stays ``O(K E P)`` instead of ``O(K E^2 P)``.
    """
    E = ens_KEP.shape[1]
    if E < 2:
        raise ValueError("the fair ensemble CRPS needs at least 2 members")
    skill = (ens_KEP - target_KP[:, None]).abs().mean(1)
    # sort is differentiable: the gradient reaches each member through the permutation.
    sorted_KEP = ens_KEP.sort(dim=1).values
    coeff_E = (2 * torch.arange(E, device=ens_KEP.device, dtype=ens_KEP.dtype) - E + 1)[None, :, None]
    # sum_{e,e'} / (2 E (E-1)), the sorted form's factor 2 cancelled
    spread = (coeff_E * sorted_KEP).sum(1) / (E * (E - 1))
    return (skill - spread).mean(), {"skill": skill.mean(), "spread": spread.mean()}


def gaussian_crps(ens_KEP: torch.Tensor, target_KP: torch.Tensor):
    """Closed-form CRPS of the Gaussian with the ensemble's mean and (unbiased) standard deviation,
    ``sigma (z (2 Phi(z) - 1) + 2 phi(z) - 1/sqrt(pi))``, ``z = (t - mu) / sigma`` (Gneiting et al.
    2005; what the original's ``crps`` meant to compute)."""
    mu, sigma = mean_std(ens_KEP, _SIGMA_MIN)
    z = (target_KP - mu) / sigma
    cdf = 0.5 * (1 + torch.erf(z / math.sqrt(2)))
    pdf = torch.exp(-0.5 * z**2) / math.sqrt(2 * math.pi)
    value = sigma * (z * (2 * cdf - 1) + 2 * pdf - 1 / math.sqrt(math.pi))
    return value.mean(), {}


#: name -> loss term
TERMS: dict[str, Term] = {
    "mse": mse,
    "mse_ensemble": mse_ensemble,
    "stats": stats,
    "crps": crps,
    "gaussian_crps": gaussian_crps,
}


class Loss:
    """The configured terms over all fields: ``sum_term sum_f w_f L / (terms * sum_f w_f)`` (AtmoRep V2).

    Returns the loss and the diagnostics ``{"{field}/{term}": float, "{field}/{term}.{extra}": float}``.
    Fields without a weight in ``cfg.field_weights`` weigh 1.
    """

    def __init__(self, cfg: LossConfig):
        unknown = [t for t in cfg.terms if t not in TERMS]
        if unknown:
            raise ValueError(f"train.loss.terms: unknown {unknown} (known: {', '.join(TERMS)})")
        self.terms = {name: TERMS[name] for name in cfg.terms}
        self.weights = dict(cfg.field_weights)

    def _weights(self, fields) -> dict[str, float]:
        # Checked per call: the predicted fields are known from the model's output, not the config.
        unknown = set(self.weights) - set(fields)
        if unknown:
            raise ValueError(f"train.loss.field_weights names fields the model does not predict: {sorted(unknown)}")
        w = {f: self.weights.get(f, 1.0) for f in fields}
        if sum(w.values()) <= 0:
            raise ValueError("train.loss.field_weights: the weights sum to zero")
        return w

    def __call__(self, ens: dict[str, torch.Tensor], targets: dict[str, torch.Tensor]):
        weights = self._weights(list(ens))
        total: torch.Tensor | float = 0.0
        diag: dict[str, float] = {}
        for f, w in weights.items():
            for name, term in self.terms.items():
                value, extras = term(ens[f], targets[f])
                total = total + w * value
                diag[f"{f}/{name}"] = float(value.detach())
                diag.update({f"{f}/{name}.{k}": float(v.detach()) for k, v in extras.items()})
        return total / (len(self.terms) * sum(weights.values())), diag
