"""Training engines behind one interface: DeepSpeed ZeRO, and plain torch (DDP) for debugging and as
the benchmark baseline. This is the only module that imports deepspeed.

An engine wraps a plain ``nn.Module``: ``engine(*inputs)`` runs the forward, ``engine.step(loss)``
does backward and update (or skips a non-finite step on every rank alike), ``save``/``load`` write
and read a checkpoint directory, ``consolidated_state_dict()`` gathers full fp32 weights on rank 0.
:func:`deepspeed_config` turns our config into DeepSpeed's: a pure function, no hand-edited JSON.

Checkpoints are torch pickles (DeepSpeed's format), and resuming one runs no code either: before
anything is loaded every ``*.pt`` file of the checkpoint is scanned for the globals its pickle would
call (:func:`torch.serialization.get_unsafe_globals_in_checkpoint` reads the opcodes, it does not
unpickle), and one that names anything beyond tensors, plain containers and the three DeepSpeed
classes of :func:`checkpoint_globals` is refused naming the file; then DeepSpeed loads with
``weights_only`` forced on (``TORCH_FORCE_WEIGHTS_ONLY_LOAD``: DeepSpeed 0.19 passes
``weights_only=False`` itself) and only those classes allowed, and so does the conversion to the
universal format.
"""

from __future__ import annotations

import contextlib
import logging
import os
import pickle
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Protocol

import torch
import torch.distributed as dist

from atmorep.config import TrainConfig
from atmorep.formats.atomic import Replacement
from atmorep.model.file import unpickling_refused
from atmorep.train.distributed import device

log = logging.getLogger(__name__)


def deepspeed_config(cfg: TrainConfig, world: int, gpu: bool) -> dict:
    """DeepSpeed's config for ``cfg`` on ``world`` ranks (bf16 on GPUs, fp32 on CPUs).

    micro-batch x gradient accumulation x world size = global batch.
    """
    zero: dict = {"stage": cfg.zero_stage}
    if not gpu and cfg.zero_stage in (1, 2):
        # gloo has no native reduce-scatter: DeepSpeed emulates it with one reduce per rank and copies
        # gradients into a contiguous buffer. One bucketed all-reduce, as DDP does, is faster on CPU
        # (profiled with benchmarks/train_throughput.py; the figures are in the README, Engines).
        zero.update(reduce_scatter=False, contiguous_gradients=False)
    if cfg.offload_optimizer:
        zero["offload_optimizer"] = {"device": "cpu", "pin_memory": gpu}
    if cfg.offload_params:
        if cfg.zero_stage != 3:
            raise ValueError("train.offload_params needs train.zero_stage 3")
        zero["offload_param"] = {"device": "cpu", "pin_memory": gpu}
    out = {
        "train_micro_batch_size_per_gpu": cfg.batch_size,
        "gradient_accumulation_steps": cfg.gradient_accumulation,
        "train_batch_size": cfg.batch_size * cfg.gradient_accumulation * world,
        "zero_optimization": zero,
        # A torch AdamW: DeepSpeed's own Adam is a C++ extension JIT-compiled at first use (a minute or more on CPU).
        "zero_allow_untested_optimizer": True,
        "bf16": {"enabled": gpu},
        "steps_per_print": 2**31 - 1,  # never: our metrics log reports every step
        "wall_clock_breakdown": False,
    }
    if cfg.gradient_clipping > 0:
        out["gradient_clipping"] = cfg.gradient_clipping
    return out


def schedule(cfg: TrainConfig):
    """AtmoRep's learning-rate schedule as a factor of ``cfg.lr`` per optimizer step.

    Linear warm-up from ``lr_start`` to ``lr`` over ``warmup_epochs``, then ``lr`` divided by
    ``lr_decay`` once per epoch, never below ``lr_min``. An epoch is ``epoch_steps`` optimizer steps.
    """
    warm = cfg.warmup_epochs * cfg.epoch_steps

    # A factor, not a rate: LambdaLR multiplies the optimizer's lr (cfg.lr) by it.
    def factor(step: int) -> float:
        if step < warm:
            return (cfg.lr_start + (cfg.lr - cfg.lr_start) * step / warm) / cfg.lr
        # +1: the epoch right after warm-up already runs at lr / lr_decay
        epochs_after = step // cfg.epoch_steps - cfg.warmup_epochs + 1
        return max(cfg.lr / cfg.lr_decay**epochs_after, cfg.lr_min) / cfg.lr

    return factor


