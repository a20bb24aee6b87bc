"""The batches a rank trains on: windows read ahead by DataLoader workers, and bad data named.

A batch whose tokens are not finite is refused where it is assembled (:class:`~atmorep.model.batch.Batch`
checks itself); a step whose loss turns non-finite is skipped by the engine on every rank. Either way
the message names the field, the store and the window, so the user can `atmorep verify` that store.
"""

from __future__ import annotations

import logging

import numpy as np
import torch
import torch.distributed as dist
from torch.utils.data import DataLoader, Dataset

from atmorep.data.dataset import WindowDataset
from atmorep.errors import DataError
from atmorep.model.batch import Batch

log = logging.getLogger(__name__)


#: normalized values this many standard deviations from the mean are corrupt data, not weather
IMPLAUSIBLE = 1e4


class TooManyBadSteps(ValueError):
    """``max_bad_steps`` steps in a row had a non-finite loss (the message names bad data when found)."""


class _Indexed(Dataset):
    """The dataset's samples with their window index, so a bad one can be named."""

    def __init__(self, dataset: WindowDataset):
        self.dataset = dataset

    def __getitem__(self, i: int):
        return i, self.dataset[i]


class _Collate:
    def __init__(self, dataset: WindowDataset):
        self.dataset = dataset

    def __call__(self, items: list[tuple[int, dict]]) -> Batch:
        samples = [s for _, s in items]
        try:
            return Batch.collate(samples)
        except ValueError:  # Batch refuses non-finite tokens: say which store and window hold them
            tokens = {f: np.stack([s[f][0] for s in samples]) for f in samples[0]}
            bad = bad_data(self.dataset, [i for i, _ in items], tokens)
            if bad is None:
                raise
            raise DataError(bad) from None


def bad_data(dataset: WindowDataset, indices: list[int], tokens: dict) -> str | None:
    """The first field, store and sample of a batch holding non-finite or implausible values, or None."""
    for f, t in tokens.items():
        t = np.asarray(t)
        bad = ~np.isfinite(t) | (np.abs(np.nan_to_num(t)) > IMPLAUSIBLE)
        per_sample = bad.reshape(len(t), -1).sum(axis=1)
        if per_sample.any():
            k = int(np.flatnonzero(per_sample)[0])
            path, window = dataset.where(indices[k], f)
            return (
                f"{path}: field '{f}', {window}, holds {int(per_sample[k])} non-finite or implausible "
                f"values (|x| > {IMPLAUSIBLE:g} normalized); check the store with `atmorep verify {path}` "
                "and rebuild it"
            )
    return None


def next_batch(batches):
    """The next batch; bad data found by a loader worker is named in one line, not the worker's traceback."""
    try:
        return next(batches)
    except DataError as exc:
        lines = str(exc).strip().splitlines()  # "Caught DataError in DataLoader worker ... DataError: MESSAGE"
        raise DataError(lines[-1].partition(": ")[2] if len(lines) > 1 else lines[0]) from None


def loader(dataset: WindowDataset, plan: list[list[int]], workers: int):
    """Batches for a list of micro-steps, read ahead by ``workers`` background processes."""
    return DataLoader(
        _Indexed(dataset),
        batch_sampler=plan,
        collate_fn=_Collate(dataset),
        num_workers=workers,
        prefetch_factor=4 if workers else None,  # batches read ahead per worker: rides out slow reads
        persistent_workers=False,  # one loader serves every step left (Trainer.steps): nothing to keep
        pin_memory=torch.cuda.is_available(),
    )


class BadSteps:
    """Steps in a row whose loss was not finite (skipped by the engine on every rank), and the bad data
    found in their batches: ``max_bad_steps`` of them stop the run, naming the data when any was bad."""

    def __init__(self, dataset: WindowDataset, limit: int, world: int):
        self.dataset, self.limit, self.world = dataset, limit, world
        self.count_in_a_row = 0
        self.suspect: str | None = None

    def count(self, applied: bool, step: int, seen: list[tuple[list[int], Batch]]) -> None:
        if applied:
            self.count_in_a_row = 0
            return
        self.count_in_a_row += 1
        found = next(filter(None, (bad_data(self.dataset, ix, b.tokens) for ix, b in seen)), None)
        if found:
            log.warning("step %d: non-finite loss from bad data: %s", step, found)
        self.suspect = found or self.suspect
        # Skips are agreed (finite_everywhere): every rank reaches the limit at this step and gathers.
        if self.count_in_a_row >= self.limit:
            named: list[str | None] = [None] * self.world
            dist.all_gather_object(named, self.suspect)  # every rank skipped this step: name what any one saw
            why = next(filter(None, named), None) or (
                "the inputs were finite and plausible, so the run diverged: lower train.lr or raise train.max_bad_steps"
            )
            raise TooManyBadSteps(
                f"{self.count_in_a_row} steps in a row had a non-finite loss (last at step {step}); {why}"
            )
