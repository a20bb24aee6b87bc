"""Which windows training reads, and in which order: drawn uniformly on the sphere, the same on every
rank, cut into global batches per optimizer step.

Everything here depends only on the seed, the step and the global batch size (never on how ranks
split the batch or on what was read before), which makes resumption exact and world-size changes
possible.
"""

from __future__ import annotations

import numpy as np

from atmorep.data.dataset import WindowDataset, WindowGrid
from atmorep.errors import DataError


class SphereSampler:
    """Per epoch ``samples`` distinct windows, drawn with the centre uniform on the sphere (latitude
    origin with probability ``grid.weights``), time origin uniform over the period (all stores) and
    longitude origin uniform.

    The epoch's draw (:meth:`order`) depends only on ``(seed, epoch)``, so every rank computes the
    same one (:class:`StepBatches` cuts it into per-rank slices). Draws repeat until ``samples``
    distinct windows are found (sequential sampling without replacement), so keep ``samples`` well
    below ``len(grid)`` or the weights flatten out.
    """

    def __init__(self, grid: WindowGrid, samples: int, seed: int, candidates: np.ndarray | None = None):
        n = len(grid) if candidates is None else len(candidates)
        if not 1 <= samples <= n:
            raise DataError(f"cannot draw {samples} distinct windows from {n} windows")
        self.grid, self.samples, self.seed = grid, samples, seed
        self.candidates = None if candidates is None else np.asarray(candidates, np.int64)

    def order(self, epoch: int) -> np.ndarray:
        """The epoch's ``samples`` distinct window indices, in draw order (the same on every rank)."""
        rng = np.random.default_rng([self.seed, epoch])
        if self.candidates is not None:
            # A subset of the grid (windows a task can use, a label budget): the same area weights, one draw.
            _, yi, _ = np.unravel_index(self.candidates, self.grid.shape)
            p = self.grid.weights[yi] / self.grid.weights[yi].sum()
            return rng.choice(self.candidates, size=self.samples, replace=False, p=p)
        nt, ny, nx = self.grid.shape
        chosen: list[np.ndarray] = []
        count = 0
        while count < self.samples:
            k = 2 * (self.samples - count) + 64  # drawn with room for duplicates: one round usually does
            # (t, y, x) as one C-order index of the grid, as WindowGrid.locate reads it
            flat = (rng.integers(nt, size=k) * ny + rng.choice(ny, size=k, p=self.grid.weights)) * nx + rng.integers(
                nx, size=k
            )
            _, first = np.unique(flat, return_index=True)
            flat = flat[np.sort(first)]  # first draws of each window, in draw order
            if chosen:  # without replacement across rounds too
                flat = flat[~np.isin(flat, np.concatenate(chosen))]
            chosen.append(flat[: self.samples - count])
            count += len(chosen[-1])
        return np.concatenate(chosen)


