"""Typed, frozen run configuration, split by concern.

The JSON schema in ``workflow/schemas/config.schema.yaml`` is the user-facing contract (Snakemake
validates against it at workflow start); the dataclasses here mirror it for the package, reject
unknown keys, and are what library code receives. ``tests/test_config.py`` keeps the two in
agreement (keys and defaults).

Each stage sees only its *slice*: the sections it needs (see :data:`STAGE_SECTIONS`). Snakemake
passes the slice to the CLI as JSON, so a change to one section reruns exactly the stages that read it.

This module owns the configuration's files: reading YAML (:func:`read_yaml`), validating against the
schema (:func:`validate_schema`, also one section of it, as model files do: :mod:`atmorep.modelfile`)
and building the dataclasses (:func:`build`). It is longer than our ~400 lines on purpose: it is one
frozen dataclass per schema section beside the loader that builds and checks them, the one place a
reader holds against the schema; split in two, following one key would mean reading both halves.
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
    """One field of the campaign: its vertical levels and their level type, part of its identity.

    ``levtype`` 'ml' (hybrid), 'pl' (isobaricInhPa), 'sfc' (a single-level field, see
    :data:`atmorep.formats.grib.SURFACE_TYPES`) or any other ecCodes typeOfLevel (e.g. 'heightAboveGround'
    with ``levels: [10]``, 'tropopause' with ``levels: [0]``). ``levels: [0]`` with 'ml'/'pl' means 'sfc'.
    """

    levels: tuple[int, ...] = (0,)
    levtype: str = "ml"

    @property
    def surface(self) -> bool:
        return tuple(self.levels) == (0,)

    @property
    def kind(self) -> str:
        """'sfc', 'ml' (ERA5 model levels), 'pl' (pressure levels, hPa) or an ecCodes typeOfLevel."""
        if self.levtype in ("ml", "pl"):
            return "sfc" if self.surface else self.levtype
        return self.levtype


@dataclass(frozen=True)
class DataConfig:
    fields: dict[str, FieldSpec]
    start: str
    end: str
    step_hours: int = 0
    grid: tuple[float, float] | None = None
    area: tuple[float, float, float, float] | None = None

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

    def times(self, month: str, step_hours: int | None = None) -> np.ndarray:
        """Valid times of ``month`` inside the campaign, every ``step_hours`` from 00 UTC (datetime64[s]).

        ``step_hours`` defaults to :attr:`step_hours`; it must be positive.
        """
        step = step_hours or self.step_hours
        if step <= 0:
            raise ConfigError("data.step_hours is 0 (irregular): the expected time steps are unknown")
        first = np.datetime64(month, "M").astype("datetime64[s]")
        after = (np.datetime64(month, "M") + 1).astype("datetime64[s]")  # exclusive: the next month's start
        t = np.arange(first, after, np.timedelta64(step, "h"))
        start, end = self.period
        return t[(t >= start) & (t <= end)]


@dataclass(frozen=True)
class CdsConfig:
    """The Copernicus Climate Data Store through ``cdsapi`` (credentials: ~/.cdsapirc or CDSAPI_URL/KEY)."""

    max_concurrent: int = 2
    slots_dir: str = ""
    attempts: int = 5
    http_retries: int = 10
    backoff_s: float = 30.0
    backoff_max_s: float = 900.0
    poll_max_s: float = 120.0
    timeout_s: float = 120.0
    expver: str = "1"


@dataclass(frozen=True)
class FilesConfig:
    """GRIB files an HPC centre mirrors: directories (searched recursively) or glob patterns."""

    paths: tuple[str, ...] = ()
    index_dir: str = ""
    member: int | None = None
    same_valid_time: str = "refuse"


@dataclass(frozen=True)
class ZarrSourceConfig:
    """An analysis-ready zarr store (ARCO-ERA5, WeatherBench 2, anemoi) read lazily, chunk by chunk."""

    url: str = ""  # local path, https://, gs:// or s3:// (anonymous)
    storage_options: dict[str, str] = field(default_factory=dict)  # passed to fsspec (e.g. endpoint_url)
    concurrency: int = 16  # requests in flight at once per job
    readahead_mb: int = 1024  # memory for the blocks read ahead of the GRIB writer (the job's bound)
    retries: int = 10  # retries of one request on HTTP 408/429/5xx, timeouts and connection resets
    backoff_s: float = 0.1  # first wait before a retry; doubles per retry (jitter +25 %, at most 15 s)
    timeout_s: float = 60.0  # seconds without a byte before an http(s) request counts as timed out


@dataclass(frozen=True)
class AcquireConfig:
    source: str = "sample"
    cds: CdsConfig = field(default_factory=CdsConfig)
    files: FilesConfig = field(default_factory=FilesConfig)
    zarr: ZarrSourceConfig = field(default_factory=ZarrSourceConfig)
    variables: dict[str, str] = field(default_factory=dict)  # field -> NetCDF/zarr variable name
    regrid: str = "none"
    derive_vorticity: bool = False


@dataclass(frozen=True)
class ClimatologyConfig:
    """Statistics over a training period instead of the month's own (no leakage of the month)."""

    fields: tuple[str, ...] = ()
    start: str | None = None
    end: str | None = None
    by_calendar_month: bool = True

    def months(self) -> list[str]:
        """The 'YYYY-MM' months whose statistics the climatology merges."""
        if self.start is None or self.end is None:
            raise ConfigError(
                "normalize.climatology.start and .end are required when normalize.climatology.fields is not empty"
            )
        first, last = np.datetime64(self.start, "M"), np.datetime64(self.end, "M")
        if last < first:
            raise ConfigError(f"normalize.climatology: end {self.end} is before start {self.start}")
        return [str(m) for m in np.arange(first, last + 1)]  # datetime64[M] steps: 'YYYY-MM' strings


