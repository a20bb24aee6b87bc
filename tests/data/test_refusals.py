"""Real files that were refused wrongly (issue 24): a grib_to_netcdf file on a 0.2° grid with float32
coordinates, a mirror holding files of other years and regions, and everyday ERA5 fields (d2m) that
the hand-written catalogue did not know; the identities now come from ecCodes' parameter database."""

from __future__ import annotations

import logging
import os

import netCDF4
import numpy as np
import pytest
import xarray as xr

from atmorep import fields
from atmorep.config import AcquireConfig, DataConfig, FieldSpec, FilesConfig
from atmorep.data.acquire import gridded, sources
from atmorep.data.acquire.inspect import describe
from atmorep.errors import DataError
from atmorep.formats import grib


def acquire(tmp_path, field, start, end, paths, variables=None, **data_kw):
    data = DataConfig(fields={field: FieldSpec(levels=(0,))}, start=start, end=end, **data_kw)
    cfg = AcquireConfig(
        source="files",
        files=FilesConfig(paths=tuple(map(str, paths)), index_dir=str(tmp_path / "index")),
        variables=variables or {},
    )
    return sources.acquire(data, cfg, field, start[:7], tmp_path / "out" / f"{field}.grib")


def grib_to_netcdf_like(path, name, units, lats, lons, times, values, long_name=""):
    """A NetCDF as ECMWF's grib_to_netcdf writes it: netCDF3 64-bit offset, float32 coordinates,
    values packed as int16 with scale_factor/add_offset, time as int32 hours since 1900."""
    with netCDF4.Dataset(path, "w", format="NETCDF3_64BIT_OFFSET") as nc:
        nc.Conventions = "CF-1.6"
        nc.history = "2024-05-02 10:11:12 GMT by grib_to_netcdf-2.25.1: grib_to_netcdf -o out.nc in.grib"
        for dim, n in (("longitude", len(lons)), ("latitude", len(lats)), ("time", None)):
            nc.createDimension(dim, n)
        lon = nc.createVariable("longitude", "f4", ("longitude",))
        lon.units, lon.long_name = "degrees_east", "longitude"
        lon[:] = lons
        lat = nc.createVariable("latitude", "f4", ("latitude",))
        lat.units, lat.long_name = "degrees_north", "latitude"
        lat[:] = lats
        t = nc.createVariable("time", "i4", ("time",))
        t.units, t.long_name, t.calendar = "hours since 1900-01-01 00:00:00.0", "time", "gregorian"
        t[:] = ((times - np.datetime64("1900-01-01T00", "h")) // np.timedelta64(1, "h")).astype("i4")
        lo, hi = float(np.nanmin(values)), float(np.nanmax(values))
        scale = (hi - lo) / (2**16 - 2) or 1.0
        v = nc.createVariable(name, "i2", ("time", "latitude", "longitude"), fill_value=np.int16(-32767))
        v.scale_factor, v.add_offset = scale, (hi + lo) / 2
        v.missing_value = np.int16(-32767)
        v.units, v.long_name = units, long_name or name
        v[:] = values


def grid_0p2():
    """A 0.2° grid from 60°N to 20°N over 0..20°E (stored as float32 by grib_to_netcdf_like)."""
    lats = np.linspace(60.0, 20.0, 201)
    lons = np.linspace(0.0, 20.0, 101)
    return lats, lons


@pytest.fixture
def file_0p2(tmp_path):
    lats, lons = grid_0p2()
    times = np.datetime64("2020-07-01T00", "h") + np.arange(4) * np.timedelta64(6, "h")
    rng = np.random.default_rng(3)
    values = 280 + 10 * rng.standard_normal((4, len(lats), len(lons)))
    grib_to_netcdf_like(tmp_path / "t2m_0p2.nc", "t2m", "K", lats, lons, times, values, "2 metre temperature")
    return tmp_path / "t2m_0p2.nc"


def test_the_0p2_float32_file_has_the_uneven_steps_of_the_report(file_0p2):
    """The case is the reported one: the stored steps are 0.200001 / 0.199999 / 0.199997."""
    with netCDF4.Dataset(file_0p2) as nc:
        lat = nc["latitude"][:].data
    assert lat.dtype == np.float32
    steps = {f"{s:.6f}" for s in np.abs(np.diff(lat.astype(np.float64)))}
    assert {"0.200001", "0.199999", "0.199997"} <= steps


def test_float32_0p2_coordinates_are_judged_at_their_own_precision(file_0p2, tmp_path):
    text = describe(file_0p2)
    assert "t2m: 2 metre temperature [K]; levels surface; grid 201x101 0.2°x0.2°" in text, text
    assert "usable as field 't2m' (surface)" in text
    out = acquire(
        tmp_path, "t2m", "2020-07-01T00", "2020-07-01T18", [file_0p2], grid=(0.2, 0.2), area=(58.0, 2.0, 50.0, 10.0)
    )
    da = grib.decode(out)
    # the grid of the GRIB is the intended one, at GRIB's micro-degree precision
    np.testing.assert_allclose(da.latitude.values, np.linspace(58.0, 50.0, 41), atol=1e-6)
    np.testing.assert_allclose(da.longitude.values, np.linspace(2.0, 10.0, 41), atol=1e-6)
    ref = xr.open_dataset(file_0p2)["t2m"]
    ref = ref.isel(latitude=slice(10, 51), longitude=slice(10, 51))
    np.testing.assert_array_equal(da.values[:, 0], ref.values.astype(np.float32))


def test_unevenly_spaced_coordinates_are_still_refused(tmp_path):
    lats, lons = grid_0p2()
    lats = lats.copy()
    lats[50] += 0.05  # a quarter of a step: not rounding, a different grid
    times = np.array(["2020-07-01T00"], "datetime64[h]")
    grib_to_netcdf_like(tmp_path / "bad.nc", "t2m", "K", lats, lons, times, np.full((1, 201, 101), 280.0))
    with pytest.raises(DataError, match=r"bad.nc: variable 't2m': coordinate 'latitude' is not evenly spaced"):
        acquire(tmp_path, "t2m", "2020-07-01T00", "2020-07-01T00", [tmp_path / "bad.nc"])
    assert gridded.regular_axis(np.float32(np.linspace(60, 20, 201))) is not None
    assert gridded.regular_axis(np.float32(lats)) is None


@pytest.fixture
def mirror(tmp_path, shared_data):
    """A mirror of real files of other years and regions beside the wanted one (links, not copies):
    the UK's hourly t2m of March 2019 (GRIB), the North Atlantic's msl/10u/10v of 2011 (GRIB), NCEP's
    air of 2013-14 over North America (NetCDF), and t2m NetCDF of other years and regions on grids
    acquire cannot use (uneven latitudes: judged, they would fail the job)."""
    m = tmp_path / "mirror"
    m.mkdir()
    for rel in (
        "era5-t2m-uk-hourly/era5-2mt-2019-03-uk.grib",
        "era5-sfc-natl-hourly/era5.grib",
        "ncep-air-temperature-6h/air_temperature.nc",
    ):
        os.symlink(shared_data / rel, m / rel.split("/")[-1])
    uneven = np.array([-10.0, -11.0, -13.0, -16.0, -20.0])  # a Gaussian-like, unevenly spaced latitude axis
    one = np.ones((2, 5, 6))
    grib_to_netcdf_like(
        m / "t2m-2018-03-uk.nc", "t2m", "K", uneven + 70, np.arange(-10.0, 2.0, 2.0),
        np.array(["2018-03-01T00", "2018-03-01T01"], "datetime64[h]"), 280 * one,
    )  # fmt: skip
    grib_to_netcdf_like(
        m / "t2m-2019-03-australia.nc", "t2m", "K", uneven - 15, np.arange(130.0, 142.0, 2.0),
        np.array(["2019-03-01T00", "2019-03-01T01"], "datetime64[h]"), 300 * one,
    )  # fmt: skip
    # and GRIB of March 2019 over Australia (another grid: beside the UK's it would be "mixed grids")
    grib.write_grib(
        m / "t2m-2019-03-australia.grib", "t2m", np.full((2, 1, 5, 6), 300.0, np.float32),
        np.array(["2019-03-01T00", "2019-03-01T01"], "datetime64[h]"), [0],
        np.arange(-25.0, -35.1, -2.5), np.arange(130.0, 142.0, 2.0),
    )  # fmt: skip
    return m


UK = (58.0, -10.0, 50.0, 2.0)


@pytest.mark.parametrize("variables", [{}, {"t2m": "air"}], ids=["t2m", "t2m=air"])
def test_a_mirror_of_other_years_and_regions_gives_the_unit_and_logs_the_skips(
    mirror, tmp_path, shared_data, caplog, variables
):
    """With acquire.variables {t2m: air}, NCEP's air of 2013 over America holds t2m too: it is skipped
    for its years (and area), not refused as 't2m in NetCDF and in GRIB'."""
    with caplog.at_level(logging.INFO, logger="atmorep.data.acquire"):
        out = acquire(tmp_path, "t2m", "2019-03-01T00", "2019-03-31T23", [mirror], variables, area=UK, step_hours=1)
    uk = grib.decode(shared_data / "era5-t2m-uk-hourly" / "era5-2mt-2019-03-uk.grib")
    got = grib.decode(out)
    np.testing.assert_array_equal(got.values, uk.values)
    assert got.shape == (744, 1, 33, 49)
    if variables:
        assert "skipped" in caplog.text and "air_temperature.nc" in caplog.text
        assert "(2013-01-01T00:00 .. 2014-12-31T18:00) are outside 2019-03-01T00:00 .. 2019-03-31T23:00" in caplog.text
    else:
        lines = [r.getMessage() for r in caplog.records if "skipped" in r.getMessage()]
        assert any("t2m-2018-03-uk.nc" in ln and "outside 2019-03" in ln for ln in lines), lines
        assert any("t2m-2019-03-australia.nc" in ln and "not data.area" in ln for ln in lines), lines
        assert any("t2m-2019-03-australia.grib" in ln and "does not hold data.area" in ln for ln in lines), lines


def test_a_mirror_without_the_unit_names_what_it_skipped(mirror, tmp_path):
    (mirror / "era5-2mt-2019-03-uk.grib").unlink()
    (mirror / "t2m-2019-03-australia.grib").unlink()
    with pytest.raises(DataError, match=r"files: no message of field 't2m' .*NetCDF skipped: .*t2m-2018-03-uk.nc"):
        acquire(tmp_path, "t2m", "2019-03-01T00", "2019-03-31T23", [mirror], area=UK, step_hours=1)


def test_everyday_era5_fields_come_from_ecmwfs_parameter_database(shared_data):
    """d2m was 'not in the field catalogue'; every parameter of the shared real GRIB files is known to
    the catalogue with the identity and units the files carry."""
    d2m = fields.info("d2m")
    assert (d2m.param_id, d2m.short_name, d2m.units, d2m.single_level) == (168, "2d", "K", True)
    assert fields.info("2d") == d2m and fields.field_of("2m_dewpoint_temperature") == "d2m"
    # a field this project keeps nothing for by hand: known, no range to check
    skt = fields.info("skt")
    assert (skt.param_id, skt.units, skt.valid_range, skt.single_level) == (235, "K", None, True)
    assert fields.info("tp").may_be_constant and not fields.info("t").single_level
    assert fields.info("no_such_parameter") is None
    seen = set()
    for path in sorted(shared_data.glob("*/*.grib")):
        for h in grib.scan(path):
            f = fields.info(h.param.name)
            assert f is not None and (f.param_id, f.units) == (h.param.param_id, h.param.units), (path, h.param)
            seen.add(f.name)
    assert {"t2m", "msl", "u10", "v10", "t", "z", "u", "v", "r"} <= seen


def test_d2m_from_a_cds_netcdf_is_acquired_and_inspected(tmp_path):
    """A NetCDF as the new CDS delivers it (valid_time, float64 coordinates, float32 d2m in K)."""
    lats, lons = np.arange(58.0, 49.9, -0.25), np.arange(-10.0, 2.01, 0.25)
    times = np.datetime64("2019-03-01T00", "ns") + np.arange(24) * np.timedelta64(1, "h")
    rng = np.random.default_rng(5)
    d2m = (275 + 3 * rng.standard_normal((24, len(lats), len(lons)))).astype("f4")
    ds = xr.Dataset(
        {"d2m": (("valid_time", "latitude", "longitude"), d2m, {"units": "K", "GRIB_paramId": 168})},
        coords={"valid_time": times, "latitude": lats, "longitude": lons},
    )
    ds.to_netcdf(tmp_path / "d2m.nc")
    assert "d2m: 2 metre dewpoint temperature" not in describe(tmp_path / "d2m.nc")  # no long_name attribute
    assert "usable as field 'd2m' (surface)" in describe(tmp_path / "d2m.nc")
    out = acquire(tmp_path, "d2m", "2019-03-01T00", "2019-03-01T23", [tmp_path / "d2m.nc"], step_hours=1)
    got = grib.decode(out)
    assert got.attrs["GRIB_paramId"] == 168
    np.testing.assert_array_equal(got.values[:, 0], d2m)
