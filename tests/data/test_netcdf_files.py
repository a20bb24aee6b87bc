"""NetCDF through the files source: CDS/CF layouts written from the shared GRIB and read back equal, the
field catalogue's names and units, lossless GRIB2 IEEE packing, and one clear line for bad input."""

from __future__ import annotations

import re
import shutil

import numpy as np
import pytest
import xarray as xr
from tests_helpers import atmorep

from atmorep import fields
from atmorep.config import AcquireConfig, DataConfig, FieldSpec, FilesConfig
from atmorep.data.acquire import sources
from atmorep.errors import DataError
from atmorep.formats import grib


def acquire(tmp_path, field, levels, start, end, paths, levtype="pl", variables=None, **data_kw):
    data = DataConfig(fields={field: FieldSpec(levels=tuple(levels), levtype=levtype)}, start=start, end=end, **data_kw)
    cfg = AcquireConfig(
        source="files",
        files=FilesConfig(paths=tuple(map(str, paths)), index_dir=str(tmp_path / "index")),
        variables=variables or {},
    )
    return sources.acquire(data, cfg, field, start[:7], tmp_path / "out" / f"{field}.grib")


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_ieee_grib_keeps_float_values_bit_equal(tmp_path, dtype):
    import eccodes

    rng = np.random.default_rng(0)
    v = (10.0 ** rng.uniform(-3, 5, (2, 2, 7, 9))).astype(dtype)  # a wide range: 24 bits cannot hold it
    v[0, 1, 3, 4] = np.nan
    lats, lons = 60.0 - 3.0 * np.arange(7), np.arange(-10.0, 8.0, 2.0)
    times = np.array(["2020-01-01T00", "2020-01-01T06"], "datetime64[h]")
    grib.write_grib(tmp_path / "x.grib", "z", v, times, [500, 850], lats, lons, levtype="pl", ieee=True)
    got = []
    with open(tmp_path / "x.grib", "rb") as f:
        while (gid := eccodes.codes_grib_new_from_file(f)) is not None:
            vals = eccodes.codes_get_values(gid)
            if eccodes.codes_get(gid, "bitmapPresent"):
                vals[vals == eccodes.codes_get_double(gid, "missingValue")] = np.nan
            got.append(vals.reshape(7, 9))
            eccodes.codes_release(gid)
    np.testing.assert_array_equal(np.array(got).reshape(v.shape), v.astype(np.float64))
    # 24-bit simple packing, the default, would not keep them
    grib.write_grib(tmp_path / "y.grib", "z", v, times, [500, 850], lats, lons, levtype="pl")
    assert not np.array_equal(grib.decode(tmp_path / "y.grib").values, v.astype(np.float32), equal_nan=True)


def test_catalogue_names_and_units():
    assert fields.field_of("psl") == "msl" and fields.field_of("2m_temperature") == "t2m"
    assert fields.field_of("2t") == "t2m" and fields.field_of("u_component_of_wind") == "u"
    assert fields.candidates("z")["gh"] == (fields.G, "gpm")
    for a, b in [
        ("m s**-1", "m/s"),
        ("m s-1", "m s**-1"),
        ("degK", "K"),
        ("m**2 s**-2", "m2 s-2"),
        ("kg kg**-1", "1"),
        ("gpm", "m"),
    ]:
        assert fields.same_units(a, b), (a, b)
    for a, b in [("Pa", "hPa"), ("K", "degC"), ("m s**-1", "m"), ("furlongs", "m")]:
        assert not fields.same_units(a, b), (a, b)


@pytest.fixture(scope="module")
def ifs(shared_data):
    """t and z of the real IFS GRIB (6 pressure levels, 8 valid times), as atmorep decodes them."""
    path = shared_data / "ifs-pl-5var-6h" / "pl_regular_ll.grib"
    return grib.decode(path, "t"), grib.decode(path, "z")


def _cds_style(da: xr.DataArray, name: str) -> xr.Dataset:
    """As the new CDS delivers NetCDF: valid_time, pressure_level, latitude/longitude, float64, _FillValue."""
    ds = da.astype("float64").rename(time="valid_time", level="pressure_level").to_dataset(name=name)
    ds[name].attrs = {"units": da.attrs["units"], "long_name": da.attrs["long_name"]}
    ds[name].encoding["_FillValue"] = np.nan
    return ds.assign_coords(number=0, expver=("valid_time", ["0001"] * ds.sizes["valid_time"]))


