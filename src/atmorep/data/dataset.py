"""Load: token-aligned windows of several fields from the shard stores, and a rank-aware sampler.

A *window* is the space-time neighbourhood of one sample: ``num_tokens * token_size`` points in
(time, lat, lon) on every level, with periodic longitude. Window origins lie on the token grid, so a
window reads whole chunks of the stores. Everything here is numpy; ``train/`` wraps it for torch.

Legend: N windows, L levels, T/Y/X tokens in time/lat/lon, tt/ty/tx points per token,
P = tt*ty*tx values per token, I = 8 token-info values.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import zarr

from atmorep.data import zarrio
from atmorep.data.grib import DataError

log = logging.getLogger(__name__)

TOKEN_INFO = ("year", "day_of_year", "hour", "level", "colatitude", "longitude", "level_again", "resolution")


class FieldStore:
    """One field's shard store (one year): random window reads and the statistics to undo them."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        ds = zarrio.open_dataset(self.path)
        self.field = ds.attrs["field"]
        self.token_size = tuple(ds.attrs["token_size"])
        self.normalization = ds.attrs["normalization"]
        self.times = ds["time"].values
        self.levels = ds["level"].values.astype(int)
        self.lats = ds["latitude"].values.astype(np.float64)
        self.lons = ds["longitude"].values.astype(np.float64)
        self.months = ds["month"].values.astype("datetime64[M]")
        self.mean = ds["mean"].values
        self.std = ds["std"].values
        self.data = zarr.open_array(self.path / "data", mode="r")

    @property
    def resolution(self) -> float:
        return float(abs(self.lats[1] - self.lats[0]))

    def read(self, t0: int, nt: int, y0: int, ny: int, x0: int, nx: int) -> np.ndarray:
        """Values ``(L, nt, ny, nx)``; longitude wraps, costing at most two contiguous reads."""
        nlon = len(self.lons)
        x0 %= nlon
        if x0 + nx <= nlon:
            return self.data[t0:t0 + nt, :, y0:y0 + ny, x0:x0 + nx].transpose(1, 0, 2, 3)
        head = self.data[t0:t0 + nt, :, y0:y0 + ny, x0:]
        tail = self.data[t0:t0 + nt, :, y0:y0 + ny, :x0 + nx - nlon]
        return np.concatenate([head, tail], axis=-1).transpose(1, 0, 2, 3)

    def denormalize(self, values_LTYX: np.ndarray, t_idx: np.ndarray, y_idx: np.ndarray,
                    x_idx: np.ndarray) -> np.ndarray:
        """Physical values from normalized ``(..., L, T, Y, X)`` at the given store indices."""
        month = np.searchsorted(self.months, self.times[t_idx].astype("datetime64[M]"))
        if self.normalization == "global":
            mean = self.mean[month][:, :, None, None].transpose(1, 0, 2, 3)  # L T 1 1
            std = self.std[month][:, :, None, None].transpose(1, 0, 2, 3)
        else:
            sel = np.ix_(month, np.arange(len(self.levels)), y_idx, x_idx)
            mean = self.mean[sel].transpose(1, 0, 2, 3)  # L T Y X
            std = self.std[sel].transpose(1, 0, 2, 3)
        return values_LTYX * std + mean


