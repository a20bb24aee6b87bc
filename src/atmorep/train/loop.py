"""Pretraining: the loop that ties loader, masking, model, loss and engine together.

Rank 0 writes ``model.pt`` (consolidated weights), ``metrics.csv`` (one row per step) and
``loss.png`` into the output directory.
"""

from __future__ import annotations

import csv
import dataclasses
import logging
import time
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
from torch.utils.data import DataLoader
from tqdm import tqdm

from atmorep.config import DataConfig, ModelConfig, TrainConfig, parse_time
from atmorep.data.dataset import TOKEN_INFO, RankSampler, WindowDataset
from atmorep.model.multiformer import FieldGeometry, Multiformer
from atmorep.train import distributed, masking
from atmorep.train.batch import Batch
from atmorep.train.checkpoint import save_model
from atmorep.train.losses import Loss

log = logging.getLogger(__name__)


def period(cfg, data: DataConfig) -> tuple[np.datetime64, np.datetime64]:
    """A stage's (start, end), defaulting to the campaign's."""
    return parse_time(cfg.start or data.start), parse_time(cfg.end or data.end)


def geometry(dataset: WindowDataset) -> dict[str, FieldGeometry]:
    return {f: FieldGeometry(len(s[0].levels), s[0].token_size) for f, s in dataset.stores.items()}


def batches(dataset: WindowDataset, sampler: RankSampler, batch_size: int):
    """Endless stream of :class:`Batch`, one epoch after another."""
    epoch = 0
    while True:
        sampler.set_epoch(epoch)
        loader = DataLoader(dataset, batch_size=batch_size, sampler=sampler, drop_last=True, num_workers=0)
        for sample in loader:
            yield Batch.from_numpy(sample)
        epoch += 1


def train(seed: int, data: DataConfig, model_cfg: ModelConfig, cfg: TrainConfig,
          stores: dict[str, list[str]], out_dir: str | Path) -> Path:
    """Train on ``cfg.ranks`` processes (as launched) and write the products to ``out_dir``."""
    out_dir = Path(out_dir)
    rank, world = distributed.init()
    torch.manual_seed(seed)
    dataset = WindowDataset(stores, model_cfg.num_tokens, *period(cfg, data))
    sampler = RankSampler(len(dataset), seed, rank, world)
    if len(sampler) < cfg.batch_size:
        raise ValueError(f"{len(dataset)} training windows are too few for {world} ranks x batch {cfg.batch_size}")
    model = Multiformer(model_cfg, geometry(dataset), info_dim=len(TOKEN_INFO))
    from atmorep.train.engine import DeepSpeedEngine  # the only deepspeed import

    engine = DeepSpeedEngine(model, cfg, world)
    strategy, loss_fn = masking.build(cfg.masking), Loss(cfg.loss)
    gen = torch.Generator().manual_seed(seed * 1000 + rank)
    rows, stream = [], batches(dataset, sampler, cfg.batch_size)
    bar = tqdm(range(cfg.steps), desc="train", disable=rank != 0, mininterval=2)
    t0 = time.perf_counter()
    for step in bar:
        batch = next(stream)
        masks = strategy(batch, gen)
        source = masking.apply(batch, masks)
        ens = engine(source.tokens, source.info, masks)
        targets = {f: batch.tokens[f][masks[f]] for f in ens}
        loss, diag = loss_fn(ens, targets)
        engine.step(loss)
        value = loss.detach().clone()
        dist.all_reduce(value)
        elapsed = time.perf_counter() - t0
        rows.append({"step": step, "loss": float(value) / world, "lr": engine.lr,
                     "samples_per_s": (step + 1) * cfg.batch_size * world / elapsed, **diag})
        bar.set_postfix(loss=f"{rows[-1]['loss']:.4f}")
    if rank == 0:
        out_dir.mkdir(parents=True, exist_ok=True)
        write_metrics(rows, out_dir / "metrics.csv")
        plot_loss(rows, out_dir / "loss.png")
        save_model(out_dir / "model.pt", engine.module,
                   {"train": dataclasses.asdict(cfg), "seed": seed, "world": world})
        log.info("trained %d steps on %d ranks: loss %.4f -> %.4f", cfg.steps, world, rows[0]["loss"], rows[-1]["loss"])
    distributed.finish()
    return out_dir / "model.pt"


def write_metrics(rows: list[dict], path: Path) -> None:
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)


def plot_loss(rows: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    steps = [r["step"] for r in rows]
    fig, ax = plt.subplots(figsize=(6, 3.5))
    ax.plot(steps, [r["loss"] for r in rows], lw=0.8, label="loss (mean over ranks)")
    ax.set(xlabel="step", ylabel="loss", title="pretraining loss")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