def _optimizer(model: torch.nn.Module, cfg: TrainConfig):
    # Only what trains: a frozen backbone's weights get no optimizer state (and, under ZeRO, no flat
    # fp32 copy), so they stay as loaded, bit for bit.
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    return optimizer, torch.optim.lr_scheduler.LambdaLR(optimizer, schedule(cfg))


def finite_everywhere(loss: torch.Tensor) -> bool:
    """True when the loss is finite on every rank (all ranks then take the same branch)."""
    # On the loss's device: NCCL reduces only CUDA tensors.
    bad = torch.tensor([0.0 if torch.isfinite(loss).all() else 1.0], device=loss.device)
    if dist.is_initialized():
        dist.all_reduce(bad, op=dist.ReduceOp.MAX)
    return bool(bad.item() == 0)


class CheckpointError(ValueError):
    """A checkpoint file that needs more than tensors and plain data to load; the message names it."""


def checkpoint_globals() -> list:
    """The classes DeepSpeed pickles into its ZeRO checkpoints besides tensors and plain containers
    (found with ``get_unsafe_globals_in_checkpoint`` on ZeRO-1/2/3 checkpoints and their universal
    conversion, DeepSpeed 0.19): a loss scaler, an enum and a dataclass of two ints. Allowing them lets
    a checkpoint build such objects, never call anything else."""
    os.environ.setdefault("DS_ACCELERATOR", "cuda" if torch.cuda.is_available() else "cpu")
    from deepspeed.runtime.fp16.loss_scaler import LossScaler
    from deepspeed.runtime.zero.config import ZeroStageEnum
    from deepspeed.utils.tensor_fragment import fragment_address

    return [LossScaler, ZeroStageEnum, fragment_address]


def refuse_pickled_code(directory: Path, allowed: list) -> None:
    """Refuse, naming the file, a ``*.pt`` under ``directory`` whose pickle would call anything but
    ``allowed`` and what ``weights_only`` allows itself; reads opcodes only, runs nothing."""
    names = {f"{c.__module__}.{c.__qualname__}" for c in allowed}
    for f in sorted(Path(directory).rglob("*.pt")):
        try:
            unsafe = set(torch.serialization.get_unsafe_globals_in_checkpoint(f)) - names
        except Exception as exc:  # not a torch zip file: a legacy pickle, or something else
            raise CheckpointError(
                f"{f}: not a torch checkpoint file atmorep can read without unpickling it ({type(exc).__name__}: "
                f"{str(exc).splitlines()[0] if str(exc) else ''}); refused. Train afresh with `atmorep train "
                f"--fresh` (or remove {directory})"
            ) from None
        if unsafe:
            raise CheckpointError(
                f"{f}: refused: loading it would call {', '.join(sorted(unsafe))} (pickled code, not a checkpoint "
                f"atmorep wrote). Train afresh with `atmorep train --fresh` (or remove {directory})"
            )


@contextlib.contextmanager
def weights_only(allowed: list) -> Iterator[None]:
    """Every ``torch.load`` inside, whatever it asks for, with ``weights_only=True`` and only ``allowed``
    classes beyond torch's own safe types."""
    before = os.environ.get("TORCH_FORCE_WEIGHTS_ONLY_LOAD")
    os.environ["TORCH_FORCE_WEIGHTS_ONLY_LOAD"] = "1"
    try:
        with torch.serialization.safe_globals(allowed):
            yield
    except pickle.UnpicklingError as exc:  # past the scan: a file changed meanwhile, or a torch we do not know
        raise CheckpointError(f"a checkpoint file was refused: {unpickling_refused(exc)}") from None
    finally:
        if before is None:
            os.environ.pop("TORCH_FORCE_WEIGHTS_ONLY_LOAD", None)
        else:
            os.environ["TORCH_FORCE_WEIGHTS_ONLY_LOAD"] = before


def _to_universal(input_folder: str, output_folder: str) -> None:
    """DeepSpeed's ds_to_universal, with pickles loaded as :meth:`DeepSpeedEngine.load` loads them (run in
    a subprocess of its own: its worker processes are forked from it and inherit the allowlist)."""
    allowed = checkpoint_globals()
    refuse_pickled_code(Path(input_folder), allowed)
    from deepspeed.checkpoint import ds_to_universal

    os.environ["TORCH_FORCE_WEIGHTS_ONLY_LOAD"] = "1"
    torch.serialization.add_safe_globals(allowed)
    sys.argv = ["ds_to_universal", "--input_folder", input_folder, "--output_folder", output_folder]
    ds_to_universal.main(ds_to_universal.parse_arguments())


