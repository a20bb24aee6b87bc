"""CF metadata and WeatherBench 2 names of the exported variables, driven by one mapping table.

Standard names follow the CF standard-name table (lat-lon grids: ``eastward_wind``/``northward_wind``,
not grid-relative ``x_wind``/``y_wind``; ``geopotential`` in m2 s-2, never geopotential height).
WeatherBench 2 names are the CDS variable names of :mod:`atmorep.fields`.
"""

from __future__ import annotations

from atmorep import fields as catalogue

#: field -> (CF standard_name, long_name)
STANDARD_NAMES: dict[str, tuple[str, str]] = {
    "t2m": ("air_temperature", "2 metre temperature"),
    "u10": ("eastward_wind", "10 metre eastward wind"),
    "v10": ("northward_wind", "10 metre northward wind"),
    "msl": ("air_pressure_at_mean_sea_level", "mean sea level pressure"),
    "sp": ("surface_air_pressure", "surface pressure"),
    "tp": ("lwe_thickness_of_precipitation_amount", "total precipitation"),  # ERA5 tp: metres of water
    "t": ("air_temperature", "temperature"),
    "u": ("eastward_wind", "eastward wind"),
    "v": ("northward_wind", "northward wind"),
    "w": ("lagrangian_tendency_of_air_pressure", "vertical velocity"),  # ERA5 w is omega, Pa s-1
    "z": ("geopotential", "geopotential"),
    "q": ("specific_humidity", "specific humidity"),
    "r": ("relative_humidity", "relative humidity"),
    "vo": ("atmosphere_relative_vorticity", "relative vorticity"),
    "d": ("divergence_of_wind", "divergence"),
}

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
    standard, long = STANDARD_NAMES.get(field, (None, field))
    out = {"long_name": f"{what} {long}".strip(), "units": units(field), "field": field}
    if standard:
        out["standard_name"] = standard
    return out


def wb2_name(field: str) -> str:
    """The WeatherBench 2 variable name (e.g. ``2m_temperature``); the field name when unknown."""
    info = catalogue.info(field)
    return (info.cds_variable if info else None) or field
