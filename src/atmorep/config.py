"""The run configuration: ONE declaration of every key, its type, default, range and description.

Each section is a frozen dataclass; the string under each field is its description, and ``Annotated``
constraints (``Field(ge=1)``, patterns, ``Literal`` choices) say what a value may be. The JSON schema
Snakemake validates with (``workflow/schemas/config.schema.yaml``) is *generated* from these classes by
:mod:`atmorep.schema` (``make schema``; a test fails when the committed file is stale), which also fills
in the names of the registries (sources, masking strategies, loss terms, engines, evaluation modes,
attention kernels and q/k norms): this module is the bottom layer and imports none of them, and each
registry checks its own names where it is used.

Why plain dataclasses read by pydantic (``__pydantic_config__``: unknown keys forbidden, attribute
docstrings as descriptions): pydantic validates types, ranges and patterns at the boundary (a config
file, a job's ``--params``, Snakemake's ``config``) and writes JSON Schema from the same annotations,
as pypsa-eur's and anemoi's pydantic configs do; the library receives plain frozen dataclasses, which
code and tests build and ``dataclasses.replace`` without a validator (the model's and the stages' own
checks still speak for themselves), and which type checkers read without a plugin.

Each stage sees only its *slice*: the sections it needs (see :data:`STAGE_SECTIONS`). Snakemake
passes the slice to the CLI as JSON, so a change to one section reruns exactly the stages that read it.

:func:`build` makes a section (or any annotated type) from YAML/JSON values, naming the first unknown,
missing or wrong-typed key; :func:`read_yaml`, :func:`load`, :func:`section` and :func:`as_dict` are
the file and slice helpers around it.
"""

from __future__ import annotations

import dataclasses
import datetime
import functools
import json
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, Literal

import numpy as np
import yaml
from pydantic import AfterValidator, ConfigDict, Field, TypeAdapter, ValidationError


class ConfigError(ValueError):
    """A user error in the configuration; the message names the offending key."""


# Every section: unknown keys are errors, the string literal under a field is its description.
_SECTION = ConfigDict(extra="forbid", use_attribute_docstrings=True)

# Shared value types: the constraints travel into the generated JSON schema.
DateTime = Annotated[str, Field(pattern=r"^[0-9]{4}-[0-9]{2}-[0-9]{2}(T[0-9]{2}(:[0-9]{2})?)?$")]
Month = Annotated[str, Field(pattern=r"^[0-9]{4}-[0-9]{2}$")]
Positive = Annotated[int, Field(ge=1)]
NonNegative = Annotated[int, Field(ge=0)]
Triple = tuple[Positive, Positive, Positive]
Fraction = Annotated[float, Field(ge=0, le=1)]


def _unique(items: tuple) -> tuple:
    if len(set(items)) != len(items):
        raise ValueError(f"names an item twice: {sorted({i for i in items if items.count(i) > 1})}")
    return items


@dataclass(frozen=True)
class FieldSpec:
    """One field of the campaign: its vertical levels and their level type, part of its identity."""

    __pydantic_config__ = _SECTION

    levels: Annotated[tuple[NonNegative, ...], Field(min_length=1)] = (0,)
    """Vertical levels; [0] for a surface field."""
    levtype: Annotated[str, Field(pattern=r"^[A-Za-z][A-Za-z0-9]*$")] | None = None
    """The level type, part of the field's identity (matched against each message's typeOfLevel).
    ml: ERA5 model levels (hybrid, L137 numbers); pl: pressure levels in hPa (isobaricInhPa);
    sfc: a single-level field (surface, heightAboveGround, meanSea, entireAtmosphere,
    depthBelowLandLayer, nominalTop; ml/pl with levels [0] mean sfc); any other ecCodes typeOfLevel
    selects exactly that type, levels being its level values (heightAboveGround with levels [10],
    tropopause with [0]). A field found only on other level types is refused. null (the default):
    sfc for levels [0], else ml."""

    def __post_init__(self) -> None:
        # The level type is resolved once, so that what a stage records (store attributes,
        # provenance) is the type it selected: 'sfc' for a surface field, never the 'ml' default.
        object.__setattr__(self, "levtype", self.kind)

    @property
    def surface(self) -> bool:
        return tuple(self.levels) == (0,)

    @property
    def kind(self) -> str:
        """'sfc', 'ml' (ERA5 model levels), 'pl' (pressure levels, hPa) or an ecCodes typeOfLevel."""
        if self.levtype is None or self.levtype in ("ml", "pl"):
            return "sfc" if self.surface else (self.levtype or "ml")
        return self.levtype


