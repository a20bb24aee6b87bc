"""The grid a GRIB message stores its values on, and the map from its order to the canonical one.

Every message is turned into one orientation, whatever its scanning mode, edition or longitude
convention, so that everything downstream (windows, crops, statistics) indexes one layout:

    latitude north -> south, longitude ascending (in [0, 360) on a global grid; a region stays
    contiguous, e.g. -10..2)

The map is worked out once per distinct grid (the decoder caches a :class:`Grid` by
``md5GridSection``) and applied per message as views, a rotation or a column gather, never by
sorting coordinates. A regional grid keeps its columns contiguous across 0° (as cfgrib does): 0..2
glued in front of 350..360 would put a seam through the middle of every window. Gaussian and
spherical-harmonic grids are described, not mapped: :meth:`Grid.unusable` says what to do with them.

Legend: Y latitude rows, X longitude columns.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, field

import numpy as np

from atmorep.errors import DataError


def periodic(lons) -> bool:
    """True when equally spaced longitudes close the circle (a global grid): values wrap around."""
    # nx * dlon == 360, not lons[-1] - lons[0]: the last column is one step short of the first + 360.
    return len(lons) > 1 and abs(len(lons) * abs(float(lons[1] - lons[0])) - 360.0) < 1e-6


# eq=False: dataclass equality over array fields is ambiguous; grids are compared by ``key``.
@dataclass(frozen=True, eq=False)
class Grid:
    """A grid as a message stores it, and how its values map to canonical order.

    For a regular lat/lon grid ``lats`` run north to south and ``lons`` ascend: in [0, 360) on a global
    grid; contiguously from the west edge on a regional one, in [0, 360) unless the region crosses 0°
    (then the west edge is negative: -10..2, never 0..2 glued to 350..360).
    ``file_lats``/``file_lons`` keep the file's own convention (for reports).
    """

    kind: str
    ny: int = 0
    nx: int = 0
    dlat: float = 0.0
    dlon: float = 0.0
    lats: np.ndarray = field(default_factory=lambda: np.zeros(0))
    lons: np.ndarray = field(default_factory=lambda: np.zeros(0))
    file_lats: tuple[float, float] = (0.0, 0.0)
    file_lons: tuple[float, float] = (0.0, 0.0)
    flip_rows: bool = False
    column_order: np.ndarray | None = None
    transpose: bool = False
    gaussian_n: int = 0
    pl: np.ndarray | None = None  # points per row of a reduced Gaussian grid (in the file's row order)
    truncation: int = 0

    @property
    def regular(self) -> bool:
        return self.kind == "regular_ll"

    @functools.cached_property
    def key(self) -> tuple:
        """Equal for grids whose canonical coordinates are equal."""
        if not self.regular:
            return (self.kind, self.ny, self.nx, self.gaussian_n, self.truncation)
        # Corners rounded to 1e-6 degrees (GRIB2's unit; GRIB1's is 1e-3): decoding noise does not
        # split one grid in two.
        return (
            self.kind,
            self.ny,
            self.nx,
            round(float(self.lats[0]), 6),
            round(float(self.lats[-1]), 6),
            round(float(self.lons[0]), 6),
            round(float(self.lons[-1]), 6),
        )

    @property
    def is_global(self) -> bool:
        return (
            self.regular
            and abs(self.lats[0] - 90) < 1e-6
            and abs(self.lats[-1] + 90) < 1e-6
            and abs(self.nx * self.dlon - 360) < 1e-6
        )

    def describe(self) -> str:
        if self.kind == "regular_ll":
            res = f"{self.dlat:g}°x{self.dlon:g}°" if self.ny > 1 and self.nx > 1 else "single point"
            return f"{self.ny}x{self.nx} {res}"
        if self.kind in ("reduced_gg", "regular_gg"):
            return f"{self.kind} N{self.gaussian_n} ({self.ny} latitudes)"
        if self.kind == "sh":
            return f"spherical harmonics T{self.truncation}"
        return self.kind

    def unusable(self, regrid: str = "none") -> str | None:
        """Why values on this grid cannot be used (None if they can, possibly after ``regrid``)."""
        if self.kind == "regular_ll":
            return None
        if self.kind == "sh":
            return (
                f"spherical-harmonic coefficients ({self.describe()}), not grid-point values: ask the "
                "CDS/MARS for a grid (grid=0.25/0.25) or transform them first"
            )
        if self.kind in ("reduced_gg", "regular_gg"):
            if regrid == "linear":
                return None
            return f"a Gaussian grid ({self.describe()}): set acquire.regrid: linear to interpolate it onto data.grid"
        return f"an unsupported grid type '{self.kind}' (only regular lat/lon and Gaussian grids)"

    def to_canonical(self, values: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
        """``(Y, X)`` float32 in canonical order from the message's value sequence."""
        if not self.regular:
            raise DataError(f"cannot decode values on {self.describe()} without regridding")
        # jPointsAreConsecutive: the values run down columns, so they reshape as (X, Y).
        v = values.reshape((self.nx, self.ny) if self.transpose else (self.ny, self.nx))
        if self.transpose:
            v = v.T
        if self.flip_rows:
            v = v[::-1]
        if out is None:
            out = np.empty((self.ny, self.nx), np.float32)
        if self.column_order is None:
            out[...] = v
        elif self.roll:  # the usual case: a global -180..180 grid is a rotation
            # Two slice copies instead of a gather: no index array, contiguous reads.
            k = self.roll
            out[:, : self.nx - k] = v[:, k:]
            out[:, self.nx - k :] = v[:, :k]
        else:
            out[...] = v[:, self.column_order]
        return out

    @functools.cached_property
    def roll(self) -> int:
        """k when canonical column j is file column (j + k) mod nx, else 0."""
        if self.column_order is None:
            return 0
        k = int(self.column_order[0])
        return k if np.array_equal(self.column_order, np.roll(np.arange(self.nx), -k)) else 0


