"""What a (field, month) of GRIB must contain, and the checks that hold a file against it.

An :class:`Expectation` comes from the config (field, level type, levels, time steps, grid, area);
:func:`check_headers` holds the message headers of a file against it and names every mismatch:
wrong field, wrong level type, unexpected or missing levels, times outside the month or campaign,
missing or duplicated (level, time) combinations, grids that differ from the config or each other.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from atmorep import geometry
from atmorep.config import DataConfig
from atmorep.data.acquire.crop import crop_indices
from atmorep.errors import DataError
from atmorep.formats.grib import SURFACE_TYPES, Grid, Header, Level

LEVEL_KINDS = {
    "ml": "model levels (hybrid)",
    "pl": "pressure levels (isobaricInhPa)",
    "sfc": f"a single-level field ({', '.join(SURFACE_TYPES)})",
}


def describe_kind(kind: str) -> str:
    return LEVEL_KINDS.get(kind, f"{kind} levels")


def config_level(level: Level, kind: str) -> int | None:
    """The config level a message's level stands for when its level type is the field's ``kind``
    (``FieldSpec.kind``: 'ml', 'pl', 'sfc' or an ecCodes typeOfLevel), else None."""
    if kind in ("ml", "pl"):
        return level.level if level.kind == kind else None
    if kind == "sfc":
        # Level 0 whatever the message says (surface, or heightAboveGround 2 for GRIB2's 2t).
        return 0 if level.kind == "sfc" else None
    return level.level if level.type_of_level == kind else None


def level_types(headers) -> str:
    """'isobaricInhPa 300..1000, tropopause 0': the level types (and levels) of messages."""
    by_type: dict[str, set[int]] = {}
    for h in headers:
        by_type.setdefault(h.level.type_of_level, set()).add(h.level.level)
    return ", ".join(f"{t} {min(v)}" + (f"..{max(v)}" if len(v) > 1 else "") for t, v in sorted(by_type.items()))


def why_twice(headers) -> str:
    """What tells apart messages that claim the same (valid time, level), and the key that chooses."""
    # In the order a user meets them: level types first, then members, then forecast runs.
    levels = {h.level for h in headers}
    if len(levels) > 1:
        return (
            f"on {', '.join(sorted(lv.describe() for lv in levels))}: name one in data.fields.<field>.levtype "
            "(and levels)"
        )
    if len({h.number for h in headers}) > 1:
        return f"ensemble members {sorted({h.number for h in headers})}: choose one with acquire.files.member"
    if len({h.base for h in headers}) > 1:
        runs = ", ".join(f"base {str(h.base)[:16]} step {h.step_hours:g} h" for h in headers)
        return f"forecast steps with the same valid time ({runs}): set acquire.files.same_valid_time"
    return "identical identity, different values"


@dataclass(frozen=True)
class Expectation:
    field: str
    kind: str  # 'sfc', 'ml', 'pl' or an ecCodes typeOfLevel (FieldSpec.kind)
    levels: tuple[int, ...]
    first: np.datetime64  # allowed valid times: [first, last]
    last: np.datetime64
    times: np.ndarray | None = None  # every expected valid time (None: irregular, any in [first, last])
    grid: tuple[float, float] | None = None
    area: tuple[float, float, float, float] | None = None
    regrid: str = "none"

    @classmethod
    def for_month(cls, data: DataConfig, field: str, month: str, regrid: str = "none") -> Expectation:
        if field not in data.fields:
            raise DataError(f"field '{field}' is not in data.fields ({', '.join(data.fields)})")
        spec = data.fields[field]
        start, end = data.period
        m0 = np.datetime64(month, "M").astype("datetime64[s]")
        # Inclusive bounds, as data.period's: the month's last second, not the next month's first.
        m1 = (np.datetime64(month, "M") + 1).astype("datetime64[s]") - np.timedelta64(1, "s")
        times = data.times(month) if data.step_hours else None
        return cls(
            field,
            spec.kind,
            tuple(spec.levels),
            max(start, m0),
            min(end, m1),
            times,
            data.grid,
            data.area,
            regrid,
        )

    @property
    def window(self) -> str:
        return f"{str(self.first)[:16]} .. {str(self.last)[:16]}"

    def time_index(self, headers_times: np.ndarray) -> np.ndarray:
        """The time axis of the data: the expected steps, or the distinct times found (irregular)."""
        if self.times is not None:
            return self.times
        return np.unique(headers_times)


def matches(h: Header, field: str) -> bool:
    return field in (h.param.name, h.param.short_name)


def check_grid(grid: Grid, exp: Expectation, where: str, crop: bool = False) -> None:
    """The grid is usable and is the configured one (resolution, extent); with ``crop`` it need only
    contain data.area (see :func:`crop_indices`)."""
    if (why := grid.unusable(exp.regrid)) is not None:
        raise DataError(f"{where}: field '{exp.field}' is on {why}")
    if not grid.regular:
        return  # Gaussian grids are regridded onto data.grid by the source
    if exp.grid is not None and (abs(grid.dlat - exp.grid[0]) > 1e-6 or abs(grid.dlon - exp.grid[1]) > 1e-6):
        raise DataError(
            f"{where}: field '{exp.field}' is on a {grid.describe()} grid; data.grid expects "
            f"{exp.grid[0]:g}°x{exp.grid[1]:g}°"
        )
    # With crop the file may be larger (it is cut later); without, it must be the area exactly.
    if exp.area is not None and crop:
        try:
            crop_indices(grid.lats, grid.lons, exp.area)
        except DataError as exc:
            raise DataError(f"{where}: field '{exp.field}': {exc}") from None
    elif exp.area is not None:
        north, west, south, east = exp.area
        want = _area_lons(west, east, grid.dlon)
        if (
            abs(grid.lats[0] - north) > 1e-6
            or abs(grid.lats[-1] - south) > 1e-6
            or len(want) != grid.nx
            # Compared mod 360 and sorted: the config and the file may use different longitude conventions.
            or not np.allclose(np.sort(want), np.sort(np.mod(grid.lons, 360.0)), atol=1e-6)
        ):
            raise DataError(
                f"{where}: field '{exp.field}' covers lat {grid.lats[0]:g}..{grid.lats[-1]:g}, "
                f"lon {grid.file_lons[0]:g}..{grid.file_lons[1]:g}; data.area expects "
                f"lat {north:g}..{south:g}, lon {west:g}..{east:g}"
            )
    elif exp.grid is not None and not grid.is_global:
        raise DataError(
            f"{where}: field '{exp.field}' covers lat {grid.lats[0]:g}..{grid.lats[-1]:g}, lon "
            f"{grid.file_lons[0]:g}..{grid.file_lons[1]:g}, not the whole globe (data.area is null)"
        )


def _area_lons(west: float, east: float, dlon: float) -> np.ndarray:
    # An area across 0° (west 350, east 10) spans 20°, not -340°; -180..180 is the whole circle.
    n = int(round(geometry.lon_span(west, east, dlon) / dlon)) + 1 if dlon else 1
    return np.round(np.mod(west + dlon * np.arange(n), 360.0), 9)


def describe_missing(levels, times: np.ndarray, filled_TL: np.ndarray) -> list[str]:
    """One line per level that misses time steps, naming the first ones."""
    lines = []
    for il, lev in enumerate(levels):
        gone = np.flatnonzero(~filled_TL[:, il])
        if len(gone):
            shown = ", ".join(str(times[i])[:16] for i in gone[:8]) + (", ..." if len(gone) > 8 else "")
            lines.append(f"level {lev}: {len(gone)} of {len(times)} time steps missing: {shown}")
    return lines


def check_headers(headers: list[Header], exp: Expectation, where: str) -> None:
    """Validate what arrived: only the field, its levels and level type, its times, one grid."""
    if not headers:
        raise DataError(f"{where}: no GRIB message")
    # Field, then level type, levels, times, grid, then completeness: a wrong file fails on its most
    # basic mismatch, not on a consequence of it.
    others = sorted({f"{h.param.name} (paramId {h.param.param_id})" for h in headers if not matches(h, exp.field)})
    if others:
        raise DataError(f"{where}: holds {', '.join(others)}; expected only field '{exp.field}'")
    if foreign := [h for h in headers if config_level(h.level, exp.kind) is None]:
        raise DataError(
            f"{where}: field '{exp.field}' is on {level_types(foreign)} levels; the config expects "
            f"{describe_kind(exp.kind)} (data.fields.{exp.field}.levtype)"
        )
    mine = [lev for h in headers if (lev := config_level(h.level, exp.kind)) is not None]  # all: none is foreign
    levels = sorted(set(mine))
    if extra := [lev for lev in levels if lev not in exp.levels]:
        raise DataError(
            f"{where}: field '{exp.field}' has levels {extra} the config does not expect (expects {list(exp.levels)})"
        )
    times = np.array([h.time for h in headers])
    outside = (times < exp.first) | (times > exp.last)
    if outside.any():
        raise DataError(f"{where}: field '{exp.field}' has time {str(times[outside][0])[:16]} outside {exp.window}")
    grid = headers[0].grid
    check_grid(grid, exp, where)
    for h in headers:
        if h.grid.key != grid.key:
            raise DataError(
                f"{where}: field '{exp.field}' mixes grids: {grid.describe()} and "
                f"{h.grid.describe()} (message {h.index + 1})"
            )
    axis = exp.time_index(times)
    filled = np.zeros((len(axis), len(exp.levels)), int)
    it = np.searchsorted(axis, times)
    # np.minimum keeps the lookup in range; a time past the axis end is caught by the first term.
    off = (it >= len(axis)) | (axis[np.minimum(it, len(axis) - 1)] != times)
    if off.any():
        raise DataError(
            f"{where}: field '{exp.field}' has time {str(times[off][0])[:16]}, not on the "
            f"{int((axis[1] - axis[0]) / np.timedelta64(1, 'h')) if len(axis) > 1 else '?'}-hourly steps"
        )
    il = np.array([exp.levels.index(lev) for lev in mine])
    # add.at, not filled[it, il] += 1: repeated indices must each count, or duplicates would go unseen.
    np.add.at(filled, (it, il), 1)
    if (filled > 1).any():
        t, lv = np.argwhere(filled > 1)[0]
        same = [h for h, i, j in zip(headers, it, il) if (i, j) == (t, lv)]
        raise DataError(
            f"{where}: field '{exp.field}' level {exp.levels[lv]} time {str(axis[t])[:16]} appears "
            f"{filled[t, lv]} times ({why_twice(same)})"
        )
    if missing := describe_missing(exp.levels, axis, filled > 0):
        raise DataError(
            f"{where}: field '{exp.field}' has {len(headers)} messages, expected "
            f"{filled.size} ({len(exp.levels)} levels x {len(axis)} times); " + "; ".join(missing)
        )
