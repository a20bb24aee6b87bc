"""Throughput and model FLOPs utilisation (MFU) of training steps.

Model FLOPs are counted analytically (:func:`atmorep.model.summary.training_flops`: forward +
backward matmuls, attention included, activation-checkpoint recompute not counted), on the masked
tokens each step actually sent through the ensemble tail. MFU is the achieved FLOP/s over the
dense peak of all ranks: for GPUs in bf16 the datasheet figure of :data:`PEAK_BF16`; otherwise
(CPUs, other dtypes, unknown GPUs) a peak measured at start by a short ``F.linear`` in the training dtype.
"""

from __future__ import annotations

import logging
import time

import torch
import torch.distributed as dist
import torch.nn.functional as F

from atmorep.model import summary

log = logging.getLogger(__name__)

#: dense (no sparsity) bf16 tensor peak of one device, FLOP/s, by a substring of the device name as torch
#: reports it, most specific first. Sources: NVIDIA A100 datasheet (312 TFLOPS BF16 Tensor Core, SXM
#: and PCIe); NVIDIA H100 datasheet (SXM 1,979 / PCIe 1,513 TFLOPS "with sparsity", dense half that);
#: NVIDIA H200 datasheet (1,979 with sparsity); NVIDIA GH200 Grace Hopper datasheet (1,979 with
#: sparsity); AMD Instinct MI250X datasheet (383 TFLOPS BF16 for its two GCDs; torch sees each GCD as
#: one device); AMD Instinct MI300X datasheet (1,307.4 TFLOPS BF16 dense); NVIDIA L40S datasheet (362).
PEAK_BF16: tuple[tuple[str, float], ...] = (
    ("GH200", 989.4e12),
    ("H200", 989.4e12),
    ("H100 PCIe", 756.5e12),
    ("H100", 989.4e12),
    ("A100", 312e12),
    ("MI300X", 1307.4e12),
    ("MI250X", 191.5e12),
    ("L40S", 362e12),
)


def table_peak(name: str) -> float | None:
    """The bf16 datasheet peak of a device called ``name`` (None when not in the table)."""
    return next((value for key, value in PEAK_BF16 if key in name), None)


def measured_peak(device: torch.device, dtype: torch.dtype, n: int = 1024, seconds: float = 0.25) -> float:
    """Best FLOP/s of repeated ``n x n`` products through ``F.linear`` within about ``seconds``.

    ``F.linear`` (addmm, oneDNN on CPUs) is the kernel the model's Linear layers run. A plain ``a @ b``
    is not: on CPUs without native bf16 (AVX2 only) torch's bf16 ``mm`` is a fallback about 20x
    slower than bf16 ``linear`` on the same machine, and the model's steps measured an MFU above 1
    against it."""
    a, b = (torch.randn(n, n, device=device, dtype=dtype) for _ in range(2))
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)  # CUDA kernels return at launch
    F.linear(a, b)  # warm-up: kernel selection and first-touch allocation are not the peak
    sync()
    best, end = float("inf"), time.perf_counter() + seconds
    while time.perf_counter() < end or best == float("inf"):
        t0 = time.perf_counter()
        F.linear(a, b)
        sync()
        best = min(best, time.perf_counter() - t0)  # the best run: the device's peak, not its noise
    return 2 * n**3 / best  # n^3 multiply-adds


def device_peak(device: torch.device, dtype: torch.dtype) -> tuple[float, str]:
    """(peak FLOP/s of one rank, where it comes from)."""
    if device.type == "cuda" and dtype == torch.bfloat16:
        name = torch.cuda.get_device_name(device)
        peak = table_peak(name)
        if peak is not None:
            return peak, f"{name} bf16 datasheet"
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU"
    dtype_name = str(dtype).removeprefix("torch.")
    return measured_peak(device, dtype), f"{name} {dtype_name} matmul measured at start"


