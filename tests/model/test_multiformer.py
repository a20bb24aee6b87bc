"""Fidelity checks of the multiformer: masking, coupling, determinism, gradients, kernels, quirks.

Legend: B batch, L levels, T/Y/X tokens, N tokens, P values per token, K masked tokens, E members.
"""

from __future__ import annotations

import dataclasses

import pytest
import torch

from atmorep.config import MaskingConfig, ModelConfig
from atmorep.eval.attention import capture
from atmorep.model import masking
from atmorep.model.blocks import MLP
from atmorep.model.embedding import harmonic_encoding
from atmorep.model.file import load_model, save_model
from atmorep.model.multiformer import FieldGeometry, Multiformer

PURE_MASK = MaskingConfig(strategy="bert", rate=0.5, p_mask=1.0, p_noise=0.0, p_coarsen=0.0)


def _model(cfg, geo, seed=0) -> Multiformer:
    torch.manual_seed(seed)
    return Multiformer(cfg, geo).eval()


def test_forward_shapes_and_ensemble_summary(make_config, make_geometry, make_batch):
    geo, batch = make_geometry(levels=2), make_batch(levels=2)
    model = _model(make_config(), geo)
    masks = masking.build(PURE_MASK)(batch, torch.Generator().manual_seed(1))
    src = masking.apply(batch, masks)
    out = model(src.tokens, src.info, masks)
    pred = model.predict(src.tokens, src.info, masks)
    for f, g in geo.items():
        K = int(masks[f].sum())
        assert out[f].shape == (K, 4, g.values_per_token)
        torch.testing.assert_close(pred[f].mean, out[f].mean(1))
        torch.testing.assert_close(pred[f].std, out[f].std(1))


def test_eval_forward_is_deterministic(make_config, make_geometry, make_batch):
    geo, batch = make_geometry(), make_batch()
    model = _model(make_config(dropout=0.3), geo)
    masks = masking.build(PURE_MASK)(batch, torch.Generator().manual_seed(2))
    a = model(batch.tokens, batch.info, masks)
    b = model(batch.tokens, batch.info, masks)
    for f in geo:
        assert torch.equal(a[f], b[f])


def test_masked_inputs_cannot_influence_masked_predictions(make_config, make_geometry, make_batch):
    geo, batch = make_geometry(), make_batch()
    model = _model(make_config(), geo)
    masks = masking.build(PURE_MASK)(batch, torch.Generator().manual_seed(3))
    base = model(**_inputs(batch, masks))
    # change every masked token's original value: the prediction must not move at all
    noisy = {f: torch.where(masks[f][..., None], t + 10 * torch.randn_like(t), t) for f, t in batch.tokens.items()}
    moved = model(**_inputs(dataclasses.replace(batch, tokens=noisy), masks))
    for f in geo:
        assert torch.equal(base[f], moved[f])
    # change one unmasked token of one field: the masked predictions of that field move
    f = "t2m"
    idx = tuple((~masks[f]).nonzero()[0])
    tokens = {g: t.clone() for g, t in batch.tokens.items()}
    tokens[f][idx] += 3.0
    changed = model(**_inputs(dataclasses.replace(batch, tokens=tokens), masks))
    assert not torch.allclose(base[f], changed[f])


def _inputs(batch, masks) -> dict:
    src = masking.apply(batch, masks)
    return {"tokens": src.tokens, "info": src.info, "mask": masks}


def test_coupling_respects_the_directed_graph(make_config, make_geometry, make_batch):
    fields = ("a", "b", "c", "d")
    cfg = make_config(coupling={"a": ("b",), "b": ("c",)})  # a <- b <- c; c and d attend to none
    geo, batch = make_geometry(fields), make_batch(fields)
    model = _model(cfg, geo)
    base = model.encode(batch.tokens, batch.info)

    def perturbed(field):
        tokens = dict(batch.tokens)
        tokens[field] = tokens[field] + torch.randn_like(tokens[field])
        return model.encode(tokens, batch.info)

    via_c, via_d = perturbed("c"), perturbed("d")
    assert torch.equal(via_c["a"][0], base["a"][0])  # a does not attend to c directly
    assert not torch.allclose(via_c["b"][0], base["b"][0])  # b does
    assert not torch.allclose(via_c["a"][1], base["a"][1])  # a sees c through b at layer 1
    for f in ("a", "b", "c"):
        for layer in range(cfg.encoder_layers):
            assert torch.equal(via_d[f][layer], base[f][layer])  # d feeds nobody
    assert torch.equal(perturbed("a")["b"][1], base["b"][1])  # edges are directed


