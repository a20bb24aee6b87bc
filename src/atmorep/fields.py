"""What the pipeline knows about a field: its identity and units from ECMWF's parameter database
(the one ecCodes ships), and by hand only what that database lacks.

A field's name is ecCodes' ``cfVarName`` (what cfgrib names variables: t2m, d2m, u10, msl, t, vo,
...); ECMWF's ``shortName`` (2t, 2d, 10u) names the same field. ecCodes gives the parameter id, the
short and long names, the units, whether the parameter is defined on a single level (2 m, 10 m,
the surface, mean sea level: GRIB2 pins its level) and whether it is accumulated. ERA5 is GRIB1 with
ECMWF's table 128, so a short name is looked up in GRIB1 first and in GRIB2 for parameters GRIB1
lacks (``sst`` is paramId 34 in table 128, 151159 in GRIB2's local table).

ecCodes also gives the CF standard name (``cfName``) of most parameters; by hand (:data:`_CF_NAMES`)
only those it lacks (2 m and 10 m fields, total precipitation). By hand (:data:`_OURS`): the quality
gate's physical ranges (generous bounds: a value outside them means broken data or wrong units, not
weather; ``normalize.qc.ranges`` overrides them) and the CDS form names (single- and pressure-level
datasets); by hand too, in :data:`_ALIASES`, the names other
tools give fields in NetCDF and zarr (CF/CMIP short names; geopotential height in gpm as z / g). A
field the database knows but this table does not (``skt``, ``tcwv``) is known, with no range check.
"""

from __future__ import annotations

import contextlib
import functools
import os
import re
import sys
from dataclasses import dataclass


@dataclass(frozen=True)
class FieldInfo:
    name: str  # ecCodes' cfVarName
    param_id: int
    units: str  # as ecCodes reports them
    valid_range: tuple[float, float] | None  # the quality gate's bounds (by hand); None: not checked
    cds_variable: str | None  # the CDS form name (by hand); None: not known here
    short_name: str = ""  # ECMWF shortName where it differs from the cfVarName
    may_be_constant: bool = False  # an accumulation can be zero everywhere at one time
    long_name: str = ""
    single_level: bool = False  # defined at one level (2 m, 10 m, surface, mean sea level, ...)
    standard_name: str | None = None  # CF standard name (ecCodes' cfName, else by hand); None: none known

    @property
    def names(self) -> tuple[str, ...]:
        return (self.name, self.short_name) if self.short_name else (self.name,)


# cfVarName -> (QC range, CDS form name). The bounds leave room for what real ERA5 holds: small negative
# q and tp (numerics, packing), r above 100 % (supersaturation), z below 0 (1000 hPa lies below sea
# level under high pressure), d2m as low as t2m.
_OURS: dict[str, tuple[tuple[float, float], str]] = {
    "vo": ((-0.1, 0.1), "vorticity"),
    "d": ((-0.1, 0.1), "divergence"),
    "t": ((150.0, 350.0), "temperature"),
    "q": ((-1e-3, 0.06), "specific_humidity"),
    "u": ((-250.0, 250.0), "u_component_of_wind"),
    "v": ((-250.0, 250.0), "v_component_of_wind"),
    "w": ((-60.0, 60.0), "vertical_velocity"),
    "z": ((-1e4, 5e5), "geopotential"),
    "r": ((-10.0, 160.0), "relative_humidity"),
    "t2m": ((150.0, 350.0), "2m_temperature"),
    "d2m": ((150.0, 350.0), "2m_dewpoint_temperature"),
    "u10": ((-120.0, 120.0), "10m_u_component_of_wind"),
    "v10": ((-120.0, 120.0), "10m_v_component_of_wind"),
    "msl": ((8.0e4, 1.1e5), "mean_sea_level_pressure"),
    "sp": ((3.0e4, 1.1e5), "surface_pressure"),
    "tp": ((-1e-6, 0.5), "total_precipitation"),
}


