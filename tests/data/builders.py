"""Small GRIB builders for the data tests: real ERA5 messages re-encoded as a mirror would hold them,
and synthetic fields on any grid (weatherbench2's mock-data habit: build, never download)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

UK = ("era5-t2m-uk-hourly", "era5-2mt-2019-03-uk.grib")
NATL = ("era5-sfc-natl-hourly", "era5.grib")
IFS = ("ifs-pl-5var-6h", "pl_regular_ll.grib")
ENS = ("era5-ens-pl-tz", "era5-levels-members.grib")


def messages(path) -> list[bytes]:
    """Raw messages of a GRIB file."""
    from atmorep.formats import grib

    return [r.data for r in grib.iter_raw(path)]


def reencode(msg: bytes, edition: int | None = None, south_to_north: bool = False) -> bytes:
    """The same field as GRIB2 and/or stored south to north (values flipped to match)."""
    import eccodes

    gid = eccodes.codes_new_from_message(msg)
    try:
        if south_to_north:
            nj, ni = eccodes.codes_get_long(gid, "Nj"), eccodes.codes_get_long(gid, "Ni")
            v = eccodes.codes_get_values(gid).reshape(nj, ni)[::-1].ravel()
            lat1 = eccodes.codes_get_double(gid, "latitudeOfFirstGridPointInDegrees")
            lat2 = eccodes.codes_get_double(gid, "latitudeOfLastGridPointInDegrees")
            eccodes.codes_set(gid, "jScansPositively", 1)
            eccodes.codes_set(gid, "latitudeOfFirstGridPointInDegrees", lat2)
            eccodes.codes_set(gid, "latitudeOfLastGridPointInDegrees", lat1)
            eccodes.codes_set_values(gid, v)
        if edition == 2:
            eccodes.codes_set(gid, "edition", 2)
        return eccodes.codes_get_message(gid)
    finally:
        eccodes.codes_release(gid)


def uk_mirror(shared_data: Path, root: Path, drop: tuple[int, ...] = ()) -> Path:
    """The real UK t2m month as a mirror keeps it: 3 files (GRIB1 north-south, GRIB2 with 0..360
    longitudes, GRIB1 south-north), plus an unrelated field; messages ``drop`` left out."""
    root.mkdir(parents=True, exist_ok=True)
    msgs = messages(shared_data.joinpath(*UK))
    keep = [(i, m) for i, m in enumerate(msgs) if i not in drop]
    parts = {
        "a/era5_t2m_201903_days01-10.grib": [m for i, m in keep if i < 240],
        "b/era5_t2m_201903_days11-20.grb2": [reencode(m, edition=2) for i, m in keep if 240 <= i < 480],
        "b/era5_t2m_201903_days21-31.grib": [reencode(m, south_to_north=True) for i, m in keep if i >= 480],
    }
    for name, ms in parts.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_bytes(b"".join(ms))
    (root / "other.grib").write_bytes(b"".join(messages(shared_data.joinpath(*NATL))[:6]))
    return root


def field_grib(path: Path, name: str, values_TLYX, times, levels, lats, lons, **kwargs) -> Path:
    from atmorep.formats import grib

    grib.write_grib(path, name, np.asarray(values_TLYX, np.float32), np.asarray(times), levels, lats, lons, **kwargs)
    return path


def hourly(start: str, n: int) -> np.ndarray:
    return np.datetime64(start, "h") + np.arange(n) * np.timedelta64(1, "h")


def sample_grid(sample: str, path: Path, values=None, short_name: str | None = None, level: int | None = None) -> Path:
    """One message from an ecCodes sample (e.g. 'reduced_gg_sfc_grib1', 'sh_ml_grib2'), optionally
    with new values."""
    import eccodes

    gid = eccodes.codes_grib_new_from_samples(sample)
    try:
        if short_name:
            eccodes.codes_set(gid, "shortName", short_name)
        if level is not None:
            eccodes.codes_set(gid, "level", level)
        if values is not None:
            eccodes.codes_set_values(gid, np.asarray(values, float))
        with open(path, "wb") as f:
            eccodes.codes_write(gid, f)
    finally:
        eccodes.codes_release(gid)
    return path


def relabel(msg: bytes, add: float = 0.0, **keys) -> bytes:
    """The message with ecCodes ``keys`` set (in order: typeOfLevel before level, dataTime before
    stepRange), its values shifted by ``add`` so that a wrong pick shows."""
    import eccodes

    gid = eccodes.codes_new_from_message(msg)
    try:
        for key, value in keys.items():
            eccodes.codes_set(gid, key, value)
        if add:
            eccodes.codes_set_values(gid, eccodes.codes_get_values(gid) + add)
        return eccodes.codes_get_message(gid)
    finally:
        eccodes.codes_release(gid)