@dataclass(frozen=True)
class DataConfig:
    """The campaign: fields, levels, period, time step and grid. Every stage depends on it."""

    __pydantic_config__ = _SECTION

    fields: Annotated[dict[Annotated[str, Field(pattern=r"^[A-Za-z_][A-Za-z0-9_]*$")], FieldSpec], Field(min_length=1)]
    """Field name (ECMWF/cfgrib short name, e.g. t2m, u10, msl, t, vo) -> its levels. A name is an
    identifier (letters, digits, '_'; not starting with a digit): it names directories and the model's
    modules."""
    start: DateTime
    """First valid time of the campaign (UTC)."""
    end: DateTime
    """Last valid time of the campaign (UTC), inclusive."""
    step_hours: NonNegative = 0
    """Hours between consecutive valid times (ERA5: 1). Every step from 00 UTC inside the campaign
    is then expected and a missing one is an error; 0 means irregular or unknown (no gap check;
    the cds source then asks for hourly data)."""
    grid: tuple[Annotated[float, Field(gt=0)], Annotated[float, Field(gt=0)]] | None = None
    """[dlat, dlon] in degrees of the regular lat/lon grid every input must be on (ERA5: [0.25, 0.25]);
    null accepts any regular lat/lon grid (the cds source then asks for 0.25/0.25)."""
    area: tuple[float, float, float, float] | None = None
    """[north, west, south, east] in degrees of a regional campaign; null: the whole globe."""

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
    """The cds source: the Copernicus Climate Data Store through cdsapi. One request per (field, month);
    credentials come from ~/.cdsapirc or CDSAPI_URL/CDSAPI_KEY and never appear in logs or outputs."""

    __pydantic_config__ = _SECTION

    max_concurrent: Positive = 2
    """Requests in flight at once, over all jobs that share slots_dir (the CDS queues per user)."""
    slots_dir: str = ""
    """Directory of the lock files that count requests in flight; "" = ~/.cache/atmorep/cds-slots."""
    attempts: Positive = 5
    """Whole-request attempts on transient failures (job failed, connection lost, download incomplete)."""
    http_retries: Positive = 10
    """Tries of each HTTP call inside cdsapi on 429/5xx and connection errors."""
    backoff_s: Annotated[float, Field(gt=0)] = 30.0
    """First back-off in seconds; it doubles with every retry (with jitter)."""
    backoff_max_s: Annotated[float, Field(gt=0)] = 900.0
    """Longest back-off in seconds."""
    poll_max_s: Annotated[float, Field(gt=0)] = 120.0
    """Longest wait in seconds between two status polls of a queued request."""
    timeout_s: Annotated[float, Field(gt=0)] = 120.0
    """HTTP connect/read timeout in seconds."""
    expver: str = "1"
    """ERA5 experiment version of model-level requests (1: ERA5; 5: ERA5T, the preliminary recent months)."""


@dataclass(frozen=True)
class FilesConfig:
    """The files source: GRIB files an HPC centre mirrors, in directories (searched recursively) or glob
    patterns."""

    __pydantic_config__ = _SECTION

    paths: tuple[str, ...] = ()
    """Directories (searched recursively) or glob patterns of GRIB1/GRIB2 files: several files per month,
    any message order, either latitude order, 0..360 or -180..180 longitudes."""
    index_dir: str = ""
    """Cache of per-file message inventories (keyed by path, size and mtime); "" = ~/.cache/atmorep/grib-index."""
    member: NonNegative | None = None
    """The ensemble member (GRIB key number) to take. null: the files must hold one member per field;
    files with several members are refused naming them (a run trains on one member)."""
    same_valid_time: Literal["refuse", "shortest_step", "longest_step"] = "refuse"
    """Forecast files: valid time = base time + step. Two messages with the same valid time (step 0 of
    one run and step 6 of the previous): refuse names both; shortest_step takes the newer run,
    longest_step the older one."""


@dataclass(frozen=True)
class ZarrSourceConfig:
    """The zarr source: an analysis-ready store (ARCO-ERA5, WeatherBench 2, anemoi) read lazily; only the
    chunks a (field, month, data.area, levels) unit needs are read; bytes read / bytes used go to the
    log and to OUTPUT.provenance.json."""

    __pydantic_config__ = _SECTION

    url: str = ""
    """Local path, https://, gs:// or s3:// URL of a zarr v2/v3 store (read anonymously; gs:// needs
    gcsfs, s3:// needs s3fs)."""
    storage_options: dict[str, str] = field(default_factory=dict)
    """Extra fsspec options for the URL's filesystem (e.g. endpoint_url of an S3-compatible store)."""
    concurrency: Positive = 16
    """Requests in flight at once per job (range requests of chunks; they hide the round trip of a
    distant store)."""
    readahead_mb: Positive = 1024
    """Memory in MB for the time blocks read ahead of the GRIB writer: what a job holds at most (at
    least one block: at 0.25 deg an ARCO-ERA5 hour of 5 levels is 3 chunks of 75 MB)."""
    retries: NonNegative = 10
    """Retries of one request on HTTP 408/429/5xx, timeouts and connection resets; then the job fails
    naming the URL and the key."""
    backoff_s: Annotated[float, Field(gt=0)] = 0.1
    """Seconds before the first retry; doubling per retry, +0-25 % jitter, at most 15 s."""
    timeout_s: Annotated[float, Field(gt=0)] = 60.0
    """Seconds without a byte from the server before an http(s) request counts as timed out (and is
    retried)."""


@dataclass(frozen=True)
class AcquireConfig:
    """Where the GRIB comes from; one (field, month) per job, written atomically and validated."""

    __pydantic_config__ = _SECTION

    source: str = "sample"
    """sample: the embedded real ERA5 sample (no account, no network); cds: the Copernicus Climate Data
    Store through cdsapi; files: GRIB or NetCDF on disk (acquire.files.paths); zarr: an analysis-ready
    zarr store (acquire.zarr.url: ARCO-ERA5, WeatherBench 2 or anemoi layout). The names are those of
    the registry atmorep.data.acquire.sources.SOURCES."""
    cds: CdsConfig = field(default_factory=CdsConfig)
    files: FilesConfig = field(default_factory=FilesConfig)
    zarr: ZarrSourceConfig = field(default_factory=ZarrSourceConfig)
    variables: dict[str, str] = field(default_factory=dict)
    """field -> variable name in NetCDF files or zarr stores, for names the field catalogue does not
    know (e.g. {t2m: air}); units are still checked."""
    regrid: Literal["none", "linear"] = "none"
    """Gaussian grids (reduced or regular): none rejects them; linear interpolates them onto data.grid
    (global regular lat/lon)."""
    derive_vorticity: bool = False
    """When a source has u and v but no vo or d, derive relative vorticity and divergence on the sphere
    (second-order finite differences in flux form, polar caps by circulation)."""


