"""Fine-tuning: a head for a new target on a pretrained backbone, trained by pretraining's own loop.

:class:`HeadTask` is a :class:`~atmorep.train.loop.Task`: the :class:`~atmorep.train.loop.Trainer`
gives it the same engines (DeepSpeed ZeRO 1-3 or torch DDP), launchers, exact resume, SIGTERM/SIGUSR1
checkpoint-and-exit-75, metrics with throughput and MFU, the output-directory lock and the stale-run
refusal (the run's identity: the task, ``finetune.train``, data, seed, the backbone file and every
shard store, the target's included). Every window of the training period whose target footprint lies
on the target grid is a candidate; steps draw from them as pretraining draws its windows.

The product is ``head.safetensors`` (:func:`atmorep.model.heads.save_head`): the weights that trained (the
head; the adapters, blocks or encoder the backbone mode trains) and a card naming the backbone file
and its sha256, the task, the target's token geometry and the training windows. The backbone's file
is never rewritten; under ``frozen`` and ``lora`` the card records the digest of its weights before
and after training (in the engine's compute dtype: fp32 on CPUs, bf16 under DeepSpeed on GPUs), and
a difference is refused.

:func:`finetune` runs under ``atmorep launch`` on several ranks, or in-process on one (seconds, with
``finetune.train.engine: torch`` and small ``steps``: the label-efficiency benchmark's way).
"""

from __future__ import annotations

import dataclasses
import logging
import math
import os
from pathlib import Path
from typing import cast

import numpy as np
import torch
import torch.distributed as dist

from atmorep import config as C
from atmorep.config import DataConfig, FinetuneConfig, LossConfig, period
from atmorep.data.sampler import StepBatches
from atmorep.data.targets import TARGET
from atmorep.model import heads
from atmorep.model import task as T
from atmorep.model.batch import Batch
from atmorep.model.file import load_model, versions
from atmorep.model.summary import flop_terms
from atmorep.train import checkpoint, distributed, loop
from atmorep.train.losses import Loss
from atmorep.train.throughput import Throughput, training_dtype

log = logging.getLogger(__name__)

HEAD_FILE = "head.safetensors"


def task_of(cfg: FinetuneConfig, name: str | None) -> tuple[str, C.FinetuneTaskConfig]:
    """The task named ``name`` (the only one when None)."""
    if name is None:
        if len(cfg.tasks) != 1:
            raise C.ConfigError(
                f"finetune.tasks has {len(cfg.tasks)} tasks ({', '.join(cfg.tasks)}): name one (--task)"
            )
        name = next(iter(cfg.tasks))
    if name not in cfg.tasks:
        raise C.ConfigError(f"finetune.tasks has no task '{name}' (tasks: {', '.join(cfg.tasks) or 'none'})")
    return name, cfg.tasks[name]


def finetune(
    seed: int,
    data: DataConfig,
    cfg: FinetuneConfig,
    name: str | None,
    backbone: str | Path,
    stores: dict[str, list[str]],
    out_dir: str | Path,
    fresh: bool = False,
    windows: np.ndarray | None = None,
) -> Path | None:
    """Train task ``name``'s head on the launched ranks (or this process alone); returns ``head.safetensors``'s path
    on rank 0, None on the others. ``stores``: shard stores by field (the backbone's, and the target's
    unless ``target_shards`` names them). ``windows``: the training windows to draw from (a label
    budget; default every usable window of ``finetune.train``'s period)."""
    name, task = task_of(cfg, name)
    cfg.check_train()
    path = loop.run(lambda: HeadTask(seed, data, cfg, name, backbone, stores, windows), seed, cfg.train, out_dir, fresh)
    return path if os.environ.get("RANK", "0") == "0" else None


