"""Load: token-aligned windows of several fields from the shard stores.

A *window* is the space-time neighbourhood of one sample, the same for every field: ``num_tokens *
token_size`` points in (time, lat, lon) of the field with the finest tokens, on every level; longitude
wraps around on a global grid, and windows lie inside a regional one. A field with coarser tokens
cuts the same neighbourhood into fewer tokens (AtmoRep: [12, 6, 12] x [3, 9, 9] and [12, 3, 6] x
[3, 18, 18]). Window origins lie on the grid of every field's tokens, so a window reads whole
chunks of the stores, through :class:`~atmorep.formats.zarrv3.DenseShards` (strided copies out of
memory maps, no per-token work).

Everything here is numpy; ``train/`` wraps it for torch. Training draws windows with
:mod:`atmorep.data.sampler` (area-weighted latitude, uniform time and longitude, distinct within an
epoch, disjoint across ranks); evaluation indexes :class:`WindowDataset` deterministically.

Legend: N windows, L levels, T/Y/X tokens in time/lat/lon, tt/ty/tx points per token,
P = tt*ty*tx values per token, I = 8 token-info values.
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from atmorep import geometry
from atmorep.data.normalize.statistics import Stats
from atmorep.data.tokens import TOKEN_INFO, TOKEN_INFO_OFFSET, TOKEN_INFO_SCALE, tokenize
from atmorep.errors import DataError
from atmorep.formats import zarrv3
from atmorep.formats.grib import periodic

log = logging.getLogger(__name__)


class FieldStore:
    """One field's shard store (one year): random window reads and the statistics to undo them."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        ds = zarrv3.open_dataset(self.path)
        self.field = ds.attrs["field"]
        self.token_size = tuple(ds.attrs["token_size"])
        self.normalization = ds.attrs["normalization"]
        self.times = ds["time"].values
        self.levels = ds["level"].values.astype(int)
        self.lats = ds["latitude"].values.astype(np.float64)
        self.lons = ds["longitude"].values.astype(np.float64)
        self.periodic = periodic(self.lons)  # a global grid: windows wrap around in longitude
        self.months = ds["month"].values.astype("datetime64[M]")
        self.mean = ds["mean"].values  # read once: denormalize indexes them per window
        self.std = ds["std"].values
        self._data, self._pid = zarrv3.open_array(self.path / "data"), os.getpid()
        self.dense = zarrv3.DenseShards.open(self.path / "data")  # None: read through zarr instead
        tt, ty, tx = self.token_size
        if self.dense is not None and (self.dense.chunk[0], self.dense.chunk[2], self.dense.chunk[3]) != (tt, ty, tx):
            log.warning(
                "%s: chunks %s are not tokens %s; reading through zarr", self.path, self.dense.chunk, self.token_size
            )
            self.dense = None

    @property
    def data(self):
        """The zarr array (reads of any origin); reopened fork-safe in a forked process."""
        if self._pid != os.getpid():
            log.warning(
                "%s: not a dense token store; forked loader workers read it through zarr-python's "
                "slow pipeline (rewrite it with `atmorep shard`)",
                self.path,
            )
            self._data, self._pid = zarrv3.open_array(self.path / "data", forked=True), os.getpid()
        return self._data

    @property
    def resolution(self) -> float:
        return float(abs(self.lats[1] - self.lats[0]))  # degrees; the grids are regular

    @property
    def bytes_read(self) -> int:
        """Bytes the direct reader took from the shard files in this process (index and chunks)."""
        return self.dense.bytes_read if self.dense is not None else 0

    def read(self, t0: int, nt: int, y0: int, ny: int, x0: int, nx: int) -> np.ndarray:
        """Values ``(L, nt, ny, nx)`` through zarr, any origin; longitude wraps on a global grid (at most
        two reads)."""
        nlon = len(self.lons)
        x0 = x0 % nlon if self.periodic else x0  # a global origin may lie past the last column, or below 0
        if x0 + nx <= nlon:
            return self.data[t0 : t0 + nt, :, y0 : y0 + ny, x0 : x0 + nx].transpose(1, 0, 2, 3)
        if not self.periodic or x0 < 0:
            raise IndexError(f"{self.path}: columns {x0}..{x0 + nx} lie outside the regional grid of {nlon}")
        head = self.data[t0 : t0 + nt, :, y0 : y0 + ny, x0:]
        tail = self.data[t0 : t0 + nt, :, y0 : y0 + ny, : x0 + nx - nlon]
        return np.concatenate([head, tail], axis=-1).transpose(1, 0, 2, 3)

    def read_tokens(self, t0: int, y0: int, x0: int, T: int, Y: int, X: int) -> np.ndarray:
        """Tokens ``(L, T, Y, X, P)`` of the window at a token-grid origin; longitude wraps on a global grid."""
        tt, ty, tx = self.token_size
        if self.dense is not None and not (t0 % tt or y0 % ty or x0 % tx):  # an origin on chunk boundaries
            try:  # chunks (T, Lc, Y, X, tt, cl, ty, tx): Lc chunks of cl levels each
                blk = self.dense.read(
                    (t0 // tt, 0, y0 // ty, x0 // tx),
                    (T, self.dense.grid[1], Y, X),
                    (False, False, False, self.periodic),  # only longitude wraps
                )
            except zarrv3.NotDense as exc:
                log.warning("%s; reading through zarr", exc)
                self.dense = None
            else:
                L = len(self.levels)
                # -> (Lc, cl, T, Y, X, tt, ty, tx); [:L] drops the padding of a last, partial level chunk
                return blk.transpose(1, 5, 0, 2, 3, 4, 6, 7).reshape(-1, T, Y, X, tt * ty * tx)[:L]
        return tokenize(self.read(t0, T * tt, y0, Y * ty, x0, X * tx), self.token_size)

    def denormalize(
        self, values_LTYX: np.ndarray, t_idx: np.ndarray, y_idx: np.ndarray, x_idx: np.ndarray
    ) -> np.ndarray:
        """Physical values from normalized ``(..., L, T, Y, X)`` at the given store indices."""
        # statistics are per month: each time step undone with its own month's
        month = np.searchsorted(self.months, self.times[t_idx].astype("datetime64[M]"))
        if self.normalization == "global":
            mean, std = self.mean[month].T, self.std[month].T  # L T
        else:
            sel = np.ix_(month, np.arange(len(self.levels)), y_idx, x_idx)
            mean = self.mean[sel].transpose(1, 0, 2, 3)  # L T Y X
            std = self.std[sel].transpose(1, 0, 2, 3)
        return Stats(self.normalization, mean, std).invert(values_LTYX)


@dataclass(frozen=True)
class Window:
    """Origin of a sample in store indices (on the token grid) and the store (year) it reads."""

    store: int
    t0: int
    y0: int
    x0: int


class WindowGrid(Sequence):
    """Every window origin of a dataset, enumerated lazily (store, then time, lat, lon; C order).

    ``t_origins[s]`` are store ``s``'s time origins; ``y_origins``/``x_origins`` are shared.
    ``weights`` (one per lat origin, summing to 1) is the area of the sphere each window centre
    stands for: ``sin(c + h) - sin(c - h)`` for centre latitude c and half the origin spacing h.
    """

    def __init__(self, t_origins: list[np.ndarray], y_origins: np.ndarray, x_origins: np.ndarray, weights: np.ndarray):
        self.t_origins = [np.asarray(t, np.int64) for t in t_origins]
        self.y_origins, self.x_origins = np.asarray(y_origins, np.int64), np.asarray(x_origins, np.int64)
        self.weights = np.asarray(weights, np.float64) / np.sum(weights)
        # Time origins of all stores on one axis: a window index is (time across years, lat, lon).
        self._store = np.concatenate([np.full(len(t), s) for s, t in enumerate(self.t_origins)]).astype(np.int64)
        self._t = np.concatenate(self.t_origins) if self.t_origins else np.zeros(0, np.int64)
        self.shape = (len(self._t), len(self.y_origins), len(self.x_origins))  # (time across stores, lat, lon)

    def __len__(self) -> int:
        return math.prod(self.shape)

    def locate(self, flat) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """(store, t0, y0, x0) of window indices ``flat`` (vectorized)."""
        ti, yi, xi = np.unravel_index(np.asarray(flat, np.int64), self.shape)
        return self._store[ti], self._t[ti], self.y_origins[yi], self.x_origins[xi]

    def __getitem__(self, i):
        if isinstance(i, slice):
            return [self[k] for k in range(*i.indices(len(self)))]
        if not -len(self) <= i < len(self):
            raise IndexError(f"window {i} of {len(self)}")
        s, t, y, x = (int(v) for v in self.locate(i % len(self)))
        return Window(s, t, y, x)


class WindowDataset:
    """Windows of all fields over one period; ``dataset[i]`` is sample ``i`` as numpy arrays.

    ``stores`` maps field -> shard store paths (one per year, same years for every field).
    ``num_tokens`` counts the tokens of the field(s) with the finest tokens; every field covers the
    same neighbourhood (``extent`` grid points), so a field with coarser tokens has fewer of them
    (``tokens[field]``).
    """

    def __init__(
        self, stores: Mapping[str, Sequence[str | Path]], num_tokens, start: np.datetime64, end: np.datetime64
    ):
        self.fields = list(stores)
        # Sorted paths: store k of every field is the same year (_check_grids holds them to it).
        self.stores = {f: [FieldStore(p) for p in sorted(map(str, paths))] for f, paths in stores.items()}
        self.num_tokens = tuple(num_tokens)
        self._check_grids()
        shape = geometry.window_shape({f: self.stores[f][0].token_size for f in self.fields}, self.num_tokens)
        self.extent = shape.extent
        for f, size in shape.untiled.items():
            raise DataError(
                f"field '{f}': tokens {size} do not tile the neighbourhood {self.extent} "
                f"(num_tokens {self.num_tokens} of the finest tokens {shape.finest})"
            )
        self.tokens = shape.tokens
        self.step = shape.step  # origins on every field's token grid
        self.grid = self._grid(start, end)
        self.windows = self.grid
        if not len(self.grid):
            grid = self.stores[self.fields[0]][0]
            raise DataError(
                f"no complete window of {self.extent} (time, lat, lon) points lies inside {start} … "
                f"{end} on the {len(grid.lats)} x {len(grid.lons)} grid of {grid.path}"
            )

    def _check_grids(self) -> None:
        first = self.stores[self.fields[0]]
        for f in self.fields[1:]:
            if len(self.stores[f]) != len(first):
                raise DataError(
                    f"fields '{self.fields[0]}' and '{f}' have {len(first)} and {len(self.stores[f])} stores"
                )
            for a, b in zip(first, self.stores[f]):
                if not (
                    np.array_equal(a.times, b.times)
                    and np.array_equal(a.lats, b.lats)
                    and np.array_equal(a.lons, b.lons)
                ):
                    raise DataError(
                        f"fields '{first[0].field}' and '{f}' are not on the same grid and times ({a.path} vs {b.path})"
                    )

    def _grid(self, start, end) -> WindowGrid:
        nt, ny, nx = self.extent
        st, sy, sx = self.step
        ref = self.stores[self.fields[0]]
        # windows never span two stores (years); the whole window inside the period
        t_origins = [geometry.time_origins(store.times, nt, st, start, end) for store in ref]
        lats, nlon = ref[0].lats, len(ref[0].lons)
        if ref[0].periodic and nlon % sx:
            raise DataError(
                f"{nlon} longitudes are not a whole number of {sx}-point window steps (lcm of the "
                "fields' lon token sizes); longitude is periodic"
            )
        y, x = geometry.space_origins((len(lats), nlon), (ny, nx), (sy, sx), ref[0].periodic)
        # Each lat origin stands for the band of sy rows around its window's centre; its area on the
        # sphere is proportional to the difference of the sines (clipped at the poles).
        centre = np.deg2rad((lats[y] + lats[y + ny - 1]) / 2)
        half = np.deg2rad(sy * ref[0].resolution / 2)
        hi, lo = np.minimum(centre + half, np.pi / 2), np.maximum(centre - half, -np.pi / 2)
        return WindowGrid(t_origins, y, x, np.sin(hi) - np.sin(lo))

    @property
    def token_sizes(self) -> dict[str, tuple[int, int, int]]:
        """Field -> (tt, ty, tx): what masking needs to coarsen tokens."""
        return {f: self.stores[f][0].token_size for f in self.fields}

    @property
    def bytes_read(self) -> int:
        """Bytes taken from the shard files by this process's direct reads."""
        return sum(s.bytes_read for stores in self.stores.values() for s in stores)

    def __len__(self) -> int:
        return len(self.grid)

    def __getitem__(self, i: int) -> dict[str, tuple[np.ndarray, np.ndarray]]:
        """field -> (tokens ``(L, T, Y, X, P)``, token info ``(L, T, Y, X, I)``), float32."""
        w = self.grid[int(i)]
        out = {}
        for f in self.fields:
            store = self.stores[f][w.store]
            tokens = store.read_tokens(w.t0, w.y0, w.x0, *self.tokens[f])
            out[f] = (tokens.astype(np.float32, copy=False), self.token_info(store, w).astype(np.float32))
        return out

    def where(self, i: int, field: str) -> tuple[str, str]:
        """(store path, "window i at TIME, lat A..B, lon C..D") of sample ``i`` of ``field``."""
        w = self.grid[int(i)]
        store = self.stores[field][w.store]
        nt, ny, nx = self.extent
        lons = store.lons[(w.x0 + np.array([0, nx - 1])) % len(store.lons)]  # a window may wrap past 360°
        when = np.datetime_as_string(store.times[w.t0], "h")
        return str(store.path), (
            f"window {int(i)} at {when}, lat {store.lats[w.y0]:g}.."
            f"{store.lats[w.y0 + ny - 1]:g}, lon {lons[0]:g}..{lons[1]:g}"
        )

    def indices(self, i: int, field: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Store indices (time, lat, lon) of every point of window ``i`` for ``field``."""
        w = self.grid[int(i)]
        store = self.stores[field][w.store]
        nt, ny, nx = self.extent
        return (np.arange(w.t0, w.t0 + nt), np.arange(w.y0, w.y0 + ny), np.arange(w.x0, w.x0 + nx) % len(store.lons))

    def token_info(self, store: FieldStore, w: Window) -> np.ndarray:
        """The 8 token-info values per token, scaled to O(1): ``(L, T, Y, X, I)``."""
        tt, ty, tx = store.token_size
        T, Y, X = (e // s for e, s in zip(self.extent, store.token_size))
        last = store.times[w.t0 + tt - 1 + tt * np.arange(T)]  # valid time of each token's last step
        year = last.astype("datetime64[Y]")
        doy = (last.astype("datetime64[D]") - year).astype(int)
        hour = (last.astype("datetime64[h]") - last.astype("datetime64[D]")).astype(int)
        colat = 90.0 - store.lats[w.y0 + ty * np.arange(Y) + ty // 2]  # the token's centre row and column
        lon = store.lons[(w.x0 + tx * np.arange(X) + tx // 2) % len(store.lons)]
        L = len(store.levels)
        info = np.zeros((L, T, Y, X, len(TOKEN_INFO)), np.float64)
        info[..., 0] = (year.astype(int) + 1970)[None, :, None, None]
        info[..., 1] = doy[None, :, None, None]
        info[..., 2] = hour[None, :, None, None]
        info[..., 3] = info[..., 6] = np.asarray(store.levels)[:, None, None, None]
        info[..., 4] = colat[None, None, :, None]
        info[..., 5] = lon[None, None, None, :]
        info[..., 7] = store.resolution
        return info * TOKEN_INFO_SCALE + TOKEN_INFO_OFFSET
