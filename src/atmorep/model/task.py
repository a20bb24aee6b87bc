"""What training and scoring a downstream task share: the checks that a backbone, its shards and a
target fit together, and the task's windows (:class:`~atmorep.data.targets.TaskDataset`).

Every refusal is one message naming the backbone file, the field, its levels or the key.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from atmorep import config as C
from atmorep.data.dataset import FieldStore
from atmorep.data.targets import TaskDataset
from atmorep.errors import DataError
from atmorep.model.multiformer import Multiformer


def inputs_of(backbone: Multiformer, task: C.FinetuneTaskConfig, name: str, path: str | Path) -> list[str]:
    """The backbone fields that feed the head (checked: backbone fields on one token grid, layers that exist)."""
    where = f"finetune.tasks.{name}"
    inputs = list(task.inputs) or list(backbone.fields)
    if unknown := [f for f in inputs if f not in backbone.fields]:
        raise C.ConfigError(
            f"{where}.inputs names {', '.join(unknown)}, not a field of the backbone {path} "
            f"({', '.join(backbone.fields)})"
        )
    n = backbone.cfg.encoder_layers
    if bad := [layer for layer in task.layers if not -n <= layer < n]:
        raise C.ConfigError(
            f"{where}.layers {bad}: the backbone {path} has {n} encoder layers (0..{n - 1}, or -{n}..-1)"
        )
    sizes = {f: backbone.fields[f].token_size for f in inputs}
    if len(set(sizes.values())) > 1:
        raise C.ConfigError(
            f"{where}.inputs {inputs} have different token sizes {sizes}: a head reads the latents of fields "
            "on one token grid (list those in finetune.tasks.*.inputs)"
        )
    return inputs


def check_backbone(backbone: Multiformer, path: str | Path, stores: dict[str, list[str]]) -> None:
    """The shards hold every field of the backbone with its levels and token size; else one message
    naming the fields (a head on a model of other fields or levels is refused)."""
    if missing := [f for f in backbone.fields if f not in stores]:
        raise DataError(
            f"the backbone {path} reads field(s) {', '.join(missing)} that no shard store given holds "
            f"(stores of {', '.join(stores) or 'no field'}): fine-tune a backbone on the fields it was trained on"
        )
    for f, g in backbone.fields.items():
        store = FieldStore(sorted(stores[f])[0])
        if len(store.levels) != g.levels or tuple(store.token_size) != tuple(g.token_size):
            raise DataError(
                f"the backbone {path} reads field '{f}' with {g.levels} level(s) and tokens {list(g.token_size)}; "
                f"{store.path} holds {len(store.levels)} level(s) {store.levels.tolist()} and tokens "
                f"{list(store.token_size)}: fine-tune a backbone on the levels and tokens it was trained on"
            )


def task_dataset(
    backbone: Multiformer,
    path: str | Path,
    task: C.FinetuneTaskConfig,
    name: str,
    stores: dict[str, list[str]],
    target: list[str],
    start: np.datetime64,
    end: np.datetime64,
) -> TaskDataset:
    """The task's windows over ``start``..``end``: the backbone's fields with the target's tokens."""
    task.check(name)
    check_backbone(backbone, path, stores)
    inputs = inputs_of(backbone, task, name, path)
    if not target:
        raise DataError(
            f"finetune.tasks.{name}.target '{task.target}' is in none of the shard stores given "
            f"(fields {', '.join(stores) or 'none'}) and finetune.tasks.{name}.target_shards is empty: "
            f"add '{task.target}' to data.fields (it is then sharded) or name its stores"
        )
    fields: dict[str, list[str | Path]] = {f: list(stores[f]) for f in backbone.fields}
    ds = TaskDataset(fields, target, backbone.cfg.num_tokens, start, end, grid_field=inputs[0])
    if ds.target_field != task.target:
        raise DataError(f"{ds.targets[0].path} holds field '{ds.target_field}', not the target '{task.target}'")
    if ds.nest.ratio == (1, 1) and task.target in backbone.fields:
        raise C.ConfigError(
            f"finetune.tasks.{name}.target '{task.target}' is a field the backbone {path} reads on the same grid: "
            "the head would see its own target; choose a new field, or a finer grid (target_shards)"
        )
    return ds


def target_stores(task: C.FinetuneTaskConfig, stores: dict[str, list[str]]) -> list[str]:
    """The target's shard stores: ``target_shards``, else this run's stores of the target field."""
    return [str(p) for p in task.target_shards] or list(stores.get(task.target, []))
