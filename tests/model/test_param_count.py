"""Published architectures (config/models/*.yaml): parameter counts on the meta device against the
original's logged counts and against the spec's formula; the dry-run command; the model-file format;
the FLOP formula; schema/dataclass agreement of the model, masking and loss sections.

Legend: D width, dh head width, P values per token, E members, C coupled fields.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import torch
import yaml
from torch.utils.flop_counter import FlopCounterMode

from atmorep import architectures, cli, schema
from atmorep import config as C
from atmorep.model import summary
from atmorep.model.multiformer import FieldGeometry, Multiformer

MODELS = Path(__file__).resolve().parents[2] / "config" / "models"
LOGGED = {"velocity_u_2024.yaml": 117_656_336, "wc5e2i3t.yaml": 741_136_272}


def spec_formula(spec: architectures.ModelFile) -> int:
    """AtmoRep spec §4.6, written out independently of the module definitions."""
    cfg, total = spec.model, 0
    dims = {f: cfg.field_dims.get(f, cfg.dim) for f in spec.fields}
    for f, fs in spec.fields.items():
        D, P = dims[f], fs.token_size[0] * fs.token_size[1] * fs.token_size[2]
        dh, nhc, C_f = D // cfg.heads, cfg.coupling_heads, cfg.coupling.get(f, ())
        enc = 4 * D * D + dh * len(C_f) * nhc * D + D * nhc * dh * len(C_f)
        enc += sum(2 * dims[g] * nhc * dh for g in C_f) + 4 * D * D + 3 * D
        enc += {"none": 0, "plain": 0, "affine": 4 * dh}[cfg.encoder_qk_norm]
        dec = 4 * D * D + {"none": 0, "plain": 0, "affine": 4 * dh}[cfg.decoder_qk_norm] + 4 * D * D + 3 * D
        tail = cfg.ensemble * (2 * D + D * P + P)
        embed = P * (D - 16) + (D - 16) + (8 * 16 + 16)
        total += cfg.encoder_layers * enc + cfg.decoder_layers * dec + tail + embed
    return total + (8 * 16 + 16 if cfg.compat else 0)


@pytest.mark.parametrize("name", sorted(p.name for p in MODELS.glob("*.yaml")))
def test_published_architectures(name):
    spec = architectures.load_model_file(MODELS / name)
    count = summary.parameter_count(spec.model, spec.geometry())
    assert count == spec_formula(spec)
    if name in LOGGED:
        assert spec.logged_parameters == LOGGED[name]
        assert count == LOGGED[name]
    default = summary.parameter_count(dataclasses.replace(spec.model, compat=False), spec.geometry())
    assert count - default == 144  # our default layout drops only the unused legacy token-info Linear


def test_published_sizes_match_the_spec_table():
    approx = {
        "temperature_2024.yaml": 138.8e6,
        "vorticity_v1.yaml": 680e6,
        "temperature_v1.yaml": 435e6,
        "vorticity_multiformer_v1.yaml": 3.20e9,
    }
    for name, expected in approx.items():
        spec = architectures.load_model_file(MODELS / name)
        assert summary.parameter_count(spec.model, spec.geometry()) == pytest.approx(expected, rel=3e-3), name


def test_dry_run_prints_exact_counts(capsys):
    assert cli.main(["train", "--dry-run", "--config", str(MODELS / "velocity_u_2024.yaml")]) == 0
    out = capsys.readouterr().out
    assert "parameters: 117,656,336" in out and "tokens per sample: 1,080" in out and "estimated memory" in out
    assert cli.main(["train", "--dry-run", "--config", str(MODELS / "wc5e2i3t.yaml")]) == 0
    out = capsys.readouterr().out
    assert "parameters: 741,136,272" in out and "tokens per sample: 5,664" in out


def test_dry_run_of_the_demo_run_configuration(capsys):
    demo = MODELS.parent / "config.yaml"
    assert cli.main(["train", "--dry-run", "--config", str(demo)]) == 0
    out = capsys.readouterr().out
    cfg = C.load(demo)
    # the fields the model reads (model.fields; the demo keeps tp, a finetune target, out of it)
    geo = {
        f: FieldGeometry(len(cfg.data.fields[f].levels), cfg.shard.token_size)
        for f in C.model_fields(cfg.data, cfg.model)
    }
    assert f"parameters: {sum(p.numel() for p in Multiformer(cfg.model, geo).parameters()):,}" in out


def test_model_files_reject_unknown_and_invalid_keys(tmp_path, capsys):
    raw = yaml.safe_load((MODELS / "velocity_u_2024.yaml").read_text())
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump({**raw, "extra": 1}))
    with pytest.raises(C.ConfigError, match="extra"):
        architectures.load_model_file(bad)
    bad.write_text(yaml.safe_dump({**raw, "model": {**raw["model"], "encoder_qk_norm": "sometimes"}}))
    with pytest.raises(C.ConfigError, match="encoder_qk_norm"):
        architectures.load_model_file(bad)
    bad.write_text(yaml.safe_dump({**raw, "fields": {"u": {"levels": [1], "tokensize": [1, 1, 1]}}}))
    with pytest.raises(C.ConfigError, match="tokensize"):
        architectures.load_model_file(bad)
    assert cli.main(["train", "--dry-run", "--config", str(bad)]) == 1
    assert "tokensize" in capsys.readouterr().err


def test_forward_flop_formula_matches_torch_flop_counter(make_config, make_geometry, make_batch):
    cfg = make_config(attention="explicit", field_dims={"msl": 48})
    geo, batch = make_geometry(levels=2), make_batch(levels=2)
    model = Multiformer(cfg, geo).eval()
    mask = {f: torch.ones(t.shape[:5], dtype=torch.bool) for f, t in batch.tokens.items()}
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        model(batch.tokens, batch.info, mask)
    geo = {f: dataclasses.replace(g, num_tokens=cfg.num_tokens) for f, g in geo.items()}
    tail_fold = sum(2 * cfg.ensemble * g.values_per_token * model.dims[f] for f, g in geo.items())  # once per call
    assert summary.forward_flops(cfg, geo) * 2 + tail_fold == pytest.approx(counter.get_total_flops(), rel=1e-12)


def _schema_section(*path):
    node = yaml.safe_load(schema.path().read_text())
    for key in path:
        node = node["properties"][key]
    return node


@pytest.mark.parametrize(
    "cls, path",
    [(C.ModelConfig, ("model",)), (C.MaskingConfig, ("train", "masking")), (C.LossConfig, ("train", "loss"))],
)
def test_schema_agrees_with_dataclasses(cls, path):
    section = _schema_section(*path)
    assert section["additionalProperties"] is False
    props = section["properties"]
    assert set(props) == {f.name for f in dataclasses.fields(cls)}
    defaults = cls()
    for name, prop in props.items():
        assert prop.get("description"), f"{name} has no description"
        value = getattr(defaults, name)
        value = list(value) if isinstance(value, tuple) else value
        assert prop["default"] == value, name
