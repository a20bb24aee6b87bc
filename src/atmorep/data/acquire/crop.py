"""Cutting ``data.area`` out of a bigger regular lat/lon grid.

:func:`crop_indices` is pure index arithmetic on coordinates, so that every source cuts the same
way whatever it reads (GRIB from a mirror, NetCDF, zarr) and acquire's grid check can ask whether an
area fits before anything is read. The area's edges must be grid points: a cut never interpolates.
:func:`crop_message` cuts one GRIB message and keeps its identity (parameter, level, times, member),
rewriting it in canonical scanning order with its values as 32-bit IEEE floats: the canonical values
are float32 already, so the cut decodes bit for bit to what reading the bigger grid and cutting it
gives (packing them again would round them a second time).
"""

from __future__ import annotations

import numpy as np

from atmorep import geometry
from atmorep.errors import DataError
from atmorep.formats import grib


def crop_indices(lats, lons, area) -> tuple[np.ndarray, np.ndarray]:
    """Rows and columns of a regular lat/lon grid that make up ``area`` = (north, west, south, east).

    ``lats`` may run either way, ``lons`` may use 0..360 or -180..180 and be global or regional. The
    returned indices order the cut north to south and west to east, contiguously across 0° or across
    the file's own seam (a UK area -10..2°E from a global 0..360 grid takes columns 350..357.5 then
    0..2). The area's edges must be grid points of the file; an area outside the file's extent is
    refused naming both extents. Pure index arithmetic, shared by every source that crops.
    """
    rows, cols, offset, span, dlon, inside = _cut(lats, lons, area)
    lats, lons = np.asarray(lats, float), np.asarray(lons, float)
    north, west, south, east = (float(v) for v in area)
    eps = 1e-6
    if not inside:
        closed = len(lons) > 1 and abs(len(lons) * dlon - 360.0) < eps
        raise DataError(
            f"data.area lat {north:g}..{south:g}, lon {west:g}..{east:g} is not inside the files' "
            f"extent lat {lats.max():g}..{lats.min():g}, lon {_lon_extent(lons, closed)}"
        )
    edges = {
        "north": (north, lats[rows[0]]),
        "south": (south, lats[rows[-1]]),
        "west": (0.0, offset[cols[0]]),
        "east": (span, offset[cols[-1]]),
    }
    for name, (want, got) in edges.items():
        if abs(want - got) > eps:
            step = abs(float(lats[1] - lats[0])) if name in ("north", "south") and len(lats) > 1 else dlon
            raise DataError(
                f"data.area {name} edge {area[('north', 'west', 'south', 'east').index(name)]:g} is "
                f"not a grid point of the files' {step:g}° grid (choose area edges on the grid)"
            )
    return rows, cols


def holds(lats, lons, area) -> bool:
    """Whether a regular grid's extent holds ``area`` (its edges may still miss grid points)."""
    return _cut(lats, lons, area)[-1]


def _cut(lats, lons, area):
    """rows, columns, columns' offsets east of the west edge, the area's width, the grid's step and
    whether the grid's extent holds the area."""
    lats, lons = np.asarray(lats, float), np.asarray(lons, float)
    north, west, south, east = (float(v) for v in area)
    eps = 1e-6  # degrees: coordinates that went through float arithmetic compare equal within it
    lon_ext = np.mod(lons, 360.0)
    dlon = abs(float(lons[1] - lons[0])) if len(lons) > 1 else 0.0
    closed = len(lons) > 1 and abs(len(lons) * dlon - 360.0) < eps
    # Degrees east of the west edge to the east edge (% 360 across 0°; -180..180 is the whole circle).
    span = geometry.lon_span(west, east, dlon)
    # The +eps/-eps keeps a column a hair west of the edge at offset ~0, not ~360.
    offset = np.mod(lon_ext - west + eps, 360.0) - eps  # east of the west edge, in [-eps, 360 - eps)
    cols = np.flatnonzero(offset <= span + eps)
    # By offset, not by index: the cut runs west to east across 0° or the file's seam.
    cols = cols[np.argsort(offset[cols], kind="stable")]
    rows = np.flatnonzero((lats <= north + eps) & (lats >= south - eps))
    rows = rows[np.argsort(-lats[rows], kind="stable")]
    want_cols = int(round(span / dlon)) + 1 if dlon else 1
    inside = not (
        south > north + eps
        or not len(rows)
        or not len(cols)
        or lats.max() < north - eps
        or lats.min() > south + eps
        # A regional file may lack columns of the area; a global one has every longitude.
        or (not closed and len(cols) < want_cols)
    )
    return rows, cols, offset, span, dlon, inside