@pytest.mark.slow
def test_cds_and_cf_netcdf_from_grib_read_back_equal(tmp_path, ifs):
    t, z = ifs
    t = t.copy()
    # a missing point: _FillValue in the file, the GRIB bitmap after acquire
    t[2, list(t.level.values).index(850), 5, 7] = np.nan
    mirror = tmp_path / "mirror"
    mirror.mkdir()
    cds = _cds_style(t, "t")  # NetCDF4, the month in two files
    cds.isel(valid_time=slice(5, None)).to_netcdf(mirror / "t_cds_2.nc")
    cds.isel(valid_time=slice(0, 5)).to_netcdf(mirror / "t_cds_1.nc")
    gh = (z / fields.G).rename(time="time", level="plev", latitude="lat", longitude="lon")
    gh = gh.assign_coords(plev=gh.plev * 100.0).to_dataset(name="gh")  # CF: plev in Pa
    gh["plev"].attrs["units"] = "Pa"
    gh["gh"].attrs = {"units": "gpm"}
    gh.to_netcdf(mirror / "gh_cf.nc", format="NETCDF3_64BIT")
    start, end = "2024-06-03T00", "2024-06-04T18"
    out = acquire(tmp_path, "t", [850, 500], start, end, [mirror], step_hours=6)
    got = grib.decode(out)
    np.testing.assert_array_equal(got.values, t.sel(level=[500, 850]).values)
    assert np.isnan(got.values[2, 1, 5, 7]) and np.isnan(got.values).sum() == 1
    assert grib.scan(out)[0].edition == 2
    out = acquire(tmp_path, "z", [1000, 300], start, end, [mirror / "gh_cf.nc"], step_hours=6)
    np.testing.assert_allclose(grib.decode(out).values, z.sel(level=[300, 1000]).values, rtol=1e-6)


def test_monthly_means_on_a_month_axis(tmp_path, shared_data):
    hourly = grib.decode(shared_data / "era5-t2m-uk-hourly" / "era5-2mt-2019-03-uk.grib")
    mean = hourly.isel(level=0).mean("time", dtype="float64").expand_dims(month=[np.datetime64("2019-03-01")])
    ds = mean.to_dataset(name="t2m")
    ds["t2m"].attrs["units"] = "K"
    ds.to_netcdf(tmp_path / "monthly.nc")
    out = acquire(tmp_path, "t2m", [0], "2019-03-01T00", "2019-03-31T23", [tmp_path / "monthly.nc"])
    np.testing.assert_array_equal(grib.decode(out).values[:, 0], mean.values.astype(np.float32))
    clim = ds.assign_coords(month=[3])  # month numbers: a climatology, not a time series
    clim.to_netcdf(tmp_path / "clim.nc")
    with pytest.raises(DataError, match=r"clim.nc: the time axis 'month' holds month numbers"):
        acquire(tmp_path, "t2m", [0], "2019-03-01T00", "2019-03-31T23", [tmp_path / "clim.nc"])


