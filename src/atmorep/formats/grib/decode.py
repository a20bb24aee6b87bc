"""What each GRIB message is, and its values in canonical order, through ecCodes.

The stages read GRIB message by message (bounded memory, and each refused message named by file and
number), so the decoder is a loop over :func:`~.messages.iter_raw`, not an xarray backend. Its cost is
in the keys, not the values: ecCodes *concepts* (paramId, shortName, typeOfLevel, units, name) are
evaluated through its definition files and are slow, so a message is identified by cheap integer
keys (edition, centre, parameter numbers, level type and value), read straight from the C library
through the cffi bindings that eccodes-python ships, and the concepts are asked once per distinct
key and cached; the grid is cached by ``md5GridSection``. Values come back in file order, float64,
NaN where the bitmap says missing (a job reuses one buffer for them), and the message's
:class:`~.grid.Grid` puts them in canonical order as float32.

:func:`decode` reads a whole (small) file into one array, the reader the tests hold outputs against;
the normalize stage streams with :class:`Decoder` instead.

Legend: T time steps, L levels, Y latitude rows, X longitude columns.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import xarray as xr

from atmorep.errors import DataError
from atmorep.formats.grib.grid import Grid, grid_from_handle
from atmorep.formats.grib.messages import Raw, iter_raw


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


# Product templates 4.8-4.12 and 4.15 carry typeOfStatisticalProcessing: a maximum or an accumulation of
# a parameter is another field than the parameter itself, so it joins the identity key below.
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
    def step_hours(self) -> float:
        return 0.0 if self.base is None else float((self.time - self.base) / np.timedelta64(1, "h"))


class _C:
    """Direct calls into the ecCodes C library through the cffi bindings that eccodes-python ships.

    The hot loop reads ten keys per message; through the Python wrappers the argument handling of
    each key dominates it, through ``lib`` it is gone (``benchmarks/ingest.py`` measures the stage
    against bare ecCodes). One instance per Decoder (the output buffers are not shared between threads).
    """

    def __init__(self):
        from gribapi.bindings import ffi, lib

        self.ffi, self.lib = ffi, lib
        # Out-parameters allocated once and reused by every call (hence one instance per thread).
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
        # Straight into the numpy buffer: no intermediate array, and no allocation when the size repeats.
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
            # The integer keys that decide ecCodes' paramId and shortName concepts, per edition: equal
            # keys, equal concepts, so the slow string lookups run once per key (_param, _level).
            pkey: tuple[int, ...]
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
                    # GRIB2's 2t is temperature at heightAboveGround 2: the height is part of the parameter.
                    c.long(h, b"scaledValueOfFirstFixedSurface"),
                    c.long(h, b"typeOfStatisticalProcessing") if pdtn in _PDTN_STATISTICAL else -1,
                )
            param = self._params.get(pkey) or self._param(gid, pkey)
            level_value = c.long(h, b"level")
            lkey = (edition, raw_level, level_value)
            level = self._levels.get(lkey) or self._level(gid, lkey, path, raw)
            time = _datetime(c.long(h, b"validityDate"), c.long(h, b"validityTime"))
            # In/out: the buffer's size going in, the string's length coming back; reset every call.
            self._md5_len[0] = 64
            # The grid section's hash: messages on one grid share one Grid, worked out once.
            c.lib.grib_get_string(h, b"md5GridSection", self._md5, self._md5_len)
            md5 = c.ffi.string(self._md5)
            grid = self._grids.get(md5)
            if grid is None:
                grid = self._grids[md5] = grid_from_handle(gid)
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

            # ecCodes fills the bitmap's missing points with missingValue; NaN is how the stages see them.
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
            # Pressure levels are whole hPa everywhere downstream: a fraction of one cannot be named.
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
            # _copy: the handle owns its bytes, so its life is not tied to raw.data's.
            h = lib.grib_handle_new_from_message_copy(ffi.NULL, raw.data, len(raw.data))
            if h == ffi.NULL:
                raise DataError(f"{path}: message {raw.index + 1} cannot be decoded by ecCodes")
            try:
                # The pointer as an integer: the gid eccodes-python's functions take.
                yield self.header(int(ffi.cast("size_t", h)), raw, path, members), int(ffi.cast("size_t", h))
            finally:
                lib.grib_handle_delete(h)

    def scan(self, path: str | Path) -> list[Header]:
        """Headers of every message, without decoding values (``number`` and ``base`` included)."""
        return [h for h, _ in self.messages(path, members=True)]


@contextlib.contextmanager
def handle(message: bytes) -> Iterator[int]:
    """An ecCodes handle on the bytes of one message, released when the block ends."""
    import eccodes

    gid = eccodes.codes_new_from_message(message)
    try:
        yield gid
    finally:
        eccodes.codes_release(gid)


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
    # Integer seconds: no datetime parsing per message.
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
# Whole-file decoding (small files: what the tests read outputs with); the normalize stage streams instead


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
    # NaN-filled: a (time, level) the file lacks stays visibly missing.
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
                + (" (ensemble members? expected one per time)" if len(mine) > seen.size else "")
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
