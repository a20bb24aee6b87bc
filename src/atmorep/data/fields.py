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
    units: str                       # as ecCodes reports them
    valid_range: tuple[float, float]
    cds_variable: str                # the CDS form name (single- and pressure-level datasets)
    short_name: str = ""             # ECMWF shortName where it differs from the cfgrib name
    may_be_constant: bool = False    # an accumulation can be zero everywhere at one time

    @property
    def names(self) -> tuple[str, ...]:
        return (self.name, self.short_name) if self.short_name else (self.name,)


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
_BY_ANY_NAME = {n: f for f in _TABLE for n in f.names}


def info(name: str) -> FieldInfo | None:
    """The catalogue entry of a field (by cfgrib or ECMWF short name), or None if unknown."""
    return _BY_ANY_NAME.get(name)


def matches(wanted: str, grib_name: str, short_name: str) -> bool:
    """Whether a GRIB message (cfgrib name, ECMWF shortName) is the configured field ``wanted``."""
    return wanted in (grib_name, short_name)
