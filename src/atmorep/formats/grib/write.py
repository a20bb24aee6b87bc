"""Writing fields as GRIB, for the sources whose values do not arrive as GRIB messages.

The embedded sample, NetCDF and zarr stores, Gaussian grids regridded and vorticity derived from
winds all end as GRIB of one (field, month), so that one validation (acquire's) and one decoder
(normalize's) serve every source. Messages are ecCodes samples with their keys set, not encoded by
hand: ecCodes knows the sections, and what it writes it reads back. The default is GRIB1, as ERA5 is
delivered, with 24-bit simple packing; ``ieee`` writes GRIB2 with IEEE floats instead, for values
that are floats already and must come through bit-equal (packing would round them). Missing
values (NaN) go into the GRIB bitmap, never into the values as a magic number the reader might take
for data.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from atmorep import fields
from atmorep.errors import DataError

MISSING = 9999.0  # GRIB missingValue used with a bitmap for NaN points (ecCodes' default)
_LEVEL_TYPE = {"ml": "hybrid", "pl": "isobaricInhPa"}


def set_values(gid, values: np.ndarray) -> None:
    """Set the values of the message ``gid`` (a float64 sequence in its scanning order), NaN as missing
    points in its bitmap."""
    import eccodes

    if np.isnan(values).any():
        # missingValue and the bitmap before the values: ecCodes then leaves MISSING points out of the
        # packing and marks them in the bitmap.
        eccodes.codes_set(gid, "missingValue", MISSING)
        eccodes.codes_set(gid, "bitmapPresent", 1)
        values = np.where(np.isnan(values), MISSING, values)
    eccodes.codes_set_values(gid, values)


def write_grib(
    path: Path,
    name: str,
    data_TLYX: np.ndarray,
    times: np.ndarray,
    levels,
    lats,
    lons,
    *,
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

    info = fields.info(name)
    if info is None:
        raise DataError(f"cannot write field '{name}': not in the field catalogue (src/atmorep/fields.py)")
    kind = levtype or ("sfc" if list(levels) == [0] else "ml")  # level 0 is how the stages name a single level
    lats, lons = np.asarray(lats, float), np.asarray(lons, float)
    dlat = abs(lats[1] - lats[0]) if len(lats) > 1 else 0.0
    dlon = lons[1] - lons[0] if len(lons) > 1 else 0.0
    sample = "regular_ll_sfc_grib1" if kind == "sfc" else "regular_ll_pl_grib1"
    # dataTime is HHMM: minutes are kept, seconds cannot be written (refused rather than dropped).
    exact = np.asarray(times, "datetime64[s]")
    times = exact.astype("datetime64[m]")
    if (off := exact != times).any():
        raise DataError(
            f"cannot write {name} at {exact[off][0]}: GRIB holds times to the minute; round the source's "
            "times to whole minutes"
        )
    with open(path, "ab" if append else "wb") as out:
        for it, t in enumerate(times):
            day = t.astype("datetime64[D]")
            date = int(str(day).replace("-", ""))
            minutes = int((t - day).astype(int))
            for il, lev in enumerate(levels):
                gid = eccodes.codes_grib_new_from_samples(sample)
                try:
                    for key, value in (
                        # In this order: ecCodes resolves paramId within the centre and table set before it.
                        ("centre", "ecmf"),
                        ("table2Version", 128),
                        ("paramId", info.param_id),
                        ("dataDate", date),
                        ("dataTime", minutes // 60 * 100 + minutes % 60),
                        # Step 0 in hours: an analysis, so the valid time is the data time (as ERA5's).
                        ("stepUnits", 1),
                        ("startStep", 0),
                        ("endStep", 0),
                    ):
                        eccodes.codes_set(gid, key, value)
                    if kind != "sfc":  # the sfc sample's level is the surface already
                        eccodes.codes_set(gid, "typeOfLevel", _LEVEL_TYPE.get(kind, kind))
                        eccodes.codes_set(gid, "level", int(lev))
                    grid_keys: tuple[tuple[str, float], ...] = (
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
                    )
                    for grid_key, number in grid_keys:
                        eccodes.codes_set(gid, grid_key, number)
                    # After the GRIB1 keys: ecCodes converts them on the edition change.
                    if edition == 2 or ieee:
                        eccodes.codes_set(gid, "edition", 2)
                    if ieee:
                        eccodes.codes_set(gid, "packingType", "grid_ieee")
                        # precision 1: 32-bit floats, 2: 64-bit; the input's own width, so no rounding.
                        eccodes.codes_set(gid, "precision", 2 if data_TLYX.dtype == np.float64 else 1)
                    set_values(gid, np.ascontiguousarray(data_TLYX[it, il], dtype=float).ravel())
                    eccodes.codes_write(gid, out)
                finally:
                    eccodes.codes_release(gid)
