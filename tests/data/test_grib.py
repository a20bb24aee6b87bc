import numpy as np
import pytest

from atmorep.data import grib
from atmorep.data.grib import DataError


def _field(T=3, L=2, Y=7, X=12, seed=0):
    rng = np.random.default_rng(seed)
    lat = np.linspace(60, 0, Y)
    lon = np.arange(X) * 30.0
    base = 280 + 10 * np.cos(np.deg2rad(lat))[None, None, :, None]
    values = (base + rng.normal(0, 2, (T, L, Y, X))).astype(np.float32)
    times = np.datetime64("2021-03-01T00") + np.arange(T) * np.timedelta64(1, "h")
    return values, times, lat, lon


def test_roundtrip_model_levels(tmp_path):
    values, times, lat, lon = _field()
    path = tmp_path / "t.grib"
    grib.write_grib(path, "t", values, times, [96, 137], lat, lon)
    da = grib.decode(path, "t")
    assert da.dims == ("time", "level", "latitude", "longitude")
    assert da.dtype == np.float32
    assert list(da["level"].values) == [96, 137]
    np.testing.assert_array_equal(da["time"].values, times.astype("datetime64[ns]"))
    # 24-bit packing: relative error far below the values' spread
    assert np.abs(da.values - values).max() < 1e-5 * np.abs(values).max()


def test_decode_sorts_south_to_north_and_signed_longitudes(tmp_path):
    values, times, lat, lon = _field(L=1)
    path = tmp_path / "flip.grib"
    # the file runs south to north and from 180W: column j holds longitude lon[j] - 180
    flipped = np.roll(values[:, :, ::-1], len(lon) // 2, axis=-1)
    grib.write_grib(path, "t2m", flipped, times, [0], lat[::-1], lon - 180)
    da = grib.decode(path)
    assert da["latitude"].values[0] > da["latitude"].values[-1]
    assert da["longitude"].values.min() >= 0 and np.all(np.diff(da["longitude"].values) > 0)
    # the value at (60N, 0E) is the same whatever order the file used
    orig = values[:, 0, 0, 0]
    got = da.sel(latitude=60, longitude=0).values[:, 0]
    np.testing.assert_allclose(got, orig, rtol=1e-6)


def test_decode_real_era5_t2m(shared_data):
    da = grib.decode(shared_data / "era5-t2m-uk-hourly" / "era5-2mt-2019-03-uk.grib")
    assert da.name == "t2m"
    assert da.shape == (744, 1, 33, 49)
    assert np.diff(da["time"].values).astype("timedelta64[h]").astype(int).tolist() == [1] * 743
    assert 250 < float(da.mean()) < 290


def test_decode_selects_field_from_multi_field_file(shared_data):
    path = shared_data / "era5-sfc-natl-hourly" / "era5.grib"
    msl = grib.decode(path, "msl")
    assert msl.shape[0] == 72 and msl.shape[1] == 1
    assert 90000 < float(msl.min()) and float(msl.max()) < 110000
    with pytest.raises(DataError, match="holds fields"):
        grib.decode(path)
    with pytest.raises(DataError, match="field 'vo' not found"):
        grib.decode(path, "vo")


def test_truncated_grib_is_rejected(tmp_path, shared_data):
    src = (shared_data / "era5-t2m-uk-hourly" / "era5-2mt-2019-03-uk.grib").read_bytes()
    cut = tmp_path / "cut.grib"
    cut.write_bytes(src[: len(src) // 2 + 17])
    with pytest.raises(DataError, match=r"cut\.grib: message \d+ is truncated"):
        grib.decode(cut)


@pytest.mark.parametrize("content, message", [(b"", "empty file"), (b"hello world" * 10, "not a GRIB file")])
def test_not_grib_is_rejected(tmp_path, content, message):
    p = tmp_path / "x.grib"
    p.write_bytes(content)
    with pytest.raises(DataError, match=message):
        grib.decode(p)
