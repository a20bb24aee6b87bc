"""The consolidated model file shared by training and evaluation (no DeepSpeed needed to read it)."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import torch

from atmorep import config as C
from atmorep.formats.atomic import Replacement
from atmorep.model.multiformer import FieldGeometry, Multiformer

# Bumped when a key of the record changes meaning; _read refuses any other value.
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


def save_model(path: str | Path, model: Multiformer, state_dict: dict | None = None, extra: dict | None = None) -> None:
    """Write config, field geometry and fp32 weights to ``path`` atomically.

    ``state_dict`` is the consolidated state (e.g. gathered from ZeRO-3 partitions); by default the
    module's own.
    """
    state = state_dict if state_dict is not None else model.state_dict()
    with Replacement(path) as tmp:
        torch.save(
            {
                # extra first: its keys cannot shadow the format, architecture or weights.
                **(extra or {}),
                "format": FORMAT,
                **_architecture(model),
                # fp32 on CPU whatever the training dtype and device: the file loads anywhere, bit for bit.
                "state_dict": {k: v.detach().float().cpu() for k, v in state.items()},
                "versions": versions(),
            },
            tmp,
        )


def _architecture(model: Multiformer) -> dict:
    """What a model file says of the model besides its weights: config and field geometry."""
    return {
        "model": dataclasses.asdict(model.cfg),
        "fields": {f: {"levels": g.levels, "token_size": list(g.token_size)} for f, g in model.fields.items()},
    }


def _read(path: str | Path) -> dict:
    if not Path(path).is_file():
        raise FileNotFoundError(f"{path} does not exist")
    record = torch.load(path, map_location="cpu", weights_only=False)
    if record.get("format") != FORMAT:
        raise ValueError(f"{path}: not an atmorep model file (format {record.get('format')!r})")
    return record


#: model settings that say how to train or compute, not what the weights are
_NOT_ARCHITECTURE = {"dropout", "checkpointing", "attention"}


def load_weights(model: Multiformer, path: str | Path) -> None:
    """Load a model file's weights into ``model`` (fine-tuning); architecture and fields must match."""
    record = _read(path)

    def comparable(arch: dict) -> dict:
        model_cfg = {k: v for k, v in arch["model"].items() if k not in _NOT_ARCHITECTURE}
        # Through JSON so that tuples (a live config) and lists (a saved one) compare equal.
        return json.loads(json.dumps({"model": model_cfg, "fields": arch["fields"]}))

    ours, theirs = comparable(_architecture(model)), comparable(record)
    diff = sorted(
        k
        for part in ("model", "fields")
        for k in set(ours[part]) | set(theirs[part])
        if ours[part].get(k) != theirs[part].get(k)
    )
    if diff:
        raise ValueError(f"{path} has another architecture or fields; differs in {diff}")
    model.load_state_dict(record["state_dict"])


def load_model(path: str | Path) -> tuple[Multiformer, dict]:
    """The model in eval mode, and the whole saved record."""
    record = _read(path)
    cfg = C.build(C.ModelConfig, record["model"], "model")
    fields = {f: FieldGeometry(g["levels"], tuple(g["token_size"])) for f, g in record["fields"].items()}
    model = Multiformer(cfg, fields)
    model.load_state_dict(record["state_dict"])
    return model.eval(), record