def test_bad_netcdf_gets_one_line_naming_file_variable_and_key(tmp_path, ifs, shared_data):
    t, _ = ifs
    start, end = "2024-06-03T00", "2024-06-04T18"
    ds = _cds_style(t, "t")
    bad = ds.copy()
    bad["t"].attrs["units"] = "degC"
    bad.to_netcdf(tmp_path / "degc.nc")
    two = xr.concat([ds.drop_vars("number")] * 2, dim="number")
    two.to_netcdf(tmp_path / "members.nc")
    (tmp_path / "both").mkdir()
    ds.to_netcdf(tmp_path / "both" / "t.nc")
    shutil.copy(shared_data / "ifs-pl-5var-6h" / "pl_regular_ll.grib", tmp_path / "both" / "pl.grib")
    cases = [
        ([tmp_path / "degc.nc"], "t", {}, r"degc.nc: variable 't' is in 'degC'; field 't' needs 'K'"),
        ([tmp_path / "members.nc"], "t", {}, r"members.nc: variable 't' has 2 ensemble members \(dim 'number'\)"),
        ([tmp_path / "both"], "t", {}, r"field 't' is in NetCDF .*t.nc\) and in GRIB .*pl.grib\)"),
        ([tmp_path / "degc.nc"], "u", {}, r"no variable for field 'u' \(looked for .*'u_component_of_wind'"),
        ([tmp_path / "degc.nc"], "t", {"t": "ta"}, r"acquire.variables maps it to 'ta'"),
        ([tmp_path / "degc.nc"], "t", {}, None),
    ]
    for paths, field, variables, message in cases[:-1]:
        with pytest.raises(DataError, match=message):
            acquire(tmp_path, field, [850], start, end, paths, variables=variables)
        assert not list((tmp_path / "out").glob("*"))
    # the same as the user sees it: one line on stderr, exit 1, no output
    cfg = tmp_path / "c.yaml"
    cfg.write_text(
        f"run: x\ndata: {{fields: {{t: {{levels: [850], levtype: pl}}}}, start: '{start}', "
        f"end: '{end}'}}\n"
        f"acquire: {{source: files, files: {{paths: ['{tmp_path / 'degc.nc'}']}}}}\n"
    )
    r = atmorep(
        "acquire",
        "--config",
        str(cfg),
        "--field",
        "t",
        "--month",
        "2024-06",
        "--output",
        str(tmp_path / "cli" / "t.grib"),
        timeout=300,
    )
    assert r.returncode == 1
    errors = [ln for ln in r.stderr.splitlines() if "error" in ln]
    assert len(errors) == 1 and "variable 't' is in 'degC'; field 't' needs 'K'" in errors[0], r.stderr
    assert not (tmp_path / "cli" / "t.grib").exists()


def test_forecast_valid_time_and_a_mixed_mirror_agree_with_inspect(tmp_path, ifs, shared_data):
    """A forecast NetCDF (time = base time, valid_time = base + 6 h) is placed at its valid times; a
    directory of GRIB and NetCDF is described file by file, as acquire reads it."""
    from atmorep.data.acquire.inspect import describe

    t, _ = ifs
    ds = _cds_style(t, "t").rename(valid_time="time")
    ds = ds.assign_coords(
        time=ds.time - np.timedelta64(6, "h"), valid_time=("time", ds.time.values), step=np.timedelta64(6, "h")
    )
    mirror = tmp_path / "mirror"
    mirror.mkdir()
    ds.to_netcdf(mirror / "fc.nc")
    shutil.copy(shared_data / "era5-t2m-uk-hourly" / "era5-2mt-2019-03-uk.grib", mirror / "t2m.grib")
    text = describe(mirror)
    assert "(directory of 1 GRIB files)" in text and "t2m: 2 metre temperature" in text
    assert re.search(
        r"fc.nc \(netcdf\)\n  t: .*levels pressure_level=.*"
        r"usable as field 't' \(pl \[300, 400, 500, 700, 850, 1000\]\)",
        text,
    ), text
    out = acquire(tmp_path, "t", [500], "2024-06-03T00", "2024-06-04T18", [mirror], step_hours=6)
    got = grib.decode(out)
    assert list(got.time.values) == list(t.time.values)
    np.testing.assert_array_equal(got.values, t.sel(level=[500]).values)


def test_integer_geopotential_height_is_converted_in_floating_point(tmp_path):
    """gpm -> m² s⁻² multiplies by g = 9.80665; on an integer variable it was done in the integer
    dtype (x 9), a silently wrong field."""
    lat, lon = np.linspace(60, 30, 4), np.arange(0, 40, 10.0)
    times = np.datetime64("2024-06-03T00", "ns") + np.arange(2) * np.timedelta64(6, "h")
    gh = np.full((2, 1, 4, 4), 5500, np.int32)
    ds = xr.Dataset(
        {"gh": (("time", "plev", "lat", "lon"), gh, {"units": "gpm"})},
        coords={"time": times, "plev": ("plev", [50000.0], {"units": "Pa"}), "lat": lat, "lon": lon},
    )
    ds.to_netcdf(tmp_path / "gh.nc")
    out = acquire(tmp_path, "z", [500], "2024-06-03T00", "2024-06-03T06", [tmp_path / "gh.nc"], step_hours=6)
    np.testing.assert_allclose(grib.decode(out).values, 5500 * fields.G, rtol=1e-6)
