import copy
import dataclasses
import datetime
import typing

import pytest
import yaml
from conftest import REPO
from tests_helpers import schema

from atmorep import config as C
from atmorep import schema as S

REPO_CONFIG = REPO / "config" / "config.yaml"


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
        assert prop.get("description"), f"{where}.{f.name} has no description"
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
        want = list(default) if isinstance(default, tuple) else default
        assert prop.get("default") == want, f"{where}.{f.name}: schema default {prop.get('default')} vs {want}"


def test_schema_and_dataclasses_agree():
    _check_agreement(C.Config, schema(), "config")


def test_the_committed_schema_is_the_generated_one():
    # workflow/schemas/config.schema.yaml is generated: a change of config.py or of a registry needs `make schema`
    assert S.path().read_text() == S.render(), "workflow/schemas/config.schema.yaml is stale: run `make schema`"


def test_registry_names_are_the_schema_enums_and_are_checked():
    committed = schema()
    for key, names in S.REGISTRIES.items():
        assert S._node(committed, key)["enum"] == list(names), key
    raw = yaml.safe_load(REPO_CONFIG.read_text())
    raw["train"]["engine"] = "megatron"
    raw["train"]["loss"] = {"terms": ["mse", "kernel_crps"]}
    cfg = C.build(C.Config, raw)  # the declaration itself knows no registry
    with pytest.raises(C.ConfigError, match="train.loss.terms: 'kernel_crps' is not one of mse") as err:
        S.check_names(cfg)
    assert "train.engine: 'megatron' is not one of deepspeed, torch" in str(err.value)


def test_snakemake_and_a_config_file_get_the_same_defaults():
    from snakemake.utils import validate

    raw = yaml.safe_load(REPO_CONFIG.read_text())
    filled = copy.deepcopy(raw)
    validate(filled, str(S.path()))  # Snakemake's way: the schema's defaults written into the dict
    assert filled != raw and C.build(C.Config, filled) == C.load(REPO_CONFIG)
    # what a job receives (common.smk: every key with its value) rebuilds the same sections
    cfg = C.load(REPO_CONFIG)
    for stage, sections in C.STAGE_SECTIONS.items():
        part = C.stage_slice(C.as_dict(cfg), stage)
        for name in sections:
            assert C.section(part, name) == getattr(cfg, name), (stage, name)


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


def test_values_are_checked_strictly_and_named():
    with pytest.raises(C.ConfigError, match=r"train.steps: expected int, got '1000'"):
        C.build(C.TrainConfig, {"steps": "1000"}, "train")
    with pytest.raises(C.ConfigError, match="train.steps: expected int, got True"):
        C.build(C.TrainConfig, {"steps": True}, "train")
    with pytest.raises(C.ConfigError, match=r"train.batch_size: input should be greater than or equal to 1, got 0"):
        C.build(C.TrainConfig, {"batch_size": 0}, "train")
    with pytest.raises(C.ConfigError, match=r"train.zero_stage: input should be 0, 1, 2 or 3, got 4"):
        C.build(C.TrainConfig, {"zero_stage": 4}, "train")
    assert C.build(C.TrainConfig, {"lr": 1}, "train").lr == 1.0  # YAML's `lr: 1` is a number
    assert C.build(C.ShardConfig, {"token_size": [3, 9, 9]}).token_size == (3, 9, 9)  # lists become tuples
    with pytest.raises(C.ConfigError, match=r"data.start: expected str, got datetime.date\(2026, 3, 25\) \(quote"):
        C.build(C.DataConfig, {"fields": {"t2m": {}}, "start": datetime.date(2026, 3, 25), "end": "x"}, "data")
    with pytest.raises(C.ConfigError, match=r"data.fields.t.levels\[0\]: input should be greater than or equal to 0"):
        C.build(C.DataConfig, {"fields": {"t": {"levels": [-1]}}, "start": "2026-03-25", "end": "2026-03-26"}, "data")


def test_missing_keys_are_named():
    with pytest.raises(C.ConfigError, match="missing config key 'data'"):
        C.build(C.Config, {"run": "x"})
    with pytest.raises(C.ConfigError, match="missing config key 'data.end'"):
        C.build(C.Config, {"run": "x", "data": {"fields": {"t2m": {}}, "start": "2026-03-25"}})
    with pytest.raises(C.ConfigError, match="missing config key 'data'"):
        C.section({"normalize": {}}, "data")


def test_surface_fields_are_recorded_as_sfc():
    # the demo's fields are {levels: [0]}: stores and provenance recorded them as `levtype: ml`
    data = C.section(yaml.safe_load(REPO_CONFIG.read_text()), "data")
    assert {f: s.levtype for f, s in data.fields.items()} == dict.fromkeys(data.fields, "sfc")
    assert dataclasses.asdict(data)["fields"]["t2m"] == {"levels": (0,), "levtype": "sfc"}
    assert C.FieldSpec((137,)).levtype == "ml" and C.FieldSpec((0,), "pl").levtype == "sfc"
    assert C.FieldSpec((850,), "pl").kind == "pl"
    assert C.FieldSpec((10,), "heightAboveGround").kind == "heightAboveGround"


def test_the_generated_schema_refuses_what_the_declaration_refuses():
    import jsonschema

    validator = jsonschema.Draft202012Validator(schema())
    raw = yaml.safe_load(REPO_CONFIG.read_text())
    assert not list(validator.iter_errors(raw))
    for bad in (
        {**raw, "run": "../elsewhere"},
        {**raw, "data": {**raw["data"], "fields": {"../msl": {}}}},  # keys with a pattern: none slips through
        {**raw, "normalize": {"lokal": ["t2m"]}},
        {**raw, "train": {"steps": "1000"}},
    ):
        assert list(validator.iter_errors(bad)), bad
        with pytest.raises(C.ConfigError):
            C.build(C.Config, bad)