# cfVarName -> CF standard name, where ecCodes' cfName says "unknown" (on lat-lon grids winds are
# eastward/northward, not grid-relative x_wind/y_wind; ERA5 tp is metres of water equivalent).
_CF_NAMES: dict[str, str] = {
    "t2m": "air_temperature",
    "d2m": "dew_point_temperature",
    "u10": "eastward_wind",
    "v10": "northward_wind",
    "tp": "lwe_thickness_of_precipitation_amount",
}


@contextlib.contextmanager
def _quiet():
    """ecCodes prints every failed concept lookup to stderr; a name it does not know is an answer here."""
    import eccodes

    with open(os.devnull, "w") as null:
        eccodes.codes_context_set_logging(null)
        try:
            yield eccodes
        finally:
            eccodes.codes_context_set_logging(sys.stderr)


def _keys(eccodes, sample: str, key: str, value) -> dict[str, str] | None:
    """Identity keys of a fresh message from ``sample`` once ``key`` is set to ``value`` (None: unknown)."""
    gid = eccodes.codes_grib_new_from_samples(sample)
    try:
        eccodes.codes_set(gid, key, value)
        keys = ("paramId", "shortName", "cfVarName", "cfName", "name", "units")
        return {k: eccodes.codes_get_string(gid, k) for k in keys}
    except eccodes.GribInternalError:
        return None
    finally:
        eccodes.codes_release(gid)


def _level_and_step(eccodes, param_id: int) -> tuple[bool, bool]:
    """(single level, accumulated): GRIB2 pins the level of a single-level parameter (a pressure-level
    message set to paramId 167 becomes heightAboveGround 2) and states the statistical processing."""
    gid = eccodes.codes_grib_new_from_samples("regular_ll_pl_grib2")
    try:
        eccodes.codes_set(gid, "paramId", param_id)
        return (
            eccodes.codes_get_string(gid, "typeOfLevel") != "isobaricInhPa",
            eccodes.codes_get_string(gid, "stepType") == "accum",
        )
    except eccodes.GribInternalError:  # not encodable in GRIB2: no level pinned
        return False, False
    finally:
        eccodes.codes_release(gid)


@functools.cache
def _lookup(name: str) -> FieldInfo | None:
    # d2m is the cfVarName of shortName 2d, u10 of 10u, fg10 of 10fg: the digits go to the front.
    tries = [name]
    if m := re.fullmatch(r"([a-z]+)(\d+)m?", name):
        tries.append(m.group(2) + m.group(1))
    with _quiet() as eccodes:
        for short in tries:
            for sample in ("GRIB1", "GRIB2"):
                keys = _keys(eccodes, sample, "shortName", short)
                # The candidate must come back as the name asked for, never as a neighbour of it.
                if keys is not None and name in (keys["shortName"], keys["cfVarName"]):
                    pid = int(keys["paramId"])
                    single, accum = _level_and_step(eccodes, pid)
                    cf = keys["cfVarName"]
                    rng, cds = _OURS.get(cf, (None, None))
                    return FieldInfo(
                        name=cf,
                        param_id=pid,
                        units=keys["units"],
                        valid_range=rng,
                        cds_variable=cds,
                        short_name=keys["shortName"] if keys["shortName"] != cf else "",
                        may_be_constant=accum,
                        long_name=keys["name"],
                        single_level=single,
                        standard_name=_CF_NAMES.get(cf) or (keys["cfName"] if keys["cfName"] != "unknown" else None),
                    )
    return None


def info(name: str) -> FieldInfo | None:
    """A field by cfVarName or ECMWF short name (``d2m`` or ``2d``), or None if ecCodes does not know it."""
    return _lookup(name) if name else None


def is_single_level(field: str) -> bool:
    """Whether ``field`` lives on one level (a NetCDF may still give it a size-1 level axis)."""
    f = info(field)
    return f is not None and f.single_level


