"""Typed, frozen run configuration, split by concern.

The JSON schema in ``workflow/schemas/config.schema.yaml`` is the user-facing contract (Snakemake
validates against it at workflow start); the dataclasses here mirror it for the package, reject
unknown keys, and are what library code receives. ``tests/test_config.py`` keeps the two in
agreement (keys and defaults).

Each stage sees only its *slice*: the sections it needs (see :data:`STAGE_SECTIONS`). Snakemake
passes the slice to the CLI as JSON, so a change to one section reruns exactly the stages that read it.
"""

from __future__ import annotations

import dataclasses
import json
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import yaml


class ConfigError(ValueError):
    """A user error in the configuration; the message names the offending key."""


@dataclass(frozen=True)
class FieldSpec:
    levels: tuple[int, ...] = (0,)


@dataclass(frozen=True)
class DataConfig:
    fields: dict[str, FieldSpec]
    start: str
    end: str

    @property
    def period(self) -> tuple[np.datetime64, np.datetime64]:
        return parse_time(self.start), parse_time(self.end)

    def months(self) -> list[str]:
        """The (year, month) units the campaign covers, as 'YYYY-MM'."""
        start, end = self.period
        months = np.arange(start.astype("datetime64[M]"), end.astype("datetime64[M]") + 1)
        return [str(m) for m in months]

    def years(self) -> list[str]:
        return sorted({m[:4] for m in self.months()})


@dataclass(frozen=True)
class AcquireConfig:
    source: str = "sample"


@dataclass(frozen=True)
class NormalizeConfig:
    method: str = "global"
    local: tuple[str, ...] = ()

    def method_for(self, field_name: str) -> str:
        return "local" if field_name in self.local else self.method


@dataclass(frozen=True)
class ShardConfig:
    token_size: tuple[int, int, int] = (3, 9, 9)
    shard_tokens: tuple[int, int, int] = (12, 6, 12)


@dataclass(frozen=True)
class ModelConfig:
    num_tokens: tuple[int, int, int] = (12, 6, 12)
    dim: int = 1024
    heads: int = 16
    encoder_layers: int = 6
    decoder_layers: int = 6
    coupling_heads: int = 1
    coupling: dict[str, tuple[str, ...]] = field(default_factory=dict)
    ensemble: int = 16
    dropout: float = 0.05


@dataclass(frozen=True)
class MaskingConfig:
    strategy: str = "bert"
    rate: float = 0.5
    forecast_tokens: int = 1


@dataclass(frozen=True)
class LossConfig:
    terms: tuple[str, ...] = ("mse_ensemble", "stats")