def tokenize(values_LTYX: np.ndarray, token_size) -> np.ndarray:
    """``(L, T*tt, Y*ty, X*tx)`` -> ``(L, T, Y, X, P)`` without Python loops."""
    tt, ty, tx = token_size
    L, nt, ny, nx = values_LTYX.shape
    v = values_LTYX.reshape(L, nt // tt, tt, ny // ty, ty, nx // tx, tx)
    return v.transpose(0, 1, 3, 5, 2, 4, 6).reshape(L, nt // tt, ny // ty, nx // tx, tt * ty * tx)


def untokenize(tokens_LTYXP: np.ndarray, token_size) -> np.ndarray:
    """Inverse of :func:`tokenize`."""
    tt, ty, tx = token_size
    L, T, Y, X, _ = tokens_LTYXP.shape
    v = tokens_LTYXP.reshape(L, T, Y, X, tt, ty, tx).transpose(0, 1, 4, 2, 5, 3, 6)
    return v.reshape(L, T * tt, Y * ty, X * tx)


@dataclass(frozen=True)
class Window:
    """Origin of a sample in store indices (on the token grid) and the store (year) it reads."""

    store: int
    t0: int
    y0: int
    x0: int


class WindowDataset:
    """Windows of all fields over one period; ``dataset[i]`` is sample ``i`` as numpy arrays.

    ``stores`` maps field -> shard store paths (one per year, same years for every field).
    """

    def __init__(self, stores: dict[str, list[str | Path]], num_tokens, start: np.datetime64,
                 end: np.datetime64):
        self.fields = list(stores)
        self.stores = {f: [FieldStore(p) for p in sorted(map(str, paths))] for f, paths in stores.items()}
        self.num_tokens = tuple(num_tokens)
        first = self.stores[self.fields[0]]
        for f in self.fields[1:]:
            for a, b in zip(first, self.stores[f]):
                if not (np.array_equal(a.times, b.times) and np.array_equal(a.lats, b.lats)
                        and np.array_equal(a.lons, b.lons)):
                    raise DataError(f"fields '{first[0].field}' and '{f}' are not on the same grid and times "
                                    f"({a.path} vs {b.path})")
        self.extent = {f: tuple(n * s for n, s in zip(self.num_tokens, self.stores[f][0].token_size))
                       for f in self.fields}
        self.windows = self._enumerate(start, end)
        if not self.windows:
            raise DataError(f"no complete window of {self.extent[self.fields[0]][0]} time steps lies inside "
                            f"{start} … {end}")

    def _enumerate(self, start, end) -> list[Window]:
        # every field covers the same neighbourhood; origins on the coarsest token grid of all fields
        step = np.lcm.reduce([self.stores[f][0].token_size for f in self.fields], axis=0)
        nt, ny, _ = self.extent[self.fields[0]]
        out = []
        for s, store in enumerate(self.stores[self.fields[0]]):
            ts = [t0 for t0 in range(0, len(store.times) - nt + 1, step[0])
                  if store.times[t0] >= start and store.times[t0 + nt - 1] <= end]
            ys = range(0, len(store.lats) - ny + 1, step[1])
            xs = range(0, len(store.lons), step[2])
            out += [Window(s, t, y, x) for t in ts for y in ys for x in xs]
        return out

    def __len__(self) -> int:
        return len(self.windows)

    def __getitem__(self, i: int) -> dict[str, tuple[np.ndarray, np.ndarray]]:
        """field -> (tokens ``(L, T, Y, X, P)``, token info ``(L, T, Y, X, I)``), float32."""
        w = self.windows[i]
        out = {}
        for f in self.fields:
            store = self.stores[f][w.store]
            nt, ny, nx = self.extent[f]
            values = store.read(w.t0, nt, w.y0, ny, w.x0, nx)
            out[f] = (tokenize(values, store.token_size).astype(np.float32),
                      self.token_info(store, w).astype(np.float32))
        return out

    def indices(self, i: int, field: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Store indices (time, lat, lon) of every point of window ``i`` for ``field``."""
        w = self.windows[i]
        store = self.stores[field][w.store]
        nt, ny, nx = self.extent[field]
        return (np.arange(w.t0, w.t0 + nt), np.arange(w.y0, w.y0 + ny),
                np.arange(w.x0, w.x0 + nx) % len(store.lons))

    def token_info(self, store: FieldStore, w: Window) -> np.ndarray:
        """The 8 token-info values per token, scaled to O(1): ``(L, T, Y, X, I)``."""
        tt, ty, tx = store.token_size
        T, Y, X = self.num_tokens
        last = store.times[w.t0 + tt - 1 + tt * np.arange(T)]  # valid time of each token's last step
        year = last.astype("datetime64[Y]")
        doy = (last.astype("datetime64[D]") - year).astype(int)
        hour = (last.astype("datetime64[h]") - last.astype("datetime64[D]")).astype(int)
        colat = 90.0 - store.lats[w.y0 + ty * np.arange(Y) + ty // 2]
        lon = store.lons[(w.x0 + tx * np.arange(X) + tx // 2) % len(store.lons)]
        L = len(store.levels)
        info = np.zeros((L, T, Y, X, len(TOKEN_INFO)), np.float64)
        info[..., 0] = ((year.astype(int) + 1970 - 2000) / 100.0)[None, :, None, None]
        info[..., 1] = (doy / 365.0)[None, :, None, None]
        info[..., 2] = (hour / 24.0)[None, :, None, None]
        info[..., 3] = info[..., 6] = (store.levels / 137.0)[:, None, None, None]
        info[..., 4] = (colat / 180.0)[None, None, :, None]
        info[..., 5] = (lon / 360.0)[None, None, None, :]
        info[..., 7] = store.resolution
        return info


class RankSampler:
    """Window indices for one rank: a seeded permutation per epoch, split round-robin across ranks.

    Ranks never see the same window within an epoch; every rank gets the same count (the tail that
    does not divide evenly is dropped), so collective steps stay in lockstep.
    """

    def __init__(self, n: int, seed: int, rank: int = 0, world: int = 1, shuffle: bool = True):
        if n < world:
            raise DataError(f"{n} windows cannot feed {world} ranks")
        self.n, self.seed, self.rank, self.world, self.shuffle = n, seed, rank, world, shuffle
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return self.n // self.world

    def __iter__(self):
        order = (np.random.default_rng([self.seed, self.epoch]).permutation(self.n) if self.shuffle
                 else np.arange(self.n))
        return iter(order[: len(self) * self.world][self.rank::self.world].tolist())
