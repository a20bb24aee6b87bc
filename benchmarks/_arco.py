"""The ARCO-ERA5 model-level layout the zarr-source benchmarks build (zarr_source.py, remote_read.py).

``gs://gcp-public-data-arco-era5/ar/model-level-1h-0p25deg.zarr-v1``: zarr v2 with consolidated
metadata, long variable names, ``temperature`` on dims time × hybrid × latitude × longitude with 137
model levels, chunks 1 × 18 × lat × lon, float32; uncompressed here, so the bytes on the wire are the
chunk bytes. Each benchmark writes its own values into the array this returns.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

#: AtmoRep's model levels, and the store's levels and level chunk
LEVELS = (96, 105, 114, 123, 137)
NLEV, LEVEL_CHUNK = 137, 18


def arco_layout(path: Path, ny: int, nx: int, hours: int, start: str = "2021-01-01T00"):
    """The store's group with its coordinates written and an empty ``temperature`` array (NaN fill):
    returns (temperature array, latitudes, longitudes). Call ``zarr.consolidate_metadata`` once filled."""
    import zarr

    lats = np.linspace(90.0, -90.0, ny)
    lons = np.arange(nx) * (360.0 / nx)
    g = zarr.open_group(path, mode="w", zarr_format=2)
    for name, values, attrs in (
        (
            "time",
            np.arange(hours, dtype="i8"),
            {"units": f"hours since {start.replace('T', ' ')}:00", "calendar": "proleptic_gregorian"},
        ),
        ("hybrid", np.arange(1, NLEV + 1, dtype="f8"), {"long_name": "model level"}),
        ("latitude", lats, {"units": "degrees_north"}),
        ("longitude", lons, {"units": "degrees_east"}),
    ):
        arr = g.create_array(name, shape=values.shape, dtype=values.dtype, chunks=values.shape, fill_value=None)
        arr[:] = values
        arr.attrs.update({"_ARRAY_DIMENSIONS": [name], **attrs})
    t = g.create_array(
        "temperature",
        shape=(hours, NLEV, ny, nx),
        chunks=(1, LEVEL_CHUNK, ny, nx),
        dtype="f4",
        compressors=None,
        fill_value=float("nan"),
    )
    t.attrs.update(
        {"_ARRAY_DIMENSIONS": ["time", "hybrid", "latitude", "longitude"], "units": "K", "long_name": "Temperature"}
    )
    return t, lats, lons