@dataclass(frozen=True)
class ClimatologyConfig:
    """Fields normalized with statistics of a training period instead of their own month, so that a
    predicted month does not leak into its own normalization. Months of the period must lie in the
    campaign."""

    __pydantic_config__ = _SECTION

    fields: tuple[str, ...] = ()
    """Fields that use the climatology (global or local as `method`/`local` say)."""
    start: Month | None = None
    """First month (YYYY-MM) of the statistics period; required when `fields` is not empty."""
    end: Month | None = None
    """Last month (YYYY-MM) of the statistics period, inclusive."""
    by_calendar_month: bool = True
    """true: statistics per calendar month (all Marches of the period for March, as AtmoRep's monthly
    ones); false: one set over the whole period."""

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
    """The quality gate of the normalize stage (NaN/inf, constant fields, physical ranges, missing or
    duplicated times, units)."""

    __pydantic_config__ = _SECTION

    ranges: dict[str, tuple[float, float]] = field(default_factory=dict)
    """Field -> [min, max] physical range, overriding the built-in one (src/atmorep/fields.py)."""
    check_units: bool = True
    """Reject a field whose GRIB units differ from the expected ones (e.g. precipitation in kg m-2
    instead of m)."""


@dataclass(frozen=True)
class NormalizeConfig:
    """AtmoRep normalization per field, level and (year, month), after a quality gate."""

    __pydantic_config__ = _SECTION

    method: Literal["global", "local"] = "global"
    """global: one mean/std per field, level and month; local: mean/std per grid point."""
    local: tuple[str, ...] = ()
    """Fields that use local statistics whatever `method` says."""
    climatology: ClimatologyConfig = field(default_factory=ClimatologyConfig)
    qc: QCConfig = field(default_factory=QCConfig)
    memory_mb: Annotated[int, Field(ge=64)] = 2048
    """A month that decodes to more float32 than this is streamed through a scratch file in time blocks."""
    block_mb: Annotated[int, Field(ge=8)] = 256
    """Float64 working set of one time block when computing statistics and normalizing."""
    scratch_dir: str = ""
    """Where a streamed month is spilled (node-local disk on a cluster); "" = beside the output."""

    def method_for(self, field_name: str) -> str:
        return "local" if field_name in self.local else self.method

    def statistics_for(self, field_name: str) -> str:
        """'climatology' for the fields listed in ``climatology.fields``, else 'monthly' (AtmoRep)."""
        return "climatology" if field_name in self.climatology.fields else "monthly"


@dataclass(frozen=True)
class ShardConfig:
    """Token-aligned zarr v3 stores, one per (field, year): one inner chunk per token position (all
    levels), many per file."""

    __pydantic_config__ = _SECTION

    token_size: Triple = (3, 9, 9)
    """Grid points per token (time, lat, lon); chunk boundaries coincide with token boundaries
    (AtmoRep's finer token: [3, 9, 9])."""
    field_token_size: dict[str, Triple] = field(default_factory=dict)
    """Field -> its own token size (time, lat, lon), overriding `token_size` (AtmoRep mixes [3, 9, 9],
    [3, 18, 18] and [3, 27, 27] over the same neighbourhood). Every field's latitudes are cropped
    to the least common multiple of the lat token sizes, so all fields share one grid."""
    shard_tokens: Triple = (24, 16, 32)
    """Token positions per shard file (time, lat, lon). Each inner chunk holds one token position of
    all levels, uncompressed; at 0.25° with [3, 9, 9] tokens and 5 levels the default makes 60 MB
    files, about 3,000 per field and year (benchmarks/loader.py --sweep measures other choices)."""

    def token_size_for(self, field_name: str) -> tuple[int, int, int]:
        return self.field_token_size.get(field_name, self.token_size)


