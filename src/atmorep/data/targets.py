"""Windows of a downstream task: the backbone's input windows with the tokens of a target field, on
the same grid or on a finer grid that nests in the backbone's tokens (downscaling).

Nesting: the target grid's spacing is ``1/r`` of the backbone's (``r`` an integer per axis, 1 on the
same grid), both grids regular, the same time steps. Each backbone point owns the ``r`` target points
inside its cell (the ``[c - d/2, c + d/2)`` interval of width ``d`` around it, taken half-open along
the stores' axis order: north to south, west to east; a regular finer grid always has exactly ``r``
there), so a backbone token of ``(tt, ty, tx)`` points owns the target token of ``(tt, r*ty, r*tx)``
points covering its footprint (AtmoRep's downscaling: ERA5 tokens [3, 9, 9] at 0.25° against target
tokens [3, 36, 36] of a 6 km grid over the same footprint). A window is usable when its whole target
footprint lies on the target grid: a regional target on a global backbone uses the windows over it.

Legend: L levels, T/Y/X tokens in time/lat/lon of a window, P values per token, r points of the
target grid per backbone point and axis.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from atmorep.data.dataset import FieldStore, WindowDataset
from atmorep.data.tokens import TOKEN_INFO, tokenize
from atmorep.errors import DataError
from atmorep.formats.grib import periodic

#: key of the target's tokens in a task sample (beside the backbone's fields)
TARGET = "__target__"


def _spacing(values: np.ndarray, what: str) -> float:
    d = np.diff(values)
    if len(d) == 0 or not np.allclose(d, d[0], rtol=1e-6, atol=1e-9):
        raise DataError(f"{what} is not a regular grid (spacing {np.unique(np.round(d, 6))[:4]})")
    return float(d[0])


def _first_points(u: np.ndarray, r: int) -> np.ndarray:
    """First target index of each backbone point's cell; ``u`` the point's position in target indices."""
    # The r indices in (u - r/2, u + r/2]: a tolerance so that a point on a cell edge falls one way always.
    return (np.floor(u - r / 2 + 1e-6) + 1).astype(np.int64)


def _ratio(d_backbone: float, d_target: float, axis: str, who: str) -> int:
    r = abs(d_backbone) / abs(d_target)
    if abs(r - round(r)) > 1e-6 * r or round(r) < 1:
        raise DataError(
            f"{who}: the target's {axis} spacing {abs(d_target):g}° does not divide the backbone's "
            f"{abs(d_backbone):g}° (ratio {r:.4g}): a target grid must nest in the backbone's tokens"
        )
    return int(round(r))


@dataclass(frozen=True)
class Nesting:
    """Where each backbone row and column's cell starts on the target grid, and the ratios."""

    ratio: tuple[int, int]
    rows: np.ndarray  # first target row of each backbone row's cell (may lie off the target grid)
    cols: np.ndarray  # first target column of each backbone column's cell
    shape: tuple[int, int]  # target rows, columns
    periodic: bool  # the target's longitudes close the circle

    def rows_covered(self, y0: np.ndarray, ny: int) -> np.ndarray:
        """Backbone row origins whose ``ny`` rows own target rows all on the target grid."""
        first = self.rows[y0]
        return (first >= 0) & (first + ny * self.ratio[0] <= self.shape[0])

    def cols_covered(self, x0: np.ndarray, nx: int) -> np.ndarray:
        """Backbone column origins whose ``nx`` columns (wrapping on a global backbone) own contiguous
        target columns on the target grid."""
        if self.periodic:
            return np.ones(len(x0), bool)
        n = len(self.cols)
        cols = self.cols[(x0[:, None] + np.arange(nx)[None]) % n]
        contiguous = (np.diff(cols, axis=1) == self.ratio[1]).all(axis=1) if nx > 1 else np.ones(len(x0), bool)
        return contiguous & (cols[:, 0] >= 0) & (cols[:, 0] + nx * self.ratio[1] <= self.shape[1])


def nesting(
    lats_b: np.ndarray, lons_b: np.ndarray, lats_t: np.ndarray, lons_t: np.ndarray, who: str = "target"
) -> Nesting:
    """How the target grid nests in the backbone's (DataError naming ``who`` when it does not)."""
    dlat_b, dlat_t = _spacing(lats_b, "the backbone's latitudes"), _spacing(lats_t, f"{who}: latitudes")
    dlon_b, dlon_t = _spacing(lons_b, "the backbone's longitudes"), _spacing(lons_t, f"{who}: longitudes")
    if (dlat_b < 0) != (dlat_t < 0) or dlon_t < 0:
        raise DataError(f"{who}: latitudes or longitudes run the other way than the backbone's (shards run N->S, W->E)")
    ry, rx = _ratio(dlat_b, dlat_t, "latitude", who), _ratio(dlon_b, dlon_t, "longitude", who)
    u_lat = (lats_b - lats_t[0]) / dlat_t  # target row positions of the backbone rows
    u_lon = ((lons_b - lons_t[0]) % 360.0) / dlon_t
    wraps = periodic(lons_t)
    cols = _first_points(u_lon, rx)
    if wraps:
        cols = cols % len(lons_t)
    return Nesting((ry, rx), _first_points(u_lat, ry), cols, (len(lats_t), len(lons_t)), wraps)