@dataclass(frozen=True)
class QCConfig:
    """The quality gate of the normalize stage."""

    ranges: dict[str, tuple[float, float]] = field(default_factory=dict)
    check_units: bool = True


@dataclass(frozen=True)
class NormalizeConfig:
    method: str = "global"
    local: tuple[str, ...] = ()
    climatology: ClimatologyConfig = field(default_factory=ClimatologyConfig)
    qc: QCConfig = field(default_factory=QCConfig)
    memory_mb: int = 2048
    block_mb: int = 256
    scratch_dir: str = ""

    def method_for(self, field_name: str) -> str:
        return "local" if field_name in self.local else self.method

    def statistics_for(self, field_name: str) -> str:
        """'climatology' for the fields listed in ``climatology.fields``, else 'monthly' (AtmoRep)."""
        return "climatology" if field_name in self.climatology.fields else "monthly"


@dataclass(frozen=True)
class ShardConfig:
    """Token-aligned zarr v3 stores: one inner chunk per token position (all levels), many per file."""

    token_size: tuple[int, int, int] = (3, 9, 9)  # (time, lat, lon) points: AtmoRep's finer token
    field_token_size: dict[str, tuple[int, int, int]] = field(default_factory=dict)
    shard_tokens: tuple[int, int, int] = (24, 16, 32)  # chosen with benchmarks/loader.py --sweep (README, shard)

    def token_size_for(self, field_name: str) -> tuple[int, int, int]:
        return self.field_token_size.get(field_name, self.token_size)


@dataclass(frozen=True)
class ModelConfig:
    """The multiformer (spec §4); ``workflow/schemas/config.schema.yaml`` describes every key."""

    num_tokens: tuple[int, int, int] = (12, 6, 12)
    dim: int = 1024
    field_dims: dict[str, int] = field(default_factory=dict)
    heads: int = 16
    encoder_layers: int = 6
    decoder_layers: int = 6
    coupling_heads: int = 1
    coupling: dict[str, tuple[str, ...]] = field(default_factory=dict)
    encoder_qk_norm: str = "plain"
    decoder_qk_norm: str = "affine"
    ensemble: int = 16
    dropout: float = 0.05
    attention: str = "sdpa"
    checkpointing: bool = False
    compat: bool = False
    inputs_only: tuple[str, ...] = ()
    fields: tuple[str, ...] = ()  # the data fields the model reads; () = all of data.fields


def model_fields(data: DataConfig, model: ModelConfig) -> tuple[str, ...]:
    """The fields the model reads: ``model.fields``, by default every field of ``data.fields``."""
    unknown = sorted(set(model.fields) - set(data.fields))
    if unknown:
        raise ConfigError(f"model.fields names {', '.join(unknown)}, not in data.fields ({', '.join(data.fields)})")
    return tuple(model.fields) or tuple(data.fields)


