"""Loss terms against independent references (scoringrules, closed forms) and their gradients.

Legend: K tokens, E members, P values per token.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import yaml

from atmorep.config import LossConfig
from atmorep.schema import path as schema_path
from atmorep.train import losses

scoringrules = pytest.importorskip("scoringrules")


def _ens(K=50, E=8, P=3, seed=0, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(K, E, P, generator=g, dtype=dtype) * 0.7 + 0.2, torch.randn(K, P, generator=g, dtype=dtype)


def test_crps_is_the_fair_ensemble_crps_of_scoringrules():
    ens, t = _ens()
    value, diag = losses.crps(ens, t)
    ref = scoringrules.crps_ensemble(t.numpy(), ens.permute(0, 2, 1).numpy(), estimator="fair")
    np.testing.assert_allclose(value.item(), ref.mean(), rtol=1e-10)
    np.testing.assert_allclose(diag["skill"].item() - diag["spread"].item(), ref.mean(), rtol=1e-10)


def test_crps_gradients_reach_every_member_including_the_spread_term():
    ens, t = _ens(K=4, E=5, P=2)
    ens.requires_grad_(True)
    losses.crps(ens, t)[0].backward()
    # d/dx_e of mean_e|x_e - t| - sum|x_e - x_e'| / (2E(E-1)), averaged over K*P
    E, x = 5, ens.detach()
    skill = torch.sign(x - t[:, None]) / E
    spread = torch.sign(x[:, :, None] - x[:, None]).sum(2) / (E * (E - 1))
    torch.testing.assert_close(ens.grad, (skill - spread) / (4 * 2))
    assert (ens.grad.abs().sum((0, 2)) > 0).all()  # every member learns
    assert not torch.allclose(ens.grad, skill / (4 * 2))  # not the original's MAE-only gradient


def test_gaussian_crps_matches_scoringrules_crps_normal():
    ens, t = _ens(E=16)
    value, _ = losses.gaussian_crps(ens, t)
    mu, sigma = ens.mean(1).numpy(), ens.std(1).numpy()
    ref = scoringrules.crps_normal(t.numpy(), mu, sigma)
    np.testing.assert_allclose(value.item(), ref.mean(), rtol=1e-10)


def test_fair_crps_of_a_large_gaussian_ensemble_approaches_the_closed_form():
    g = torch.Generator().manual_seed(0)
    mu, sigma, y = 0.3, 1.5, torch.tensor([[1.1]], dtype=torch.float64)
    ens = mu + sigma * torch.randn(1, 20000, 1, generator=g, dtype=torch.float64)
    z = (1.1 - mu) / sigma
    closed = sigma * (
        z * math.erf(z / math.sqrt(2)) + 2 * math.exp(-z * z / 2) / math.sqrt(2 * math.pi) - 1 / math.sqrt(math.pi)
    )
    assert abs(losses.crps(ens, y)[0].item() - closed) < 0.02


def test_mse_ensemble_closed_form_and_gradients():
    ens, t = _ens()
    ens.requires_grad_(True)
    value, _ = losses.mse_ensemble(ens, t)
    mu, var = ens.mean(1), ens.var(1, unbiased=False)
    torch.testing.assert_close(value, ((mu - t) ** 2 + var).mean())  # bias^2 + spread
    value.backward()
    assert (ens.grad != 0).all()


def test_stats_closed_form_and_gradients():
    ens, t = _ens()
    ens.requires_grad_(True)
    value, diag = losses.stats(ens, t)
    mu, sd = ens.detach().mean(1).numpy(), ens.detach().std(1).numpy()
    y = t.numpy()
    ref = np.mean((np.exp(-0.5 * (y - mu) ** 2 / sd**2) - 1) ** 2) + np.mean(np.sqrt(sd))
    np.testing.assert_allclose(value.item(), ref, rtol=1e-10)
    value.backward()
    assert (ens.grad != 0).all()
    # target at the mean: the calibration term vanishes, only the spread penalty remains
    at_mean = losses.stats(ens.detach(), ens.detach().mean(1))[1]
    assert at_mean["calibration"].item() == pytest.approx(0.0, abs=1e-12)


def test_mse_is_the_ensemble_mean_error():
    ens, t = _ens()
    torch.testing.assert_close(losses.mse(ens, t)[0], ((ens.mean(1) - t) ** 2).mean())


def test_loss_weights_fields_and_averages_terms():
    ens = {"a": _ens(seed=1)[0], "b": _ens(seed=2)[0]}
    tgt = {"a": _ens(seed=3)[1], "b": _ens(seed=4)[1]}
    loss, diag = losses.Loss(LossConfig(terms=("mse_ensemble", "crps"), field_weights={"a": 0.3, "b": 0.1}))(ens, tgt)
    expect = sum(w * (diag[f"{f}/mse_ensemble"] + diag[f"{f}/crps"]) for f, w in (("a", 0.3), ("b", 0.1))) / (2 * 0.4)
    assert loss.item() == pytest.approx(expect, rel=1e-9)
    assert {"a/crps.skill", "a/crps.spread", "b/mse_ensemble"} <= set(diag)
    plain, _ = losses.Loss(LossConfig(terms=("mse",)))(ens, tgt)
    per_field = [losses.mse(ens[f], tgt[f])[0].item() for f in ("a", "b")]
    assert plain.item() == pytest.approx(sum(per_field) / 2)


def test_loss_rejects_unknown_fields_and_terms():
    ens, t = _ens()
    with pytest.raises(ValueError, match="field_weights"):
        losses.Loss(LossConfig(field_weights={"zz": 1.0}))({"a": ens}, {"a": t})
    with pytest.raises(ValueError, match="unknown"):
        losses.Loss(LossConfig(terms=("kernel_crps",)))


def test_every_schema_term_is_registered():
    schema = yaml.safe_load(schema_path().read_text())
    enum = schema["properties"]["train"]["properties"]["loss"]["properties"]["terms"]["items"]["enum"]
    assert set(enum) == set(losses.TERMS)


def test_losses_are_finite_for_a_collapsed_ensemble():
    t = torch.zeros(3, 2)
    ens = torch.zeros(3, 4, 2, requires_grad=True)
    for name, term in losses.TERMS.items():
        value, _ = term(ens, t)
        value.backward()
        assert torch.isfinite(value) and torch.isfinite(ens.grad).all(), name
        ens.grad = None


def test_mean_std_is_the_unbiased_ensemble_std():
    from atmorep.model.tail import mean_std

    ens, _ = _ens()
    mu, sd = mean_std(ens)
    torch.testing.assert_close(mu, ens.mean(1))
    torch.testing.assert_close(sd, ens.std(1))
    assert (mean_std(torch.zeros(2, 3, 4), 0.1)[1] == 0.1).all()
