"""The per-step metrics of a training run: kept in memory on every rank (checkpoints carry them, so a
resumed run's ``metrics.csv`` holds the whole history), streamed to TensorBoard on rank 0, and written
as ``metrics.csv`` and ``loss.png`` with the model at the end."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np


class MetricsLog:
    """``log(step, row)`` per optimizer step; ``write(out_dir)`` once at the end; ``close()``."""

    def __init__(self, rows: list[dict], tensorboard: Path | None = None):
        self.rows = rows  # a resumed run's history (from the checkpoint): extended, not restarted
        self.writer = None
        if tensorboard is not None:
            from torch.utils.tensorboard import SummaryWriter  # here: only rank 0 with tensorboard on needs it

            self.writer = SummaryWriter(str(tensorboard))

    def log(self, step: int, row: dict) -> None:
        self.rows.append({"step": step, **row})
        if self.writer:
            for k, v in row.items():
                self.writer.add_scalar(k, v, step)

    def write(self, out_dir: Path) -> None:
        write_csv(self.rows, out_dir / "metrics.csv")
        plot_loss(self.rows, out_dir / "loss.png")

    def close(self) -> None:
        if self.writer:
            self.writer.close()


def write_csv(rows: list[dict], path: Path) -> None:
    """One row per step; the columns are every key seen (diagnostics may differ between steps)."""
    fields = list(dict.fromkeys(k for r in rows for k in r))
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=fields)
        w.writeheader()
        w.writerows(rows)


def plot_loss(rows: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")  # compute nodes have no display
    import matplotlib.pyplot as plt

    steps = np.array([r["step"] for r in rows])
    loss = np.array([r["loss"] for r in rows])
    k = max(1, len(loss) // 20)  # running mean over a twentieth of the run: smooth at any length
    fig, ax = plt.subplots(figsize=(6, 3.5))
    ax.plot(steps, loss, lw=0.6, alpha=0.5, label="loss (mean over ranks)")
    if len(loss) > k:
        ax.plot(steps[k - 1 :], np.convolve(loss, np.ones(k) / k, mode="valid"), lw=1.5, label=f"running mean ({k})")
    ax.set(xlabel="optimizer step", ylabel="loss", title="pretraining loss")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
