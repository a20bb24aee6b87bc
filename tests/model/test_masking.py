"""Masking strategies: rates, corruption fractions and formulas, slabs, registry.

Legend: B batch, L levels, T/Y/X tokens, P values per token, K tokens.
"""

from __future__ import annotations

import pytest
import torch
import yaml

from atmorep.config import MaskingConfig
from atmorep.model import masking
from atmorep.model.batch import Batch
from atmorep.schema import path as schema_path


def _batch(B=64, L=3, T=4, Y=3, X=6, P=2 * 4 * 4, seed=0) -> Batch:
    g = torch.Generator().manual_seed(seed)
    tokens = {"a": torch.randn(B, L, T, Y, X, P, generator=g) + 1.0, "b": torch.randn(B, L, T, Y, X, P, generator=g)}
    return Batch(tokens, {f: torch.zeros(B, L, T, Y, X, 8) for f in tokens})


def test_bert_rate_is_uniform_per_sample_and_level():
    batch = _batch()
    masks = masking.build(MaskingConfig(rate=0.5))(batch, torch.Generator().manual_seed(0))
    frac_BL = masks["a"].flatten(2).float().mean(-1)  # B L
    assert (frac_BL > 0).all()  # at least one token per sample and level
    assert frac_BL.max() <= 0.5 + 1 / 72
    assert abs(frac_BL.mean().item() - 0.25) < 0.03  # E[U(0, r)] = r/2
    assert frac_BL.std(0).min() > 0.05  # levels draw their own rates
    assert not torch.equal(masks["a"], masks["b"])  # fields too


def test_bert_is_reproducible_from_the_generator():
    batch, strategy = _batch(), masking.build(MaskingConfig())
    a, b = (strategy(batch, torch.Generator().manual_seed(5)) for _ in range(2))
    assert torch.equal(a["a"], b["a"])
    assert torch.equal(masking.apply(batch, a).tokens["a"], masking.apply(batch, b).tokens["a"])


def test_bert_corruption_fractions_and_formulas():
    batch = _batch(B=128)
    cfg = MaskingConfig(rate=0.8, p_mask=0.9, p_noise=0.2, p_coarsen=0.05)
    masks = masking.build(cfg, {"a": (2, 4, 4), "b": (2, 4, 4)})(batch, torch.Generator().manual_seed(1))
    c = masks.corruptions["a"]
    n = masks["a"].sum().item()
    for kind, p in ((c.zero, 0.9), (c.noise, 0.2), (c.coarsen, 0.05)):
        assert not (kind & ~masks["a"]).any()  # only targets are corrupted
        assert abs(kind.sum().item() / n - p) < 0.02
    untouched = masks["a"] & ~c.zero & ~c.noise & ~c.coarsen
    assert abs(untouched.sum().item() / n - 0.1 * 0.8 * 0.95) < 0.01  # about 7.6 %: still targets
    src = masking.apply(batch, masks).tokens["a"]
    x = batch.tokens["a"]
    assert torch.equal(src[~masks["a"]], x[~masks["a"]])
    assert torch.equal(src[untouched], x[untouched])
    only_zero = c.zero & ~c.noise & ~c.coarsen
    assert (src[only_zero] == 0).all()
    # noise only: (1 - w) x + 0.1 * std_level * eps, w in [0, 1)
    only_noise = c.noise & ~c.zero & ~c.coarsen
    sel = only_noise[c.noise]
    w, add = c.noise_weight[sel], c.noise_add[sel]
    torch.testing.assert_close(src[only_noise], (1 - w[:, None]) * x[only_noise] + add)
    assert 0 <= w.min() and w.max() < 1
    std_LP = masking.level_std(x)
    ratio = add / std_LP[only_noise.nonzero()[:, 1]]
    assert abs(ratio.std().item() - 0.1) < 0.01  # noise_scale * std * N(0, 1)


def test_coarsening_averages_in_lat_lon_only():
    torch.manual_seed(0)
    tokens = torch.randn(10, 2 * 4 * 4)
    out = masking.coarsen(tokens, (2, 4, 4), (1, 1))
    # coarsening to one point per time step gives the lat/lon mean of each time step
    expected = tokens.view(10, 2, 16).mean(-1, keepdim=True).expand(-1, -1, 16).reshape(10, 32)
    torch.testing.assert_close(out, expected)
    assert torch.equal(masking.coarsen(tokens, (2, 4, 4), (4, 4)), tokens)  # factor 1: identity
    half = masking.coarsen(tokens, (2, 4, 4), (2, 2))
    assert half.var() < tokens.var()  # a smoother token
    torch.testing.assert_close(half.view(10, 2, 16).mean(-1), tokens.view(10, 2, 16).mean(-1))  # mean kept


def test_square_token_size():
    assert masking.square_token_size(972) == (3, 18, 18)
    assert masking.square_token_size(243) == (3, 9, 9)
    assert masking.square_token_size(2187) == (3, 27, 27)
    assert masking.square_token_size(162) == (2, 9, 9)


