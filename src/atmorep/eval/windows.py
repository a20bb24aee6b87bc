"""Which windows evaluation reads: by the valid time of their last step, at random, or tiling the globe.

Everything that knows how :class:`~atmorep.data.dataset.WindowDataset` enumerates its windows
(``dataset.windows``: time positions across stores, then latitude, then longitude origins, C order)
lives here, and every index is checked against ``dataset.windows[i]``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from atmorep.config import parse_time
from atmorep.data.dataset import WindowDataset


@dataclass(frozen=True)
class TimePosition:
    """One time origin of the dataset: the store (year), the first step and the valid time of the last."""

    position: int
    store: int
    t0: int
    last_time: np.datetime64


def time_positions(dataset: WindowDataset) -> list[TimePosition]:
    """Every time origin of the dataset, in the order of its windows."""
    grid = dataset.windows
    field = dataset.fields[0]
    nt = dataset.extent[0]
    out: list[TimePosition] = []
    for s, origins in enumerate(grid.t_origins):
        times = dataset.stores[field][s].times
        first = len(out)  # positions count on across stores, as the dataset's window indices do
        out += [TimePosition(first + k, s, int(t0), times[int(t0) + nt - 1]) for k, t0 in enumerate(origins)]
    return out


def window_index(dataset: WindowDataset, position: int, y0: int, x0: int) -> int:
    """Index of the window at time position ``position`` and grid origin (``y0``, ``x0``)."""
    grid = dataset.windows
    yi = np.flatnonzero(grid.y_origins == y0)
    # Origins are kept in [0, nlon); a tile past the last column wraps.
    xi = np.flatnonzero(grid.x_origins == x0 % len(dataset.stores[dataset.fields[0]][0].lons))
    if not (len(yi) and len(xi)):
        raise ValueError(
            f"no window has its origin at latitude row {y0}, longitude column {x0} "
            f"(origins step {dataset.step[1:]} points)"
        )
    index = int(np.ravel_multi_index((position, yi[0], xi[0]), grid.shape))
    # The C-order assumption above, checked against the dataset itself.
    w = dataset.windows[index]
    assert (w.y0, w.x0 % len(dataset.stores[dataset.fields[0]][0].lons)) == (
        y0,
        x0 % len(dataset.stores[dataset.fields[0]][0].lons),
    ), (w, y0, x0)
    return index


def at_times(dataset: WindowDataset, times: tuple[str, ...]) -> list[TimePosition]:
    """The time positions whose last valid time is one of ``times`` (all of them when empty)."""
    positions = time_positions(dataset)
    if not times:
        return positions
    wanted = {parse_time(t) for t in times}
    chosen = [p for p in positions if p.last_time.astype("datetime64[s]") in wanted]
    found = {p.last_time.astype("datetime64[s]") for p in chosen}
    missing = sorted(str(t) for t in wanted - found)
    if missing:
        last = [str(p.last_time)[:16] for p in positions]
        raise ValueError(
            f"evaluate.times {missing}: no complete window ends then inside evaluate.start..end "
            f"(windows end at {', '.join(last[:12])}{' ...' if len(last) > 12 else ''})"
        )
    return chosen


def sample(dataset: WindowDataset, positions: list[TimePosition], *, samples: int, seed: int) -> np.ndarray:
    """``samples`` distinct windows (all if fewer) at the given time positions, seeded, sorted."""
    per_time = dataset.windows.shape[1] * dataset.windows.shape[2]
    # Time is the slowest axis: the windows of position p are one contiguous run of indices.
    candidates = np.concatenate([np.arange(p.position * per_time, (p.position + 1) * per_time) for p in positions])
    rng = np.random.default_rng(seed)
    # Sorted: the products list samples in index order, and reads go forward through the stores.
    return np.sort(rng.choice(candidates, size=min(samples, len(candidates)), replace=False))


@dataclass(frozen=True)
class Tile:
    """One window of a global tiling: its index and its origin (rows, columns) on the store grid."""

    index: int
    position: int
    y0: int
    x0: int


def tiles(dataset: WindowDataset, position: TimePosition, overlap_tokens: tuple[int, int]) -> list[Tile]:
    """Windows covering every latitude row and longitude column at one time (AtmoRep ``set_global``).

    Rows step by the window height minus the overlap, plus a last row touching the southern edge;
    columns step likewise and wrap around the globe (the last column overlaps the first).
    """
    _, ny, nx = dataset.extent
    sy, sx = dataset.step[1:]
    nlat = len(dataset.stores[dataset.fields[0]][0].lats)
    nlon = len(dataset.stores[dataset.fields[0]][0].lons)
    field_ty, field_tx = dataset.token_sizes[dataset.fields[0]][1:]
    oy, ox = overlap_tokens[0] * field_ty, overlap_tokens[1] * field_tx
    # Steps are multiples of the dataset's origin step: every tile must be an existing window.
    dy, dx = _step(ny - oy, sy), _step(nx - ox, sx)
    if dy <= 0 or dx <= 0:
        raise ValueError(
            f"evaluate.token_overlap {list(overlap_tokens)} leaves no step between tiles of {ny} x {nx} points"
        )
    rows = cover(0, nlat, ny, dy, sy, nlat, periodic=False)
    cols = cover(0, nlon, nx, dx, sx, nlon, periodic=True)
    return [Tile(window_index(dataset, position.position, y, x), position.position, y, x) for y in rows for x in cols]


def cover(lo: int, hi: int, size: int, stride: int, step: int, length: int, periodic: bool) -> list[int]:
    """Origins (points, multiples of ``step``) of windows of ``size`` points that cover points ``lo..hi-1``
    of an axis of ``length`` points, ``stride`` apart (AtmoRep ``set_global``, for any range).

    A range that fits in one window gets one window, as near centred on it as the origins allow. Else
    origins start at or before ``lo`` and step by ``stride``; the last is pulled back so that its window
    ends at ``hi`` (more overlap there), except around a whole periodic axis, where it runs on past the
    end onto the first (origins are then taken modulo ``length`` by the reader). On a bounded axis
    every window lies inside ``0..length``; a range no such window covers is refused.
    """
    stride = _step(stride, step)
    if stride <= 0 or size <= 0:
        raise ValueError(f"windows of {size} points {stride} points apart cover nothing")
    whole = periodic and lo <= 0 and hi >= length
    last = None if periodic else _step(length - size, step)  # the last origin inside the axis
    if last is not None and (lo < 0 or last < 0 or hi > last + size):
        raise ValueError(
            f"points {lo}..{hi - 1} of an axis of {length} cannot be covered by windows of {size} points "
            f"whose origins lie every {step} points inside it"
        )
    first = 0 if whole else (lo // step) * step
    final = -(-(hi - size) // step) * step  # the first origin whose window reaches hi
    if final <= first and not whole:  # one window: centred between the origins that cover the range
        return [min(max(round((lo + hi - size) / 2 / step) * step, final), first)]
    out = [first]
    while out[-1] + size < hi:
        out.append(out[-1] + stride if whole else min(out[-1] + stride, final))
    return out


def _step(points: int, step: int) -> int:
    """The largest multiple of ``step`` not above ``points``."""
    return (points // step) * step