def test_result_does_not_depend_on_field_order(make_config, make_geometry, make_batch):
    geo, batch = make_geometry(), make_batch()
    model = _model(make_config(), geo)
    masks = masking.build(PURE_MASK)(batch, torch.Generator().manual_seed(4))
    reordered = Multiformer(model.cfg, dict(reversed(list(geo.items())))).eval()
    reordered.load_state_dict(model.state_dict())
    a, b = model(batch.tokens, batch.info, masks), reordered(batch.tokens, batch.info, masks)
    for f in geo:
        torch.testing.assert_close(a[f], b[f], rtol=0, atol=0)


def test_sdpa_matches_explicit_softmax(make_config, make_geometry, make_batch):
    geo, batch = make_geometry(levels=2), make_batch(levels=2)
    fused = _model(make_config(attention="sdpa", encoder_qk_norm="affine"), geo)
    explicit = Multiformer(dataclasses.replace(fused.cfg, attention="explicit"), geo).eval()
    explicit.load_state_dict(fused.state_dict())
    masks = masking.build(PURE_MASK)(batch, torch.Generator().manual_seed(5))
    a, b = fused(**_inputs(batch, masks)), explicit(**_inputs(batch, masks))
    for f in geo:
        torch.testing.assert_close(a[f], b[f], rtol=1e-4, atol=1e-5)


def test_finite_gradients_for_all_parameters_on_real_data(make_config, make_geometry, real_batch):
    from atmorep.config import LossConfig
    from atmorep.train.losses import Loss

    model = _model(make_config(), make_geometry()).train()
    masks = masking.build(MaskingConfig())(real_batch, torch.Generator().manual_seed(7))
    out = model(**_inputs(real_batch, masks))
    loss, diag = Loss(LossConfig(terms=("mse_ensemble", "stats", "crps")))(
        out, {f: real_batch.tokens[f][masks[f]] for f in out}
    )
    loss.backward()
    assert torch.isfinite(loss)
    for name, p in model.named_parameters():
        assert p.grad is not None, f"{name} got no gradient"
        assert torch.isfinite(p.grad).all(), name
        # the zero-initialised token-info Linear must learn too
    assert model.embed["t2m"].info.weight.grad.abs().sum() > 0


def test_attention_maps_on_request(make_config, make_geometry, make_batch):
    geo, batch = make_geometry(), make_batch()
    model = _model(make_config(), geo)
    w = capture(model, batch.tokens, batch.info, {"u10": [1]})["u10"][:, 0]  # B H N N of layer 1
    N = 1 * 3 * 3 * 6
    assert w.shape == (2, 4, N, N)
    torch.testing.assert_close(w.sum(-1), torch.ones(2, 4, N))


def test_checkpoint_file_round_trip(tmp_path, make_config, make_geometry, make_batch):
    geo, batch = make_geometry(), make_batch()
    model = _model(make_config(compat=True), geo)
    save_model(tmp_path / "model.safetensors", model)
    loaded, _ = load_model(tmp_path / "model.safetensors")
    masks = masking.build(PURE_MASK)(batch, torch.Generator().manual_seed(8))
    a, b = model(**_inputs(batch, masks)), loaded(**_inputs(batch, masks))
    for f in geo:
        assert torch.equal(a[f], b[f])


def test_one_model_serves_any_token_grid(make_config, make_geometry, make_batch):
    model = _model(make_config(), make_geometry())
    wide = {f: torch.randn(1, 3, 2, 4, 5, 162) for f in model.fields}
    info = {f: torch.zeros(1, 3, 2, 4, 5, 8) for f in model.fields}
    mask = {f: torch.ones(1, 3, 2, 4, 5, dtype=torch.bool) for f in model.fields}
    assert model(wide, info, mask)["t2m"].shape == (3 * 2 * 4 * 5, 4, 162)


