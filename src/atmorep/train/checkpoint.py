"""What decides whether a training run resumes, starts afresh or refuses, and the checkpoints it writes.

A run's identity is its configuration (seed, data, model and train settings) and its inputs (every
shard store's provenance and files, the fine-tuning start model's size and time). Each checkpoint
records both in ``atmorep.json``: a rerun resumes only a checkpoint of the same identity, so a model
trained on other data or settings is never handed back as this run's; a checkpoint past
``train.steps`` belongs to a longer run and is refused rather than silently shortened.
"""

from __future__ import annotations

import dataclasses
import json
import logging
from pathlib import Path
from typing import Any

import torch.distributed as dist

from atmorep.config import DataConfig, ModelConfig, TrainConfig
from atmorep.formats.atomic import space_for
from atmorep.model.file import versions

log = logging.getLogger(__name__)

#: keys that may change between a checkpoint and its resumption (``steps`` is the target: a checkpoint
#: before it continues, one at it is the finished run, one past it is refused)
_RESUMABLE_CHANGES = {"steps", "checkpoint_every", "tensorboard", "ranks", "batch_size", "gradient_accumulation"}


def identity(seed: int, data: DataConfig, model: ModelConfig, cfg: TrainConfig, stores: dict[str, list[str]]) -> dict:
    """The run's record saved in every checkpoint and in ``model.safetensors``."""
    return {
        "train": dataclasses.asdict(cfg),
        "model": dataclasses.asdict(model),
        "data": dataclasses.asdict(data),
        "seed": seed,
        "versions": versions(),
        "inputs": inputs(stores, cfg.init_from),
    }


def inputs(stores: dict[str, list[str]], start_model: str | None = None, prefix: str = "") -> dict:
    """The identity of what a run trains on: every shard store's (see :func:`shards.identity`), keyed
    ``{prefix}{field} {year}``, and the starting model's (``init_from`` or a fine-tune's backbone: size
    and modification time)."""
    from atmorep.data import shards

    out: dict[str, Any] = {}
    for paths in stores.values():
        for p in paths:
            i = shards.identity(p)
            out[f"{prefix}{i['field']} {i['year']}"] = {"provenance": i["provenance"], "files": i["files"]}
    if start_model and Path(start_model).is_file():  # a missing one is named when it is loaded
        st = Path(start_model).stat()
        out["init_from"] = [st.st_size, st.st_mtime_ns]
    return out


def _comparable(meta: dict) -> dict:
    train = {k: v for k, v in meta["train"].items() if k not in _RESUMABLE_CHANGES}
    # Library versions may change under a resumed run; inputs are compared by _changed, which says
    # what differs. The JSON round trip makes tuples lists, as in the saved atmorep.json.
    return json.loads(json.dumps({**meta, "train": train, "versions": None, "inputs": None}))


def _changed(saved: dict | None, now: dict) -> list[str]:
    """What differs between a checkpoint's inputs and this run's, in words."""
    if saved is None:
        return ["the checkpoint does not record them"]
    out = [
        f"{k}: {'not in the checkpoint' if k not in saved else 'not given now'}" for k in sorted(set(saved) ^ set(now))
    ]
    for k in sorted(set(saved) & set(now)):
        if k == "init_from" and saved[k] != now[k]:  # (size, mtime): cheap, and a rewrite changes it
            out.append("init_from: another file")
        elif k != "init_from" and saved[k] != now[k]:
            out.append(
                f"{k}: "
                + ("another provenance" if saved[k]["provenance"] != now[k]["provenance"] else "store rewritten since")
            )
    return out


def latest(ckpt_dir: Path, world: int, meta: dict, steps: int) -> tuple[str | None, bool]:
    """The newest checkpoint made with this configuration and these inputs, and whether it was saved
    on another world size. A checkpoint of another configuration or other inputs is not resumed; one
    past ``steps`` is refused (it belongs to a longer run)."""
    pointer = ckpt_dir / "latest"
    if not pointer.exists():
        return None, False
    tag = pointer.read_text().strip()
    try:
        info = json.loads((ckpt_dir / tag / "atmorep.json").read_text())
    except (OSError, ValueError):
        log.warning("%s has no readable atmorep.json (killed while saving?): starting afresh", ckpt_dir / tag)
        return None, False
    # step and world are the checkpoint's own, not part of the configuration (world changes are resumed)
    if _comparable(info) != _comparable({**meta, "step": info["step"], "world": info["world"]}):
        log.warning("%s was made with another configuration: starting afresh", ckpt_dir / tag)
        return None, False
    if changed := _changed(info.get("inputs"), meta["inputs"]):
        log.warning("%s was trained on other inputs (%s): starting afresh", ckpt_dir / tag, "; ".join(changed))
        return None, False
    if info["step"] > steps:
        raise ValueError(
            f"{ckpt_dir / tag} is at step {info['step']}, past train.steps={steps}: it belongs "
            f"to a longer run of these inputs. Raise train.steps to continue it, or start "
            f"afresh with `atmorep train --fresh` (or remove {ckpt_dir})"
        )
    return tag, info["world"] != world


def model_bytes(model) -> int:
    """fp32 bytes of the whole model (ZeRO-3 partitions counted whole)."""
    return sum(getattr(p, "ds_numel", p.numel()) * 4 for p in model.parameters())


def save(engine, ckpt_dir: Path, step: int, rows: list, world: int, meta: dict) -> None:
    """Checkpoint ``step`` on every rank, with the metrics so far and the run's identity."""
    tag = f"step{step:08d}"
    with space_for(ckpt_dir / tag, 3 * model_bytes(engine.module)):  # weights and two Adam moments
        engine.save(ckpt_dir, tag, {"step": step, "metrics": rows, "world": world, **meta})
    # Written after the engine's files: a tag without atmorep.json is a save that was killed, and
    # latest() starts afresh rather than resuming half a checkpoint.
    if dist.get_rank() == 0:
        (ckpt_dir / tag / "atmorep.json").write_text(json.dumps({"step": step, "world": world, **meta}, indent=1))
    dist.barrier()  # no rank moves on (or exits) before the checkpoint is complete
