"""The architecture files of ``config/models/*.yaml``, and the architecture a run configuration trains.

(The weights of a trained model, ``model.safetensors``, are :mod:`atmorep.model.file`'s.) An architecture
file (a *model file*) describes a published architecture::

    description: V2 single-field velocity_u (j8dwr5qj)
    reference: spec §4.4, §4.6
    logged_parameters: 117656336        # optional; what the original's training log printed
    notes: [...]                         # optional; deliberate differences, provenance
    fields:
      velocity_u: {levels: [96, 105, 114, 123, 137], token_size: [3, 18, 18], num_tokens: [12, 3, 6]}
    model: {dim: 1024, ...}             # the `model` section of a run configuration

Unknown keys are rejected; the ``model`` section is built by :class:`~atmorep.config.ModelConfig`, the
run configuration's own declaration.
A field's entry becomes the model's own :class:`~atmorep.model.multiformer.FieldGeometry` (the model
needs how many levels a field has, not which). ``atmorep train --dry-run`` reads a model file or a
whole run configuration (geometry then from ``data.fields``, ``shard.token_size`` and
``model.num_tokens``): :func:`read`.

Reading and building are :mod:`atmorep.config`'s; this module is its sibling rather than part of it
because the geometry type lives with the model, which imports the configuration.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydantic import ConfigDict

from atmorep import config as C
from atmorep import geometry
from atmorep.config import Config, ModelConfig
from atmorep.model.attention import check_names
from atmorep.model.multiformer import FieldGeometry


@dataclass(frozen=True)
class ModelFile:
    """A published architecture: the ``model`` section plus the geometry of its fields."""

    __pydantic_config__ = ConfigDict(extra="forbid")  # C.build names an unknown key

    model: ModelConfig
    fields: dict[str, FieldGeometry]
    description: str = ""
    reference: str = ""
    logged_parameters: int | None = None
    notes: tuple[str, ...] = field(default_factory=tuple)

    def __post_init__(self):
        if not self.fields:
            raise C.ConfigError("fields: a model needs at least one field")

    def geometry(self) -> dict[str, FieldGeometry]:
        """Every field's geometry, ``num_tokens`` defaulting to the model's."""
        return {
            f: dataclasses.replace(g, num_tokens=g.num_tokens or self.model.num_tokens) for f, g in self.fields.items()
        }


def load_model_file(path: str | Path) -> ModelFile:
    """Read and validate a model file (unknown keys are errors that name the key)."""
    return _model_file(C.read_yaml(path, "model file"), Path(path))


def from_config(cfg: Config, description: str = "") -> ModelFile:
    """The model and geometry a run configuration trains (its ``model.fields``; levels from data, token
    size from shard)."""
    tokens = geometry.tokens_per_field(cfg)
    fields = {
        f: FieldGeometry(len(cfg.data.fields[f].levels), cfg.shard.token_size_for(f), tokens[f])
        for f in C.model_fields(cfg.data, cfg.model)
    }
    return ModelFile(cfg.model, fields, description=description)


def problems(cfg: Config) -> list[str]:
    """What the model of ``cfg`` would refuse, found by building it on the ``meta`` device (shapes
    only: no weights, no memory, well under a second at the paper's size), so the model's own checks
    decide, not copies of them: widths and heads, coupling, depths, and the encoder layers and self
    heads ``evaluate.attention`` captures. Needs a config whose token sizes tile (``tokens_per_field``)."""
    from atmorep.model.summary import meta_model

    spec = from_config(cfg)
    try:
        model = meta_model(spec.model, spec.geometry())
        a = cfg.evaluate.attention
        if a.layers and a.samples:  # as evaluate: capture is off without layers or samples
            for f in a.fields or list(cfg.data.fields)[:1]:
                for layer in a.layers:
                    model.encoder_attention(f, layer, a.heads)
    except ValueError as exc:
        return [str(exc)]
    return []


def read(path: str | Path) -> tuple[ModelFile, Config | None]:
    """A model file, or a run configuration (recognised by its `run:` key) with the configuration."""
    raw = C.read_yaml(path)
    if isinstance(raw, dict) and "run" in raw:
        cfg = C.load(path)
        return from_config(cfg, f"run '{cfg.run}' ({path})"), cfg
    return _model_file(raw, Path(path)), None


def load_any(path: str | Path) -> ModelFile:
    """A model file, or the model of a run configuration."""
    return read(path)[0]


def _model_file(raw: Any, path: Path) -> ModelFile:
    if not isinstance(raw, dict) or "model" not in raw or "fields" not in raw:
        raise C.ConfigError(f"{path}: a model file needs `model:` and `fields:` sections")
    try:
        spec = C.build(ModelFile, {**raw, "fields": _count_levels(raw["fields"])})
        check_names(spec.model)
        for g in spec.fields.values():
            # FieldGeometry checks nothing itself (the model builds it from data it trusts); a file is input
            if min(g.token_size) < 1 or (g.num_tokens is not None and min(g.num_tokens) < 1):
                raise C.ConfigError(f"fields: token_size {list(g.token_size)} and num_tokens must be positive")
        return spec
    except C.ConfigError as exc:
        raise C.ConfigError(f"{path}: {exc}") from None


def _count_levels(fields: Any) -> Any:
    """The ``fields`` entries with their list of level numbers (checked) replaced by its length."""
    if not isinstance(fields, dict):
        return fields  # build() names the problem
    out = {}
    for name, entry in fields.items():
        if isinstance(entry, dict) and "levels" in entry:
            levels = C.build(tuple[int, ...], entry["levels"], f"fields.{name}.levels")
            if not levels:
                raise C.ConfigError("fields: every field needs at least one level")
            entry = {**entry, "levels": len(levels)}  # the numbers document the file; the model needs the count
        out[name] = entry
    return out
