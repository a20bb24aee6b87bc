"""GRIB in and out: a streaming message reader on ecCodes, canonical grids, and a writer.

The reader splits a file into messages itself (one buffered read per block, hashing the bytes on
the way) and hands each message to ecCodes. It reads only cheap keys per message; the expensive
ecCodes *concepts* (paramId, shortName, typeOfLevel, units) are evaluated once per distinct raw
key and cached, and so is the grid (by ``md5GridSection``). Values come back in canonical order:

    latitude north -> south, longitude ascending (in [0, 360) on a global grid; a region stays
    contiguous, e.g. -10..2), float32, NaN where the bitmap says missing

whatever scanning mode, edition (GRIB1/GRIB2) or longitude convention (0..360, -180..180) the
message used. Only regular lat/lon grids decode directly; Gaussian grids need ``regrid`` and
spherical-harmonic coefficients are rejected with a message that says what to do.

Legend: T time steps, L levels, Y latitude rows, X longitude columns.
"""

from __future__ import annotations

import functools
import hashlib
import logging
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import xarray as xr

from atmorep.errors import DataError

log = logging.getLogger(__name__)


def periodic(lons) -> bool:
    """True when equally spaced longitudes close the circle (a global grid): values wrap around."""
    return len(lons) > 1 and abs(len(lons) * abs(float(lons[1] - lons[0])) - 360.0) < 1e-6


MISSING = 9999.0  # GRIB missingValue used with a bitmap for NaN points
_BLOCK = 16 << 20  # bytes per read while splitting a file


# --------------------------------------------------------------------------------------------
# Splitting a file into messages


@dataclass(frozen=True)
class Raw:
    """One GRIB message as bytes."""

    index: int
    offset: int
    length: int
    data: bytes


def _length(head: bytes, path: Path, index: int, offset: int) -> int:
    """Total length of the message starting with ``head`` (at least 16 bytes, or its start)."""
    if len(head) < 16:
        raise DataError(f"{path}: message {index + 1} is truncated (file ends at byte {offset + len(head)})")
    edition = head[7]
    if edition == 1:
        return int.from_bytes(head[4:7], "big")
    if edition == 2:
        return int.from_bytes(head[8:16], "big")
    raise DataError(f"{path}: message {index + 1} at byte {offset} has GRIB edition {edition} (only 1 and 2 exist)")


def _grib1_large_length(msg_head: bytes, length: int) -> int:
    """ECMWF's convention for GRIB1 messages over 8 MB: the 24-bit length counts 120-byte units."""
    if not length & 0x800000:
        return length
    pds = int.from_bytes(msg_head[8:11], "big")
    flags = msg_head[8 + 7]
    pos = 8 + pds
    if flags & 0x80:
        pos += int.from_bytes(msg_head[pos : pos + 3], "big")
    if flags & 0x40:
        pos += int.from_bytes(msg_head[pos : pos + 3], "big")
    sec4 = int.from_bytes(msg_head[pos : pos + 3], "big")
    if sec4 < 120:
        return (length & 0x7FFFFF) * 120 - sec4 + 4
    return length


class _Buffered:
    """Sequential reads of a file in large blocks, hashing every byte read."""

    def __init__(self, f, hasher):
        self.f, self.hasher = f, hasher
        self.buf = bytearray()
        self.base = 0  # file offset of buf[0]
        self.eof = False

    def fill(self, upto: int) -> bool:
        """Make buf hold file bytes up to absolute offset ``upto``; False at end of file."""
        while self.base + len(self.buf) < upto and not self.eof:
            chunk = self.f.read(max(_BLOCK, upto - self.base - len(self.buf)))
            if not chunk:
                self.eof = True
                break
            if self.hasher is not None:
                self.hasher.update(chunk)
            self.buf += chunk
        return self.base + len(self.buf) >= upto

    def find(self, start: int) -> int:
        """Absolute offset of the next b'GRIB' at or after ``start``, or -1."""
        while True:
            i = self.buf.find(b"GRIB", start - self.base)
            if i >= 0:
                return self.base + i
            if self.eof:
                return -1
            start = max(start, self.base + len(self.buf) - 3)
            self.fill(self.base + len(self.buf) + 1)

    def take(self, start: int, end: int) -> bytes:
        return bytes(self.buf[start - self.base : end - self.base])

    def drop(self, upto: int) -> None:
        if upto - self.base > _BLOCK:
            del self.buf[: upto - self.base]
            self.base = upto


