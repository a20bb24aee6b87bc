"""Peak device memory of a training rank, and the fit planner built on it.

:func:`estimate` predicts a rank's peak of live tensor bytes (what ``torch.cuda.max_memory_allocated``
reports) for a model, a ZeRO stage, a micro-batch, activation checkpointing and offload:

- **model states** (P parameters, N ranks, w bytes per compute value: 2 in bf16 on GPUs, 4 in fp32
  on CPUs): the compute-dtype weights (ZeRO-3: a 1/N partition, but parameters of at most
  ``stage3_param_persistence_threshold`` elements stay whole), DeepSpeed's fp32 master partition
  4P/N (a separate copy even in fp32), AdamW's two fp32 moments 8P/N, and the gradients: whole
  (w P) at stages 1 and 2 on CPU (where we turn reduce-scatter off), a partition plus the reduce
  bucket at stage 2 on GPUs and at stage 3 (DeepSpeed's ``reduce_bucket_size``, 5e8 elements);
  offload moves master and moments (``offload_optimizer``) and the weight partitions
  (``offload_params``) to host memory;
- **activations** kept for backward, per token and layer from the blocks' saved tensors: the
  encoder keeps 15 D values per token (input, LayerNorm output, q/k/v, normalised q and k,
  attention output and its reshaped copy, residual, MLP LayerNorm output, 2D before and after
  GELU), plus per coupled field 4c query-side and D_g + 3c source-side values (c the coupling heads'
  width); the decoder 16 D; dropout adds 3 D masks (4-byte scaling tensors on CPU, 1-byte masks
  on GPU). With checkpointing only each block's input stays, plus one block's activations during
  its recompute;
- **the ensemble tail and loss**: per masked token the gathered decoder output and its LayerNorm
  (2 D) and three fp32 ensembles of E x P (the members, the members minus the target, minus their
  mean); the input batch and its masked copy (2 P per token, fp32).

The peak is the larger of the backward peak (model states, all activations, whole gradients) and
the optimizer step (model states, gradients and the fp32 gradient partition with AdamW's foreach
temporaries). ``benchmarks/memory_model.py`` checks it against real 2-rank DeepSpeed steps.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any

from atmorep.config import ModelConfig, TrainConfig
from atmorep.model import summary
from atmorep.model.multiformer import FieldGeometry

#: DeepSpeed ZeRO defaults we do not override (deepspeed/runtime/zero/config.py)
REDUCE_BUCKET = 500_000_000
PERSISTENCE_THRESHOLD = 100_000
PREFETCH_BUCKET = 50_000_000
#: share of device memory a plan may fill: the allocator's fragmentation, CUDA context, NCCL buffers
HEADROOM = 0.85


@dataclass(frozen=True)
class Setup:
    """What the planner chooses."""

    zero_stage: int = 2
    micro_batch: int = 1
    checkpointing: bool = False
    offload_optimizer: bool = False
    offload_params: bool = False

    def text(self) -> str:
        extra = [
            n
            for n, on in (
                ("activation checkpointing", self.checkpointing),
                ("optimizer offload", self.offload_optimizer),
                ("parameter offload", self.offload_params),
            )
            if on
        ]
        return f"ZeRO-{self.zero_stage}, micro-batch {self.micro_batch}" + "".join(f", {e}" for e in extra)


@dataclass(frozen=True)
class Estimate:
    """Bytes per rank: the parts and the predicted peak."""

    weights: float
    gradients: float
    optimizer: float
    buffers: float
    activations: float
    peak: float

    def text(self) -> str:
        parts = ", ".join(f"{k} {_gib(v)}" for k, v in dataclasses.asdict(self).items() if k != "peak")
        return f"peak {_gib(self.peak)} per rank ({parts})"


def _gib(x: float) -> str:
    return f"{x / 2**30:.2f} GiB" if x >= 2**30 else f"{x / 2**20:.1f} MiB"


def masked_fraction(masking) -> float:
    """Share of the tokens the ensemble tail runs on: the BERT rate, else all (an upper bound)."""
    return masking.rate if masking.strategy == "bert" else 1.0


def parameter_sizes(cfg: ModelConfig, fields: dict[str, FieldGeometry]) -> list[int]:
    """Elements of every trainable parameter (on the meta device: no memory)."""
    from atmorep.model.summary import meta_model

    return [p.numel() for p in meta_model(cfg, fields).parameters() if p.requires_grad]


def activation_bytes(
    cfg: ModelConfig, fields: dict[str, FieldGeometry], gpu: bool, masked_fraction: float
) -> tuple[float, float, float]:
    """Bytes kept for backward per sample: ``(without checkpointing, with it, the largest block's)``."""
    w, mask = (2, 1) if gpu else (4, 4)  # bytes per activation value and per dropout mask value
    drop = 3 * mask if cfg.dropout > 0 else 0
    blocks, inputs, largest, tail = 0.0, 0.0, 0.0, 0.0
    # The FLOP count's table: an inputs-only field has no decoder and no tail here either.
    for b in summary.blocks(cfg, fields).values():
        N, D, c = b.tokens, b.dim, b.coupling_width
        enc = N * (15 * D * w + D * drop)
        enc += sum(4 * N * c * w + M * (Dg + 3 * c) * w for M, Dg in b.coupled)
        dec = N * (16 * D * w + D * drop) if b.decoder_layers else 0.0
        blocks += b.encoder_layers * enc + b.decoder_layers * dec
        inputs += (b.encoder_layers + b.decoder_layers) * N * D * w  # what checkpointing keeps
        largest = max(largest, enc, dec)  # one block recomputed at a time
        K = N * masked_fraction
        tail += b.tail * K * (2 * D * w + 3 * cfg.ensemble * b.values * 4)  # the tail's and the loss's tensors
        tail += 2 * N * b.values * 4  # the input batch and its masked copy, fp32, of every field
    return blocks + tail, inputs + tail, largest


def estimate(
    cfg: ModelConfig,
    fields: dict[str, FieldGeometry],
    setup: Setup,
    world: int,
    gpu: bool = True,
    masked_fraction: float = 0.5,
    sizes: list[int] | None = None,
    reduce_bucket: int = REDUCE_BUCKET,
) -> Estimate:
    """A rank's peak memory for ``setup`` on ``world`` ranks (GPUs in bf16, or CPUs in fp32)."""
    sizes = sizes if sizes is not None else parameter_sizes(cfg, fields)
    P, N, w, stage = sum(sizes), world, (2 if gpu else 4), setup.zero_stage
    if setup.offload_params and stage != 3:
        raise ValueError("train.offload_params needs train.zero_stage 3")
    part = P / N if stage >= 1 else P
    master_and_moments = 0.0 if setup.offload_optimizer else 12 * part  # fp32 master 4 + Adam moments 8
    buffers = 0.0
    if stage == 3:
        persistent = sum(s for s in sizes if s <= PERSISTENCE_THRESHOLD)
        gathered = min(P - persistent, PREFETCH_BUCKET + max(sizes))  # non-persistent, live while in use
        weights = w * (persistent + gathered + (0 if setup.offload_params else P / N))
        # persistent parameters keep whole gradients; the partition's are held in fp32 for the step
        gradients = w * persistent + (0 if setup.offload_optimizer else 4 * P / N)
        buffers = w * reduce_bucket
    else:
        weights = w * P
        if stage == 2 and gpu:  # reduce-scatter into partitions through the contiguous bucket
            gradients, buffers = w * P / N, w * min(reduce_bucket, P)
        else:
            gradients = w * P
    plain, ckpt, largest = activation_bytes(cfg, fields, gpu, masked_fraction)
    acts = setup.micro_batch * (ckpt + largest if setup.checkpointing else plain)  # the `if` binds last
    states = weights + master_and_moments + buffers
    step = 0.0 if setup.offload_optimizer else 3 * 4 * part  # fp32 gradient partition, AdamW temporaries
    peak = states + gradients + max(acts, step)  # activations are freed before the optimizer step
    return Estimate(weights, gradients, master_and_moments, buffers, acts, peak)


#: the options in the order the planner tries them: cheapest in communication and speed first
OPTIONS: tuple[dict[str, Any], ...] = (
    dict(zero_stage=1),
    dict(zero_stage=2),
    dict(zero_stage=2, checkpointing=True),
    dict(zero_stage=3),
    dict(zero_stage=3, checkpointing=True),
    dict(zero_stage=3, checkpointing=True, offload_optimizer=True),
    dict(zero_stage=3, checkpointing=True, offload_optimizer=True, offload_params=True),
)


@dataclass(frozen=True)
class Fit:
    setup: Setup | None
    estimate: Estimate | None
    gradient_accumulation: int
    reason: str

    def text(self) -> str:
        if self.setup is None or self.estimate is None:  # nothing fits: both are None
            return self.reason
        return (
            f"{self.setup.text()}, gradient accumulation {self.gradient_accumulation}: "
            f"{self.estimate.text()}; {self.reason}"
        )


def recommend(
    cfg: ModelConfig,
    fields: dict[str, FieldGeometry],
    device_bytes: float,
    *,
    world: int,
    batch_size: int,
    gpu: bool = True,
    masked_fraction: float = 0.5,
) -> Fit:
    """The first of :data:`OPTIONS` that fits ``batch_size`` samples per rank in ``HEADROOM`` of
    ``device_bytes``; else the option with the largest micro-batch that fits, with gradient
    accumulation keeping the global batch; else why nothing fits."""
    sizes = parameter_sizes(cfg, fields)
    budget = HEADROOM * device_bytes
    best: tuple[int, Setup, Estimate] | None = None
    for option in OPTIONS:
        fits = [
            b
            for b in _halvings(batch_size)
            if budget >= estimate(cfg, fields, Setup(micro_batch=b, **option), world, gpu, masked_fraction, sizes).peak
        ]
        if not fits:
            continue
        setup = Setup(micro_batch=fits[0], **option)  # halvings descend: the largest that fits
        if fits[0] == batch_size:
            return Fit(
                setup,
                estimate(cfg, fields, setup, world, gpu, masked_fraction, sizes),
                1,
                f"fits {_gib(budget)} ({HEADROOM:.0%} of {_gib(device_bytes)})",
            )
        if best is None or fits[0] > best[0]:  # ties: the earlier option, cheaper to run
            best = (fits[0], setup, estimate(cfg, fields, setup, world, gpu, masked_fraction, sizes))
    if best is None:
        last = estimate(cfg, fields, Setup(micro_batch=1, **OPTIONS[-1]), world, gpu, masked_fraction, sizes)
        return Fit(
            None,
            None,
            0,
            f"does not fit: even ZeRO-3 with checkpointing and full offload at "
            f"micro-batch 1 needs {last.text()} > {_gib(budget)}; use more ranks, a device with more "
            f"memory, or a smaller model",
        )
    micro, setup, est = best
    return Fit(
        setup,
        est,
        math.ceil(batch_size / micro),
        f"micro-batch {batch_size} does not fit {_gib(budget)} ({HEADROOM:.0%} of {_gib(device_bytes)})",
    )


def fit_line(
    model: ModelConfig, fields: dict[str, FieldGeometry], train: TrainConfig, device_memory: str, ranks: int
) -> str:
    """The planner's line of ``atmorep plan`` and ``atmorep train --dry-run``: :func:`recommend` for
    ``ranks`` GPUs of ``device_memory`` (e.g. "80GiB") at ``train.batch_size`` per rank."""
    fit = recommend(
        model,
        fields,
        parse_bytes(device_memory),
        world=ranks,
        batch_size=train.batch_size,
        masked_fraction=masked_fraction(train.masking),
    )
    return f"fit on {ranks} GPU(s) of {device_memory}: {fit.text()}"


def _halvings(b: int) -> list[int]:
    out = [b]
    while out[-1] > 1:
        out.append(out[-1] // 2)
    return out


def parse_bytes(text: str) -> float:
    """``80GiB``, ``80GB``, ``512MiB`` or a number of bytes."""
    units = {
        "kib": 2**10,
        "mib": 2**20,
        "gib": 2**30,
        "tib": 2**40,
        "kb": 1e3,
        "mb": 1e6,
        "gb": 1e9,
        "tb": 1e12,
        "b": 1,
    }
    t = text.strip().lower()
    try:
        # In the dict's order: "b" last, or "80gib" would end in "b" and read as "80gi" bytes.
        for unit, scale in units.items():
            if t.endswith(unit):
                return float(t[: -len(unit)]) * scale
        return float(t)
    except ValueError:
        raise ValueError(f"--device-memory: cannot read '{text}' as a size (e.g. 80GiB, 141GB, 512MiB)") from None
