"""``atmorep train --dry-run``: what a model costs before anything is built for real.

For a model file (``config/models/*.yaml``) or a whole run configuration: the fields' geometry, the
parameter count on the ``meta`` device, tokens per sample, FLOPs (:mod:`atmorep.model.summary`), a
memory estimate from the fit planner's memory model (:mod:`atmorep.train.memory`), and the fit
planner's recommendation for the given GPUs.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

from atmorep.architectures import ModelFile, read
from atmorep.config import TrainConfig
from atmorep.model.multiformer import field_dims
from atmorep.model.summary import forward_flops, parameter_count, tokens, training_flops
from atmorep.train.memory import activation_bytes, fit_line

OPTIMIZER_BYTES_PER_PARAM = 16  # fp32 weights + fp32 gradients + AdamW's two fp32 moments


def dry_run(path: str | Path, device_memory: str = "80GiB", ranks: int | None = None) -> str:
    """What ``atmorep train --dry-run --config PATH`` prints: :func:`report`, then the fit planner's line
    for GPUs of ``device_memory`` on ``ranks`` ranks (a run configuration's batch and ranks, or a
    model file's at the defaults: train.batch_size 8, one rank)."""
    spec, cfg = read(path)
    train = cfg.train if cfg is not None else TrainConfig(ranks=1)
    return f"{report(spec, path)}\n{fit_line(spec.model, spec.geometry(), train, device_memory, ranks or train.ranks)}"


def report(spec: ModelFile, path: str | Path = "") -> str:
    """Geometry, parameters, tokens, FLOPs and memory of a model file (``path`` names an undescribed one)."""
    cfg, geometry = spec.model, spec.geometry()
    count = parameter_count(cfg, geometry)
    n = tokens(cfg, geometry)
    dims = field_dims(cfg, list(geometry))
    # The report is about the model, not a run: AtmoRep's BERT rate, bf16 as on GPUs.
    plain, ckpt, _ = activation_bytes(cfg, geometry, gpu=True, masked_fraction=0.5)
    lines = [f"model: {spec.description or path}" + (" [compat layout]" if cfg.compat else "")]
    for f, g in geometry.items():
        T, Y, X = g.num_tokens or cfg.num_tokens  # coarser tokens: fewer of them, over the same extent
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