@dataclass(frozen=True)
class MaskingConfig:
    """Which tokens become targets and how their inputs are altered (spec §5.1)."""

    strategy: str = "bert"
    rate: float = 0.5
    p_mask: float = 0.9
    p_noise: float = 0.2
    p_coarsen: float = 0.05
    noise_scale: float = 0.1
    coarsen_max: float = 2.0
    forecast_tokens: int = 1
    interpolation_slabs: tuple[int, ...] = ()
    field_rates: dict[str, tuple[float, float, float, float]] = field(default_factory=dict)


@dataclass(frozen=True)
class LossConfig:
    """Loss terms and per-field weights (spec §5.2)."""

    terms: tuple[str, ...] = ("mse_ensemble", "stats")
    field_weights: dict[str, float] = field(default_factory=dict)


@dataclass(frozen=True)
class TrainConfig:
    """Pretraining: engine, batch, AtmoRep's optimizer schedule, checkpoints (spec §5.3)."""

    start: str | None = None
    end: str | None = None
    steps: int = 1000
    batch_size: int = 8
    gradient_accumulation: int = 1
    lr_start: float = 1e-5
    lr: float = 2e-5
    lr_min: float = 1e-5
    lr_decay: float = 1.025
    warmup_epochs: int = 3
    epoch_steps: int = 512
    weight_decay: float = 0.025
    gradient_clipping: float = 0.0
    max_bad_steps: int = 10
    masking: MaskingConfig = field(default_factory=MaskingConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    engine: str = "deepspeed"
    zero_stage: int = 2
    offload_optimizer: bool = False
    offload_params: bool = False
    ranks: int = 2
    workers: int = 0
    checkpoint_every: int = 100
    tensorboard: bool = True
    init_from: str | None = None


@dataclass(frozen=True)
class AttentionCaptureConfig:
    """Which attention maps evaluation records: softmax(q k^T) of the self heads, recomputed on request."""

    fields: tuple[str, ...] = ()
    layers: tuple[int, ...] = (0,)
    heads: tuple[int, ...] = ()
    samples: int = 1


@dataclass(frozen=True)
class EvaluateConfig:
    """Inference on a held-out period, scores against baselines, attention maps (spec §6)."""

    start: str | None = None
    end: str | None = None
    mode: str = "forecast"
    times: tuple[str, ...] = ()
    forecast_tokens: int = 1
    interpolation_slabs: tuple[int, ...] = ()
    bert_rate: float = 0.5
    samples: int = 64
    batch_size: int = 16
    token_overlap: tuple[int, int] = (0, 0)
    climatology_start: str | None = None
    climatology_end: str | None = None
    climatology_window_hours: int = 6
    spread_inflation: float = 1.0
    bootstrap_iterations: int = 1000
    attention: AttentionCaptureConfig = field(default_factory=AttentionCaptureConfig)


@dataclass(frozen=True)
class EmbedConfig:
    """The encoder's latents over a period and area, one vector per token (``atmorep embed``)."""

    start: str | None = None
    end: str | None = None
    area: tuple[float, float, float, float] | None = None
    fields: tuple[str, ...] = ()
    layers: tuple[int, ...] = (-1,)
    token_overlap: tuple[int, int, int] = (0, 0, 0)
    pooling: tuple[str, ...] = ()
    batch_size: int = 16
    case_study: bool = False


@dataclass(frozen=True)
class LoraConfig:
    """Low-rank adapters on a frozen backbone's encoder projections (``backbone: lora``)."""

    rank: int = 4
    alpha: float = 4.0  # the update is scaled by alpha / rank


@dataclass(frozen=True)
class FinetuneTaskConfig:
    """One downstream task: a head on a pretrained backbone for a target it never predicted."""

    target: str
    head: str = "mlp"
    backbone: str = "frozen"
    layers: tuple[int, ...] = (-1,)
    inputs: tuple[str, ...] = ()
    trainable_layers: int = 1
    lora: LoraConfig = field(default_factory=LoraConfig)
    target_shards: tuple[str, ...] = ()
    hidden: int = 128
    depth: int = 2
    latents: int = 16
    heads: int = 4
    ensemble: int = 1
    loss: tuple[str, ...] = ("mse",)
    dropout: float = 0.0

    def check(self, name: str) -> None:
        """What the task's settings alone decide (at workflow start and when it trains)."""
        where = f"finetune.tasks.{name}"
        if self.ensemble < 2 and (bad := [t for t in self.loss if t in ("stats", "crps", "gaussian_crps")]):
            raise ConfigError(f"{where}.loss {bad} needs an ensemble: set {where}.ensemble to 2 or more")
        if self.head == "perceiver" and self.hidden % self.heads:
            raise ConfigError(f"{where}.hidden {self.hidden} is not divisible by {where}.heads {self.heads}")


@dataclass(frozen=True)
class FinetuneEvaluateConfig:
    """The held-out period a task's head is scored on, against climatology and a linear model."""

    start: str | None = None
    end: str | None = None
    samples: int = 64
    batch_size: int = 16
    bootstrap_iterations: int = 1000
    climatology_window_hours: int = 6


@dataclass(frozen=True)
class FinetuneConfig:
    """Heads for new targets on a pretrained backbone (``atmorep finetune``), trained on the same engine."""

    backbone: str | None = None
    tasks: dict[str, FinetuneTaskConfig] = field(default_factory=dict)
    train: TrainConfig = field(default_factory=TrainConfig)
    evaluate: FinetuneEvaluateConfig = field(default_factory=FinetuneEvaluateConfig)

    def check_train(self) -> None:
        """finetune.train's keys that belong to pretraining only must stay unset."""
        unused = [k for k in ("masking", "loss", "init_from") if getattr(self.train, k) != getattr(TrainConfig(), k)]
        if unused:
            raise ConfigError(
                f"finetune.train.{', finetune.train.'.join(unused)} do not apply to fine-tuning (a head reads every "
                "token; its loss is finetune.tasks.*.loss; its start is finetune.backbone): remove them"
            )


@dataclass(frozen=True)
class SoftwareConfig:
    """Environment modules loaded before each group of rules under ``snakemake
    --software-deployment-method env-modules`` (Lmod/Environment Modules names, set by a site)."""

    modules: dict[str, tuple[str, ...]] = field(default_factory=dict)

    def modules_for(self, group: str) -> tuple[str, ...]:
        return tuple(self.modules.get(group, ()))


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
    embed: EmbedConfig = field(default_factory=EmbedConfig)
    finetune: FinetuneConfig = field(default_factory=FinetuneConfig)
    software: SoftwareConfig = field(default_factory=SoftwareConfig)


#: The sections each stage reads; the CLI and Snakemake pass exactly these.
STAGE_SECTIONS: dict[str, tuple[str, ...]] = {
    "acquire": ("data", "acquire"),
    "normalize": ("data", "normalize"),
    "shard": ("data", "shard"),
    "train": ("seed", "data", "model", "train"),
    "evaluate": ("seed", "data", "evaluate"),  # no model section: evaluate reads it from model.safetensors
    "embed": ("data", "embed"),  # likewise; nothing random, so no seed
    "finetune": ("seed", "data", "finetune"),  # the backbone's architecture comes from its model file
    "infer": ("seed", "data", "evaluate"),  # without SCORING_KEYS (stage_slice)
    "score": ("seed", "data", "evaluate"),
}

#: The evaluate keys that only the score stage reads: the infer stage's slice leaves them out, so that
#: changing one reruns the scoring and never the inference (the GPU part).
SCORING_KEYS = ("climatology_start", "climatology_end", "climatology_window_hours", "bootstrap_iterations")


def period(cfg, data: DataConfig) -> tuple[np.datetime64, np.datetime64]:
    """A stage's (start, end), defaulting to the campaign's."""
    return parse_time(cfg.start or data.start), parse_time(cfg.end or data.end)


def parse_time(text: str) -> np.datetime64:
    """'2026-03-25', '2026-03-25T06' or '2026-03-25T06:00' -> datetime64[s]."""
    if len(text) == 13:  # 'YYYY-MM-DDTHH'
        text += ":00"
    return np.datetime64(text, "s")


def convert(tp: Any, value: Any, where: str) -> Any:
    """Convert a YAML value to the annotated type ``tp``; reject unknown keys of dataclasses.

    Errors name the key ``where`` (dotted, e.g. 'train.masking.rate').
    """
    origin = typing.get_origin(tp)
    if dataclasses.is_dataclass(tp):
        return build(tp, value, where)
    if origin in (typing.Union, types.UnionType):  # Optional[X] (typing) or X | None (types)
        if value is None:
            return None
        # the dataclasses use unions only as X | None: exactly one other type
        (inner,) = [a for a in typing.get_args(tp) if a is not type(None)]
        return convert(inner, value, where)
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: expected a mapping, got {value!r}")
        _, vtype = typing.get_args(tp)
        return {str(k): convert(vtype, v, _join(where, str(k))) for k, v in value.items()}
    if origin is tuple:
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{where}: expected a list, got {value!r}")
        args = typing.get_args(tp)
        inner = args[0]  # fixed-length tuples here are homogeneous (tuple[int, int, int])
        if args[-1] is not Ellipsis and len(args) != len(value):
            raise ConfigError(f"{where}: expected {len(args)} values, got {list(value)!r}")
        return tuple(convert(inner, v, where) for v in value)
    # YAML reads `lr: 1` as an int; a bool is an int too in Python, and never a number here
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
    hints = typing.get_type_hints(cls)  # the annotations are strings (`from __future__ import annotations`)
    names = {f.name for f in dataclasses.fields(cls)}
    for key in raw:
        if key not in names:
            raise ConfigError(f"unknown config key '{_join(where, key)}' (allowed: {', '.join(sorted(names))})")
    kwargs = {}
    for f in dataclasses.fields(cls):
        if f.name in raw:
            kwargs[f.name] = convert(hints[f.name], raw[f.name], _join(where, f.name))
        elif f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
            raise ConfigError(f"missing config key '{_join(where, f.name)}'")
    return cls(**kwargs)


def schema_path() -> Path:
    """The JSON schema shipped with the workflow (repository checkout)."""
    # parents[2]: src/atmorep -> src -> the checkout's root (an installed package has no workflow/)
    return Path(__file__).resolve().parents[2] / "workflow" / "schemas" / "config.schema.yaml"


def validate_schema(raw: Any, section: str | None = None) -> None:
    """Validate against the JSON schema when it is available (a repository checkout): the whole run
    configuration, or one ``section`` of it (e.g. a model file's ``model``)."""
    path = schema_path()
    if not path.exists():
        return
    import jsonschema

    schema = yaml.safe_load(path.read_text())
    if section is not None:  # the section's own schema, with the definitions its $refs point to
        schema = {**schema["properties"][section], "definitions": schema.get("definitions", {})}
    # sorted by path: the same first error every run, whatever order the validator finds them in
    errors = sorted(jsonschema.Draft202012Validator(schema).iter_errors(raw), key=lambda e: list(e.path))
    if errors:
        err = errors[0]
        where = ".".join([*([section] if section else []), *map(str, err.path)]) or "config"
        raise ConfigError(f"{where}: {err.message}")


def read_yaml(path: str | Path, what: str = "config file") -> Any:
    """The YAML document at ``path``; a missing file or bad YAML is a :class:`ConfigError` naming it."""
    path = Path(path)
    try:
        return yaml.safe_load(path.read_text())
    except FileNotFoundError:
        raise ConfigError(f"{what} not found: {path}") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML: {exc}") from None


def load(path: str | Path) -> Config:
    """Read, validate and build a whole run configuration from YAML."""
    raw = read_yaml(path)
    validate_schema(raw)
    return build(Config, raw)


def stage_slice(raw: dict, stage: str) -> dict:
    """The part of a raw config dict that ``stage`` reads (see :data:`STAGE_SECTIONS`; the infer stage's
    evaluate section without :data:`SCORING_KEYS`)."""
    out = {k: raw[k] for k in STAGE_SECTIONS[stage] if k in raw}
    if stage == "infer" and isinstance(out.get("evaluate"), dict):
        out["evaluate"] = {k: v for k, v in out["evaluate"].items() if k not in SCORING_KEYS}
    return out


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
    if name not in raw and name in {
        f.name
        for f in dataclasses.fields(Config)
        if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
    }:
        raise ConfigError(f"missing config key '{name}'")
    if name == "seed":  # the one scalar section; 1 is Config's default
        return int(raw.get("seed", 1))
    return convert(hints[name], raw.get(name, {}), name)