@dataclass(frozen=True)
class TrainConfig:
    start: str | None = None
    end: str | None = None
    steps: int = 1000
    batch_size: int = 8
    lr: float = 1e-4
    warmup_steps: int = 100
    weight_decay: float = 0.025
    masking: MaskingConfig = field(default_factory=MaskingConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    zero_stage: int = 2
    ranks: int = 2


@dataclass(frozen=True)
class EvaluateConfig:
    start: str | None = None
    end: str | None = None
    mode: str = "forecast"
    forecast_tokens: int = 1
    samples: int = 64
    batch_size: int = 16


@dataclass(frozen=True)
class Config:
    run: str
    data: DataConfig
    seed: int = 1
    acquire: AcquireConfig = field(default_factory=AcquireConfig)
    normalize: NormalizeConfig = field(default_factory=NormalizeConfig)
    shard: ShardConfig = field(default_factory=ShardConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    evaluate: EvaluateConfig = field(default_factory=EvaluateConfig)


#: The sections each stage reads; the CLI and Snakemake pass exactly these.
STAGE_SECTIONS: dict[str, tuple[str, ...]] = {
    "acquire": ("data", "acquire"),
    "normalize": ("data", "normalize"),
    "shard": ("data", "shard"),
    "train": ("seed", "data", "model", "train"),
    "evaluate": ("seed", "data", "evaluate"),
}


def parse_time(text: str) -> np.datetime64:
    """'2026-03-25', '2026-03-25T06' or '2026-03-25T06:00' -> datetime64[s]."""
    if len(text) == 13:  # 'YYYY-MM-DDTHH'
        text += ":00"
    return np.datetime64(text, "s")


def _convert(tp: Any, value: Any, where: str) -> Any:
    """Convert a YAML value to the annotated type ``tp``; reject unknown keys of dataclasses."""
    origin = typing.get_origin(tp)
    if dataclasses.is_dataclass(tp):
        return build(tp, value, where)
    if origin in (typing.Union, types.UnionType):
        if value is None:
            return None
        (inner,) = [a for a in typing.get_args(tp) if a is not type(None)]
        return _convert(inner, value, where)
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: expected a mapping, got {value!r}")
        _, vtype = typing.get_args(tp)
        return {str(k): _convert(vtype, v, _join(where, str(k))) for k, v in value.items()}
    if origin is tuple:
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{where}: expected a list, got {value!r}")
        args = typing.get_args(tp)
        inner = args[0]
        if args[-1] is not Ellipsis and len(args) != len(value):
            raise ConfigError(f"{where}: expected {len(args)} values, got {list(value)!r}")
        return tuple(_convert(inner, v, where) for v in value)
    if tp is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if tp in (int, float, str, bool) and not isinstance(value, tp):
        raise ConfigError(f"{where}: expected {tp.__name__}, got {value!r}")
    return value


def _join(where: str, key: str) -> str:
    return f"{where}.{key}" if where else key


def build(cls: type, raw: Any, where: str = ""):
    """Build dataclass ``cls`` from a mapping, naming the first unknown or missing key."""
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise ConfigError(f"{where}: expected a mapping, got {raw!r}")
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    for key in raw:
        if key not in names:
            raise ConfigError(f"unknown config key '{_join(where, key)}' (allowed: {', '.join(sorted(names))})")
    kwargs = {}
    for f in dataclasses.fields(cls):
        if f.name in raw:
            kwargs[f.name] = _convert(hints[f.name], raw[f.name], _join(where, f.name))
        elif f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
            raise ConfigError(f"missing config key '{_join(where, f.name)}'")
    return cls(**kwargs)


def schema_path() -> Path:
    """The JSON schema shipped with the workflow (repository checkout)."""
    return Path(__file__).resolve().parents[2] / "workflow" / "schemas" / "config.schema.yaml"


def validate_schema(raw: dict) -> None:
    """Validate against the JSON schema when it is available (a repository checkout)."""
    path = schema_path()
    if not path.exists():
        return
    import jsonschema

    schema = yaml.safe_load(path.read_text())
    errors = sorted(jsonschema.Draft202012Validator(schema).iter_errors(raw), key=lambda e: list(e.path))
    if errors:
        err = errors[0]
        where = ".".join(str(p) for p in err.path) or "config"
        raise ConfigError(f"{where}: {err.message}")


def load(path: str | Path) -> Config:
    """Read, validate and build a whole run configuration from YAML."""
    path = Path(path)
    try:
        raw = yaml.safe_load(path.read_text())
    except FileNotFoundError:
        raise ConfigError(f"config file not found: {path}") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML: {exc}") from None
    validate_schema(raw)
    return build(Config, raw)


def stage_slice(raw: dict, stage: str) -> dict:
    """The part of a raw config dict that ``stage`` reads (see :data:`STAGE_SECTIONS`)."""
    return {k: raw[k] for k in STAGE_SECTIONS[stage] if k in raw}


def from_slice(text: str) -> dict:
    """Parse a slice passed on the command line as JSON."""
    try:
        raw = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ConfigError(f"--params is not valid JSON: {exc}") from None
    if not isinstance(raw, dict):
        raise ConfigError("--params must be a JSON object")
    return raw


def section(raw: dict, name: str):
    """Build the dataclass of one section from a (slice) dict."""
    hints = typing.get_type_hints(Config)
    if name not in raw and name in {f.name for f in dataclasses.fields(Config) if
                                     f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING}:
        raise ConfigError(f"missing config key '{name}'")
    if name == "seed":
        return int(raw.get("seed", 1))
    return _convert(hints[name], raw.get(name, {}), name)