def test_forecast_masks_the_last_slabs():
    batch = _batch(B=2)
    masks = masking.build(MaskingConfig(strategy="forecast", forecast_tokens=2))(batch, None)
    m = masks["a"]
    assert m[:, :, -2:].all() and not m[:, :, :-2].any()
    src = masking.apply(batch, masks).tokens["a"]
    assert (src[:, :, -2:] == 0).all() and torch.equal(src[:, :, :-2], batch.tokens["a"][:, :, :-2])
    assert torch.equal(masking.build(MaskingConfig(strategy="global_forecast", forecast_tokens=2))(batch)["a"], m)
    # inference calls the strategy without a generator
    assert torch.equal(masking.ForecastMasking(2)(batch)["b"], m)


def test_temporal_interpolation_masks_middle_or_given_slabs():
    batch = _batch(B=2, T=5)
    m = masking.build(MaskingConfig(strategy="temporal_interpolation"))(batch, None)["a"]
    assert m[:, :, 2].all() and m.sum() == m[:, :, 2].numel()
    m = masking.build(MaskingConfig(strategy="temporal_interpolation", interpolation_slabs=(1, 3)))(batch)["b"]
    assert m[:, :, [1, 3]].all() and not m[:, :, [0, 2, 4]].any()
    with pytest.raises(ValueError, match="time slabs"):
        masking.TemporalInterpolationMasking((7,))(batch)
    with pytest.raises(ValueError, match="time slabs"):
        masking.ForecastMasking(5)(batch)


def test_every_schema_strategy_is_registered():
    schema = yaml.safe_load(schema_path().read_text())
    enum = schema["properties"]["train"]["properties"]["masking"]["properties"]["strategy"]["enum"]
    assert set(enum) == set(masking.STRATEGIES)
    with pytest.raises(ValueError, match="unknown"):
        masking.build(MaskingConfig(strategy="nope"))


def test_plain_masks_are_zeroed():
    batch = _batch(B=2)
    plain = {
        f: torch.zeros(t.shape[:5], dtype=torch.bool).index_fill_(2, torch.tensor([0]), True)
        for f, t in batch.tokens.items()
    }
    src = masking.apply(batch, plain)
    assert (src.tokens["a"][:, :, 0] == 0).all()


def test_bert_rejects_a_token_size_that_does_not_fit():
    with pytest.raises(ValueError, match="token size"):
        masking.build(MaskingConfig(), {"a": (3, 3, 3)})(_batch(B=2))


def test_field_rates_give_each_field_its_own_bert_rates():
    """wc5e2i3t: precipitation [0.25, 0.9, 0.1, 0.05], the others [0.5, 0.9, 0.2, 0.05]."""
    batch = _batch()
    cfg = MaskingConfig(rate=0.5, p_mask=0.9, p_noise=0.2, field_rates={"b": (0.25, 0.5, 0.0, 0.0)})
    masks = masking.build(cfg)(batch, torch.Generator().manual_seed(1))
    frac = {f: m.flatten(2).float().mean(-1) for f, m in masks.items()}
    assert abs(frac["a"].mean().item() - 0.25) < 0.03 and abs(frac["b"].mean().item() - 0.125) < 0.02
    assert frac["b"].max() <= 0.25 + 1 / 72
    zero = {f: c.zero.sum().item() / masks[f].sum().item() for f, c in masks.corruptions.items()}
    assert abs(zero["a"] - 0.9) < 0.03 and abs(zero["b"] - 0.5) < 0.05
    assert masks.corruptions["b"].noise.sum() == 0 and masks.corruptions["a"].noise.sum() > 0


@pytest.mark.parametrize("strategy", ["bert", "forecast", "temporal_interpolation"])
def test_a_field_with_rate_0_is_never_masked(strategy):
    batch = _batch(B=4)
    cfg = MaskingConfig(strategy=strategy, field_rates={"b": (0.0, 0.9, 0.2, 0.05)})
    masks = masking.build(cfg, {"a": (2, 4, 4), "b": (2, 4, 4)}, predicted=["a"])(batch, torch.Generator())
    assert masks["a"].any() and not masks["b"].any()
    assert torch.equal(masking.apply(batch, masks).tokens["b"], batch.tokens["b"])


def test_field_rates_are_checked_against_the_model():
    sizes = {"a": (2, 4, 4), "b": (2, 4, 4)}
    with pytest.raises(ValueError, match=r"field_rates.*\['c'\]"):
        masking.build(MaskingConfig(field_rates={"c": (0.5, 0.9, 0.2, 0.05)}), sizes)
    with pytest.raises(ValueError, match=r"\['b'\] have rate 0.*model.inputs_only"):
        masking.build(MaskingConfig(field_rates={"b": (0.0, 0.9, 0.2, 0.05)}), sizes, predicted=["a", "b"])
    with pytest.raises(ValueError, match=r"rate, p_mask, p_noise, p_coarsen"):
        masking.build(MaskingConfig(field_rates={"b": (0.5, 1.5, 0.2, 0.05)}), sizes)
