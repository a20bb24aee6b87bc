"""Gridded arrays (NetCDF, analysis-ready zarr) into the GRIB of one (field, month).

One mechanism for every layout: :func:`probe` says which catalogue field a variable holds, on which
level type and levels, or raises the one line saying why it cannot be used (``atmorep inspect`` and
both acquire paths call it, so what inspect calls usable is what acquire ingests); :func:`select`
cuts the unit (month ∩ campaign, configured levels, ``data.area``) out of it as lazy indices, and
:func:`write` reads only those values, block by block along the store's time chunks, and writes
them as GRIB2 with IEEE floats, so the values arrive bit-equal (float32 stays float32, float64 input
goes to 64-bit floats and is cast to float32 only where normalize decodes everything to float32).

Layouts recognised: the coordinate names of ECMWF/CDS NetCDF (``valid_time``, ``pressure_level``,
``latitude``/``longitude``), CF/COARDS (``time``, ``lat``/``lon``, ``plev`` in Pa), ARCO-ERA5
(``hybrid`` model levels) and WeatherBench 2 (``level`` in hPa, longitude before latitude); monthly
means may carry a ``month`` axis of dates. A store whose integer time axis keeps its units in a group
attribute (``time_units``, as the embedded sample) is decoded with those units.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from dataclasses import field as dc_field
from functools import partial
from pathlib import Path
from typing import cast

import numpy as np
import xarray as xr

from atmorep import fields
from atmorep.data.acquire.crop import area_indices, holds
from atmorep.data.acquire.inventory import Expectation, describe_missing
from atmorep.data.acquire.remote import Block, touched
from atmorep.errors import DataError
from atmorep.formats import grib

log = logging.getLogger(__name__)

# dimension name -> level kind ('pl' in hPa, 'ml' model level); None: read the units
LEVEL_DIMS = {
    "pressure_level": "pl",
    "isobaricInhPa": "pl",
    "plev": "pl",
    "level": None,
    "lev": None,
    "hybrid": "ml",
    "model_level": "ml",
    "model_level_number": "ml",
    "level_ml": "ml",
}
MEMBER_DIMS = ("number", "member", "ensemble", "realization")
LAT_NAMES, LON_NAMES = ("latitude", "lat"), ("longitude", "lon")
#: read at most this many bytes per block (a block is at most one time chunk of the store)
BLOCK_BYTES = 256 * 2**20


@dataclass
class Probe:
    """A usable variable: the field it holds and where its axes are."""

    var: str
    field: str
    factor: float
    kind: str  # 'sfc', 'pl', 'ml'
    levels: tuple[int, ...]
    times: np.ndarray  # datetime64[s]
    tdim: str
    ldim: str | None
    ydim: str
    xdim: str
    squeeze: dict = dc_field(default_factory=dict)  # size-1 member/level dims -> 0

    def describe(self) -> str:
        lev = "surface" if self.kind == "sfc" else f"{self.kind} {list(self.levels)}"
        return f"usable as field '{self.field}' ({lev})"


def _decode_times(ds: xr.Dataset, dim: str, where: str) -> np.ndarray:
    if dim not in ds.coords:
        raise DataError(f"{where}: the time axis '{dim}' has no coordinate values (missing time)")
    t = np.asarray(ds[dim].values)
    if np.issubdtype(t.dtype, np.datetime64):
        return t.astype("datetime64[s]")
    units = ds[dim].attrs.get("units") or ds.attrs.get(f"{dim}_units") or ds.attrs.get("time_units")
    if not units or not np.issubdtype(t.dtype, np.number):
        why = "month numbers (a climatology, not a time series)" if dim == "month" else f"{t.dtype} values"
        raise DataError(
            f"{where}: the time axis '{dim}' holds {why} without 'units' (like "
            f"'hours since 1970-01-01'): its times are unknown"
        )
    from xarray.coding.times import decode_cf_datetime

    units = re.sub(r"\s*\(.*\)\s*$", "", str(units))  # 'hours since 1940-01-01 00:00 (proleptic_gregorian)'
    try:
        return np.asarray(decode_cf_datetime(t, units)).astype("datetime64[s]")
    except Exception as exc:
        raise DataError(f"{where}: cannot decode the time axis '{dim}' with units '{units}' ({exc})") from None


def _level_kind(ds: xr.Dataset, dim: str) -> tuple[str, float]:
    """The kind of a level axis and the factor to hPa (pressure) or 1 (model levels)."""
    kind = LEVEL_DIMS[dim]
    units = str(ds[dim].attrs.get("units", "")) if dim in ds.coords else ""
    if units and fields.same_units(units, "Pa"):
        return "pl", 0.01
    if kind is None:
        # WeatherBench 2 and CDS keep hPa in 'level'; a unit that is not a pressure is a model level
        kind = "pl" if not units or fields.same_units(units, "hPa") else "ml"
    return kind, 1.0


def in_units(values: np.ndarray, factor: float) -> np.ndarray:
    """Values times the catalogue's unit ``factor`` (:func:`catalogued`), as floats to write.

    Integers become float64 before the factor (in an integer dtype g = 9.80665 would be 9); floats
    keep their precision: float32 stays float32 (no silent widening)."""
    if not np.issubdtype(values.dtype, np.floating):
        values = values.astype(np.float64)
    return values * np.asarray(factor, values.dtype) if factor != 1.0 else values


def catalogued(var: str, base: str, field: str | None, units, units_from: str, where: str) -> tuple[str, float]:
    """(field, factor): the catalogue field variable ``var`` holds (``field`` when acquire.variables names
    it, else the one its name ``base`` stands for) and the factor to the field's units, once ``units``
    (read from ``units_from``) are checked; :class:`DataError` naming the variable otherwise."""
    wanted = field or fields.field_of(base)
    if wanted is None:
        raise DataError(
            f"{where}: variable '{var}' is not in the field catalogue (ECMWF's parameter database in "
            "ecCodes, names in src/atmorep/fields.py); map it to a field with acquire.variables"
        )
    if (info := fields.info(wanted)) is None:
        raise DataError(
            f"{where}: field '{wanted}' is not in ECMWF's parameter database (ecCodes): its units are unknown"
        )
    factor, expected = fields.candidates(wanted).get(base, (1.0, info.units))
    if units is None:
        raise DataError(f"{where}: variable '{var}' has no {units_from}; field '{wanted}' needs {expected}")
    if not fields.same_units(str(units), expected):
        raise DataError(f"{where}: variable '{var}' is in '{units}'; field '{wanted}' needs '{expected}'")
    return wanted, factor


def regular_axis(values) -> np.ndarray | None:
    """The evenly spaced axis (float64) that coordinate ``values`` stand for, judged at their own
    precision; None when they are not evenly spaced.

    float32 coordinates (ECMWF's grib_to_netcdf writes them) hold 7 significant digits: on a 0.2° grid
    their steps read 0.200001, 0.199999, 0.199997. Each float32 value is taken as the shortest decimal
    that rounds to it (59.8, not 59.79999923706055), and the values must lie on the line from the
    first to the last within a unit in their last place (or 1e-6 of a step, for float64)."""
    c = np.asarray(values)
    if c.ndim != 1 or len(c) < 2 or not np.issubdtype(c.dtype, np.number):
        return None
    short = np.issubdtype(c.dtype, np.floating) and c.dtype.itemsize < 8
    x = c.astype(str).astype(float) if short else c.astype(float)  # str(): numpy's shortest round trip
    step = (x[-1] - x[0]) / (len(x) - 1)
    ulp = float(np.spacing(np.abs(c).max())) if short else 0.0
    line = x[0] + step * np.arange(len(x))
    if step == 0 or np.abs(x - line).max() > max(1e-6 * abs(step), ulp):
        return None
    return np.round(line, 9)  # the arithmetic's last bits vanish: equal grids, equal coordinates


def times_of(ds: xr.Dataset, var: str, where: str) -> tuple[str, np.ndarray]:
    """(time dimension, valid times) of ``ds[var]``, or :class:`DataError` naming what is wrong."""
    da = ds[var]
    tdims = [str(d) for d in da.dims if "time" in str(d) or d in ("month", "date", "dates")]
    if len(tdims) != 1:
        raise DataError(
            f"{where}: variable '{var}' has {'no' if not tdims else 'several'} time axis "
            f"(dims {list(da.dims)}; expected one of valid_time, time, month)"
        )
    tdim = tdims[0]
    times = _decode_times(ds, tdim, where)
    vt = da.coords.get("valid_time")
    if tdim != "valid_time" and vt is not None and vt.dims == (tdim,):  # a forecast: base time + step
        times = np.asarray(vt.values).astype("datetime64[s]")
    return tdim, times


def outside(ds: xr.Dataset, var: str, exp: Expectation, where: str) -> str | None:
    """Why ``ds[var]`` holds nothing of the unit (no time in it, or not ``data.area``), None when it may:
    judged from the time axis and the coordinates' extent only, before the grid is (files of other
    years and regions in a mirror are skipped, not refused for their grids)."""
    _, t = times_of(ds, var, where)
    if not ((t >= exp.first) & (t <= exp.last)).any():
        span = f"{str(t.min())[:16]} .. {str(t.max())[:16]}" if len(t) else "no time"
        return f"its times ({span}) are outside {exp.window}"
    if exp.area is None:
        return None
    da = ds[var]
    ydim = next((d for d in LAT_NAMES if d in da.dims and d in ds.coords), None)
    xdim = next((d for d in LON_NAMES if d in da.dims and d in ds.coords), None)
    if ydim is None or xdim is None:
        return None  # probe names what is missing
    # Snapped where evenly spaced (float32 coordinates are off in the 5th decimal), else as they are.
    lat, lon = (regular_axis(ds[d].values) for d in (ydim, xdim))
    lat = np.asarray(ds[ydim].values, float) if lat is None else lat
    lon = np.asarray(ds[xdim].values, float) if lon is None else lon
    if len(lat) < 2 or len(lon) < 2 or holds(lat, lon, exp.area):
        return None
    north, west, south, east = exp.area
    return (
        f"it covers lat {lat.min():g}..{lat.max():g}, lon {lon.min():g}..{lon.max():g}, not data.area "
        f"lat {south:g}..{north:g}, lon {west:g}..{east:g}"
    )


def probe(ds: xr.Dataset, var: str, where: str, field: str | None = None) -> Probe:
    """What ``ds[var]`` holds, or :class:`DataError` naming the store, variable and key."""
    da = ds[var]
    wanted, factor = catalogued(var, var, field, da.attrs.get("units"), "'units' attribute", where)
    tdim, times = times_of(ds, var, where)
    # Repeated times would make two messages of one (time, level): refused here, naming the variable.
    if len(np.unique(times)) != len(times):
        raise DataError(f"{where}: variable '{var}' repeats time steps on '{tdim}'")
    ydim = next((str(d) for d in LAT_NAMES if d in da.dims), None)
    xdim = next((str(d) for d in LON_NAMES if d in da.dims), None)
    if ydim is None or xdim is None:
        raise DataError(
            f"{where}: variable '{var}' has no latitude/longitude dimensions "
            f"(dims {list(da.dims)}); a regular lat/lon grid is needed"
        )
    for d in (ydim, xdim):
        # GRIB stores a first point and a step: the coordinates must be evenly spaced (at their precision).
        if regular_axis(ds[d].values if d in ds.coords else []) is None:
            raise DataError(
                f"{where}: variable '{var}': coordinate '{d}' is not evenly spaced (not a regular lat/lon grid)"
            )
    ldims = [str(d) for d in da.dims if d in LEVEL_DIMS]
    squeeze: dict[str, int] = {}
    for d in map(str, da.dims):
        if d in MEMBER_DIMS:
            # One member is one forecast; more would be several training sets in one unit.
            if da.sizes[d] > 1:
                raise DataError(
                    f"{where}: variable '{var}' has {da.sizes[d]} ensemble members (dim '{d}'); "
                    "select one member before ingest"
                )
            squeeze[d] = 0
    others = [d for d in da.dims if d not in (tdim, ydim, xdim, *ldims, *squeeze)]
    if others or len(ldims) > 1:
        raise DataError(
            f"{where}: variable '{var}' has dimensions {others or ldims} the source cannot place (dims {list(da.dims)})"
        )
    ldim = ldims[0] if ldims else None
    kind, levels = "sfc", cast(tuple[int, ...], (0,))
    if ldim is not None:
        lkind, to_hpa = _level_kind(ds, ldim)
        # Without coordinate values the levels are numbered from 0 (the store says nothing else).
        vals = np.asarray(ds[ldim].values, float) * to_hpa if ldim in ds.coords else np.arange(da.sizes[ldim])
        if fields.is_single_level(wanted) and len(vals) == 1:
            squeeze[ldim], ldim = 0, None  # a surface field with a single height/level coordinate
        else:
            kind, levels = lkind, tuple(int(round(v)) for v in vals)
    return Probe(var, wanted, factor, kind, levels, times, tdim, ldim, ydim, xdim, squeeze)


def find(ds: xr.Dataset, field: str, where: str, variables: dict[str, str]) -> str | None:
    """The variable of ``ds`` that holds ``field`` (``acquire.variables`` first), None if none does."""
    if field in variables:
        var = variables[field]
        return var if var in ds.data_vars else None
    # Several names for one field (t2m and 2t, say) is a choice for the user, never a first-come pick.
    hits = [n for n in fields.candidates(field) if n in ds.data_vars]
    if len(hits) > 1:
        raise DataError(
            f"{where}: variables {hits} all name field '{field}'; choose one with acquire.variables: {{{field}: NAME}}"
        )
    return hits[0] if hits else None


@dataclass
class Cut:
    """The lazy indices of one (field, month) in one dataset."""

    da: xr.DataArray
    probe: Probe
    tidx: np.ndarray
    lidx: list[int]
    rows: np.ndarray
    cols: np.ndarray
    lats: np.ndarray
    lons: np.ndarray

    @property
    def times(self) -> np.ndarray:
        return self.probe.times[self.tidx]


def select(ds: xr.Dataset, p: Probe, exp: Expectation, where: str) -> Cut | None:
    """Indices of the unit in ``ds`` (None: no time step of it here); refuses wrong levels or grid."""
    want_kind = exp.kind
    if p.kind != want_kind:
        dim = "" if p.ldim is None else f" (dim {p.ldim!r})"
        raise DataError(
            f"{where}: variable '{p.var}' (field '{p.field}') is on {_KIND[p.kind]}{dim}; "
            f"the config expects {_KIND[want_kind]}"
        )
    if missing := [lev for lev in exp.levels if lev not in p.levels]:
        raise DataError(f"{where}: variable '{p.var}' has no level {missing} (it has {list(p.levels)})")
    lidx = [p.levels.index(lev) for lev in exp.levels]  # in the config's level order, whatever the store's
    t = p.times
    tidx = np.flatnonzero((t >= exp.first) & (t <= exp.last))
    if not len(tidx):
        return None
    lats, lons = regular_axis(ds[p.ydim].values), regular_axis(ds[p.xdim].values)
    assert lats is not None and lons is not None  # probe judged them
    if lons[1] < lons[0]:  # GRIB grids run eastwards; a westward axis would be written mirrored
        raise DataError(f"{where}: variable '{p.var}': longitudes run westwards ({lons[0]:g}, {lons[1]:g}, ...)")
    rows, cols = area_indices(lats, lons, exp.area)
    out_lons = lons[cols]
    if len(cols) > 1:  # across the seam: continue eastwards from the first column
        step = abs(lons[1] - lons[0])
        out_lons = out_lons[0] + step * np.arange(len(cols))
        if out_lons[-1] >= 360.0:
            out_lons -= 360.0
    return Cut(ds[p.var], p, tidx, lidx, rows, cols, lats[rows], out_lons)


_KIND = {"sfc": "a surface", "pl": "pressure levels", "ml": "model levels"}


def check_complete(times: np.ndarray, exp: Expectation, where: str) -> None:
    """Each time at most once (over all files), and every expected step present."""
    # Over all files at once: a time in two files (overlapping downloads) would be two messages.
    uniq, counts = np.unique(times, return_counts=True)
    if (counts > 1).any():
        raise DataError(f"{where}: field '{exp.field}' time {str(uniq[counts > 1][0])[:16]} is in more than one file")
    if exp.times is not None:
        have = np.isin(exp.times, times)
        off = times[~np.isin(times, exp.times)]
        if len(off):
            raise DataError(
                f"{where}: field '{exp.field}' has time {str(off[0])[:16]}, not on the data.step_hours steps"
            )
        if not have.all():
            filled = np.repeat(have[:, None], len(exp.levels), axis=1)
            raise DataError(
                f"{where}: field '{exp.field}' misses time steps: "
                + "; ".join(describe_missing(exp.levels, exp.times, filled))
            )


def _block(c: Cut) -> int:
    """Time steps read at once: the store's time chunk (one step when it has none), fewer when that
    would exceed BLOCK_BYTES."""
    chunks = _chunks(c)
    tchunk = int(chunks[c.da.dims.index(c.probe.tdim)]) if chunks else 1
    per_step = len(c.lidx) * len(c.rows) * len(c.cols) * 8  # 8: float64, the widest the values become
    return max(1, min(len(c.tidx), max(tchunk, 1), BLOCK_BYTES // max(per_step, 1)))


def _chunks(c: Cut) -> tuple[int, ...] | None:
    # zarr names them "chunks", netCDF4 "chunksizes" (None: contiguous).
    return c.da.encoding.get("chunks") or c.da.encoding.get("chunksizes")


def used_bytes(c: Cut) -> int:
    dtype = np.dtype(c.da.encoding.get("dtype", c.da.dtype))  # as stored (e.g. int16 packed), not as decoded
    return len(c.tidx) * len(c.lidx) * len(c.rows) * len(c.cols) * dtype.itemsize


def blocks(cuts: list[Cut]) -> list[Block]:
    """The cuts' values as time blocks (:func:`_block` steps each), in time order across files
    (check_complete made the times disjoint); each block reads only its own values when asked."""
    out = []
    for c in sorted(cuts, key=lambda c: c.times[0]):
        p = c.probe
        da = c.da.isel(p.squeeze) if p.squeeze else c.da
        step = _block(c)
        stored = np.dtype(c.da.encoding.get("dtype", c.da.dtype))
        # float32 stays float32; anything else becomes float64 (in_units); twice: the converted copy
        width = 2 * (4 if da.dtype == np.float32 else 8)
        chunks = _chunks(c)
        for b in range(0, len(c.tidx), step):
            tsel = c.tidx[b : b + step]
            sel = {p.tdim: tsel, p.ydim: c.rows, p.xdim: c.cols, p.ldim: c.lidx, **p.squeeze}
            nbytes, n = (
                touched(chunks, stored.itemsize, [np.atleast_1d(sel[d]) for d in c.da.dims]) if chunks else (0, 1)
            )
            values = len(tsel) * len(c.lidx) * len(c.rows) * len(c.cols) * width
            out.append(Block(p.times[tsel], partial(_read, da, c, tsel), c.lats, c.lons, values, nbytes, n))
    return out


def _read(da: xr.DataArray, c: Cut, tsel: np.ndarray) -> np.ndarray:
    """The values of time steps ``tsel`` of the cut: T L Y X in the field's units."""
    p = c.probe
    sel = {p.tdim: _as_index(tsel), p.ydim: _as_index(c.rows), p.xdim: _as_index(c.cols)}
    if p.ldim is not None:
        sel[p.ldim] = _as_index(np.array(c.lidx))
    order = (p.tdim, p.ldim, p.ydim, p.xdim) if p.ldim else (p.tdim, p.ydim, p.xdim)
    values = np.asarray(da.isel(sel).transpose(*order).values)
    if p.ldim is None:
        values = values[:, None]
    return in_units(values, p.factor)


