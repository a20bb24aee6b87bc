"""What the pipeline knows about each ERA5 field: GRIB identity, units, physical range, CDS names.

Names are cfgrib's variable names (``cfVarName``: t2m, u10, msl, t, vo, ...), the names used in
``data.fields``. Ranges are generous physical bounds for the quality gate: a value outside them
means broken data or wrong units, not weather (``normalize.qc.ranges`` overrides them).
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class FieldInfo:
    name: str
    param_id: int
    units: str  # as ecCodes reports them
    valid_range: tuple[float, float]
    cds_variable: str  # the CDS form name (single- and pressure-level datasets)
    short_name: str = ""  # ECMWF shortName where it differs from the cfgrib name
    may_be_constant: bool = False  # an accumulation can be zero everywhere at one time

    @property
    def names(self) -> tuple[str, ...]:
        return (self.name, self.short_name) if self.short_name else (self.name,)


# The bounds leave room for what real ERA5 holds: small negative q and tp (numerics, packing), r above
# 100 % (supersaturation), z below 0 (1000 hPa lies below sea level under high pressure).
_TABLE = (
    FieldInfo("vo", 138, "s**-1", (-0.1, 0.1), "vorticity"),
    FieldInfo("d", 155, "s**-1", (-0.1, 0.1), "divergence"),
    FieldInfo("t", 130, "K", (150.0, 350.0), "temperature"),
    FieldInfo("q", 133, "kg kg**-1", (-1e-3, 0.06), "specific_humidity"),
    FieldInfo("u", 131, "m s**-1", (-250.0, 250.0), "u_component_of_wind"),
    FieldInfo("v", 132, "m s**-1", (-250.0, 250.0), "v_component_of_wind"),
    FieldInfo("w", 135, "Pa s**-1", (-60.0, 60.0), "vertical_velocity"),
    FieldInfo("z", 129, "m**2 s**-2", (-1e4, 5e5), "geopotential"),
    FieldInfo("r", 157, "%", (-10.0, 160.0), "relative_humidity"),
    FieldInfo("t2m", 167, "K", (150.0, 350.0), "2m_temperature", short_name="2t"),
    FieldInfo("u10", 165, "m s**-1", (-120.0, 120.0), "10m_u_component_of_wind", short_name="10u"),
    FieldInfo("v10", 166, "m s**-1", (-120.0, 120.0), "10m_v_component_of_wind", short_name="10v"),
    FieldInfo("msl", 151, "Pa", (8.0e4, 1.1e5), "mean_sea_level_pressure"),
    FieldInfo("sp", 134, "Pa", (3.0e4, 1.1e5), "surface_pressure"),
    FieldInfo("tp", 228, "m", (-1e-6, 0.5), "total_precipitation", may_be_constant=True),
)

FIELDS: dict[str, FieldInfo] = {f.name: f for f in _TABLE}
#: fields on a single surface/height level (a NetCDF may still give them a size-1 level axis)
SURFACE_FIELDS = frozenset({"t2m", "u10", "v10", "msl", "sp", "tp"})
_BY_ANY_NAME = {n: f for f in _TABLE for n in f.names}


def info(name: str) -> FieldInfo | None:
    """The catalogue entry of a field (by cfgrib or ECMWF short name), or None if unknown."""
    return _BY_ANY_NAME.get(name)


# Names other tools give the fields in NetCDF and zarr (CMIP/CF short names, anemoi, ARCO-ERA5 and
# WeatherBench 2 use the CDS long names above), with the factor that turns their values into ours:
# gh (geopotential height, gpm) is z / g.
G = 9.80665  # standard gravity (WMO), the constant that defines geopotential height from z
_ALIASES: dict[str, tuple[str, float, str]] = {  # name -> (field, factor, units of the named variable)
    "2m_temperature": ("t2m", 1.0, ""),
    "tas": ("t2m", 1.0, ""),
    "10m_u_component_of_wind": ("u10", 1.0, ""),
    "uas": ("u10", 1.0, ""),
    "10m_v_component_of_wind": ("v10", 1.0, ""),
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
# setdefault: an explicit alias above wins over a catalogue name.
for _f in _TABLE:
    _ALIASES.setdefault(_f.cds_variable, (_f.name, 1.0, ""))
    for _n in _f.names:
        _ALIASES.setdefault(_n, (_f.name, 1.0, ""))


def candidates(field: str) -> dict[str, tuple[float, str]]:
    """Every variable name that holds ``field``: name -> (factor to our units, units it must have)."""
    return {n: (k, u or FIELDS[field].units) for n, (f, k, u) in _ALIASES.items() if f == field}


def field_of(name: str) -> str | None:
    """The catalogue field a NetCDF/zarr variable name stands for, or None."""
    hit = _ALIASES.get(name)
    return hit[0] if hit else None


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
    import re

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
