"""Model size without building it for real: parameter count (on the ``meta`` device), tokens per
sample, FLOPs and a memory estimate; and the model-file format of ``config/models/*.yaml``.

A *model file* describes a published architecture::

    description: V2 single-field velocity_u (j8dwr5qj)
    reference: spec §4.4, §4.6
    logged_parameters: 117656336        # optional; what the original's training log printed
    notes: [...]                         # optional; deliberate differences, provenance
    fields:
      velocity_u: {levels: [96, 105, 114, 123, 137], token_size: [3, 18, 18], num_tokens: [12, 3, 6]}
    model: {dim: 1024, ...}             # the `model` section of a run configuration

Unknown keys are rejected; the ``model`` section is validated against the run-configuration schema.
``atmorep train --dry-run --config FILE`` prints :func:`report` for a model file or a whole run
configuration (geometry then from ``data.fields`` and ``shard.token_size``).

Legend: N tokens of a field per sample, M tokens of a coupled field, D / D_g widths, P values per
token, E members, K masked tokens.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path

import torch
import yaml

from atmorep import config as C
from atmorep.config import ModelConfig
from atmorep.model.embedding import TOKEN_INFO_DIM
from atmorep.model.multiformer import FieldGeometry, Multiformer, coupling_graph, field_dims

OPTIMIZER_BYTES_PER_PARAM = 16  # fp32 weights + fp32 gradients + AdamW's two fp32 moments


@dataclass(frozen=True)
class FieldSpec:
    """A field's geometry in a model file: level numbers, points per token, tokens per sample."""

    levels: tuple[int, ...]
    token_size: tuple[int, int, int]
    num_tokens: tuple[int, int, int] | None = None

    def __post_init__(self):
        if not self.levels:
            raise C.ConfigError("fields: every field needs at least one level")
        if min(self.token_size) < 1 or (self.num_tokens is not None and min(self.num_tokens) < 1):
            raise C.ConfigError(f"fields: token_size {list(self.token_size)} and num_tokens must be positive")


@dataclass(frozen=True)
class ModelFile:
    """A published architecture: the ``model`` section plus the geometry of its fields."""

    model: ModelConfig
    fields: dict[str, FieldSpec]
    description: str = ""
    reference: str = ""
    logged_parameters: int | None = None
    notes: tuple[str, ...] = field(default_factory=tuple)

    def __post_init__(self):
        if not self.fields:
            raise C.ConfigError("fields: a model needs at least one field")

    def geometry(self) -> dict[str, FieldGeometry]:
        return {
            f: FieldGeometry(len(s.levels), s.token_size, s.num_tokens or self.model.num_tokens)
            for f, s in self.fields.items()
        }


def load_model_file(path: str | Path) -> ModelFile:
    """Read and validate a model file (unknown keys are errors that name the key)."""
    path = Path(path)
    try:
        raw = yaml.safe_load(path.read_text())
    except FileNotFoundError:
        raise C.ConfigError(f"model file not found: {path}") from None
    except yaml.YAMLError as exc:
        raise C.ConfigError(f"{path}: not valid YAML: {exc}") from None
    if not isinstance(raw, dict) or "model" not in raw or "fields" not in raw:
        raise C.ConfigError(f"{path}: a model file needs `model:` and `fields:` sections")
    _validate_model_section(raw["model"], path)
    try:
        return C.build(ModelFile, raw)
    except C.ConfigError as exc:
        raise C.ConfigError(f"{path}: {exc}") from None


def _validate_model_section(raw_model, path: Path) -> None:
    """The `model` section against the run-configuration schema (when the schema is available)."""
    schema_file = C.schema_path()
    if not schema_file.exists():
        return
    import jsonschema

    schema = yaml.safe_load(schema_file.read_text())
    sub = {**schema["properties"]["model"], "definitions": schema.get("definitions", {})}
    errors = sorted(jsonschema.Draft202012Validator(sub).iter_errors(raw_model), key=lambda e: list(e.path))
    if errors:
        where = ".".join(["model", *map(str, errors[0].path)])
        raise C.ConfigError(f"{path}: {where}: {errors[0].message}")


def from_run_config(path: str | Path) -> ModelFile:
    """The model and geometry a run configuration trains (levels from data, token size from shard)."""
    cfg = C.load(path)
    tokens = C.tokens_per_field(cfg)
    fields = {f: FieldSpec(s.levels, cfg.shard.token_size_for(f), tokens[f]) for f, s in cfg.data.fields.items()}
    return ModelFile(cfg.model, fields, description=f"run '{cfg.run}' ({path})")


def load_any(path: str | Path) -> ModelFile:
    """A model file, or a run configuration (recognised by its `run:` key)."""
    try:
        raw = yaml.safe_load(Path(path).read_text())
    except FileNotFoundError:
        raise C.ConfigError(f"config file not found: {path}") from None
    return from_run_config(path) if isinstance(raw, dict) and "run" in raw else load_model_file(path)


def meta_model(cfg: ModelConfig, fields: dict[str, FieldGeometry]) -> Multiformer:
    """The model on the ``meta`` device: shapes only, no memory, no initialisation cost."""
    with torch.device("meta"):
        return Multiformer(cfg, fields)


def parameter_count(cfg: ModelConfig, fields: dict[str, FieldGeometry]) -> int:
    """All parameters (frozen legacy ones of the compat layout included, as the original counted them)."""
    return sum(p.numel() for p in meta_model(cfg, fields).parameters())