def iter_raw(path: str | Path, hasher=None) -> Iterator[Raw]:
    """Every message of ``path`` in file order; bytes between messages are skipped.

    ``hasher`` (e.g. ``hashlib.sha256()``) sees every byte of the file once the iteration ends.
    Raises :class:`DataError` naming the message for a truncated or corrupt one.
    """
    path = Path(path)
    with open(path, "rb") as f:
        r = _Buffered(f, hasher)
        pos, index = 0, 0
        while True:
            start = r.find(pos)
            if start < 0:
                break
            r.fill(start + 16)
            length = _length(r.take(start, start + 16), path, index, start)
            if r.buf[start - r.base + 7] == 1 and length & 0x800000:
                r.fill(start + 4096)
                length = _grib1_large_length(r.take(start, start + 4096), length)
            if not r.fill(start + length):
                raise DataError(
                    f"{path}: message {index + 1} is truncated (needs {length} bytes from byte "
                    f"{start}, the file ends at {r.base + len(r.buf)})"
                )
            data = r.take(start, start + length)
            if data[-4:] != b"7777":
                raise DataError(f"{path}: message {index + 1} is truncated or corrupt (no end marker 7777)")
            yield Raw(index, start, length, data)
            index += 1
            pos = start + length
            r.drop(pos)
        if index == 0:
            raise DataError(f"{path}: not a GRIB file (no GRIB message found)")


# --------------------------------------------------------------------------------------------
# Identity of a message: parameter, level, grid (cached by cheap keys)


@dataclass(frozen=True)
class Param:
    name: str  # cfgrib name (cfVarName): t2m, u10, t, vo
    short_name: str  # ECMWF shortName: 2t, 10u, t, vo
    param_id: int
    units: str
    long_name: str


#: ecCodes level types of what MARS calls a single-level (levtype=sfc) field: ERA5's 2t is 'surface' in
#: GRIB1 and 'heightAboveGround' 2 in GRIB2, msl 'meanSea' in GRIB2. Other single levels (tropopause,
#: maxWind, potentialVorticity, sigma, ...) are selected only by naming them in data.fields.<f>.levtype.
SURFACE_TYPES = ("surface", "heightAboveGround", "meanSea", "entireAtmosphere", "depthBelowLandLayer", "nominalTop")


@dataclass(frozen=True)
class Level:
    type_of_level: str  # ecCodes typeOfLevel: hybrid, isobaricInhPa, surface, heightAboveGround, ...
    kind: str  # 'ml', 'pl', 'sfc' (one of SURFACE_TYPES) or 'other'
    level: int  # model level, hPa, or the level value of its type (2 for heightAboveGround 2 m)

    def describe(self) -> str:
        return self.type_of_level if self.type_of_level == "surface" else f"{self.type_of_level} {self.level}"


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
    pl: np.ndarray | None = None  # points per row of a reduced Gaussian grid (north to south)
    truncation: int = 0

    @property
    def regular(self) -> bool:
        return self.kind == "regular_ll"

    @functools.cached_property
    def key(self) -> tuple:
        """Equal for grids whose canonical coordinates are equal."""
        if not self.regular:
            return (self.kind, self.ny, self.nx, self.gaussian_n, self.truncation)
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


