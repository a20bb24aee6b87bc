"""The card a trained model carries (written into the model file by :mod:`atmorep.model.file`).

Besides the architecture, fields and package versions the model file adds itself, a training run's
card holds:

- the run's identity (:func:`atmorep.train.checkpoint.identity`): ``train``, ``model``, ``data``,
  ``seed``, ``versions`` and ``inputs`` (every shard store's provenance and file digests, as a resumed
  run compares them);
- ``periods``: the campaign (``data.start .. data.end``), the training period and the validation
  period (``null``: pretraining holds none out; evaluation records its own period in its products);
- ``normalization``: per field the method and, per shard store, the normalization statistics the
  store holds (``mean``/``std`` per month and level, the values themselves when global) pinned by
  :func:`statistics_digest`, so that whoever feeds the model data can normalize it the same way or
  check that a store has the statistics the model was trained with;
- ``training``: steps, the step it started from (a resumed run), ranks, and the final losses (the
  last step's loss and per-field terms, and the mean loss of the last steps).
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np

from atmorep.config import DataConfig, TrainConfig

#: steps the final mean loss is taken over
FINAL_STEPS = 10


def card(
    meta: dict,
    data: DataConfig,
    cfg: TrainConfig,
    stores: dict[str, list[str]],
    rows: list[dict],
    start: int,
    world: int,
) -> dict:
    """The card of a run with identity ``meta`` that trained ``rows`` (the metrics of every step)."""
    return {
        **meta,
        "periods": {
            "campaign": [data.start, data.end],
            "train": [cfg.start or data.start, cfg.end or data.end],
            "validation": None,
        },
        "normalization": {f: normalization(paths) for f, paths in stores.items()},
        "training": {"steps": cfg.steps, "started_at": start, "ranks": world, "final": final_losses(rows)},
    }


def final_losses(rows: list[dict]) -> dict:
    """The last step's loss and per-field loss terms, and the mean loss over the last steps."""
    if not rows:
        return {}
    last = rows[-1]
    tail = [r["loss"] for r in rows[-FINAL_STEPS:]]
    return {
        "step": len(rows),
        "loss": float(last["loss"]),
        **{k: float(v) for k, v in last.items() if "/" in k},  # field/term, e.g. t2m/mse_ensemble
        f"mean_loss_last_{len(tail)}": float(np.mean(tail)),
    }


def normalization(paths: list[str]) -> dict:
    """One field's normalization as its shard stores record it: method and, per store (year), the
    statistics digest and, for global statistics, the values ``[month][level]``."""
    from atmorep.data import shards
    from atmorep.formats import zarrv3

    out: dict = {"method": None, "stores": {}}
    for p in paths:
        ds = zarrv3.open_dataset(p, threads=None)
        method = ds.attrs.get("normalization")
        out["method"] = method if out["method"] in (None, method) else "mixed"
        entry = {
            "path": str(p),
            "provenance": shards.identity(p)["provenance"],
            "months": [str(m)[:7] for m in ds["month"].values],
            "statistics_sha256": statistics_digest(p),
        }
        if method == "global":  # (month, level): a few numbers; local statistics are per grid point
            entry["mean"], entry["std"] = ds["mean"].values.tolist(), ds["std"].values.tolist()
        out["stores"][str(ds.attrs.get("year"))] = entry
    return out


def statistics_digest(store: str | Path) -> str:
    """SHA-256 of a shard store's normalization statistics: the months, then ``mean`` and ``std``
    (dimensions, shape, little-endian float32 values in C order). Equal statistics give equal
    digests whatever the store's chunking."""
    from atmorep.formats import zarrv3

    ds = zarrv3.open_dataset(store, threads=None)
    h = hashlib.sha256(json.dumps([str(m) for m in ds["month"].values]).encode())
    for name in ("mean", "std"):
        values = np.ascontiguousarray(ds[name].values, dtype="<f4")
        h.update(json.dumps([name, list(ds[name].dims), list(values.shape)]).encode())
        h.update(values.tobytes())
    return h.hexdigest()