def test_invalid_configurations_are_rejected(make_config, make_geometry):
    with pytest.raises(ValueError, match="not in the data"):
        Multiformer(make_config(coupling={"t2m": ("nope",)}), make_geometry())
    with pytest.raises(ValueError, match="themselves"):
        Multiformer(make_config(coupling={"t2m": ("t2m",)}), make_geometry())
    with pytest.raises(ValueError, match="decoder_layers"):
        Multiformer(make_config(decoder_layers=3), make_geometry())
    with pytest.raises(ValueError, match="divisible"):
        Multiformer(make_config(field_dims={"t2m": 30}), make_geometry())


def test_per_field_widths_couple_across_widths(make_config, make_geometry, make_batch):
    geo, batch = make_geometry(), make_batch()
    model = _model(make_config(field_dims={"t2m": 64, "msl": 48}), geo)
    enc = model.encode(batch.tokens, batch.info)
    assert enc["t2m"][-1].shape[-1] == 64 and enc["msl"][-1].shape[-1] == 48 and enc["u10"][-1].shape[-1] == 32


def test_positional_encoding_latitude_index():
    T, Y, X, D = 2, 3, 6, 16
    pe = harmonic_encoding(1, (T, Y, X), D).view(T, Y, X, D)
    # even dims: 0.5 sin(8 lat w) + sin(t w); at fixed t and lat they do not depend on lon
    assert torch.equal(pe[:, :, :1, 0::2].expand(-1, -1, X, -1), pe[..., 0::2])
    quirk = harmonic_encoding(1, (T, Y, X), D, lat_quirk=True).view(T, Y, X, D)
    assert not torch.equal(quirk[..., 0::2], pe[..., 0::2])  # original: (y*X + x) // Y varies with lon
    assert torch.equal(quirk[..., 1::2], pe[..., 1::2])  # odd dims (lon, level) are the same


def test_positional_encoding_tells_every_token_of_a_window_apart_at_small_widths():
    T, Y, X = 4, 6, 7
    for D in (64, 128, 1024):
        pe = harmonic_encoding(1, (T, Y, X), D)
        gap = torch.cdist(pe, pe) + torch.eye(len(pe)) * 1e9
        assert gap.min() > 0.05, D  # no two positions share an encoding
    # AtmoRep's frequencies repeat every D/16 tokens: at D = 64, lat rows 0 and 4 look the same
    orig = harmonic_encoding(1, (T, Y, X), 64, original_scale=True).view(T, Y, X, 64)
    assert torch.allclose(orig[:, 0], orig[:, 4], atol=1e-5)
    # ... and at AtmoRep's widths (>= 1024) the encoding is exactly the original's
    assert torch.equal(
        harmonic_encoding(2, (T, Y, X), 1024), harmonic_encoding(2, (T, Y, X), 1024, original_scale=True)
    )


def test_compat_mlp_has_the_extra_gelu():
    torch.manual_seed(0)
    plain, quirk = MLP(8, 0.0), MLP(8, 0.0, gelu_out=True)
    quirk.load_state_dict(plain.state_dict())
    x = torch.randn(2, 5, 8)
    h = plain.fc2(plain.act(plain.fc1(plain.ln(x))))
    torch.testing.assert_close(plain(x), x + h)
    torch.testing.assert_close(quirk(x), x + torch.nn.functional.gelu(h))


def test_compat_layout_adds_only_the_frozen_legacy_linear(make_config, make_geometry):
    geo = make_geometry()
    ours = sum(p.numel() for p in Multiformer(make_config(), geo).parameters())
    compat = Multiformer(make_config(compat=True), geo)
    assert sum(p.numel() for p in compat.parameters()) - ours == 8 * 16 + 16
    assert not compat.legacy_token_info.weight.requires_grad


