import dataclasses
import typing

import pytest
import yaml
from tests_helpers import schema

from atmorep import config as C

REPO_CONFIG = C.schema_path().parents[2] / "config" / "config.yaml"


def _resolve(node, root):
    """A schema node with its local ``$ref`` (``#/a/b``) followed."""
    if "$ref" in node and "properties" not in node:
        for key in node["$ref"].removeprefix("#/").split("/"):
            root = root[key]
        return root
    return node


def _check_agreement(cls, node, where, root=None):
    root = root or node
    node = _resolve(node, root)
    props = node["properties"]
    names = {f.name for f in dataclasses.fields(cls)}
    assert set(props) == names, f"{where}: schema {sorted(props)} vs dataclass {sorted(names)}"
    assert node.get("additionalProperties") is False, f"{where}: schema must reject unknown keys"
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        prop = props[f.name]
        assert prop.get("description") or "$ref" in prop, f"{where}.{f.name} has no description"
        if dataclasses.is_dataclass(hints[f.name]):
            _check_agreement(hints[f.name], prop, f"{where}.{f.name}", root)
            continue
        args = typing.get_args(hints[f.name])
        if typing.get_origin(hints[f.name]) is dict and args and dataclasses.is_dataclass(args[1]):
            _check_agreement(args[1], prop["additionalProperties"], f"{where}.{f.name}.*", root)
        if f.default is not dataclasses.MISSING:
            default = f.default
        elif f.default_factory is not dataclasses.MISSING:
            default = f.default_factory()
        else:
            assert "default" not in prop, f"{where}.{f.name}: required in the dataclass but defaulted in the schema"
            continue
        if default is None:
            assert "default" not in prop
            continue
        want = list(default) if isinstance(default, tuple) else default
        assert prop.get("default") == want, f"{where}.{f.name}: schema default {prop.get('default')} vs {want}"


def test_schema_and_dataclasses_agree():
    _check_agreement(C.Config, schema(), "config")


def test_default_config_loads_and_validates():
    cfg = C.load(REPO_CONFIG)
    assert cfg.run == "demo"
    assert cfg.data.months() == ["2026-03"]
    assert cfg.normalize.method_for("t2m") == "local"
    assert isinstance(cfg.shard.token_size, tuple)


@pytest.mark.parametrize(
    "patch, key",
    [
        ({"normalize": {"lokal": ["t2m"]}}, "normalize.lokal"),
        ({"trian": {}}, "trian"),
        ({"train": {"masking": {"rat": 0.3}}}, "train.masking.rat"),
    ],
)
def test_unknown_key_is_named(tmp_path, patch, key):
    raw = yaml.safe_load(REPO_CONFIG.read_text())
    for section, value in patch.items():
        raw.setdefault(section, {})
        if isinstance(value, dict):
            for k, v in value.items():
                if isinstance(v, dict) and isinstance(raw[section].get(k), dict):
                    raw[section][k].update(v)
                else:
                    raw[section][k] = v
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(raw))
    with pytest.raises(C.ConfigError, match=key.split(".")[-1]):
        C.load(path)
    with pytest.raises(C.ConfigError, match=rf"'{key}'"):
        C.build(C.Config, raw)


def test_wrong_type_is_named():
    with pytest.raises(C.ConfigError, match="shard.token_size"):
        C.build(C.ShardConfig, {"token_size": [3, 9]}, "shard")
    with pytest.raises(C.ConfigError, match="train.steps"):
        C.build(C.TrainConfig, {"steps": "many"}, "train")


def test_stage_slices_name_real_sections():
    names = {f.name for f in dataclasses.fields(C.Config)}
    for stage, sections in C.STAGE_SECTIONS.items():
        assert set(sections) <= names, stage
    raw = yaml.safe_load(REPO_CONFIG.read_text())
    s = C.stage_slice(raw, "normalize")
    assert set(s) == {"data", "normalize"}
    assert C.section(s, "normalize").local == ("t2m",)


def test_months_and_years_of_a_campaign():
    d = C.DataConfig(fields={"t": C.FieldSpec((137,))}, start="2020-11-30", end="2021-02-01T06")
    assert d.months() == ["2020-11", "2020-12", "2021-01", "2021-02"]
    assert d.years() == ["2020", "2021"]
