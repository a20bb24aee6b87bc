"""Gaussian grids (reduced or regular) onto a global regular lat/lon grid, by linear interpolation.

Each Gaussian latitude row is interpolated periodically in longitude onto the target longitudes,
then every target column linearly in latitude between the two Gaussian rows around it. North of
the first row and south of the last the pole value is the zonal mean of that row (a field is
single-valued at a pole), and the interpolation runs between row and pole. Linear interpolation
is exact for fields linear in (lat, lon) and second-order accurate for smooth ones; it does not
conserve integrals (use a conservative remapper for precipitation budgets).
"""

from __future__ import annotations

import numpy as np

from atmorep.errors import DataError
from atmorep.formats.grib import Grid


def target_grid(dlat: float, dlon: float) -> tuple[np.ndarray, np.ndarray]:
    """Latitudes 90 -> -90 and longitudes 0 -> 360-dlon of a global regular grid."""
    # Both poles are rows (+1); 360° is not a column (it is 0° again).
    ny, nx = int(round(180 / dlat)) + 1, int(round(360 / dlon))
    return np.linspace(90.0, -90.0, ny), np.arange(nx) * dlon


def gaussian_to_regular(values: np.ndarray, grid: Grid, lats_out: np.ndarray, lons_out: np.ndarray) -> np.ndarray:
    """``(Y, X)`` float32 on (lats_out north->south, lons_out) from a Gaussian grid's value sequence."""
    if grid.kind == "reduced_gg":
        pl = np.asarray(grid.pl)
    elif grid.kind == "regular_gg":
        pl = np.full(grid.ny, grid.nx)
    else:
        raise DataError(f"cannot regrid {grid.describe()}: only Gaussian grids are regridded")
    if pl.sum() != values.size:
        raise DataError(
            f"{grid.describe()}: {values.size} values for {pl.sum()} grid points "
            "(regional Gaussian grids are not supported)"
        )
    # Row by row, with each row's own point count (pl): a reduced grid thins its rows towards the poles.
    rows_src = np.split(np.asarray(values, np.float64), np.cumsum(pl)[:-1])
    if grid.flip_rows:  # rows stored south to north
        rows_src = rows_src[::-1]
        pl = pl[::-1]
    lats = np.asarray(grid.lats, float)  # north -> south
    rows = np.empty((len(lats), len(lons_out)))
    for j, (row, n) in enumerate(zip(rows_src, pl)):
        # A global Gaussian row starts at 0° with n equal steps; period: between the last point and 360°.
        rows[j] = np.interp(lons_out, 360.0 * np.arange(n) / n, row, period=360.0)
    # add the poles as rows holding the zonal mean of the outermost rows
    lat_ext = np.concatenate([[90.0], lats, [-90.0]])
    rows_ext = np.concatenate(
        [
            rows[:1].mean(axis=1, keepdims=True) + 0 * rows[:1],  # "+ 0 * row": the mean broadcast to a row
            rows,
            rows[-1:].mean(axis=1, keepdims=True) + 0 * rows[-1:],
        ]
    )
    out = np.empty((len(lats_out), len(lons_out)), np.float32)
    # np.interp needs increasing coordinates: interpolate in -lat
    for i in range(len(lons_out)):
        out[:, i] = np.interp(-np.asarray(lats_out), -lat_ext, rows_ext[:, i])
    return out
