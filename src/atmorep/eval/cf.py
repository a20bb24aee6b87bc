"""CF metadata and WeatherBench 2 names of the exported variables, from the field catalogue.

Standard names, long names and units are :mod:`atmorep.fields`' (ecCodes' parameter database: CF
``standard_name`` from its ``cfName``, e.g. ``geopotential`` in m2 s-2, never geopotential height);
WeatherBench 2 names are the catalogue's CDS variable names.
"""

from __future__ import annotations

from atmorep import fields as catalogue

COORDS = {
    "latitude": {"standard_name": "latitude", "long_name": "latitude", "units": "degrees_north", "axis": "Y"},
    "longitude": {"standard_name": "longitude", "long_name": "longitude", "units": "degrees_east", "axis": "X"},
    # positive "down": model level numbers and pressures both grow towards the ground.
    "level": {"long_name": "vertical level (0: surface; model level number or hPa)", "positive": "down", "axis": "Z"},
    "time": {"standard_name": "time", "long_name": "valid time"},
    "init_time": {"standard_name": "forecast_reference_time", "long_name": "initialisation time (last context step)"},
    "lead_time": {"standard_name": "forecast_period", "long_name": "valid time minus initialisation time"},
    "member": {"standard_name": "realization", "long_name": "ensemble member (tail head)"},
}


def units(field: str) -> str:
    """UDUNITS form of the catalogue's units (``m s**-1`` -> ``m s-1``); '1' when unknown."""
    info = catalogue.info(field)
    return info.units.replace("**", "") if info else "1"


def attrs(field: str, what: str = "") -> dict:
    """CF attributes of a variable holding ``field`` (in physical units); ``what`` prefixes the long name."""
    info = catalogue.info(field)
    long = info.long_name if info and info.long_name else field
    out = {"long_name": f"{what} {long}".strip(), "units": units(field), "field": field}
    if info and info.standard_name:
        out["standard_name"] = info.standard_name
    return out


def wb2_name(field: str) -> str:
    """The WeatherBench 2 variable name (e.g. ``2m_temperature``); the field name when unknown."""
    info = catalogue.info(field)
    return (info.cds_variable if info else None) or field