def _grid_from_handle(gid) -> Grid:
    import eccodes

    kind = eccodes.codes_get_string(gid, "gridType")
    if kind == "regular_ll":
        return _regular_ll(gid)
    if kind in ("reduced_gg", "regular_gg"):
        lats = np.sort(np.asarray(eccodes.codes_get_array(gid, "distinctLatitudes"), float))[::-1]  # N -> S
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
    file_lats = np.linspace(lat1, lat2, nj)
    span = ((lon1 - lon2) if i_neg else (lon2 - lon1)) % 360.0
    if ni > 1 and span == 0:
        span = 360.0 - 360.0 / ni  # a global grid whose last longitude repeats the first modulo 360
    dlon = span / (ni - 1) if ni > 1 else 0.0
    file_lons = lon1 + (-1 if i_neg else 1) * dlon * np.arange(ni)
    if periodic(file_lons):  # global: canonical [0, 360)
        lons = np.round(np.mod(file_lons, 360.0), 9)
    else:  # regional: contiguous west to east, in [0, 360) unless it crosses 0° (then from a negative west)
        west = float(np.mod(file_lons.min(), 360.0))
        if west + span >= 360.0 - 1e-9:
            west -= 360.0
        lons = np.round(west + (file_lons - file_lons.min()), 9)
    order = np.argsort(lons, kind="stable")
    flip = nj > 1 and file_lats[1] > file_lats[0]
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


_PDTN_STATISTICAL = (8, 9, 10, 11, 12, 15)


@dataclass
class Header:
    """What one message is, without its values (``number`` and ``base`` only from :func:`scan`).

    ``time`` is the valid time (base time + step); ``base`` the base (analysis/run) time.
    """

    index: int
    offset: int
    length: int
    edition: int
    param: Param
    level: Level
    time: np.datetime64
    grid: Grid
    bitmap: bool = False
    number: int = 0
    base: np.datetime64 | None = None

    @property
    def name(self) -> str:
        return self.param.name

    @property
    def step_hours(self) -> float:
        return 0.0 if self.base is None else float((self.time - self.base) / np.timedelta64(1, "h"))


class _C:
    """Direct calls into the ecCodes C library through the cffi bindings that eccodes-python ships.

    The hot loop reads ten keys per message; through the Python wrappers a key costs several
    microseconds of argument handling, through ``lib`` about one. One instance per Decoder (the
    output buffers are not shared between threads).
    """

    def __init__(self):
        from gribapi.bindings import ffi, lib

        self.ffi, self.lib = ffi, lib
        self.long_p = ffi.new("long*")
        self.size_p = ffi.new("size_t*")

    def handle(self, gid: int):
        return self.ffi.cast("grib_handle*", gid)

    def long(self, h, key: bytes) -> int:
        err = self.lib.grib_get_long(h, key, self.long_p)
        if err:
            raise KeyError(key.decode())
        return self.long_p[0]

    def values(self, h, out: np.ndarray) -> np.ndarray:
        """The decoded values into ``out`` (float64, resized when the message has another size)."""
        self.lib.grib_get_size(h, b"values", self.size_p)
        n = self.size_p[0]
        if out.size != n:
            out = np.empty(n, np.float64)
        err = self.lib.grib_get_double_array(h, b"values", self.ffi.cast("double*", out.ctypes.data), self.size_p)
        if err:
            raise DataError(f"cannot decode the values (ecCodes error {err})")
        return out