@dataclass(frozen=True)
class ModelConfig:
    """The multiformer (AtmoRep spec §4): one encoder-decoder transformer per field, coupled by
    cross-attention heads in the encoder, with an ensemble tail on the masked tokens."""

    __pydantic_config__ = _SECTION

    num_tokens: Triple = (12, 6, 12)
    """Tokens per sample and level (time, lat, lon)."""
    dim: Annotated[int, Field(ge=32)] = 1024
    """Embedding width D per field (16 of it carry token info); heads must divide it."""
    field_dims: dict[str, Annotated[int, Field(ge=32)]] = field(default_factory=dict)
    """Field -> its own width D_f, overriding `dim` (the V1 multiformers mix 1024, 1536 and 2048)."""
    heads: Annotated[int, Field(ge=2)] = 16
    """Attention heads per block: encoder self heads; the decoder splits them into heads - heads//2 self
    and heads//2 cross heads. Head width D/heads."""
    encoder_layers: Positive = 6
    """Encoder blocks per field."""
    decoder_layers: Positive = 6
    """Decoder blocks per field (at most encoder_layers: decoder layer l cross-attends to encoder output
    encoder_layers-1-l)."""
    coupling_heads: NonNegative = 1
    """Cross-attention heads per coupled field (AtmoRep's coupling_num_heads_per_field)."""
    coupling: dict[str, tuple[str, ...]] = field(default_factory=dict)
    """Field -> the fields its encoder cross-attends to (directed graph; fields not listed attend to none)."""
    encoder_qk_norm: str = "plain"
    """Query/key LayerNorm over the head width in encoder blocks: none, plain (no affine; AtmoRep's
    with_qk_lnorm) or affine (atmorep.model.attention.QK_NORMS)."""
    decoder_qk_norm: str = "affine"
    """Query/key LayerNorm in decoder blocks (shared by self and cross heads); affine as in AtmoRep V2,
    plain as in V1 with qk-norm."""
    ensemble: Annotated[int, Field(ge=2)] = 16
    """Ensemble tail heads (members)."""
    dropout: Fraction = 0.05
    """Dropout after the attention projection and inside the MLP."""
    attention: str = "sdpa"
    """Attention kernel (atmorep.model.attention.KERNELS): sdpa (torch scaled_dot_product_attention,
    fused kernels on GPU) or explicit softmax (reference path)."""
    checkpointing: bool = False
    """Activation checkpointing around every encoder and decoder block (recompute in backward)."""
    compat: bool = False
    """Reproduce the original AtmoRep V2 code: its parameter layout (adds the unused legacy token-info
    Linear, 144 parameters) and its quirks (positional-encoding latitude index and float32 arithmetic,
    GELU after the MLP's second Linear, coupling heads that normalize keys but not queries). Only to
    match logged parameter counts or load released weights (atmorep import-original)."""
    inputs_only: tuple[str, ...] = ()
    """Fields the model reads (embedding, encoder, coupling) but does not predict: no decoder, no tail,
    no loss (the original's fields outside fields_prediction, e.g. static ones)."""
    fields: Annotated[tuple[str, ...], AfterValidator(_unique), Field(json_schema_extra={"uniqueItems": True})] = ()
    """The data fields the model reads (pretraining gets only their shard stores); [] = every field of
    data.fields. The others are acquired, normalized and sharded but never seen by the backbone: targets
    for finetune (the demo keeps tp out of pretraining this way)."""


def model_fields(data: DataConfig, model: ModelConfig) -> tuple[str, ...]:
    """The fields the model reads: ``model.fields``, by default every field of ``data.fields``."""
    unknown = sorted(set(model.fields) - set(data.fields))
    if unknown:
        raise ConfigError(f"model.fields names {', '.join(unknown)}, not in data.fields ({', '.join(data.fields)})")
    return tuple(model.fields) or tuple(data.fields)


@dataclass(frozen=True)
class MaskingConfig:
    """Training masking strategy (AtmoRep spec §5.1): which tokens become targets (the masked tokens
    only) and how their inputs are altered."""

    __pydantic_config__ = _SECTION

    strategy: str = "bert"
    """bert: random tokens per sample and level; forecast: the last time slabs; temporal_interpolation:
    middle slab(s); global_forecast: forecast masking of every tile of the globe (the registry
    atmorep.model.masking.STRATEGIES)."""
    rate: Annotated[float, Field(gt=0, le=1)] = 0.5
    """bert: per sample, field and level a fraction U(0, rate) of tokens is masked."""
    p_mask: Fraction = 0.9
    """bert: probability that a masked token's input is set to zero (the mean)."""
    p_noise: Fraction = 0.2
    """bert: probability that a masked token's input is blended with noise, (1-w) x + noise_scale * std
    * eps, w ~ U(0,1)."""
    p_coarsen: Fraction = 0.05
    """bert: probability that a masked token's input is coarsened in lat/lon (area-averaged, then
    interpolated back)."""
    noise_scale: Annotated[float, Field(ge=0)] = 0.1
    """bert: noise amplitude in units of the batch's per-value standard deviation."""
    coarsen_max: Annotated[float, Field(ge=1)] = 2.0
    """bert: largest coarsening factor; one factor U(1, coarsen_max) per batch."""
    forecast_tokens: Positive = 1
    """forecast, global_forecast: masked time slabs at the end (AtmoRep: 1 = 3 h, 2 = 6 h)."""
    interpolation_slabs: tuple[NonNegative, ...] = ()
    """temporal_interpolation: time-slab indices to mask; [] = the middle slab T//2."""
    field_rates: dict[str, tuple[Fraction, Fraction, Fraction, Fraction]] = field(default_factory=dict)
    """Per field [rate, p_mask, p_noise, p_coarsen], overriding rate/p_mask/p_noise/p_coarsen for bert
    (the original's per-field masking entry, e.g. wc5e2i3t: tp [0.25, 0.9, 0.1, 0.05]). Rate 0: the
    field is never masked under any strategy (the original's rate-0 and static fields); it must then
    be in model.inputs_only."""


@dataclass(frozen=True)
class LossConfig:
    """Loss on the masked tokens in normalized units (AtmoRep spec §5.2): terms and per-field weights."""

    __pydantic_config__ = _SECTION

    terms: Annotated[tuple[str, ...], Field(min_length=1)] = ("mse_ensemble", "stats")
    """Loss terms, averaged (AtmoRep uses mse_ensemble + stats); crps is the fair ensemble CRPS,
    gaussian_crps the closed form for the ensemble's mean and std (the registry
    atmorep.train.losses.TERMS)."""
    field_weights: dict[str, Annotated[float, Field(ge=0)]] = field(default_factory=dict)
    """Field -> loss weight (AtmoRep's fields_prediction); unlisted fields weigh 1. The loss is
    sum_term sum_field w_f L / (terms * sum_field w_f)."""


