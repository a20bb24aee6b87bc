"""AtmoRep's statistics of one (field, month): mean and std per level (*global*) or per grid point
(*local*), accumulated in float64 with Chan's pairwise form of Welford's algorithm (:class:`Moments`),
their application ``x' = (x - mean) / std`` and its inverse.

Legend: T time steps, L levels, Y latitude rows, X longitude columns.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np
import xarray as xr

from atmorep.errors import DataError

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Stats:
    """Mean and std of one field and month: shape (L,) for global, (L, Y, X) for local.

    Also a stack of them, one per time step of a window (:meth:`FieldStore.denormalize
    <atmorep.data.dataset.FieldStore.denormalize>`): (L, T) for global, (L, T, Y, X) for local.
    """

    method: str
    mean: np.ndarray
    std: np.ndarray

    def broadcast(self) -> tuple[np.ndarray, np.ndarray]:
        """Mean and std as 4-d arrays: against (T, L, Y, X) for one month's statistics, against
        (..., L, T, Y, X) for a stack of them."""

        def shape(a: np.ndarray) -> np.ndarray:
            a = a[..., None, None] if self.method == "global" else a  # one value for the whole grid
            # Leading 1s only up to 4-d: a stack's extra axes are already in place.
            return a.reshape((1,) * (4 - a.ndim) + a.shape)

        return shape(self.mean), shape(self.std)

    def invert(self, normalized: np.ndarray) -> np.ndarray:
        """Physical values ``x' * std + mean``: the inverse of :func:`apply`, exact to float32 round-off."""
        mean, std = self.broadcast()
        return normalized * std + mean


@dataclass
class Moments:
    """Count, mean and sum of squared deviations per level and grid point (float64), mergeable.

    ``update`` folds in a block of time steps and ``merge`` another Moments with Chan et al.'s
    pairwise formulas (the parallel form of Welford's algorithm): no sum of squares of raw values,
    so no cancellation for fields like geopotential whose mean dwarfs their spread.
    """

    count: int
    mean: np.ndarray  # L Y X
    m2: np.ndarray  # L Y X

    @classmethod
    def empty(cls, L: int, Y: int, X: int) -> Moments:
        return cls(0, np.zeros((L, Y, X)), np.zeros((L, Y, X)))

    def update(self, block_TLYX: np.ndarray) -> None:
        x = block_TLYX.astype(np.float64)  # our own copy: worked on in place, no second block-sized array
        mean_b = x.mean(axis=0)
        np.subtract(x, mean_b, out=x)
        np.square(x, out=x)
        self._merge(x.shape[0], mean_b, x.sum(axis=0))

    def merge(self, other: Moments) -> None:
        self._merge(other.count, other.mean, other.m2)

    def _merge(self, n_b: int, mean_b: np.ndarray, m2_b: np.ndarray) -> None:
        if n_b == 0:
            return
        # Chan, Golub & LeVeque (1979): mean += delta n_b / n; M2 += M2_b + delta^2 n_a n_b / n.
        n = self.count + n_b
        delta = mean_b - self.mean
        self.mean += delta * (n_b / n)
        np.square(delta, out=delta)  # squared in place only after the mean has used it
        self.m2 += m2_b + delta * (self.count * n_b / n)  # self.count is still n_a here
        self.count = n

    def stats(self, method: str) -> Stats:
        """AtmoRep statistics: population std, as numpy's ``std``; global over all points and times."""
        if self.count == 0:
            raise DataError("no data to compute statistics from")
        if method == "global":
            # Every point has the same count, so the mean of the means is the level's mean, and the
            # level's M2 is the points' M2 plus their means' spread around it (law of total variance).
            gmean = self.mean.mean(axis=(1, 2))
            dev = self.mean - gmean[:, None, None]
            var = (self.m2.sum(axis=(1, 2)) + self.count * (dev * dev).sum(axis=(1, 2))) / (
                self.count * self.mean[0].size
            )
            return Stats("global", gmean.astype(np.float32), np.sqrt(var).astype(np.float32))
        if method == "local":
            std = np.sqrt(self.m2 / self.count)
            # a grid point that never changes (e.g. no rain all month) would divide by zero
            floor = 1e-3 * self.stats("global").std.astype(np.float64)[:, None, None]  # per level, in its units
            return Stats("local", self.mean.astype(np.float32), np.maximum(std, floor).astype(np.float32))
        raise ValueError(f"unknown normalization method {method!r}")

    def level_summary(self, levels) -> dict:
        g = self.stats("global")
        return {int(lev): {"mean": float(g.mean[i]), "std": float(g.std[i])} for i, lev in enumerate(levels)}


def statistics(values_TLYX: np.ndarray, method: str) -> Stats:
    """AtmoRep statistics of one month held in memory, accumulated in float64."""
    m = Moments.empty(*values_TLYX.shape[1:])
    m.update(values_TLYX)
    return m.stats(method)


def apply(values_TLYX: np.ndarray, stats: Stats, out: np.ndarray | None = None) -> np.ndarray:
    mean, std = stats.broadcast()
    # float32 throughout: the stored values are float32, and ``out`` may be the input block itself.
    out = np.subtract(values_TLYX, mean, out=out, dtype=np.float32)
    return np.divide(out, std, out=out)


def read_stats(ds: xr.Dataset) -> Stats:
    return Stats(ds.attrs["normalization"], ds["mean"].values, ds["std"].values)