def tokens(cfg: ModelConfig, fields: dict[str, FieldGeometry]) -> dict[str, int]:
    """Tokens per sample and field, ``L * T * Y * X``."""
    out = {}
    for f, g in fields.items():
        T, Y, X = g.num_tokens or cfg.num_tokens
        out[f] = g.levels * T * Y * X
    return out


def flop_terms(cfg: ModelConfig, fields: dict[str, FieldGeometry]) -> dict[str, tuple[float, float, float]]:
    """Per field the forward matmul FLOPs (2 per multiply-add), attention scores and values included:
    ``(embedding per sample, encoder + decoder per sample, tail per masked token)``."""
    n, dims, coupling = tokens(cfg, fields), field_dims(cfg, list(fields)), coupling_graph(cfg, list(fields))
    out = {}
    for f, g in fields.items():
        N, D, P = n[f], dims[f], g.values_per_token
        enc = 2 * N * D * 3 * D + 4 * N * N * D + 8 * N * D * D  # self qkv, scores+values, MLP
        c = cfg.coupling_heads * (D // cfg.heads)
        enc += sum(2 * N * D * c + 2 * n[h] * dims[h] * 2 * c + 4 * N * n[h] * c for h in coupling[f])
        enc += 2 * N * (D + c * len(coupling[f])) * D  # proj_out
        dec = 2 * N * D * 3 * D + 2 * N * D * D + 4 * N * N * D + 8 * N * D * D  # q,kv (self+cross), proj, attn, MLP
        predicted = f not in cfg.inputs_only  # inputs-only fields have no decoder and no tail
        embed = 2 * N * (P * (D - TOKEN_INFO_DIM) + 8 * TOKEN_INFO_DIM)  # values and token info
        out[f] = (
            embed,
            cfg.encoder_layers * enc + predicted * cfg.decoder_layers * dec,
            predicted * 2 * cfg.ensemble * D * P,
        )
    return out


def forward_flops(cfg: ModelConfig, fields: dict[str, FieldGeometry], masked_fraction: float = 1.0) -> float:
    """Matmul FLOPs of one sample's forward pass; the tail runs on ``masked_fraction`` of the tokens."""
    n = tokens(cfg, fields)
    return sum(e + b + t * n[f] * masked_fraction for f, (e, b, t) in flop_terms(cfg, fields).items())


def training_flops(cfg: ModelConfig, fields: dict[str, FieldGeometry], masked_fraction: float = 1.0) -> float:
    """Forward + backward matmul FLOPs of one training sample (model FLOPs: no checkpoint recompute).

    Backward costs twice the forward (input and weight gradients), except in the embedding, whose
    input (the data) needs no gradient: there only the weight gradient, once the forward.
    """
    n = tokens(cfg, fields)
    terms = flop_terms(cfg, fields)
    return sum(2 * e + 3 * (b + t * n[f] * masked_fraction) for f, (e, b, t) in terms.items())


def report(path: str | Path) -> str:
    """What ``atmorep train --dry-run --config FILE`` prints."""
    spec = load_any(path)
    cfg, geometry = spec.model, spec.geometry()
    count = parameter_count(cfg, geometry)
    n = tokens(cfg, geometry)
    dims = field_dims(cfg, list(geometry))
    from atmorep.train.memory import activation_bytes  # the fit planner's memory model

    plain, ckpt, _ = activation_bytes(cfg, geometry, gpu=True, masked_fraction=0.5)
    lines = [f"model: {spec.description or path}" + (" [compat layout]" if cfg.compat else "")]
    for f, g in geometry.items():
        T, Y, X = g.num_tokens or cfg.num_tokens
        lines.append(
            f"  {f}: D {dims[f]}, {g.levels} levels x [{T},{Y},{X}] tokens of {list(g.token_size)} "
            f"(P {g.values_per_token}) = {n[f]:,} tokens"
        )
    params = f"parameters: {count:,}"
    if cfg.compat:
        default = parameter_count(dataclasses.replace(cfg, compat=False), geometry)
        params += f" (default layout, compat off: {default:,}, without the unused legacy token-info Linear)"
    lines += [
        params,
        f"tokens per sample: {sum(n.values()):,}",
        f"forward: {_flop(forward_flops(cfg, geometry))} per sample, training (forward + backward) "
        f"{_flop(training_flops(cfg, geometry))}",
        f"estimated memory: parameters {_bytes(count * 4)} fp32, training state "
        f"{_bytes(count * OPTIMIZER_BYTES_PER_PARAM)} (weights, gradients, AdamW); activations per sample "
        f"{_bytes(plain)} bf16 ({_bytes(ckpt)} with checkpointing; BERT masking at rate 0.5)",
    ]
    if spec.logged_parameters is not None:
        match = "matches" if spec.logged_parameters == count else f"differs by {count - spec.logged_parameters:+,}"
        lines.append(f"logged by the original: {spec.logged_parameters:,} ({match})")
    return "\n".join(lines)


def _flop(x: float) -> str:
    for unit, scale in (("TFLOP", 1e12), ("GFLOP", 1e9)):
        if x >= scale:
            return f"{x / scale:.3f} {unit}"
    return f"{x / 1e6:.3f} MFLOP"


def _bytes(x: float) -> str:
    for unit, scale in (("GiB", 1024**3), ("MiB", 1024**2)):
        if x >= scale:
            return f"{x / scale:.2f} {unit}"
    return f"{x / 1024:.1f} KiB"