class Throughput:
    """Per optimizer step: samples/s, tokens/s, model FLOP/s and MFU of all ranks together.

    ``add(batch_size, masks)`` after every micro-step (this rank's samples and tail tokens),
    ``step(seconds)`` once per optimizer step (sums over ranks, one all-reduce), ``summary()`` for
    the final log line (every step but the first, which pays for warm-up, when there are more).
    ``peak`` (FLOP/s of one rank) replaces the table and the measurement.
    """

    def __init__(
        self, model_cfg, fields: dict, world: int, device: torch.device, dtype: torch.dtype, peak: float | None = None
    ):
        # A geometry without its own token grid has the model's (as the loader gives it).
        fields = {
            f: g if g.num_tokens else type(g)(g.levels, g.token_size, model_cfg.num_tokens) for f, g in fields.items()
        }
        terms = summary.flop_terms(model_cfg, fields)
        # Forward + backward as summary.training_flops; the tail counted per masked token in add()
        self._start(
            sum(summary.tokens(model_cfg, fields).values()),
            sum(2 * e + 3 * b for e, b, _ in terms.values()),
            {f: 3 * t for f, (_, _, t) in terms.items()},
            world,
            device,
            dtype,
            peak,
        )

    @classmethod
    def counted(
        cls, tokens: int, sample_flops: float, world: int, device: torch.device, dtype, peak: float | None = None
    ) -> Throughput:
        """A meter for another model: ``tokens`` and training ``sample_flops`` per sample, counted by the caller."""
        meter = cls.__new__(cls)
        meter._start(tokens, sample_flops, {}, world, device, dtype, peak)
        return meter

    def _start(self, tokens: int, sample_flops: float, tail_flops: dict, world, device, dtype, peak) -> None:
        self.n_tokens, self.sample_flops, self.tail_flops = tokens, sample_flops, tail_flops
        self.world, self.device = world, device
        if dist.is_initialized():
            dist.barrier()  # ranks sharing cores measure together, as they will train
        peak, self.peak_source = (peak, "given") if peak else device_peak(device, dtype)
        if dist.is_initialized():  # one figure for the run: the mean over ranks
            t = torch.tensor([peak], dtype=torch.float64, device=device)  # NCCL reduces CUDA tensors only
            dist.all_reduce(t)
            peak = float(t) / world
        self.peak = peak * world
        # float64: FLOP counts of a step pass 2^24, where float32 stops counting exactly
        self._local = torch.zeros(3, dtype=torch.float64)  # samples, tokens, FLOPs of this rank's step
        self._total = [0.0, 0.0, 0.0, 0.0]  # seconds, samples, tokens, FLOPs after the first step
        self._steps = 0

    def add(self, batch_size: int, masks: dict[str, torch.Tensor]) -> None:
        tail = sum(self.tail_flops[f] * int(m.sum()) for f, m in masks.items())
        self._local += torch.tensor(
            [batch_size, batch_size * self.n_tokens, batch_size * self.sample_flops + tail],
            dtype=torch.float64,
        )

    def step(self, seconds: float) -> dict[str, float]:
        counts = self._local.to(self.device)  # kept on the CPU between steps; NCCL reduces CUDA tensors
        if dist.is_initialized():
            dist.all_reduce(counts)
        samples, tokens, flops = counts.tolist()
        self._local = torch.zeros(3, dtype=torch.float64)
        self._steps += 1
        if self._steps == 1:  # kept apart: the summary uses it only when it is the only step
            self._first = [seconds, samples, tokens, flops]
        else:
            self._total = [a + b for a, b in zip(self._total, (seconds, samples, tokens, flops))]
        return {
            "samples_per_s": samples / seconds,
            "tokens_per_s": tokens / seconds,
            "flop_per_s": flops / seconds,
            "mfu": flops / seconds / self.peak,
        }

    def summary(self) -> str:
        if not self._steps:
            return "no steps run"
        seconds, samples, tokens, flops = self._total if self._steps > 1 else self._first
        return (
            f"{samples / seconds:.3g} samples/s, {tokens / seconds:.3g} tokens/s, "
            f"{flops / seconds / 1e9:.4g} GFLOP/s, MFU {flops / seconds / self.peak:.2%} of "
            f"{self.peak / 1e9:.4g} GFLOP/s ({self.world} x {self.peak_source})"
        )


def training_dtype(engine: str) -> torch.dtype:
    """The compute dtype of an engine: DeepSpeed trains in bf16 on GPUs, everything else in fp32."""
    return torch.bfloat16 if engine == "deepspeed" and torch.cuda.is_available() else torch.float32