def _lon_extent(lons: np.ndarray, closed: bool) -> str:
    if closed:
        return f"{lons.min():g}..{lons.max():g} (global)"
    return f"{lons[0]:g}..{lons[-1]:g}"


def area_indices(lats, lons, area) -> tuple[np.ndarray, np.ndarray]:
    """:func:`crop_indices` of ``area``, or every row and column when there is no area (``data.area`` null)."""
    if area is None:
        return np.arange(len(lats)), np.arange(len(lons))
    return crop_indices(lats, lons, area)


def is_whole(grid: grib.Grid, rows: np.ndarray, cols: np.ndarray) -> bool:
    """True when ``rows`` and ``cols`` are the whole grid in its own order (nothing to cut)."""
    return (
        len(rows) == grid.ny
        and len(cols) == grid.nx
        and np.array_equal(rows, np.arange(grid.ny))
        and np.array_equal(cols, np.arange(grid.nx))
    )


def describe_cut(grid: grib.Grid, area, rows: np.ndarray, cols: np.ndarray) -> dict:
    """What was cut from where, for the unit's provenance."""
    return {
        "area": list(area),
        "from": grid.describe(),
        "from_extent": {
            "lat": [float(grid.lats[0]), float(grid.lats[-1])],
            "lon": [float(grid.lons[0]), float(grid.lons[-1])],
        },
        "rows": [int(rows[0]), int(rows[-1])],
        "columns": [int(cols[0]), int(cols[-1])],
    }


def crop_message(message: bytes, header: grib.Header, rows: np.ndarray, cols: np.ndarray, area) -> bytes:
    """The message cut to ``area``: same identity (parameter, level, times, member), canonical scanning,
    values as 32-bit IEEE so that they decode to exactly what reading the bigger grid gives."""
    import eccodes

    grid = header.grid
    with grib.handle(message) as gid:
        # float32 (canonical) widened to float64 exactly; 32-bit IEEE below stores them back unchanged.
        values = grid.to_canonical(grib.values(gid, header))[np.ix_(rows, cols)].astype(np.float64)
        west = float(area[1])  # a grid point (crop_indices); the cut keeps the area's longitude convention
        east = west + grid.dlon * (len(cols) - 1)
        if header.edition == 2:  # GRIB2 longitudes are unsigned
            west, east = west % 360.0, east % 360.0
        # The values are in canonical order now: north to south, west to east, rows consecutive.
        for key, value in (
            ("Ni", len(cols)),
            ("Nj", len(rows)),
            ("iScansNegatively", 0),
            ("jScansPositively", 0),
            ("jPointsAreConsecutive", 0),
            ("latitudeOfFirstGridPointInDegrees", float(grid.lats[rows[0]])),
            ("latitudeOfLastGridPointInDegrees", float(grid.lats[rows[-1]])),
            ("longitudeOfFirstGridPointInDegrees", west),
            ("longitudeOfLastGridPointInDegrees", east),
        ):
            eccodes.codes_set(gid, key, value)
        eccodes.codes_set(gid, "packingType", "grid_ieee")
        eccodes.codes_set(gid, "precision", 1)
        grib.set_values(gid, values.ravel())
        return eccodes.codes_get_message(gid)
