import numpy as np
import pytest
import xarray as xr

from atmorep.config import DataConfig, FieldSpec, NormalizeConfig
from atmorep.data import grib, normalize
from atmorep.data.grib import DataError

UK = ("era5-t2m-uk-hourly", "era5-2mt-2019-03-uk.grib")


@pytest.fixture(scope="module")
def uk_t2m(shared_data):
    return grib.decode(shared_data.joinpath(*UK))


@pytest.mark.parametrize("method", ["global", "local"])
def test_statistics_match_float64_numpy(uk_t2m, method):
    x = uk_t2m.values.astype(np.float64)
    s = normalize.statistics(uk_t2m.values, method)
    axes = (0, 2, 3) if method == "global" else 0
    np.testing.assert_allclose(s.mean, x.mean(axis=axes), rtol=1e-6)
    np.testing.assert_allclose(s.std, x.std(axis=axes), rtol=1e-5)
    assert s.mean.shape == ((1,) if method == "global" else (1, 33, 49))


@pytest.mark.parametrize("method", ["global", "local"])
def test_inverse_is_exact_to_float32_roundoff(uk_t2m, method):
    s = normalize.statistics(uk_t2m.values, method)
    z = normalize.apply(uk_t2m.values, s)
    assert abs(float(z.mean())) < 1e-3 and abs(float(z.std()) - 1) < 1e-3
    back = normalize.invert(z, s)
    eps = np.finfo(np.float32).eps
    assert np.abs(back - uk_t2m.values).max() <= 4 * eps * np.abs(uk_t2m.values).max()


def _data(start="2019-03-01", end="2019-03-31T23", levels=(0,)):
    return DataConfig(fields={"t2m": FieldSpec(levels)}, start=start, end=end)


def test_normalize_stage_writes_data_and_statistics(tmp_path, shared_data):
    out = normalize.normalize(_data(), NormalizeConfig(local=("t2m",)), "t2m", "2019-03",
                              shared_data.joinpath(*UK), tmp_path / "t2m.zarr")
    ds = xr.open_zarr(out, consolidated=False)
    assert ds.attrs["normalization"] == "local"
    assert ds["data"].dims == ("time", "level", "latitude", "longitude")
    assert ds["mean"].dims == ("level", "latitude", "longitude")
    phys = normalize.invert(ds["data"].values, normalize.read_stats(ds))
    raw = grib.decode(shared_data.joinpath(*UK)).values
    assert np.abs(phys - raw).max() < 1e-3
    assert len(ds.attrs["source_sha256"]) == 64


def _write(tmp_path, values, name="t2m"):
    T = values.shape[0]
    times = np.datetime64("2019-03-01T00") + np.arange(T) * np.timedelta64(1, "h")
    path = tmp_path / f"{name}.grib"
    grib.write_grib(path, name, values, times, [0], np.linspace(60, 50, 5), np.arange(8) * 1.0)
    return path


def test_nan_is_rejected_naming_field_level_and_time(tmp_path):
    values = np.full((4, 1, 5, 8), 280.0, np.float32) + np.arange(8, dtype=np.float32)
    values[2, 0, 1, 1] = np.nan
    path = _write(tmp_path, values)
    out = tmp_path / "out.zarr"
    with pytest.raises(DataError, match=r"t2m.*level 0 time 2019-03-01T02.*non-finite"):
        normalize.normalize(_data(), NormalizeConfig(), "t2m", "2019-03", path, out)
    assert not out.exists() and not any(p.name.startswith(".out.zarr") for p in tmp_path.iterdir())


def test_constant_field_is_rejected(tmp_path):
    path = _write(tmp_path, np.full((4, 1, 5, 8), 280.0, np.float32))
    with pytest.raises(DataError, match="level 0 is constant"):
        normalize.normalize(_data(), NormalizeConfig(), "t2m", "2019-03", path, tmp_path / "o.zarr")


def test_unexpected_levels_and_times_are_rejected(tmp_path, shared_data):
    src = shared_data.joinpath(*UK)
    with pytest.raises(DataError, match=r"levels \[0\], config expects \[96, 137\]"):
        normalize.normalize(_data(levels=(96, 137)), NormalizeConfig(), "t2m", "2019-03", src, tmp_path / "a.zarr")
    with pytest.raises(DataError, match="outside"):
        normalize.normalize(_data(end="2019-03-10"), NormalizeConfig(), "t2m", "2019-03", src, tmp_path / "b.zarr")
    with pytest.raises(DataError, match="field 't2m' not found"):
        normalize.normalize(_data(), NormalizeConfig(), "t2m", "2019-03",
                            shared_data / "era5-sfc-natl-hourly" / "era5.grib", tmp_path / "c.zarr")
