"""GRIB in and out: write fields with ecCodes, decode them with cfgrib into CF-named xarray.

Decoded arrays always have dims ``(time, level, latitude, longitude)``, float32, latitude north to
south and longitude in [0, 360) ascending, whatever order the file used.

Legend: T time steps, L levels, Y latitude rows, X longitude columns.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import xarray as xr

log = logging.getLogger(__name__)


class DataError(ValueError):
    """Input data that cannot be used; the message names the file and what is wrong."""


#: cfgrib variable name -> (ECMWF paramId, GRIB1 typeOfLevel). Surface fields carry level 0.
PARAMS: dict[str, tuple[int, str]] = {
    "t2m": (167, "surface"),
    "u10": (165, "surface"),
    "v10": (166, "surface"),
    "msl": (151, "surface"),
    "tp": (228, "surface"),
    "z": (129, "hybrid"),
    "t": (130, "hybrid"),
    "q": (133, "hybrid"),
    "u": (131, "hybrid"),
    "v": (132, "hybrid"),
    "w": (135, "hybrid"),
    "vo": (138, "hybrid"),
    "d": (155, "hybrid"),
}

MISSING = 9999.0  # GRIB missingValue used with a bitmap for NaN points

_LEVEL_DIMS = ("hybrid", "isobaricInhPa", "level", "model_level_number")


def write_grib(path: Path, name: str, data_TLYX: np.ndarray, times: np.ndarray, levels, lats, lons,
               bits_per_value: int = 24) -> None:
    """Write one field as GRIB1 messages (one per time and level) on a regular lat/lon grid.

    ``lats`` must run north to south and ``lons`` east from their first value with constant steps.
    """
    import eccodes

    param_id, level_type = PARAMS[name]
    lats, lons = np.asarray(lats, float), np.asarray(lons, float)
    dlat, dlon = abs(lats[1] - lats[0]), lons[1] - lons[0]
    sample = "regular_ll_sfc_grib1" if level_type == "surface" else "regular_ll_pl_grib1"
    times = np.asarray(times, "datetime64[h]")
    with open(path, "wb") as out:
        for it, t in enumerate(times):
            day = t.astype("datetime64[D]")
            date = int(str(day).replace("-", ""))
            hour = int((t - day).astype(int))
            for il, lev in enumerate(levels):
                gid = eccodes.codes_grib_new_from_samples(sample)
                try:
                    for key, value in (("centre", "ecmf"), ("table2Version", 128), ("paramId", param_id),
                                       ("dataDate", date), ("dataTime", hour * 100), ("stepUnits", 1),
                                       ("startStep", 0), ("endStep", 0)):
                        eccodes.codes_set(gid, key, value)
                    if level_type != "surface":
                        eccodes.codes_set(gid, "typeOfLevel", level_type)
                        eccodes.codes_set(gid, "level", int(lev))
                    for key, value in (("Ni", len(lons)), ("Nj", len(lats)),
                                       ("latitudeOfFirstGridPointInDegrees", lats[0]),
                                       ("longitudeOfFirstGridPointInDegrees", lons[0]),
                                       ("latitudeOfLastGridPointInDegrees", lats[-1]),
                                       ("longitudeOfLastGridPointInDegrees", lons[-1]),
                                       ("iDirectionIncrementInDegrees", dlon),
                                       ("jDirectionIncrementInDegrees", dlat),
                                       ("jScansPositively", int(lats[1] > lats[0])),
                                       ("bitsPerValue", bits_per_value)):
                        eccodes.codes_set(gid, key, value)
                    values = np.ascontiguousarray(data_TLYX[it, il], dtype=float).ravel()
                    if np.isnan(values).any():  # missing points go into the GRIB bitmap
                        eccodes.codes_set(gid, "missingValue", MISSING)
                        eccodes.codes_set(gid, "bitmapPresent", 1)
                        values = np.where(np.isnan(values), MISSING, values)
                    eccodes.codes_set_values(gid, values)
                    eccodes.codes_write(gid, out)
                finally:
                    eccodes.codes_release(gid)


def decode(path: str | Path, name: str | None = None) -> xr.DataArray:
    """Decode one field of a GRIB file into ``(time, level, latitude, longitude)`` float32.

    ``name`` selects the field when the file holds several; without it the file must hold one.
    Raises :class:`DataError` naming the file for anything that cannot be used.
    """
    path = Path(path)
    if not path.exists():
        raise DataError(f"{path}: no such file")
    if path.stat().st_size == 0:
        raise DataError(f"{path}: empty file")
    _check_complete(path)
    try:
        ds = xr.open_dataset(path, engine="cfgrib", decode_timedelta=True,
                             backend_kwargs={"indexpath": "", "errors": "raise"})
    except Exception as exc:  # cfgrib raises many types for broken input
        raise DataError(f"{path}: cannot decode GRIB ({type(exc).__name__}: {exc})") from None
    found = list(ds.data_vars)
    if name is None:
        if len(found) != 1:
            raise DataError(f"{path}: holds fields {found}; say which one")
        name = found[0]
    if name not in ds:
        raise DataError(f"{path}: field '{name}' not found (found {found or 'no fields'})")
    da = ds[name]
    if "latitude" not in da.dims or "longitude" not in da.dims:
        raise DataError(f"{path}: field '{name}' is not on a regular lat/lon grid "
                        f"(gridType {da.attrs.get('GRIB_gridType', 'unknown')})")
    return _canonical(da, path, name)


def _check_complete(path: Path) -> None:
    """Fail on truncated messages (cfgrib would silently drop them)."""
    import eccodes

    with open(path, "rb") as f:
        count = 0
        while True:
            try:
                gid = eccodes.codes_grib_new_from_file(f)
            except Exception as exc:
                raise DataError(f"{path}: message {count + 1} is truncated or corrupt ({exc})") from None
            if gid is None:
                break
            count += 1
            eccodes.codes_release(gid)
    if count == 0:
        raise DataError(f"{path}: not a GRIB file (no GRIB message found)")


def _canonical(da: xr.DataArray, path: Path, name: str) -> xr.DataArray:
    """Rename to (time, level, latitude, longitude) with valid times, sort, cast to float32."""
    if "valid_time" in da.coords and "time" in da.dims and "step" not in da.dims:
        da = da.assign_coords(time=("time", da["valid_time"].values))
    elif "step" in da.dims or "number" in da.dims:
        raise DataError(f"{path}: field '{name}' has dims {da.dims}; expected one valid time per message")
    elif "time" not in da.dims:
        if "valid_time" in da.coords:
            da = da.expand_dims(time=[da["valid_time"].values])
        else:
            da = da.expand_dims(time=[da["time"].values])
    level_dim = next((d for d in _LEVEL_DIMS if d in da.dims), None)
    if level_dim is None:
        lev = next((float(da.coords[d]) for d in _LEVEL_DIMS if d in da.coords and da.coords[d].ndim == 0), 0)
        da = da.expand_dims(level=[int(lev)])
    else:
        da = da.rename({level_dim: "level"})
    keep = {"time", "level", "latitude", "longitude"}
    da = da.drop_vars([c for c in da.coords if c not in keep])
    da = da.transpose("time", "level", "latitude", "longitude")
    da = da.assign_coords(longitude=np.mod(da["longitude"].values, 360.0),
                          level=da["level"].values.astype(int))
    da = da.sortby("longitude").sortby("latitude", ascending=False).sortby("time")
    da.name = name
    return da.astype(np.float32)