class TaskDataset(WindowDataset):
    """The backbone's windows (``stores``: every backbone field) over ``start``..``end`` with the target
    field's tokens ``(L_t, T, Y, X, r^2 P)`` under :data:`TARGET` in every sample.

    ``grid_field`` is a field whose tokens the target's nest in (the head's inputs share its token grid).
    ``candidates``: the windows whose target footprint lies on the target grid (None: every window).
    """

    def __init__(
        self,
        stores: dict[str, list[str | Path]],
        target: Sequence[str | Path],
        num_tokens,
        start: np.datetime64,
        end: np.datetime64,
        grid_field: str,
    ):
        super().__init__(stores, num_tokens, start, end)
        self.targets = [FieldStore(p) for p in sorted(map(str, target))]
        self.grid_field = grid_field
        ref = self.stores[grid_field]
        self.target_field = self.targets[0].field
        if len(self.targets) != len(ref):
            raise DataError(
                f"the target '{self.target_field}' has {len(self.targets)} store(s), the backbone's "
                f"'{grid_field}' {len(ref)}: give one target store per year"
            )
        for b, t in zip(ref, self.targets):
            if not np.array_equal(b.times, t.times):
                raise DataError(f"{t.path}: the target's time steps differ from the backbone's ({b.path})")
        self.nest = nesting(
            ref[0].lats, ref[0].lons, self.targets[0].lats, self.targets[0].lons, str(self.targets[0].path)
        )
        tt, ty, tx = ref[0].token_size
        self.target_token_size = (tt, ty * self.nest.ratio[0], tx * self.nest.ratio[1])
        _, ny, nx = self.extent
        y_ok = self.nest.rows_covered(self.grid.y_origins, ny)
        x_ok = self.nest.cols_covered(self.grid.x_origins, nx)
        if not (y_ok.any() and x_ok.any()):
            raise DataError(
                f"{self.targets[0].path}: no window of the backbone's grid has its target footprint on the "
                f"target grid ({self.nest.shape[0]} x {self.nest.shape[1]} points at 1/{self.nest.ratio} of "
                "the backbone's spacing): the target grid does not nest in the backbone's tokens here"
            )
        self.candidates = None
        if not (y_ok.all() and x_ok.all()):
            ok = np.broadcast_to(y_ok[None, :, None] & x_ok[None, None, :], self.grid.shape)
            self.candidates = np.flatnonzero(ok)

    @property
    def usable(self) -> np.ndarray:
        """Every usable window index."""
        return np.arange(len(self)) if self.candidates is None else self.candidates

    def target_indices(self, i: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Target-store indices (time, lat, lon) of every target point of window ``i``."""
        w = self.grid[int(i)]
        nt, ny, nx = self.extent
        ry, rx = self.nest.ratio
        y, x = self.nest.rows[w.y0], self.nest.cols[w.x0]
        cols = np.arange(x, x + nx * rx)
        return np.arange(w.t0, w.t0 + nt), np.arange(y, y + ny * ry), cols % self.nest.shape[1]

    def target_store(self, i: int) -> FieldStore:
        return self.targets[self.grid[int(i)].store]

    def __getitem__(self, i: int) -> dict[str, tuple[np.ndarray, np.ndarray]]:
        out = super().__getitem__(i)
        w, store = self.grid[int(i)], self.target_store(i)
        t, y, x = self.target_indices(i)
        T, Y, X = self.tokens[self.grid_field]
        if store.token_size == self.target_token_size:  # the dense reader when the chunks are its tokens
            tokens = store.read_tokens(w.t0, int(y[0]), int(x[0]), T, Y, X)
        else:
            tokens = tokenize(store.read(w.t0, len(t), int(y[0]), len(y), int(x[0]), len(x)), self.target_token_size)
        info = np.zeros((*tokens.shape[:4], len(TOKEN_INFO)), np.float32)  # the head reads no token info
        out[TARGET] = (tokens.astype(np.float32, copy=False), info)
        return out

    def where(self, i: int, field: str) -> tuple[str, str]:
        if field != TARGET:
            return super().where(i, field)
        store = self.target_store(i)
        _, y, x = self.target_indices(i)
        when = np.datetime_as_string(store.times[self.grid[int(i)].t0], "h")
        return str(store.path), (f"window {int(i)} at {when}, target rows {y[0]}..{y[-1]}, columns {x[0]}..{x[-1]}")