def write_block(out: Path, field: str, exp: Expectation, block: Block, values: np.ndarray, append: bool) -> None:
    """Append (or write) one block's values as GRIB2 with IEEE floats (bit-equal to the store's)."""
    levtype = None if exp.kind == "sfc" else exp.kind
    grib.write_grib(
        out,
        field,
        values,
        block.times,
        list(exp.levels),
        block.lats,
        block.lons,
        levtype=levtype,
        append=append,
        ieee=True,
    )


def write(cuts: list[Cut], field: str, exp: Expectation, out: Path) -> int:
    """Read the cuts block by block and write them as GRIB; returns the bytes used (store dtype)."""
    for i, block in enumerate(blocks(cuts)):
        write_block(out, field, exp, block, block.read(), append=i > 0)
    return sum(used_bytes(c) for c in cuts)


def _as_index(idx: np.ndarray):
    """A slice where the indices are contiguous (zarr and netCDF read ranges fastest)."""
    idx = np.asarray(idx)
    if len(idx) and np.array_equal(idx, np.arange(idx[0], idx[0] + len(idx))):
        return slice(int(idx[0]), int(idx[0]) + len(idx))
    return idx


def holding(
    datasets: list[tuple[str, xr.Dataset]], field: str, exp: Expectation, variables: dict[str, str], source: str
):
    """({where: variable} of the datasets holding ``field``, [(where, dataset, variable)] of those that
    hold some of the unit, ['where: why'] of the others, each skip logged)."""
    holders, inside, skipped = {}, [], []
    for where, ds in datasets:
        if (var := find(ds, field, where, variables)) is None:
            continue
        holders[where] = var
        if (why := outside(ds, var, exp, where)) is None:
            inside.append((where, ds, var))
        else:
            log.info("%s: skipped %s (variable '%s'): %s", source, where, var, why)
            skipped.append(f"{where}: {why}")
    return holders, inside, skipped