class StepBatches:
    """The windows of every (step, rank): a global batch per optimizer step, cut from each epoch's
    draw of windows (centres uniform on the sphere, :class:`SphereSampler`);
    rank r reads its own slice of each micro-step.

    An epoch is ``epoch_steps`` optimizer steps (the schedule's epoch). For a given global batch size
    (batch_size x accumulation x world), the global batch and so the sequence of windows depend only
    on the seed and the step: resumption is exact, and a resumed run on another world size with the
    same global batch size reads the same windows.
    """

    def __init__(
        self,
        dataset: WindowDataset,
        *,
        seed: int,
        global_batch: int,
        epoch_steps: int,
        candidates: np.ndarray | None = None,
    ):
        """``candidates``: the window indices to draw from (default every window of the dataset)."""
        n = len(dataset.windows) if candidates is None else len(candidates)
        if n < global_batch:
            raise ValueError(
                f"{n} training windows are fewer than one global batch of {global_batch} (train.batch_size x "
                "train.gradient_accumulation x ranks): lengthen train.start .. train.end, enlarge data.area or "
                "lower train.batch_size (`atmorep check` counts the windows before anything runs)"
            )
        self.global_batch = global_batch
        self.steps_per_epoch = min(epoch_steps, n // global_batch)  # an epoch draws distinct windows
        self.sampler = SphereSampler(dataset.grid, self.steps_per_epoch * global_batch, seed, candidates)
        self._epoch: int | None = None
        self._order = np.empty(0, np.int64)

    def order(self, epoch: int) -> np.ndarray:
        """The epoch's draw, computed once per epoch (steps are asked for in order)."""
        if epoch != self._epoch:
            self._epoch, self._order = epoch, self.sampler.order(epoch)
        return self._order

    def global_batch_of(self, step: int) -> np.ndarray:
        """Every window index of ``step`` (all ranks and micro-steps)."""
        epoch, pos = divmod(step, self.steps_per_epoch)
        return self.order(epoch)[pos * self.global_batch : (pos + 1) * self.global_batch]

    def indices(self, step: int, *, rank: int, world: int, micro_steps: int) -> list[list[int]]:
        """Window indices of ``rank`` for ``step``: one list per micro-step."""
        glob = self.global_batch_of(step)
        # Rank-major, then micro-steps: one rank with k micro-steps reads what k ranks read in one.
        return [part.tolist() for part in np.array_split(glob.reshape(world, -1)[rank], micro_steps)]


def tiling(dataset: WindowDataset, candidates: np.ndarray | None = None) -> np.ndarray:
    """Windows that tile the dataset without overlapping: origins a whole window apart along each axis,
    counted from the first origin of ``candidates`` (default every window) along time (per store),
    latitude and longitude; around a periodic longitude none runs past 360° onto the first. Sorted
    window indices, all of ``candidates``.

    Label budgets are counted in these: overlapping windows share tokens, so a fraction of them would
    label more than that fraction of the target's points."""
    grid = dataset.grid
    pool = np.arange(len(grid)) if candidates is None else np.unique(np.asarray(candidates, np.int64))
    if not len(pool):
        return pool
    store, t0, y0, x0 = grid.locate(pool)
    nt, ny, nx = dataset.extent
    keep = ((y0 - y0.min()) % ny == 0) & ((x0 - x0.min()) % nx == 0)
    for s in np.unique(store):  # windows never span two stores: each store's time origins count from its own first
        inside = store == s
        keep[inside] &= (t0[inside] - t0[inside].min()) % nt == 0
    ref = dataset.stores[dataset.fields[0]][0]
    if ref.periodic:
        keep &= x0 - x0.min() + nx <= len(ref.lons)
    return pool[keep]


def nested_budgets(
    dataset: WindowDataset, fractions, seed: int, candidates: np.ndarray | None = None
) -> dict[float, np.ndarray]:
    """Label budgets: for each fraction ``f`` of the ``n`` windows of :func:`tiling`, ``max(1, round(f n))``
    of them, nested (a budget holds every smaller one) and contiguous in time.

    The tiling's time slabs (its windows at one time origin) are taken in the order ``s, s+1, …, last,
    s-1, …, first`` from a slab ``s`` drawn from ``seed``, so that every budget is a run of consecutive
    slabs (and at most one partly used), as labels of a campaign come; within a slab the windows come in
    an order drawn from ``seed`` (scattered over the area). Returns fraction -> sorted window indices."""
    tiles = tiling(dataset, candidates)
    if not len(tiles):
        raise DataError("no window tiles the period: nothing to draw a label budget from")
    bad = [f for f in fractions if not 0 < f <= 1]
    if bad:
        raise ValueError(f"label budgets {bad} are not fractions in (0, 1]")
    rng = np.random.default_rng(seed)
    ti = np.unravel_index(tiles, dataset.grid.shape)[0]  # the time origin across stores, in time order
    slab = np.unique(ti)
    start = int(rng.integers(len(slab)))
    slabs = [*slab[start:], *slab[:start][::-1]]
    order = np.concatenate([rng.permutation(tiles[ti == t]) for t in slabs])
    return {f: np.sort(order[: max(1, round(f * len(order)))]) for f in fractions}
