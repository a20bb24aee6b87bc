"""The training loop that ties loader, model, loss and engine together, for any :class:`Task`:
:class:`Pretraining` (masking, the multiformer, AtmoRep's loss) and the heads of
:mod:`atmorep.train.finetune` run on the same engine, checkpoints, signals, metrics and lock.

Everything a step needs is derived from the seed, the step, the rank and the world size: which
windows it reads (a global batch cut from the epoch's window order, the same on any world size for
one global batch size), the masks and the dropout draws. A checkpoint therefore needs only the
engine state and the step, and a resumed run repeats an uninterrupted one bit for bit (same world
size), or continues it on another world size.

Products in the output directory (rank 0): the task's product (pretraining: ``model.safetensors``,
consolidated fp32 weights and the model's card: :mod:`atmorep.train.card`), ``metrics.csv``
(one row per step), ``loss.png``, ``tensorboard/`` (:mod:`atmorep.train.metrics`) and ``checkpoints/``
(DeepSpeed or torch state, with the run's identity in every checkpoint: :mod:`atmorep.train.checkpoint`).
"""

from __future__ import annotations

import dataclasses
import logging
import signal
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Protocol, cast

import numpy as np
import torch
import torch.distributed as dist
from tqdm import tqdm

from atmorep.config import DataConfig, ModelConfig, TrainConfig, model_fields, period
from atmorep.data.dataset import WindowDataset
from atmorep.data.sampler import StepBatches
from atmorep.data.tokens import TOKEN_INFO
from atmorep.formats.atomic import DirectoryLock, Locked, space_for
from atmorep.model import masking
from atmorep.model.batch import Batch
from atmorep.model.file import NAME, load_weights, save_model
from atmorep.model.multiformer import FieldGeometry, Multiformer
from atmorep.train import card, checkpoint, distributed, launch
from atmorep.train.ac import apply_ac
from atmorep.train.batches import BadSteps, loader, next_batch
from atmorep.train.launch import EXIT_REQUEUE, Requeue  # 75: "run me again, I will resume"
from atmorep.train.losses import Loss
from atmorep.train.metrics import MetricsLog
from atmorep.train.throughput import Throughput, training_dtype

if TYPE_CHECKING:  # the engines' module is imported when training starts (it loads deepspeed)
    from atmorep.train.engine import DeepSpeedEngine, TorchEngine

log = logging.getLogger(__name__)


def geometry(dataset: WindowDataset) -> dict[str, FieldGeometry]:
    return {f: FieldGeometry(len(s[0].levels), s[0].token_size) for f, s in dataset.stores.items()}


class StopSignal:
    """Remembers SIGTERM/SIGUSR1 (SLURM's warning before the time limit) until the step boundary."""

    def __init__(self):
        self.received = 0
        for sig in (signal.SIGTERM, signal.SIGUSR1):
            signal.signal(sig, self._handle)
        launch.register()  # from now on `atmorep launch` may forward its signals to this rank

    def _handle(self, signum, frame):
        self.received = signum

    def agreed(self) -> bool:
        # One branch for all ranks: a signal may reach some of them only, and checkpointing is collective.
        # On the rank's device: NCCL (the GPU backend) reduces only CUDA tensors.
        flag = torch.tensor([1.0 if self.received else 0.0], device=distributed.device())
        dist.all_reduce(flag, op=dist.ReduceOp.MAX)
        return bool(flag.item())


def train(
    seed: int,
    data: DataConfig,
    model_cfg: ModelConfig,
    cfg: TrainConfig,
    stores: dict[str, list[str]],
    out_dir: str | Path,
    fresh: bool = False,
) -> Path:
    """Pretrain on the launched ranks; resume from ``out_dir/checkpoints`` unless ``fresh``.

    Only the stores of ``model.fields`` (default: every field of ``data.fields``) are read; the model
    file records the fields. ``out_dir`` is locked while the run lasts (see :func:`run`)."""
    fields = model_fields(data, model_cfg)
    missing = [f for f in fields if f not in stores]
    if missing:
        raise ValueError(f"no shard stores of the model's field(s) {', '.join(missing)} were given (--shards)")
    model_cfg = dataclasses.replace(model_cfg, fields=fields)  # the file says which fields, never "all"
    stores = {f: stores[f] for f in fields}
    return run(lambda: Pretraining(seed, data, model_cfg, cfg, stores), seed, cfg, out_dir, fresh)