class Decoder:
    """Reads messages with cached parameter, level and grid identities (one instance per job)."""

    def __init__(self):
        self._params: dict[tuple, Param] = {}
        self._levels: dict[tuple, Level] = {}
        self._grids: dict[bytes, Grid] = {}
        self._c = _C()
        self._buf = np.empty(0)
        self._md5 = self._c.ffi.new("char[]", 64)
        self._md5_len = self._c.ffi.new("size_t*")

    def header(self, gid, raw: Raw, path: Path, members: bool = False) -> Header:
        c = self._c
        h = c.handle(gid)
        try:
            edition = c.long(h, b"edition")
            if edition == 1:
                raw_level = c.long(h, b"indicatorOfTypeOfLevel")
                pkey = (
                    1,
                    c.long(h, b"centre"),
                    c.long(h, b"table2Version"),
                    c.long(h, b"indicatorOfParameter"),
                    raw_level,
                )
            else:
                raw_level = c.long(h, b"typeOfFirstFixedSurface")
                pdtn = c.long(h, b"productDefinitionTemplateNumber")
                pkey = (
                    2,
                    c.long(h, b"centre"),
                    c.long(h, b"discipline"),
                    c.long(h, b"parameterCategory"),
                    c.long(h, b"parameterNumber"),
                    pdtn,
                    raw_level,
                    c.long(h, b"scaledValueOfFirstFixedSurface"),
                    c.long(h, b"typeOfStatisticalProcessing") if pdtn in _PDTN_STATISTICAL else -1,
                )
            param = self._params.get(pkey) or self._param(gid, pkey)
            level_value = c.long(h, b"level")
            lkey = (edition, raw_level, level_value)
            level = self._levels.get(lkey) or self._level(gid, lkey, path, raw)
            time = _datetime(c.long(h, b"validityDate"), c.long(h, b"validityTime"))
            self._md5_len[0] = 64
            c.lib.grib_get_string(h, b"md5GridSection", self._md5, self._md5_len)
            md5 = c.ffi.string(self._md5)
            grid = self._grids.get(md5)
            if grid is None:
                grid = self._grids[md5] = _grid_from_handle(gid)
            bitmap = bool(c.long(h, b"bitmapPresent"))
            number, base = 0, None
            if members:
                try:
                    number = c.long(h, b"number")
                except KeyError:
                    pass
                base = _datetime(c.long(h, b"dataDate"), c.long(h, b"dataTime"))
        except KeyError as exc:
            raise DataError(f"{path}: message {raw.index + 1} lacks the key {exc}") from None
        return Header(raw.index, raw.offset, raw.length, edition, param, level, time, grid, bitmap, number, base)

    def values(self, gid, header: Header) -> np.ndarray:
        """Like :func:`values` into a buffer reused from message to message (valid until the next call)."""
        v = self._buf = self._c.values(self._c.handle(gid), self._buf)
        if header.bitmap:
            import eccodes

            v[v == eccodes.codes_get_double(gid, "missingValue")] = np.nan
        return v

    def _param(self, gid, key) -> Param:
        import eccodes

        p = Param(
            eccodes.codes_get_string(gid, "cfVarName"),
            eccodes.codes_get_string(gid, "shortName"),
            eccodes.codes_get_long(gid, "paramId"),
            eccodes.codes_get_string(gid, "units"),
            eccodes.codes_get_string(gid, "name"),
        )
        self._params[key] = p
        return p

    def _level(self, gid, key, path: Path, raw: Raw) -> Level:
        import eccodes

        tol = eccodes.codes_get_string(gid, "typeOfLevel")
        value = key[2]
        if tol == "hybrid":
            lev = Level(tol, "ml", int(value))
        elif tol == "isobaricInhPa":
            lev = Level(tol, "pl", int(value))
        elif tol == "isobaricInPa":
            if value % 100:
                raise DataError(f"{path}: message {raw.index + 1} is on {value} Pa, not a whole hPa level")
            lev = Level(tol, "pl", int(value) // 100)
        else:  # the level value is part of the identity: u at 10 m is not u at the tropopause
            lev = Level(tol, "sfc" if tol in SURFACE_TYPES else "other", int(value))
        self._levels[key] = lev
        return lev

    def messages(self, path: str | Path, hasher=None, members: bool = False) -> Iterator[tuple[Header, int]]:
        """``(header, ecCodes handle)`` of every message; the handle is released after each step."""
        path = Path(path)
        ffi, lib = self._c.ffi, self._c.lib
        for raw in iter_raw(path, hasher):
            h = lib.grib_handle_new_from_message_copy(ffi.NULL, raw.data, len(raw.data))
            if h == ffi.NULL:
                raise DataError(f"{path}: message {raw.index + 1} cannot be decoded by ecCodes")
            try:
                yield self.header(int(ffi.cast("size_t", h)), raw, path, members), int(ffi.cast("size_t", h))
            finally:
                lib.grib_handle_delete(h)

    def scan(self, path: str | Path) -> list[Header]:
        """Headers of every message, without decoding values (``number`` and ``base`` included)."""
        return [h for h, _ in self.messages(path, members=True)]


def values(gid, header: Header) -> np.ndarray:
    """The message's values in file order, float64, NaN where its bitmap marks them missing."""
    import eccodes

    v = eccodes.codes_get_values(gid)
    if header.bitmap:
        v[v == eccodes.codes_get_double(gid, "missingValue")] = np.nan
    return v


_DAYS: dict[int, int] = {}


def _datetime(date: int, hhmm: int) -> np.datetime64:
    """YYYYMMDD and HHMM as datetime64[s] (days cached: a month has few)."""
    day = _DAYS.get(date)
    if day is None:
        day = _DAYS[date] = int(
            np.datetime64(f"{date // 10000:04d}-{date // 100 % 100:02d}-{date % 100:02d}", "s").astype(np.int64)
        )
    return np.datetime64(day + (hhmm // 100) * 3600 + (hhmm % 100) * 60, "s")


def scan(path: str | Path) -> list[Header]:
    """Headers of every message of ``path`` (see :meth:`Decoder.scan`)."""
    return Decoder().scan(path)


def check_file(path: str | Path) -> Path:
    """Fail early and clearly on a missing, empty or non-GRIB file."""
    path = Path(path)
    if not path.exists():
        raise DataError(f"{path}: no such file")
    if path.is_dir():
        raise DataError(f"{path}: a directory, not a GRIB file")
    if path.stat().st_size == 0:
        raise DataError(f"{path}: empty file")
    return path


# --------------------------------------------------------------------------------------------
# Whole-file decoding (small files, tests, tools); the normalize stage streams instead


def decode(path: str | Path, name: str | None = None) -> xr.DataArray:
    """Decode one field of a GRIB file into ``(time, level, latitude, longitude)`` float32.

    ``name`` selects the field when the file holds several; without it the file must hold one.
    Raises :class:`DataError` naming the file for anything that cannot be used.
    """
    path = check_file(path)
    headers = Decoder().scan(path)
    found = list(dict.fromkeys(h.param.name for h in headers))
    if name is None:
        if len(found) != 1:
            raise DataError(f"{path}: holds fields {found}; say which one")
        name = found[0]
    mine = [h for h in headers if name in (h.param.name, h.param.short_name)]
    if not mine:
        raise DataError(f"{path}: field '{name}' not found (found {found or 'no fields'})")
    grid = mine[0].grid
    if (why := grid.unusable()) is not None:
        raise DataError(f"{path}: field '{name}' is not on a regular lat/lon grid: it is {why}")
    for h in mine:
        if h.grid.key != grid.key:
            raise DataError(f"{path}: field '{name}' mixes grids {grid.describe()} and {h.grid.describe()}")

    def level_of(h):  # a single-level field is level 0 whether GRIB1 says surface or GRIB2 2 m
        return 0 if h.level.kind == "sfc" else h.level.level

    times = np.unique([h.time for h in mine])
    levels = sorted({level_of(h) for h in mine})
    out = np.full((len(times), len(levels), grid.ny, grid.nx), np.nan, np.float32)
    seen = np.zeros(out.shape[:2], bool)
    wanted = {h.index for h in mine}
    for h, gid in Decoder().messages(path):
        if h.index not in wanted:
            continue
        it, il = int(np.searchsorted(times, h.time)), levels.index(level_of(h))
        if seen[it, il]:
            raise DataError(
                f"{path}: field '{name}' level {level_of(h)} time {str(h.time)[:16]} appears twice"
                + (" (ensemble members? expected one per time)" if h.number or len(mine) > seen.size else "")
            )
        seen[it, il] = True
        h.grid.to_canonical(values(gid, h), out[it, il])
    lev = mine[0].level
    return xr.DataArray(
        out,
        dims=("time", "level", "latitude", "longitude"),
        name=name,
        coords={
            "time": times.astype("datetime64[ns]"),
            "level": np.asarray(levels, int),
            "latitude": grid.lats,
            "longitude": grid.lons,
        },
        attrs={
            "units": mine[0].param.units,
            "long_name": mine[0].param.long_name,
            "GRIB_typeOfLevel": lev.type_of_level,
            "GRIB_paramId": mine[0].param.param_id,
        },
    )


def sha256_of(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(_BLOCK):
            h.update(chunk)
    return h.hexdigest()


# --------------------------------------------------------------------------------------------
# Writing


_LEVEL_TYPE = {"ml": "hybrid", "pl": "isobaricInhPa"}


def write_grib(
    path: Path,
    name: str,
    data_TLYX: np.ndarray,
    times: np.ndarray,
    levels,
    lats,
    lons,
    bits_per_value: int = 24,
    levtype: str | None = None,
    edition: int = 1,
    append: bool = False,
    ieee: bool = False,
) -> None:
    """Write one field as GRIB messages (one per time and level) on a regular lat/lon grid.

    ``lats`` must run north to south or south to north and ``lons`` east from their first value with
    constant steps; any longitude convention works. ``levtype`` 'ml', 'pl' or an ecCodes typeOfLevel
    (default: 'sfc' for levels [0], else 'ml'). NaN values go into the GRIB bitmap. ``ieee`` writes GRIB2
    with IEEE floats (32-bit, 64-bit for float64 input) instead of 24-bit simple packing: lossless, for
    sources whose values are already floats (NetCDF, zarr) and must come through equal.
    """
    import eccodes

    from atmorep.data import fields

    info = fields.info(name)
    if info is None:
        raise DataError(f"cannot write field '{name}': not in the field catalogue (src/atmorep/data/fields.py)")
    kind = levtype or ("sfc" if list(levels) == [0] else "ml")
    lats, lons = np.asarray(lats, float), np.asarray(lons, float)
    dlat = abs(lats[1] - lats[0]) if len(lats) > 1 else 0.0
    dlon = lons[1] - lons[0] if len(lons) > 1 else 0.0
    sample = "regular_ll_sfc_grib1" if kind == "sfc" else "regular_ll_pl_grib1"
    times = np.asarray(times, "datetime64[h]")
    with open(path, "ab" if append else "wb") as out:
        for it, t in enumerate(times):
            day = t.astype("datetime64[D]")
            date = int(str(day).replace("-", ""))
            hour = int((t - day).astype(int))
            for il, lev in enumerate(levels):
                gid = eccodes.codes_grib_new_from_samples(sample)
                try:
                    for key, value in (
                        ("centre", "ecmf"),
                        ("table2Version", 128),
                        ("paramId", info.param_id),
                        ("dataDate", date),
                        ("dataTime", hour * 100),
                        ("stepUnits", 1),
                        ("startStep", 0),
                        ("endStep", 0),
                    ):
                        eccodes.codes_set(gid, key, value)
                    if kind != "sfc":
                        eccodes.codes_set(gid, "typeOfLevel", _LEVEL_TYPE.get(kind, kind))
                        eccodes.codes_set(gid, "level", int(lev))
                    for key, value in (
                        ("Ni", len(lons)),
                        ("Nj", len(lats)),
                        ("latitudeOfFirstGridPointInDegrees", lats[0]),
                        ("longitudeOfFirstGridPointInDegrees", lons[0]),
                        ("latitudeOfLastGridPointInDegrees", lats[-1]),
                        ("longitudeOfLastGridPointInDegrees", lons[-1]),
                        ("iDirectionIncrementInDegrees", dlon),
                        ("jDirectionIncrementInDegrees", dlat),
                        ("jScansPositively", int(len(lats) > 1 and lats[1] > lats[0])),
                        ("bitsPerValue", bits_per_value),
                    ):
                        eccodes.codes_set(gid, key, value)
                    if edition == 2 or ieee:
                        eccodes.codes_set(gid, "edition", 2)
                    if ieee:
                        eccodes.codes_set(gid, "packingType", "grid_ieee")
                        eccodes.codes_set(gid, "precision", 2 if data_TLYX.dtype == np.float64 else 1)
                    values_ = np.ascontiguousarray(data_TLYX[it, il], dtype=float).ravel()
                    if np.isnan(values_).any():  # missing points go into the GRIB bitmap
                        eccodes.codes_set(gid, "missingValue", MISSING)
                        eccodes.codes_set(gid, "bitmapPresent", 1)
                        values_ = np.where(np.isnan(values_), MISSING, values_)
                    eccodes.codes_set_values(gid, values_)
                    eccodes.codes_write(gid, out)
                finally:
                    eccodes.codes_release(gid)
