"""Geometry of a campaign, said once: the window a sample covers, the regular grid of ``data.area`` and
the windows a period holds.

Pure arithmetic on numbers and coordinates, no data read. The loader (:class:`atmorep.data.dataset.
WindowDataset`), the workflow-start checks (:mod:`atmorep.preflight`), the capacity planner
(:mod:`atmorep.plan`), the model a configuration trains (:mod:`atmorep.modelfile`) and the sources
(their grid after ``data.area``) all call these functions, so that what ``atmorep check`` accepts is
what the stages do.

- :func:`window_shape`: the neighbourhood every field covers (``model.num_tokens`` tokens of the finest
  field), each field's tokens over it, and the spacing of window origins (on every field's token grid);
- :func:`regular_grid`: the (latitudes, longitudes) of a regular grid, global or cut to ``data.area``;
- :func:`time_origins` / :func:`space_origins` / :func:`count_windows`: where windows start in time and
  on the grid, and how many a period holds (what training draws its global batches from).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from atmorep.config import Config, ConfigError

#: degrees: coordinates that went through float arithmetic compare equal within this
EPS = 1e-6


@dataclass(frozen=True)
class WindowShape:
    """The neighbourhood of one sample in grid points along (time, lat, lon)."""

    extent: tuple[int, int, int]  # points every field covers: num_tokens x the finest token size
    finest: tuple[int, int, int]  # the finest token size per axis (the tokens num_tokens counts)
    step: tuple[int, int, int]  # origin spacing: the lcm of the fields' token sizes (whole tokens of each)
    tokens: dict[str, tuple[int, int, int]]  # tokens per axis of each field whose tokens tile the extent
    untiled: dict[str, tuple[int, int, int]]  # token size of each field whose tokens do not tile it


def window_shape(token_sizes: Mapping[str, Sequence[int]], num_tokens: Sequence[int]) -> WindowShape:
    """The window of fields with these (time, lat, lon) token sizes; ``num_tokens`` counts the finest
    field's tokens, and a field with coarser tokens cuts the same neighbourhood into fewer of them."""
    sizes = np.array([tuple(s) for s in token_sizes.values()], np.int64)
    finest = sizes.min(axis=0)
    extent = np.asarray(num_tokens, np.int64) * finest
    tokens, untiled = {}, {}
    for f, size in zip(token_sizes, sizes):
        if np.any(extent % size):
            untiled[f] = _ints(size)
        else:
            tokens[f] = _ints(extent // size)
    return WindowShape(_ints(extent), _ints(finest), _ints(np.lcm.reduce(sizes, axis=0)), tokens, untiled)


def _ints(a) -> tuple[int, int, int]:
    x, y, z = (int(v) for v in a)
    return x, y, z


def config_window(cfg: Config) -> WindowShape:
    """The window of a run configuration (``shard.token_size`` per field, ``model.num_tokens``)."""
    return window_shape({f: cfg.shard.token_size_for(f) for f in cfg.data.fields}, cfg.model.num_tokens)


def tokens_per_field(cfg: Config) -> dict[str, tuple[int, int, int]]:
    """Tokens per sample and level of each field; a field whose tokens do not tile the window is a
    :class:`ConfigError` (refused before anything runs)."""
    shape = config_window(cfg)
    for f, size in shape.untiled.items():
        raise ConfigError(
            f"shard token size {list(size)} of field '{f}' does not tile the neighbourhood "
            f"{list(shape.extent)} (model.num_tokens x the finest token size)"
        )
    return shape.tokens


def lon_span(west: float, east: float, dlon: float) -> float:
    """Degrees east from the west edge to the east edge of an area: % 360 across 0° (west 350, east 10
    spans 20°); an area of 360° or more (e.g. -180..180) is the whole circle, 360 - dlon (its last column
    one step short of the first)."""
    if east - west >= 360.0 - dlon - EPS:
        return 360.0 - dlon
    return (east - west) % 360.0


def regular_grid(step: tuple[float, float], area: Sequence[float] | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(latitudes north to south, longitudes west to east) of a regular ``step`` = (dlat, dlon) grid:
    global (90..-90, 0..360 - dlon) without ``area``, else the points of ``area`` = (north, west, south,
    east), both edges included (as the cds source and :func:`atmorep.data.acquire.crop.crop_indices` cut)."""
    dlat, dlon = (float(v) for v in step)
    north, west, south, east = (float(v) for v in area) if area is not None else (90.0, 0.0, -90.0, 360.0 - dlon)
    lats = north - dlat * np.arange(int(round((north - south) / dlat)) + 1)
    lons = west + dlon * np.arange(int(round(lon_span(west, east, dlon) / dlon)) + 1)
    return lats, lons


def time_origins(times: np.ndarray, steps: int, spacing: int, start: np.datetime64, end: np.datetime64) -> np.ndarray:
    """Indices into ``times`` (one store, one year) of the first steps of the windows of ``steps``
    steps whose origins lie every ``spacing`` steps from the first and which lie wholly inside
    ``start`` .. ``end`` (their first and their last step)."""
    t = np.arange(0, len(times) - steps + 1, spacing)
    return t[(times[t] >= start) & (times[t + steps - 1] <= end)]


def space_origins(
    shape: tuple[int, int], extent: tuple[int, int], spacing: tuple[int, int], periodic: bool
) -> tuple[np.ndarray, np.ndarray]:
    """(row, column) origins of windows of ``extent`` points on a grid of ``shape`` = (rows, columns),
    every ``spacing`` points; on a periodic (global) grid windows wrap around in longitude, on a
    regional one they lie inside it."""
    (nlat, nlon), (ny, nx), (sy, sx) = shape, extent, spacing
    x = np.arange(0, nlon, sx) if periodic else np.arange(0, nlon - nx + 1, sx)
    return np.arange(0, nlat - ny + 1, sy), x


def count_windows(
    times_by_store: Sequence[np.ndarray],
    window: WindowShape,
    grid_shape: tuple[int, int],
    periodic: bool,
    start: np.datetime64,
    end: np.datetime64,
) -> int:
    """Windows of ``start`` .. ``end`` on stores with these valid times (one per year: a window never
    spans two) and this grid (after the shard crop): what training draws its global batches from and
    evaluation its samples."""
    (nt, ny, nx), (st, sy, sx) = window.extent, window.step
    y, x = space_origins(grid_shape, (ny, nx), (sy, sx), periodic)
    per_time = len(y) * len(x)
    return per_time * sum(len(time_origins(t, nt, st, start, end)) for t in times_by_store if len(t))


def global_batch(batch_size: int, gradient_accumulation: int, ranks: int) -> int:
    """Windows per optimizer step: ``batch_size`` per rank and micro-step (train.batch_size)."""
    return math.prod((batch_size, gradient_accumulation, ranks))