class Engine(Protocol):
    """What the Trainer asks of an engine (:data:`ENGINES`): the model behind it, a forward, a step that
    says whether it was taken, the learning rate, checkpoints and the consolidated weights."""

    def __init__(self, model: torch.nn.Module, cfg: TrainConfig, world: int, universal: bool = False) -> None: ...

    @property
    def module(self) -> torch.nn.Module: ...

    def __call__(self, *args: Any, **kwargs: Any) -> Any: ...

    def step(self, loss: torch.Tensor) -> bool: ...

    @property
    def lr(self) -> float: ...

    def save(self, directory: Path, tag: str, client_state: dict) -> None: ...

    def load(self, directory: Path, tag: str) -> dict: ...

    def consolidated_state_dict(self) -> dict | None: ...

    @staticmethod
    def universal_tag(tag: str) -> str: ...

    @staticmethod
    def convert_to_universal(directory: Path, tag: str) -> str: ...


class DeepSpeedEngine:
    """ZeRO data parallelism (stages 1-3, optional offload)."""

    def __init__(self, model: torch.nn.Module, cfg: TrainConfig, world: int, universal: bool = False):
        gpu = torch.cuda.is_available()
        # DeepSpeed picks its accelerator when imported: set it first (a user's setting wins).
        os.environ.setdefault("DS_ACCELERATOR", "cuda" if gpu else "cpu")
        import deepspeed

        optimizer, scheduler = _optimizer(model, cfg)
        ds_cfg = deepspeed_config(cfg, world, gpu)
        if universal:  # the checkpoint to resume was saved on another world size and converted
            ds_cfg["checkpoint"] = {"load_universal": True}
        self.cfg = cfg
        self.engine, self.optimizer, _, self.scheduler = deepspeed.initialize(
            model=model, optimizer=optimizer, lr_scheduler=scheduler, config=ds_cfg
        )

    @property
    def module(self) -> torch.nn.Module:
        return self.engine.module

    def __call__(self, *args, **kwargs):
        return self.engine(*args, **kwargs)

    def step(self, loss: torch.Tensor) -> bool:
        # Agreed before backward: a rank that skipped alone would leave the others waiting in the
        # gradient all-reduce.
        if not finite_everywhere(loss):
            return False
        self.engine.backward(loss)
        self.engine.step()
        return True

    @property
    def lr(self) -> float:
        return self.optimizer.param_groups[0]["lr"]

    def save(self, directory: Path, tag: str, client_state: dict) -> None:
        # universal_checkpoint_info lets ds_to_universal convert the checkpoint for another world size
        self.engine.save_checkpoint(
            str(directory), tag=tag, client_state={**client_state, "universal_checkpoint_info": {}}
        )

    def load(self, directory: Path, tag: str) -> dict:
        allowed = checkpoint_globals()
        refuse_pickled_code(directory / tag, allowed)
        with weights_only(allowed):
            _, client = self.engine.load_checkpoint(
                str(directory), tag=tag, load_optimizer_states=True, load_lr_scheduler_states=True
            )
        if client is None:  # DeepSpeed warns and returns None for a missing tag instead of raising
            raise FileNotFoundError(f"{directory}/{tag}: no DeepSpeed checkpoint")
        return client

    def consolidated_state_dict(self) -> dict | None:
        """The module's full weights as fp32 tensors on rank 0 (None elsewhere), gathering ZeRO-3
        partitions. Under bf16 (GPUs) these are the module's bf16 values: the optimizer's fp32 master
        copy is not what is gathered."""
        if self.cfg.zero_stage == 3:
            import deepspeed

            # modifier_rank=None: read only. clone(): the gathered storage is freed again on exit.
            with deepspeed.zero.GatheredParameters(list(self.module.parameters()), modifier_rank=None):
                state = {k: v.detach().float().cpu().clone() for k, v in self.module.state_dict().items()}
        else:
            state = {k: v.detach().float().cpu() for k, v in self.module.state_dict().items()}
        return state if dist.get_rank() == 0 else None

    @staticmethod
    def universal_tag(tag: str) -> str:
        return f"{tag}_universal"

    @staticmethod
    def convert_to_universal(directory: Path, tag: str) -> str:
        """Rewrite checkpoint ``tag`` in DeepSpeed's universal format (any world size); returns its tag."""
        out = DeepSpeedEngine.universal_tag(tag)
        if not (directory / out).exists():
            with Replacement(directory / out) as tmp:
                code = "import sys; from atmorep.train.engine import _to_universal; _to_universal(*sys.argv[1:])"
                r = subprocess.run(
                    [sys.executable, "-c", code, str(directory / tag), str(tmp)],
                    stdout=subprocess.DEVNULL,
                    stderr=subprocess.PIPE,
                    text=True,
                )
                if r.returncode != 0:
                    lines = r.stderr.strip().splitlines() or ["(no output)"]
                    raise CheckpointError(f"{directory / tag}: conversion to the universal format failed: {lines[-1]}")
        return out


