"""The consolidated model file shared by training and evaluation (no DeepSpeed needed to read it)."""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path

import torch

from atmorep import config as C
from atmorep.model.multiformer import FieldGeometry, Multiformer

FORMAT = "atmorep-model/1"


def versions() -> dict[str, str]:
    """Versions of the packages that shape a trained model, saved with every checkpoint."""
    from importlib.metadata import PackageNotFoundError, version

    out = {}
    for pkg in ("atmorep", "torch", "deepspeed", "numpy", "zarr", "xarray"):
        try:
            out[pkg] = version(pkg)
        except PackageNotFoundError:
            pass
    return out


def save_model(path: str | Path, model: Multiformer, state_dict: dict | None = None,
               extra: dict | None = None) -> None:
    """Write config, field geometry and fp32 weights to ``path`` atomically.

    ``state_dict`` is the consolidated state (e.g. gathered from ZeRO-3 partitions); by default the
    module's own.
    """
    path = Path(path)
    tmp = path.with_name(f".{path.name}.part{os.getpid()}")
    state = state_dict if state_dict is not None else model.state_dict()
    torch.save({
        **(extra or {}),
        "format": FORMAT,
        "model": dataclasses.asdict(model.cfg),
        "fields": {f: {"levels": g.levels, "token_size": list(g.token_size)} for f, g in model.fields.items()},
        "state_dict": {k: v.detach().float().cpu() for k, v in state.items()},
        "versions": versions(),
    }, tmp)
    os.replace(tmp, path)


def load_model(path: str | Path) -> tuple[Multiformer, dict]:
    """The model in eval mode, and the whole saved record."""
    record = torch.load(path, map_location="cpu", weights_only=False)
    if record.get("format") != FORMAT:
        raise ValueError(f"{path}: not an atmorep model file (format {record.get('format')!r})")
    cfg = C.build(C.ModelConfig, record["model"], "model")
    fields = {f: FieldGeometry(g["levels"], tuple(g["token_size"])) for f, g in record["fields"].items()}
    model = Multiformer(cfg, fields)
    model.load_state_dict(record["state_dict"])
    return model.eval(), record