def run(build: Callable[[], Task], seed: int, cfg: TrainConfig, out_dir: str | Path, fresh: bool = False) -> Path:
    """Train the task ``build()`` makes on the launched ranks (one process without a launcher);
    resume from ``out_dir/checkpoints`` unless ``fresh``; returns the product's path.

    ``out_dir`` is locked while the run lasts (rank 0 holds ``out_dir/.lock``): a second training into
    it is refused on every rank, naming the holder; the lock of a killed run is taken over."""
    rank, world = distributed.init()
    lock = DirectoryLock(out_dir, "atmorep train")
    refused = None
    if rank == 0:
        try:
            lock.acquire()
        except Locked as exc:
            refused = str(exc)
    verdict = [refused]  # rank 0's answer for all: every rank refuses, none waits in a collective
    dist.broadcast_object_list(verdict, src=0)
    if verdict[0] is not None:
        raise Locked(verdict[0])
    try:
        return _train(Trainer(rank=rank, world=world, seed=seed, cfg=cfg, build=build, out_dir=out_dir), fresh)
    finally:
        lock.release()


def _train(trainer: Trainer, fresh: bool) -> Path:
    trainer.resume(fresh)
    for step in trainer.steps():
        trainer.log(step, trainer.train_step(step))
        trainer.stop_if_signalled(step + 1)
        trainer.checkpoint_if_due(step + 1)
    return trainer.export()


class Task(Protocol):
    """What a training run trains: its windows, model, loss and product; the :class:`Trainer` supplies
    the engine, the step plan, checkpoints, signals, metrics and throughput around it."""

    @property
    def dataset(self) -> WindowDataset:
        """The windows (the step plan draws from :attr:`candidates`, every window when None)."""

    @property
    def candidates(self) -> np.ndarray | None: ...

    @property
    def model(self) -> torch.nn.Module:
        """What the engine wraps."""

    @property
    def meta(self) -> dict:
        """The run's identity (:mod:`atmorep.train.checkpoint`): a checkpoint of another one is not resumed."""

    @property
    def product(self) -> str:
        """The file :meth:`save` writes into the output directory."""

    def start(self, rank: int) -> None:
        """Set up the weights when no checkpoint is resumed (before the engine takes the model)."""

    def meter(self, world: int, device: torch.device, dtype: torch.dtype) -> Throughput:
        """The throughput meter with this task's model FLOPs."""

    def loss(self, engine, batch: Batch, gen: torch.Generator, meter: Throughput) -> tuple[torch.Tensor, dict]:
        """One micro-batch's loss (and diagnostics) through ``engine``; ``gen`` for its random draws."""

    def save(
        self, module: torch.nn.Module, state: dict, out_dir: Path, rows: list[dict], start: int, world: int
    ) -> Path:
        """Write the product from the consolidated ``state`` (rank 0); ``rows`` the metrics of every step,
        ``start`` the step this run started from, ``world`` its ranks."""


class Pretraining:
    """AtmoRep's pretraining: masked tokens of every field through the multiformer, its loss, the model file."""

    product: str = NAME
    candidates: np.ndarray | None = None

    def __init__(self, seed, data: DataConfig, model_cfg: ModelConfig, cfg: TrainConfig, stores):
        self.cfg, self.data, self.stores = cfg, data, stores
        self.dataset = WindowDataset(stores, model_cfg.num_tokens, *period(cfg, data))
        torch.manual_seed(seed)  # the same initial weights on every rank and in every rerun
        self.model = Multiformer(model_cfg, geometry(self.dataset), info_dim=len(TOKEN_INFO))
        if model_cfg.checkpointing:
            apply_ac(self.model)  # before the engine takes the model (see train.ac)
        self.meta = checkpoint.identity(seed, data, model_cfg, cfg, stores)
        sizes = {f: g.token_size for f, g in self.model.fields.items()}
        self.strategy = masking.build(cfg.masking, sizes, self.model.predicted)
        self.loss_fn = Loss(cfg.loss)

    def start(self, rank: int) -> None:
        """Fine-tuning (``train.init_from``): start from a trained model's weights."""
        if not self.cfg.init_from:
            return
        try:
            load_weights(self.model, self.cfg.init_from)
        except (OSError, ValueError) as exc:
            raise type(exc)(f"train.init_from: {exc}") from None
        if rank == 0:
            log.info("fine-tuning: weights from %s", self.cfg.init_from)

    def meter(self, world: int, device: torch.device, dtype: torch.dtype) -> Throughput:
        return Throughput(self.model.cfg, self.model.fields, world, device, dtype)

    def loss(self, engine, batch: Batch, gen: torch.Generator, meter: Throughput) -> tuple[torch.Tensor, dict]:
        masks = self.strategy(batch, gen)  # on the CPU, with its CPU generator: the same draws on any device
        meter.add(batch.size, masks)
        device = distributed.device()  # the model's (a GPU's); the CPU in the tests
        source = masking.apply(batch, masks).to(device)
        ens = engine(source.tokens, source.info, {f: m.to(device) for f, m in masks.items()})
        # Boolean indexing gives the targets in mask.nonzero() order, the order of the model's ensembles;
        # picked on the CPU, so only the masked tokens travel to the device.
        return self.loss_fn(ens, {f: batch.tokens[f][masks[f]].to(device) for f in ens})

    def save(
        self, module: torch.nn.Module, state: dict, out_dir: Path, rows: list[dict], start: int, world: int
    ) -> Path:
        path = out_dir / self.product
        assert isinstance(module, Multiformer)
        about = card.card(self.meta, self.data, self.cfg, self.stores, rows, start, world)
        with space_for(path, checkpoint.model_bytes(module)):
            save_model(path, module, state, about)
        return path