def grid_from_handle(gid) -> Grid:
    """The grid of the message behind the ecCodes handle ``gid``."""
    import eccodes

    kind = eccodes.codes_get_string(gid, "gridType")
    if kind == "regular_ll":
        return _regular_ll(gid)
    if kind in ("reduced_gg", "regular_gg"):
        lats = np.sort(np.asarray(eccodes.codes_get_array(gid, "distinctLatitudes"), float))[::-1]  # N -> S
        # Only described here: data/acquire/regrid.py interpolates these grids, nothing maps them.
        pl = eccodes.codes_get_array(gid, "pl", int) if kind == "reduced_gg" else None
        return Grid(
            kind,
            ny=len(lats),
            nx=int(eccodes.codes_get_long(gid, "Ni")) if kind == "regular_gg" else 0,
            lats=lats,
            gaussian_n=int(eccodes.codes_get_long(gid, "N")),
            pl=None if pl is None else np.asarray(pl),
            file_lats=(float(lats[0]), float(lats[-1])),
            flip_rows=bool(eccodes.codes_get_long(gid, "jScansPositively")),
        )
    if kind in ("sh",):
        return Grid(kind, truncation=int(eccodes.codes_get_long(gid, "pentagonalResolutionParameterJ")))
    return Grid(kind)


def _regular_ll(gid) -> Grid:
    import eccodes

    def get(key):
        return eccodes.codes_get_double(gid, key)

    ni, nj = eccodes.codes_get_long(gid, "Ni"), eccodes.codes_get_long(gid, "Nj")
    lat1, lat2 = get("latitudeOfFirstGridPointInDegrees"), get("latitudeOfLastGridPointInDegrees")
    lon1, lon2 = get("longitudeOfFirstGridPointInDegrees"), get("longitudeOfLastGridPointInDegrees")
    i_neg = bool(eccodes.codes_get_long(gid, "iScansNegatively"))
    j_cons = bool(eccodes.codes_get_long(gid, "jPointsAreConsecutive"))
    # From the corners and counts, not the stored increments: those are rounded (GRIB1 to 1e-3 degrees).
    file_lats = np.linspace(lat1, lat2, nj)
    # Modulo 360: the last corner may be below the first (a global grid from 180° round to 179.75°).
    span = ((lon1 - lon2) if i_neg else (lon2 - lon1)) % 360.0
    if ni > 1 and span == 0:
        span = 360.0 - 360.0 / ni  # a global grid whose last longitude repeats the first modulo 360
    dlon = span / (ni - 1) if ni > 1 else 0.0
    file_lons = lon1 + (-1 if i_neg else 1) * dlon * np.arange(ni)
    # Rounded to 1e-9: the arithmetic's last bits vanish, so equal grids give equal coordinates.
    if periodic(file_lons):  # global: canonical [0, 360)
        lons = np.round(np.mod(file_lons, 360.0), 9)
    else:  # regional: contiguous west to east, in [0, 360) unless it crosses 0° (then from a negative west)
        west = float(np.mod(file_lons.min(), 360.0))
        if west + span >= 360.0 - 1e-9:
            west -= 360.0
        lons = np.round(west + (file_lons - file_lons.min()), 9)
    order = np.argsort(lons, kind="stable")
    flip = nj > 1 and file_lats[1] > file_lats[0]  # south to north in the file (jScansPositively)
    lats = file_lats[::-1] if flip else file_lats
    dlat = abs(lats[1] - lats[0]) if nj > 1 else 0.0
    return Grid(
        "regular_ll",
        ny=nj,
        nx=ni,
        dlat=round(dlat, 9),
        dlon=round(dlon, 9),
        lats=lats,
        lons=lons[order],
        file_lats=(lat1, lat2),
        file_lons=(float(file_lons.min()), float(file_lons.max())),
        flip_rows=flip,
        column_order=None if np.array_equal(order, np.arange(ni)) else order,
        transpose=j_cons,
    )