class TorchEngine:
    """Plain torch DistributedDataParallel with the same interface (baseline and debugging)."""

    def __init__(self, model: torch.nn.Module, cfg: TrainConfig, world: int, universal: bool = False):
        self.cfg = cfg
        self.model = model.to(device())  # DeepSpeed moves its module itself; DDP does not
        gpu = [device()] if device().type == "cuda" else None
        # One rank has no gradients to all-reduce: DDP would only add its buckets and hooks.
        self.ddp = torch.nn.parallel.DistributedDataParallel(model, device_ids=gpu) if world > 1 else model
        self.optimizer, self.scheduler = _optimizer(model, cfg)
        self.micro = 0  # micro-steps accumulated towards the next optimizer step

    @property
    def module(self) -> torch.nn.Module:
        return self.model

    def __call__(self, *args, **kwargs):
        return self.ddp(*args, **kwargs)

    def step(self, loss: torch.Tensor) -> bool:
        if not finite_everywhere(loss):
            return False
        (loss / self.cfg.gradient_accumulation).backward()  # as DeepSpeed scales accumulated micro-steps
        # A skipped micro-step (above) does not count towards the accumulation, as in DeepSpeed.
        self.micro += 1
        if self.micro < self.cfg.gradient_accumulation:
            return True
        self.micro = 0
        if self.cfg.gradient_clipping > 0:
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.cfg.gradient_clipping)
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.scheduler.step()
        return True

    @property
    def lr(self) -> float:
        return self.optimizer.param_groups[0]["lr"]

    def save(self, directory: Path, tag: str, client_state: dict) -> None:
        if dist.get_rank() == 0:
            (directory / tag).mkdir(parents=True, exist_ok=True)
            torch.save(
                {
                    "model": self.model.state_dict(),
                    "optimizer": self.optimizer.state_dict(),
                    "scheduler": self.scheduler.state_dict(),
                    "client": client_state,
                },
                directory / tag / "torch_state.pt",
            )
            # After the state, as DeepSpeed writes its `latest`: it never names a half-written tag.
            (directory / "latest").write_text(tag)
        dist.barrier()

    def load(self, directory: Path, tag: str) -> dict:
        refuse_pickled_code(directory / tag, [])
        try:
            state = torch.load(directory / tag / "torch_state.pt", map_location="cpu", weights_only=True)
        except pickle.UnpicklingError as exc:
            raise CheckpointError(f"{directory / tag / 'torch_state.pt'}: refused: {unpickling_refused(exc)}") from None
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        return state["client"]

    def consolidated_state_dict(self) -> dict | None:
        if dist.get_rank() != 0:
            return None
        return {k: v.detach().float().cpu() for k, v in self.model.state_dict().items()}

    @staticmethod
    def universal_tag(tag: str) -> str:
        return tag  # full replicas: any world size reads them as they are

    @staticmethod
    def convert_to_universal(directory: Path, tag: str) -> str:
        return tag


ENGINES: dict[str, type[Engine]] = {"deepspeed": DeepSpeedEngine, "torch": TorchEngine}


def optimizer_state_elements(engine) -> int:
    """Adam state elements (exp_avg + exp_avg_sq) held by this rank: falls as 1/N under ZeRO."""
    opt = engine.optimizer
    inner = getattr(opt, "optimizer", opt)  # DeepSpeed's ZeRO optimizers wrap the torch one
    total = 0
    for state in inner.state.values():
        for key in ("exp_avg", "exp_avg_sq"):
            if key in state:
                total += state[key].numel()
    return total