@dataclass(frozen=True)
class TrainConfig:
    """Pretraining with DeepSpeed ZeRO: engine, batch, AtmoRep's optimizer schedule, checkpoints (spec §5.3)."""

    __pydantic_config__ = _SECTION

    start: DateTime | None = None
    """First valid time a training window may use; null = data.start."""
    end: DateTime | None = None
    """Last valid time a training window may use; null = data.end."""
    steps: Positive = 1000
    """Optimizer steps in all."""
    batch_size: Positive = 8
    """Samples per rank and micro-step (micro-batch)."""
    gradient_accumulation: Positive = 1
    """Micro-steps per optimizer step; global batch = batch_size x gradient_accumulation x ranks."""
    lr_start: Annotated[float, Field(gt=0)] = 1e-5
    """Learning rate at the start of the linear warm-up (AtmoRep lr_start)."""
    lr: Annotated[float, Field(gt=0)] = 2e-5
    """Peak learning rate after warm-up (AtmoRep lr_max; AdamW)."""
    lr_min: Annotated[float, Field(gt=0)] = 1e-5
    """Floor of the per-epoch decay (AtmoRep lr_min)."""
    lr_decay: Annotated[float, Field(ge=1)] = 1.025
    """After warm-up the rate is divided by this once per epoch (AtmoRep 1.025)."""
    warmup_epochs: NonNegative = 3
    """Epochs of linear warm-up (AtmoRep lr_start_epochs)."""
    epoch_steps: Positive = 512
    """Optimizer steps per epoch (the unit of the schedule)."""
    weight_decay: Annotated[float, Field(ge=0)] = 0.025
    """AdamW weight decay."""
    gradient_clipping: Annotated[float, Field(ge=0)] = 0.0
    """Clip the gradient norm to this; 0 = off (AtmoRep does not clip)."""
    max_bad_steps: Positive = 10
    """A step with a non-finite loss is skipped and counted; this many in a row stop the run."""
    masking: MaskingConfig = field(default_factory=MaskingConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    engine: str = "deepspeed"
    """deepspeed: ZeRO data parallelism; torch: plain DistributedDataParallel (debugging, benchmark
    baseline); the registry atmorep.train.engine.ENGINES."""
    zero_stage: Literal[0, 1, 2, 3] = 2
    """DeepSpeed ZeRO stage."""
    offload_optimizer: bool = False
    """DeepSpeed ZeRO optimizer-state offload to CPU memory."""
    offload_params: bool = False
    """DeepSpeed ZeRO-3 parameter offload to CPU memory."""
    ranks: Positive = 2
    """Data-parallel ranks the workflow launches (torchrun locally; the SLURM profile's srun tasks)."""
    workers: NonNegative = 0
    """Background loader processes per rank (read ahead while the model computes); 0 reads in the
    training process, fastest on CPU-only runs."""
    checkpoint_every: Positive = 100
    """Save a resumable checkpoint every this many optimizer steps (and at the end, and on
    SIGTERM/SIGUSR1)."""
    tensorboard: bool = True
    """Write TensorBoard event files beside metrics.csv (rank 0)."""
    init_from: str | None = None
    """Fine-tuning: a model file (the model.safetensors of an earlier training, same architecture and fields)
    whose weights start this run; optimizer and schedule start afresh. AtmoRep fine-tunes its
    BERT-pretrained model with forecast masking this way. null trains from random weights."""


@dataclass(frozen=True)
class AttentionCaptureConfig:
    """Attention maps: softmax(q k^T) of the self heads, recomputed for the chosen encoder layers only
    (training and plain inference keep the fused kernel); georeferenced to the tokens' (time, level,
    lat, lon) footprints."""

    __pydantic_config__ = _SECTION

    fields: tuple[str, ...] = ()
    """Fields whose encoder attention is captured; [] = the first field of the model."""
    layers: tuple[NonNegative, ...] = (0,)
    """Encoder layers to capture; [] = none (no attention output)."""
    heads: tuple[NonNegative, ...] = ()
    """Self heads to keep; [] = all."""
    samples: NonNegative = 1
    """The first this many evaluated windows; 0 = no attention output."""


@dataclass(frozen=True)
class EvaluateConfig:
    """Inference on a held-out period (AtmoRep spec §6) in physical units, scored the WeatherBench 2 way
    against persistence, climatology and linear interpolation; optional attention maps."""

    __pydantic_config__ = _SECTION

    start: DateTime | None = None
    """First valid time an evaluation window may use (held out from training); null = data.start."""
    end: DateTime | None = None
    """Last valid time an evaluation window may use; null = data.end."""
    mode: str = "forecast"
    """forecast: mask the last forecast_tokens time slabs of windows; temporal_interpolation: mask
    interpolation_slabs (default the middle slab); bert: random tokens (bert_rate); global_forecast:
    tile the whole globe at each time with forecast-masked windows and stitch them (the registry
    atmorep.eval.modes.MODES)."""
    times: tuple[DateTime, ...] = ()
    """Valid times of the windows' last step (AtmoRep's `dates`); [] = every window inside start..end.
    global_forecast tiles the globe once per time ([]: the first complete window time of the period)."""
    forecast_tokens: Positive = 1
    """forecast, global_forecast: time slabs to forecast (lead = slabs x token time steps)."""
    interpolation_slabs: tuple[NonNegative, ...] = ()
    """temporal_interpolation: time-slab indices to mask; [] = the middle slab T//2."""
    bert_rate: Annotated[float, Field(gt=0, le=1)] = 0.5
    """bert: per sample, field and level a fraction U(0, rate) of the tokens is masked (zeroed)."""
    samples: Positive = 64
    """Windows to evaluate, drawn with the seed (not used by global_forecast, which takes every tile)."""
    batch_size: Positive = 16
    """Windows per inference batch."""
    token_overlap: tuple[NonNegative, NonNegative] = (0, 0)
    """global_forecast: tokens (lat, lon) by which neighbouring tiles overlap; overlapping tiles are
    blended with weights that taper towards tile edges."""
    climatology_start: DateTime | None = None
    """First valid time of the climatology (ACC, climatology baseline); null = data.start."""
    climatology_end: DateTime | None = None
    """Last valid time of the climatology; null = the last time before evaluate.start (never the
    held-out period)."""
    climatology_window_hours: Annotated[int, Field(ge=1, le=24)] = 6
    """Climatology per grid point and hour of day: mean and std of the times within +- half this window
    of the hour (circular); 24 = one set for all hours."""
    spread_inflation: Annotated[float, Field(gt=0)] = 1.0
    """Scale every member's distance from the ensemble mean by this factor (the mean is unchanged):
    spread calibration as in ensemble post-processing. Fit it on a validation period (e.g. 1 / its
    spread-skill ratio), never on the period you score; 1 leaves the ensemble as predicted."""
    bootstrap_iterations: NonNegative = 1000
    """Resamples of the circular block bootstrap over init times behind every score's 95 % interval
    (scores ci_low/ci_high, comparisons skill_ci_*); 0 leaves the intervals out. Fewer than 8 init
    times give no interval and no p-value."""
    attention: AttentionCaptureConfig = field(default_factory=AttentionCaptureConfig)


@dataclass(frozen=True)
class EmbedConfig:
    """The representation (atmorep embed, rule embed): the encoder's latents of the model over a period
    and area, one vector per token, field, level and chosen encoder layer, at the token centres, in
    results/{run}/embed/embeddings.zarr (CF, one group per field). Windows tile the period and area;
    each token's latent comes from the window in which it is most central."""

    __pydantic_config__ = _SECTION

    start: DateTime | None = None
    """First valid time of a token centre to embed; null: the campaign's start (windows may read
    context before it)."""
    end: DateTime | None = None
    """Last valid time of a token centre to embed; null: the campaign's end."""
    area: tuple[float, float, float, float] | None = None
    """[north, west, south, east] in degrees: tokens whose centre lies inside are embedded (west > east:
    across 0°); null: the whole grid."""
    fields: tuple[str, ...] = ()
    """Fields of the model whose latents are written; []: every field of the model."""
    layers: Annotated[tuple[int, ...], Field(min_length=1)] = (-1,)
    """Encoder layers whose outputs are written (0 = first; negative counts from the last, -1 = the
    last); a layer the model lacks is refused."""
    token_overlap: tuple[NonNegative, NonNegative, NonNegative] = (0, 0, 0)
    """Tokens (time, lat, lon) by which neighbouring windows overlap; more overlap puts every token
    nearer its window's centre and costs more windows."""
    pooling: tuple[str, ...] = ()
    """Pooled vectors besides the per-token ones: window (mean over each window's tokens: pooled_window)
    and area (cos-latitude weighted mean over the area per time token: pooled_area); the names of
    atmorep.eval.embed.POOLING."""
    batch_size: Positive = 16
    """Windows per encoder batch."""
    case_study: bool = False
    """Also the tropical-cyclone case study (needs msl, u10 and v10 in the model): cyclones tracked in
    msl (atmorep.eval.cyclones), and for the deepest its track, encoder attention at its centre and the
    cosine similarity of the embedding around its centre to every other place and time (cyclone.png,
    cyclone_track.csv, cyclone_similarity.csv)."""


@dataclass(frozen=True)
class LoraConfig:
    """backbone lora: rank and scale of the adapters (update B A x * alpha / rank, B zero at start)."""

    __pydantic_config__ = _SECTION

    rank: Positive = 4
    """Rank of the adapters."""
    alpha: Annotated[float, Field(gt=0)] = 4.0
    """The adapters' update is scaled by alpha / rank."""


@dataclass(frozen=True)
class FinetuneTaskConfig:
    """One downstream task: a head on a pretrained backbone for a target it never predicted."""

    __pydantic_config__ = _SECTION

    target: str
    """The target field: in data.fields (same grid), or the field of target_shards (a finer grid)."""
    head: str = "mlp"
    """linear: a linear probe per token; mlp: LayerNorm + depth hidden GELU layers of width hidden;
    perceiver: latents learned queries cross-attend to the window's tokens, then every token's query
    cross-attends to them (Perceiver IO); the registry atmorep.model.heads.HEADS."""
    backbone: str = "frozen"
    """frozen: only the head trains (the backbone stays bit-identical); last_k: also the last
    trainable_layers encoder blocks of every field; lora: low-rank adapters on the attention projections
    of those blocks; full: the whole encoder; scratch: the backbone's architecture from random weights,
    fully trained; raw: no backbone, the head reads the normalized input tokens
    (atmorep.model.heads.BACKBONE_MODES)."""
    layers: Annotated[tuple[int, ...], Field(min_length=1)] = (-1,)
    """Encoder layers (0-based; negative count from the last) whose outputs, concatenated per token over
    the input fields and levels, feed the head."""
    inputs: tuple[str, ...] = ()
    """Backbone fields whose latents feed the head ([] = all; they must share one token grid)."""
    trainable_layers: Positive = 1
    """last_k and lora: how many of the last encoder blocks train (or get adapters)."""
    lora: LoraConfig = field(default_factory=LoraConfig)
    target_shards: tuple[str, ...] = ()
    """Shard stores of the target on a finer grid (downscaling), e.g. made by another run of this
    pipeline at 0.25°; [] = this run's shards of the target field (the same grid). The finer grid must
    nest in the backbone's tokens: an integer ratio r of the spacings, the same time steps; a target
    token covers its backbone token's footprint with (tt, r*ty, r*tx) points."""
    hidden: Positive = 128
    """Width of the mlp's hidden layers and of the perceiver."""
    depth: Positive = 2
    """Hidden layers of the mlp; cross-/self-attention blocks of the perceiver's latents."""
    latents: Positive = 16
    """Learned latent queries of the perceiver head."""
    heads: Positive = 4
    """Attention heads of the perceiver head (divides hidden)."""
    ensemble: Positive = 1
    """Members the head predicts (2 or more for CRPS and the stats loss term)."""
    loss: Annotated[tuple[str, ...], Field(min_length=1)] = ("mse",)
    """Loss terms on the normalized target tokens (train.loss.terms' terms; stats and the CRPS need
    ensemble >= 2)."""
    dropout: Fraction = 0.0
    """Dropout inside the head."""

    def check(self, name: str) -> None:
        """What the task's settings alone decide (at workflow start and when it trains)."""
        where = f"finetune.tasks.{name}"
        if self.ensemble < 2 and (bad := [t for t in self.loss if t in ("stats", "crps", "gaussian_crps")]):
            raise ConfigError(f"{where}.loss {bad} needs an ensemble: set {where}.ensemble to 2 or more")
        if self.head == "perceiver" and self.hidden % self.heads:
            raise ConfigError(f"{where}.hidden {self.hidden} is not divisible by {where}.heads {self.heads}")


@dataclass(frozen=True)
class FinetuneEvaluateConfig:
    """The held-out period the heads are scored on (the same scores, intervals and comparisons as
    evaluate), against climatology and a linear model."""

    __pydantic_config__ = _SECTION

    start: DateTime | None = None
    """First valid time a test window may use (after finetune.train's period)."""
    end: DateTime | None = None
    """Last valid time a test window may use."""
    samples: Positive = 64
    """Test windows (seeded draw; all when fewer)."""
    batch_size: Positive = 16
    """Windows per inference batch."""
    bootstrap_iterations: NonNegative = 1000
    """Block-bootstrap resamples of the score intervals (0 = none)."""
    climatology_window_hours: Positive = 6
    """Hours of day pooled into the climatology baseline (from finetune.train's period)."""


@dataclass(frozen=True)
class FinetuneConfig:
    """Heads for new targets on a pretrained backbone (atmorep finetune; README "Using the
    representation"): a new field on the same grid or a finer grid (downscaling), trained on the
    pretraining engine and scored on a held-out period against climatology and a linear model on the
    raw inputs."""

    __pydantic_config__ = _SECTION

    backbone: str | None = None
    """The backbone's model file (e.g. one written by atmorep import-original); null = this run's
    pretrained results/{run}/train/model.safetensors."""
    tasks: dict[Annotated[str, Field(pattern=r"^[A-Za-z0-9_.-]+$")], FinetuneTaskConfig] = field(default_factory=dict)
    """Task name (its products go to results/{run}/finetune/{task}/) -> the task."""
    train: TrainConfig = field(default_factory=TrainConfig)
    """The heads' training, as train (engine, ZeRO stage, ranks, schedule, checkpoints, signals);
    start/end is the fine-tuning training period. masking, loss and init_from do not apply (the task's
    loss and the backbone are)."""
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
    """How a site provides the software of the rules when Snakemake runs with
    --software-deployment-method env-modules (conda environments are workflow/envs/*.yaml, the default
    is the project's venv). Not part of any stage's slice: changing it reruns nothing."""

    __pydantic_config__ = _SECTION

    modules: dict[Literal["data", "train", "evaluate"], tuple[str, ...]] = field(default_factory=dict)
    """Module names to load per group of rules (`module load` in the job), e.g. {data: [ecCodes/2.38.0,
    Python/3.11.5], train: [PyTorch/2.5.1, OpenMPI/4.1.6], evaluate: [PyTorch/2.5.1]}. Groups: data
    (acquire, normalize, moments, climatology, shard, plan), train (pretrain), evaluate."""

    def modules_for(self, group: str) -> tuple[str, ...]:
        return tuple(self.modules.get(group, ()))  # type: ignore[call-overload]


@dataclass(frozen=True)
class Config:
    """One run of the pipeline. Each top-level section is the slice of one stage (data is shared by
    all); a stage reruns when its slice changes. Unknown keys are errors."""

    __pydantic_config__ = _SECTION

    run: Annotated[str, Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")]
    """Name of the run; outputs go to resources/{run}/, results/{run}/ and logs/{run}/, so it is one
    directory name: letters, digits, '_', '-' and '.', starting with a letter or digit (no path
    separator, not '..')."""
    data: DataConfig
    seed: int = 1
    """Seed of every random choice (sampling, masking, initialisation)."""
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


def period(
    cfg: TrainConfig | EvaluateConfig | EmbedConfig | FinetuneEvaluateConfig, data: DataConfig
) -> tuple[np.datetime64, np.datetime64]:
    """A stage's (start, end), defaulting to the campaign's."""
    return parse_time(cfg.start or data.start), parse_time(cfg.end or data.end)


def parse_time(text: str) -> np.datetime64:
    """'2026-03-25', '2026-03-25T06' or '2026-03-25T06:00' -> datetime64[s]."""
    if len(text) == 13:  # 'YYYY-MM-DDTHH'
        text += ":00"
    return np.datetime64(text, "s")


# --- building sections from YAML/JSON values -----------------------------------------------------------


@functools.cache
def _adapter(tp: Any) -> TypeAdapter:
    return TypeAdapter(tp)


def build(tp: Any, raw: Any, where: str = "") -> Any:
    """Build ``tp`` (a section dataclass, or any annotated type such as ``tuple[int, ...]``) from YAML or
    JSON values, naming the first unknown, missing or wrong-typed key (dotted, e.g. 'train.masking.rate').

    Values are checked strictly, as JSON Schema would: ``steps: "1000"`` or ``steps: true`` is refused,
    not converted; an int is a float; lists become tuples.
    """
    try:
        text = json.dumps(_plain(raw, where))
        return _adapter(tp).validate_json(text, strict=True)
    except ValidationError as exc:
        raise ConfigError(_describe(exc, tp, where)) from None


def _plain(raw: Any, where: str) -> Any:
    """``raw`` as JSON would carry it; YAML's dates (an unquoted 2026-03-25) are named, not converted."""
    if isinstance(raw, dict):
        return {str(k): _plain(v, _join(where, str(k))) for k, v in raw.items()}
    if isinstance(raw, (list, tuple)):
        return [_plain(v, where) for v in raw]
    if isinstance(raw, (datetime.date, datetime.datetime)):
        raise ConfigError(f'{where}: expected str, got {raw!r} (quote times in YAML: "{raw.isoformat()}")')
    return raw


#: pydantic's error types -> the words our messages have always used
_EXPECTED = {
    "dataclass_type": "a mapping",
    "dict_type": "a mapping",
    "tuple_type": "a list",
    "list_type": "a list",
    "int_type": "int",
    "float_type": "float",
    "string_type": "str",
    "bool_type": "bool",
}


def _describe(exc: ValidationError, tp: Any, where: str) -> str:
    """One line for the first error: unknown keys first, then missing ones, then wrong values."""
    rank = {"unexpected_keyword_argument": 0, "missing": 1}
    err = min(exc.errors(), key=lambda e: rank.get(e["type"], 2))  # min keeps pydantic's order among equals
    loc = [p for p in err["loc"] if p != "[key]"]
    parent = _type_at(tp, loc[:-1])
    key = _dotted(where, loc)
    if err["type"] == "unexpected_keyword_argument":
        allowed = ", ".join(sorted(f.name for f in dataclasses.fields(parent)))
        return f"unknown config key '{key}' (allowed: {allowed})"
    if err["type"] == "missing" and dataclasses.is_dataclass(parent):
        return f"missing config key '{key}'"
    if err["type"] == "missing":  # a fixed-length tuple given too few values
        key = _dotted(where, loc[:-1])
        return f"{key}: expected {len(typing.get_args(_unwrap(parent)))} values, got {err['input']!r}"
    if err["type"] == "string_pattern_mismatch":  # as JSON Schema says it; a bad dict key names the dict
        key = _dotted(where, loc if err["loc"][-1] != "[key]" else loc[:-1])
        return f"{key or 'config'}: {err['input']!r} does not match '{err['ctx']['pattern']}'"
    if err["type"] in _EXPECTED:
        return f"{key or 'config'}: expected {_EXPECTED[err['type']]}, got {err['input']!r}"
    msg = err["msg"][0].lower() + err["msg"][1:]
    return f"{key or 'config'}: {msg}, got {err['input']!r}"


def _dotted(where: str, loc: list) -> str:
    out = where
    for p in loc:
        out = f"{out}[{p}]" if isinstance(p, int) else _join(out, str(p))
    return out


def _join(where: str, key: str) -> str:
    return f"{where}.{key}" if where else key


def _unwrap(tp: Any) -> Any:
    """``X`` of ``Annotated[X, ...]`` and of ``X | None``."""
    while True:
        if typing.get_origin(tp) is Annotated:
            tp = typing.get_args(tp)[0]
        elif type(None) in typing.get_args(tp):
            (tp,) = [a for a in typing.get_args(tp) if a is not type(None)]
        else:
            return tp


def _type_at(tp: Any, loc: list) -> Any:
    """The annotated type at ``loc`` inside ``tp`` (dataclass fields, dict values, tuple items)."""
    for part in loc:
        tp = _unwrap(tp)
        if dataclasses.is_dataclass(tp):
            tp = typing.get_type_hints(tp, include_extras=True)[part]
        elif typing.get_origin(tp) is dict:
            tp = typing.get_args(tp)[1]
        elif typing.get_origin(tp) is tuple:
            args = typing.get_args(tp)
            tp = args[0] if args[-1] is Ellipsis else args[int(part)]
    return _unwrap(tp)


def as_dict(cfg: Any) -> Any:
    """A configuration (or a section) as plain YAML/JSON values, every key with its value."""
    tp: Any = type(cfg)
    return _adapter(tp).dump_python(cfg, mode="json")


# --- files and slices ----------------------------------------------------------------------------------


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
    """Read and build a whole run configuration from YAML (registry names: :func:`atmorep.schema.check_names`)."""
    return build(Config, read_yaml(path))


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


def section(raw: dict, name: str) -> Any:
    """Build one section (or ``seed``) of :class:`Config` from a (slice) dict, with its defaults."""
    spec = {f.name: f for f in dataclasses.fields(Config)}[name]
    if name in raw:
        return build(typing.get_type_hints(Config, include_extras=True)[name], raw[name], name)
    if spec.default is not dataclasses.MISSING:
        return spec.default
    if spec.default_factory is not dataclasses.MISSING:
        return spec.default_factory()
    raise ConfigError(f"missing config key '{name}'")