def test_tail_matches_separate_layernorm_linear_heads():
    from atmorep.model.tail import EnsembleTail

    torch.manual_seed(0)
    tail = EnsembleTail(16, 5, 3)
    with torch.no_grad():
        tail.ln_weight.normal_()
        tail.ln_bias.normal_()
    x = torch.randn(7, 16)
    out = tail(x)
    for e in range(3):
        ln = torch.nn.functional.layer_norm(x, (16,), tail.ln_weight[e], tail.ln_bias[e])
        torch.testing.assert_close(out[:, e], ln @ tail.weight[e].T + tail.bias[e], rtol=1e-5, atol=1e-5)


def test_field_geometry_keeps_its_two_argument_form():
    g = FieldGeometry(5, (3, 18, 18))
    assert g.values_per_token == 972 and g.num_tokens is None


def test_finite_gradients_on_a_loader_batch(sample_products, make_config):
    """A batch exactly as training reads it: the pipeline's shard stores through WindowDataset."""
    from torch.utils.data import DataLoader

    from atmorep.config import LossConfig
    from atmorep.data.dataset import WindowDataset
    from atmorep.data.tokens import TOKEN_INFO
    from atmorep.model.batch import Batch
    from atmorep.train.losses import Loss

    stores = {f: [str(p)] for f, p in sample_products["shards"].items()}
    data = sample_products["data"]
    dataset = WindowDataset(stores, (3, 3, 6), *data.period)
    batch = Batch.from_numpy(
        next(iter(DataLoader(dataset, batch_size=3, shuffle=True, generator=torch.Generator().manual_seed(0))))
    )
    geo = {f: FieldGeometry(len(s[0].levels), s[0].token_size) for f, s in dataset.stores.items()}
    model = Multiformer(make_config(coupling={"t2m": ("u10",), "u10": ("t2m",)}), geo, len(TOKEN_INFO)).train()
    masks = masking.build(MaskingConfig(), {f: g.token_size for f, g in geo.items()})(batch, torch.Generator())
    out = model(**_inputs(batch, masks))
    loss, _ = Loss(LossConfig(terms=("mse_ensemble", "stats", "crps", "gaussian_crps")))(
        out, {f: batch.tokens[f][masks[f]] for f in out}
    )
    loss.backward()
    assert torch.isfinite(loss)
    for name, p in model.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), name


def test_a_bf16_model_takes_fp32_inputs_and_keeps_the_tail_in_fp32(make_config, make_geometry, make_batch):
    geo, batch = make_geometry(), make_batch()
    model = _model(make_config(), geo).to(torch.bfloat16)
    masks = masking.build(PURE_MASK)(batch, torch.Generator().manual_seed(9))
    out = model(**_inputs(batch, masks))
    assert all(o.dtype == torch.float32 and torch.isfinite(o).all() for o in out.values())


def test_inputs_only_fields_have_no_decoder_or_tail_but_are_read():
    """The original's fields outside fields_prediction: read through coupling, never predicted."""
    torch.manual_seed(0)
    cfg = ModelConfig(
        num_tokens=(2, 2, 2),
        dim=32,
        heads=4,
        encoder_layers=1,
        decoder_layers=1,
        ensemble=2,
        coupling={"a": ("b",)},
        inputs_only=("b",),
        dropout=0.0,
    )
    model = Multiformer(cfg, {"a": FieldGeometry(1, (1, 2, 2)), "b": FieldGeometry(1, (1, 2, 2))}).eval()
    assert set(model.decoders) == set(model.tails) == {"a"} and model.predicted == ["a"]
    tokens = {f: torch.randn(1, 1, 2, 2, 2, 4) for f in "ab"}
    info = {f: torch.zeros(1, 1, 2, 2, 2, 8) for f in "ab"}
    mask = {f: torch.ones(1, 1, 2, 2, 2, dtype=torch.bool) for f in "ab"}
    out = model(tokens, info, mask)
    assert set(out) == {"a"}
    other = model({**tokens, "b": tokens["b"] + 1}, info, mask)
    assert not torch.allclose(out["a"], other["a"])
    with pytest.raises(ValueError, match="inputs_only.*'c'"):
        Multiformer(dataclasses.replace(cfg, inputs_only=("c",)), model.fields)
    with pytest.raises(ValueError, match="predict nothing"):
        Multiformer(dataclasses.replace(cfg, inputs_only=("a", "b")), model.fields)