# Names other tools give the fields in NetCDF and zarr (CMIP/CF short names; anemoi, ARCO-ERA5 and
# WeatherBench 2 use the CDS long names of _OURS), with the factor that turns their values into ours:
# gh (geopotential height, gpm) is z / g.
G = 9.80665  # standard gravity (WMO), the constant that defines geopotential height from z
_ALIASES: dict[str, tuple[str, float, str]] = {  # name -> (field, factor, units of the named variable)
    "tas": ("t2m", 1.0, ""),
    "uas": ("u10", 1.0, ""),
    "vas": ("v10", 1.0, ""),
    "psl": ("msl", 1.0, ""),
    "ps": ("sp", 1.0, ""),
    "ta": ("t", 1.0, ""),
    "ua": ("u", 1.0, ""),
    "va": ("v", 1.0, ""),
    "hus": ("q", 1.0, ""),
    "hur": ("r", 1.0, ""),
    "wap": ("w", 1.0, ""),
    "gh": ("z", G, "gpm"),
    "zg": ("z", G, "gpm"),
    "geopotential_height": ("z", G, "gpm"),
    "pr": ("tp", 1.0, ""),
}
# setdefault: an explicit alias above wins over a CDS name.
for _f, (_, _cds) in _OURS.items():
    _ALIASES.setdefault(_cds, (_f, 1.0, ""))


def candidates(field: str) -> dict[str, tuple[float, str]]:
    """Every variable name that holds ``field``: name -> (factor to our units, units it must have)."""
    f = info(field)
    if f is None:
        return {}
    out = {n: (1.0, f.units) for n in f.names}
    out.update({n: (k, u or f.units) for n, (g, k, u) in _ALIASES.items() if g == f.name})
    return out


def field_of(name: str) -> str | None:
    """The field a NetCDF/zarr variable name stands for (an alias, a CDS name, a cfVarName or a short
    name), or None."""
    if hit := _ALIASES.get(name):
        return hit[0]
    f = info(name)
    return f.name if f else None


_UNIT_WORDS = {
    "degk": "K",
    "deg_k": "K",
    "kelvin": "K",
    "gpm": "m",
    "millibar": "hPa",
    "mbar": "hPa",
    "percent": "%",
    "meter": "m",
    "metre": "m",
    "meters": "m",
    "metres": "m",
    "pascal": "Pa",
}


def parse_units(text: str) -> dict[str, int] | None:
    """'m s**-1', 'm s-1', 'm/s', 'm.s-1' all -> {'m': 1, 's': -1}; None when it cannot be read."""
    # "." and "*" separate factors (UDUNITS 'm.s-1'); "**" and "^" mark exponents, which follow anyway.
    text = text.strip().replace("**", "").replace("^", "").replace(".", " ").replace("*", " ")
    # Spellings of "dimensionless": ecCodes writes '(0 - 1)' for fractions and '~' for none.
    if text in ("", "1", "-", "(0 - 1)", "~"):
        return {}
    out: dict[str, int] = {}
    for i, part in enumerate(text.split("/")):
        for tok in part.split():
            m = re.fullmatch(r"([A-Za-z_%]+)(-?\d+)?", tok)
            if m is None:
                return None
            unit = _UNIT_WORDS.get(m.group(1).lower(), m.group(1))
            exp = int(m.group(2) or 1) * (-1 if i else 1)  # after a "/" every exponent is negated
            out[unit] = out.get(unit, 0) + exp
    return {u: e for u, e in out.items() if e}  # 'm m-1' cancels to dimensionless


def same_units(found: str, expected: str) -> bool:
    a, b = parse_units(found), parse_units(expected)
    return a is not None and a == b


def matches(wanted: str, grib_name: str, short_name: str) -> bool:
    """Whether a GRIB message (cfgrib name, ECMWF shortName) is the configured field ``wanted``."""
    return wanted in (grib_name, short_name)