def cut(datasets: list[tuple[str, xr.Dataset]], data, cfg, field: str, month: str, source: str):
    """(expectation, cuts, {where: variable}) of ``field`` in ``month`` over the datasets that hold it:
    checked complete, on one grid, nothing read yet."""
    exp = Expectation.for_month(data, field, month)
    holders, inside, skipped = holding(datasets, field, exp, cfg.variables, source)
    names = {str(v) for _, ds in datasets for v in ds.data_vars}
    cuts = [c for where, ds, var in inside if (c := select(ds, probe(ds, var, where, field), exp, where)) is not None]
    if not holders:
        mapped = (
            f"acquire.variables maps it to '{cfg.variables[field]}'"
            if field in cfg.variables
            else f"looked for {sorted(fields.candidates(field))}"
        )
        raise DataError(f"{source}: no variable for field '{field}' ({mapped}); it holds {sorted(names)}")
    if not cuts:
        shown = "; ".join(skipped[:3]) + (f"; and {len(skipped) - 3} more" if len(skipped) > 3 else "")
        raise DataError(
            f"{source}: field '{field}' has no time step in {month} ∩ the campaign inside data.area: {shown}"
        )
    for c in cuts[1:]:
        # Exactly equal: the unit's messages must share one grid, or normalize would mix them.
        if not (np.array_equal(c.lats, cuts[0].lats) and np.array_equal(c.lons, cuts[0].lons)):
            raise DataError(f"{source}: field '{field}' comes on different grids in different files")
    check_complete(np.concatenate([c.times for c in cuts]), exp, source)
    return exp, cuts, holders


def fetch(datasets: list[tuple[str, xr.Dataset]], data, cfg, field: str, month: str, out: Path, source: str) -> dict:
    """Write ``field`` for ``month`` from the datasets that hold it; returns provenance (bytes used)."""
    exp, cuts, holders = cut(datasets, data, cfg, field, month, source)
    used = write(cuts, field, exp, out)
    return {"variables": holders, "bytes_used": used}


def describe_vars(ds: xr.Dataset, where: str, variables: dict[str, str] | None = None) -> dict[str, str]:
    """For inspect: each gridded variable -> 'usable as field …' or the reason it is not."""
    by_var = {v: f for f, v in (variables or {}).items()}
    out = {}
    for name, da in ds.data_vars.items():
        if da.ndim < 2:
            continue
        var = str(name)
        try:
            out[var] = probe(ds, var, where, by_var.get(var)).describe()
        except (DataError, ValueError, KeyError, TypeError) as exc:  # inspect describes, never crashes
            out[var] = f"not usable: {str(exc).removeprefix(where + ': ')}"
    return out