class HeadTask:
    """A head on a backbone for one target (a :class:`~atmorep.train.loop.Task`)."""

    product = HEAD_FILE

    def __init__(self, seed: int, data: DataConfig, cfg: FinetuneConfig, name: str, backbone, stores, windows=None):
        self.seed, self.cfg, self.name = seed, cfg, name
        self.task = task = cfg.tasks[name]
        self.backbone_path = Path(backbone)
        try:
            model, backbone_card = load_model(self.backbone_path)
        except (OSError, ValueError) as exc:
            raise type(exc)(f"the backbone: {exc}") from None
        self.backbone_sha256: str = backbone_card["sha256"]
        target = T.target_stores(task, stores)
        self.dataset = T.task_dataset(model, backbone, task, name, stores, target, *period(cfg.train, data))
        self.candidates = self.dataset.candidates
        if windows is not None:
            windows = np.unique(np.asarray(windows, np.int64))
            if outside := np.setdiff1d(windows, self.dataset.usable).tolist()[:5]:
                raise ValueError(f"training windows {outside} are not usable windows of the task's training period")
            self.candidates = windows
        self.inputs = T.inputs_of(model, task, name, backbone)
        self.levels = len(self.dataset.targets[0].levels)
        self.values = {f: (model.fields[f].levels, model.fields[f].values_per_token) for f in self.inputs}
        out = self.levels * math.prod(self.dataset.target_token_size)
        self.backbone_cfg, self.backbone_fields = model.cfg, dict(model.fields)
        self.model = heads.build(model, task, self.inputs, self.values, out, seed)
        # In the engine's compute dtype: DeepSpeed holds the module in bf16 on GPUs, so the weights it
        # hands back are the file's rounded once; untouched, they digest alike.
        self.dtype = training_dtype(cfg.train.engine)
        self.start_digest = heads.state_digest(
            {k: v.to(self.dtype) for k, v in heads.backbone_state(self.model).items()}
        )
        self.loss_fn = Loss(LossConfig(terms=task.loss))
        backbone_stores = {f: stores[f] for f in model.fields}
        self.meta = {
            "train": dataclasses.asdict(cfg.train),
            "task": {"name": name, **dataclasses.asdict(task)},
            # a label budget trains on other windows: its checkpoints are another run's
            "windows": None if windows is None else windows.tolist(),
            "data": dataclasses.asdict(data),
            "seed": seed,
            "versions": versions(),
            "inputs": {
                **checkpoint.inputs(backbone_stores, str(backbone)),
                **checkpoint.inputs({task.target: target}, prefix="target "),
            },
        }

    def start(self, rank: int) -> None:
        """Nothing to do: the backbone's weights were loaded, the head initialised from the seed."""

    def meter(self, world: int, device: torch.device, dtype: torch.dtype) -> Throughput:
        return Throughput.counted(self.tokens(), self.sample_flops(), world, device, dtype)

    def tokens(self) -> int:
        """Tokens per sample the backbone (or a raw head) reads."""
        Q = math.prod(self.dataset.tokens[self.inputs[0]])
        fields = self.inputs if self.task.backbone == "raw" else list(self.backbone_fields)
        return sum(self.backbone_fields[f].levels for f in fields) * Q

    def sample_flops(self) -> float:
        """Model FLOPs of one training sample: the backbone's encoder forward (analytic, as pretraining
        counts it), its backward where it trains (the last trainable_layers blocks' share for last_k
        and lora, everything for full and scratch), and the head's forward + backward (counted by
        torch.utils.flop_counter on one sample)."""
        from torch.utils.flop_counter import FlopCounterMode

        Q = math.prod(self.dataset.tokens[self.inputs[0]])
        width = heads.feature_width(self.model.backbone, self.inputs, self.task.layers, self.values)
        with FlopCounterMode(display=False) as counter:  # with autograd: its module tracker hooks into it
            self.model.head(torch.zeros(1, Q, width))
        head = 3 * counter.get_total_flops()
        mode = self.task.backbone
        if mode == "raw":
            return head
        encoder = dataclasses.replace(self.backbone_cfg, decoder_layers=0)  # the head replaces the decoders
        geometry = {
            f: dataclasses.replace(g, num_tokens=cast(tuple[int, int, int], self.dataset.tokens[f]))
            for f, g in self.backbone_fields.items()
        }
        e, b = (sum(t[k] for t in flop_terms(encoder, geometry).values()) for k in (0, 1))
        trained = {"frozen": 0.0, "full": 1.0, "scratch": 1.0}.get(
            mode, self.task.trainable_layers / self.backbone_cfg.encoder_layers
        )
        return e + b + 2 * b * trained + (e if trained == 1.0 else 0.0) + head

    def loss(self, engine, batch: Batch, gen: torch.Generator, meter: Throughput) -> tuple[torch.Tensor, dict]:
        meter.add(batch.size, {})
        device = distributed.device()
        tokens = {f: t.to(device) for f, t in batch.tokens.items() if f != TARGET}
        info = {f: t.to(device) for f, t in batch.info.items() if f != TARGET}
        members = heads.target_tokens(engine(tokens, info), self.levels)  # (B, L, Q, E, P)
        ens_KEP = members.reshape(-1, *members.shape[-2:])
        # (B, L, T, Y, X, P) -> (B*L*Q, P): the head's token order
        target_KP = batch.tokens[TARGET].to(device).flatten(0, 4)
        return self.loss_fn({self.task.target: ens_KEP}, {self.task.target: target_KP})

    def training_windows(self) -> list[int]:
        """Every window the steps drew (the plan is a function of the seed, the step and the global batch)."""
        train = self.cfg.train
        world = dist.get_world_size() if dist.is_initialized() else 1
        plan = StepBatches(
            self.dataset,
            seed=self.seed,
            global_batch=train.batch_size * train.gradient_accumulation * world,
            epoch_steps=train.epoch_steps,
            candidates=self.candidates,
        )
        return sorted({int(i) for s in range(train.steps) for i in plan.global_batch_of(s)})

    def save(
        self, module: torch.nn.Module, state: dict, out_dir: Path, rows: list[dict], start: int, world: int
    ) -> Path:
        end_digest = heads.state_digest(heads.backbone_weights(state))
        if self.task.backbone in ("frozen", "lora") and end_digest != self.start_digest:
            raise RuntimeError(
                f"the {self.task.backbone} backbone's weights changed during training ({self.start_digest[:12]} -> "
                f"{end_digest[:12]}): a bug; nothing written"
            )
        assert isinstance(module, heads.TaskModel)
        trainable = heads.trainable_names(module)
        card = {
            "name": self.name,
            "task": heads.describe(self.task),
            "target": self.task.target,
            "target_levels": self.dataset.targets[0].levels.tolist(),
            "target_token_size": list(self.dataset.target_token_size),
            "ratio": list(self.dataset.nest.ratio),
            "inputs": self.inputs,
            "values": {f: list(v) for f, v in self.values.items()},
            "out": self.levels * math.prod(self.dataset.target_token_size),
            "seed": self.seed,
            "backbone": {
                "path": str(self.backbone_path.resolve()),
                "sha256": self.backbone_sha256,  # the file's own digest, verified when it was loaded
                "fields": list(self.backbone_fields),
                "mode": self.task.backbone,
                "weights_sha256_before": self.start_digest,
                "weights_sha256_after": end_digest,
                "weights_dtype": str(self.dtype).removeprefix("torch."),
            },
            "parameters": {
                "trainable": int(sum(state[k].numel() for k in trainable)),
                "total": int(sum(v.numel() for v in state.values())),
            },
            "windows": self.training_windows(),
            "identity": checkpoint_json(self.meta),
        }
        path = out_dir / self.product
        heads.save_head(path, module, state, card)
        log.info(
            "head '%s' (%s, backbone %s): %d trainable of %d parameters",
            self.name,
            self.task.head,
            self.task.backbone,
            card["parameters"]["trainable"],
            card["parameters"]["total"],
        )
        return path


def checkpoint_json(meta: dict) -> dict:
    """The identity as JSON types (the card is read with ``weights_only``: no tuples or numpy)."""
    import json

    return json.loads(json.dumps(meta, default=str))