class Trainer:
    """One rank's training run of a :class:`Task`, in the order :func:`_train` calls its steps:
    :meth:`resume` (or start), then per optimizer step :meth:`train_step`, :meth:`log`,
    :meth:`stop_if_signalled` and :meth:`checkpoint_if_due`, and at the end :meth:`export`."""

    def __init__(
        self, *, rank: int, world: int, seed: int, cfg: TrainConfig, build: Callable[[], Task], out_dir: str | Path
    ):
        self.rank, self.world, self.seed, self.cfg = rank, world, seed, cfg
        self.out_dir = Path(out_dir)
        self.ckpt_dir = self.out_dir / "checkpoints"
        self.stop = StopSignal()  # after the process group: MPI's start-up may install its own handlers
        self.task = build()
        self.dataset, self.model, self.meta = self.task.dataset, self.task.model, self.task.meta
        global_batch = cfg.batch_size * cfg.gradient_accumulation * world
        self.plan = StepBatches(
            self.dataset,
            seed=seed,
            global_batch=global_batch,
            epoch_steps=cfg.epoch_steps,
            candidates=self.task.candidates,
        )
        self.bad = BadSteps(self.dataset, cfg.max_bad_steps, world)

    def resume(self, fresh: bool) -> None:
        """Build the engine, from the latest checkpoint of this run when there is one, else from
        ``train.init_from``'s weights or from scratch; the metrics log starts with the history."""
        from atmorep.train.engine import ENGINES  # the only deepspeed import happens in there

        engine_cls = ENGINES[self.cfg.engine]
        tag, universal = self._resumable(fresh, engine_cls)
        if tag is None:
            self.task.start(self.rank)
        engine = engine_cls(self.model, self.cfg, self.world, universal=universal)
        self.engine = cast("DeepSpeedEngine | TorchEngine", engine)
        self.start, rows = self._load(tag) if tag is not None else (0, [])
        board = self.out_dir / "tensorboard" if self.rank == 0 and self.cfg.tensorboard else None
        self.metrics = MetricsLog(rows, tensorboard=board)

    def _resumable(self, fresh: bool, engine_cls) -> tuple[str | None, bool]:
        """The checkpoint tag to resume (converted to DeepSpeed's universal format when saved on
        another world size), and whether it was converted."""
        if fresh:
            return None, False
        tag, universal = checkpoint.latest(self.ckpt_dir, self.world, self.meta, self.cfg.steps)
        if tag is not None and universal:
            if self.rank == 0:
                engine_cls.convert_to_universal(self.ckpt_dir, tag)
            dist.barrier()  # the others load what rank 0 converted
            tag = engine_cls.universal_tag(tag)
        return tag, universal

    def _load(self, tag: str) -> tuple[int, list[dict]]:
        """Engine state from checkpoint ``tag``; its step and metrics history."""
        client = self.engine.load(self.ckpt_dir, tag)
        start, steps = client["step"], self.cfg.steps
        if self.rank == 0 and start == steps:
            log.info(
                "%s already reached train.steps=%d on the same inputs: no step to train, %s "
                "written from it (`atmorep train --fresh` trains again)",
                self.ckpt_dir / tag,
                start,
                NAME,
            )
        elif self.rank == 0:
            log.info(
                "resumed from %s at step %d of %d (saved on %d ranks, now %d)",
                tag,
                start,
                steps,
                client["world"],
                self.world,
            )
        return start, client["metrics"]

    def steps(self):
        """The steps left to train, with a progress bar on rank 0; starts the loader and the meter."""
        cfg = self.cfg
        self.meter = self.task.meter(self.world, distributed.device(), training_dtype(cfg.engine))
        # Every micro-step left in one plan: one loader reads ahead across step boundaries.
        self.micro_plan = [
            m
            for s in range(self.start, cfg.steps)
            for m in self.plan.indices(s, rank=self.rank, world=self.world, micro_steps=cfg.gradient_accumulation)
        ]
        self.batches = iter(loader(self.dataset, self.micro_plan, cfg.workers))
        self.t_loop = time.perf_counter()
        self.bar = tqdm(
            range(self.start, cfg.steps),
            desc="train",
            disable=self.rank != 0,
            mininterval=5,
            file=sys.stderr,
            initial=self.start,
            total=cfg.steps,
        )
        return self.bar

    def train_step(self, step: int) -> dict:
        """One optimizer step over ``gradient_accumulation`` micro-batches; its metrics."""
        t0 = time.perf_counter()
        wait, losses, seen = 0.0, [], []
        diags: dict = {}
        for micro in range(self.cfg.gradient_accumulation):
            tw = time.perf_counter()
            batch = next_batch(self.batches)
            # kept (with the window indices) to name bad data if the step turns out non-finite
            seen.append((self.micro_plan[(step - self.start) * self.cfg.gradient_accumulation + micro], batch))
            wait += time.perf_counter() - tw
            loss, diags, applied = self._forward_backward(batch, step, micro)
            losses.append(loss.detach())
        self.bad.count(applied, step, seen)
        value = torch.stack(losses).mean()
        dist.all_reduce(value)  # a sum: divided by the world size below, the mean over ranks
        dt = time.perf_counter() - t0
        return {
            "loss": float(value) / self.world,
            "lr": self.engine.lr,
            "skipped": int(not applied),
            **self.meter.step(dt),
            "loader_wait": wait / dt,
            **diags,
        }

    def _forward_backward(self, batch: Batch, step: int, micro: int) -> tuple[torch.Tensor, dict, bool]:
        micro_seed = _seed(self.seed, step=step, micro=micro, rank=self.rank, world=self.world)
        gen = torch.Generator().manual_seed(micro_seed)  # masks: their own stream, unmoved by dropout
        torch.manual_seed(micro_seed + 1)  # dropout
        loss, diags = self.task.loss(self.engine, batch, gen, self.meter)
        return loss, diags, self.engine.step(loss)

    def log(self, step: int, row: dict) -> None:
        self.metrics.log(step, row)
        self.bar.set_postfix(loss=f"{row['loss']:.4f}", refresh=False)  # the bar redraws every mininterval

    def stop_if_signalled(self, done: int) -> None:
        """On a signal any rank received: checkpoint ``done`` steps and raise :class:`Requeue` (the CLI
        exits 75: requeue me)."""
        if not self.stop.agreed():
            return
        self._save(done)
        if self.rank == 0:
            log.warning(
                "signal %d: checkpoint at step %d saved; exiting %d to be requeued",
                self.stop.received,
                done,
                EXIT_REQUEUE,
            )
        distributed.finish()
        name = signal.Signals(self.stop.received).name
        raise Requeue(f"{name}: checkpoint at step {done} saved in {self.ckpt_dir}")

    def checkpoint_if_due(self, done: int) -> None:
        """Every ``checkpoint_every`` steps, and at the last (the finished run's, which a rerun finds)."""
        if done % self.cfg.checkpoint_every == 0 or done == self.cfg.steps:
            self._save(done)

    def _save(self, done: int) -> None:
        checkpoint.save(self.engine, self.ckpt_dir, done, self.metrics.rows, self.world, self.meta)

    def export(self) -> Path:
        """The task's product (pretraining: ``model.safetensors``, consolidated fp32 weights and the card),
        ``metrics.csv`` and ``loss.png`` on rank 0; the product's path on every rank."""
        state = self.engine.consolidated_state_dict()  # on every rank: ZeRO-3 gathers collectively
        rows, cfg, out_dir = self.metrics.rows, self.cfg, self.out_dir
        path = out_dir / self.task.product
        if self.rank == 0:
            out_dir.mkdir(parents=True, exist_ok=True)
            self.metrics.write(out_dir)
            assert state is not None  # rank 0 holds the consolidated weights
            path = self.task.save(self.engine.module, state, out_dir, rows, self.start, self.world)
            self.metrics.close()
            if cfg.steps > self.start:
                log.info(
                    "trained %d steps (%d -> %d) on %d ranks in %.0f s: loss %.4f -> %.4f",
                    cfg.steps - self.start,
                    self.start,
                    cfg.steps,
                    self.world,
                    time.perf_counter() - self.t_loop,
                    rows[self.start]["loss"],
                    rows[-1]["loss"],
                )
                log.info("throughput: %s", self.meter.summary())
        distributed.finish()
        return path


def _seed(seed: int, *, step: int, micro: int, rank: int, world: int) -> int:
    """A distinct, reproducible seed per (run, step, micro-step, rank)."""
    # SeedSequence hashes the tuple: neighbouring steps or ranks get unrelated streams (seed + step would not).
    return int(np.random.SeedSequence([seed, step, micro, rank, world]).generate_state(1)[0])
