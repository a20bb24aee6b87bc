import numpy as np
import pytest
from conftest import data_config

from atmorep.config import AcquireConfig
from atmorep.data.acquire import sources
from atmorep.errors import DataError
from atmorep.formats import grib


def test_sample_grib_equals_embedded_store(sample_products):
    da = grib.decode(sample_products["grib"]["u10"], "u10")
    store = sources.SampleSource().open()
    assert da.shape == (24, 1, 181, 360)
    np.testing.assert_array_equal(da["time"].values, store["time"].values.astype("datetime64[ns]"))
    np.testing.assert_allclose(da.values[:, 0], store["u10"].values, atol=1e-4)


def test_period_selects_time_steps(tmp_path):
    data = data_config(("msl",), start="2026-03-27T00", end="2026-03-28T00")
    out = sources.acquire(data, AcquireConfig(), "msl", "2026-03", tmp_path / "msl.grib")
    t = grib.decode(out)["time"].values
    assert t.min() >= np.datetime64("2026-03-27") and t.max() <= np.datetime64("2026-03-28")
    assert len(t) == 4  # 27T02 27T10 27T17 28T00


@pytest.mark.parametrize(
    "field, month, data_kwargs, message",
    [
        ("vo", "2026-03", {"fields": ("vo",)}, "not in the embedded sample"),
        ("t2m", "2026-04", {"end": "2026-04-30"}, "no time step of 2026-04"),
        ("u10", "2026-03", {}, "not in data.fields"),
        ("t2m", "2025-03", {}, "outside the campaign"),
    ],
)
def test_bad_requests_fail_clearly_and_leave_nothing(tmp_path, field, month, data_kwargs, message):
    kwargs = {"fields": ("t2m",), **data_kwargs}
    data = data_config(kwargs.pop("fields"), **kwargs)
    out = tmp_path / "out.grib"
    with pytest.raises(DataError, match=message):
        sources.acquire(data, AcquireConfig(), field, month, out)
    assert list(tmp_path.iterdir()) == []


def test_a_source_that_writes_the_wrong_thing_leaves_nothing(tmp_path, monkeypatch, shared_data):
    """Whatever a source writes is validated before it is renamed into place."""
    natl = (shared_data / "era5-sfc-natl-hourly" / "era5.grib").read_bytes()

    class Wrong:
        def fetch(self, data, cfg, field, month, out):
            out.write_bytes(natl)

    monkeypatch.setitem(sources.SOURCES, "sample", Wrong)
    data = data_config(("msl",), start="2011-01-01T00", end="2011-01-03T23")
    with pytest.raises(DataError, match=r"holds u10 \(paramId 165\), v10 \(paramId 166\); expected only field 'msl'"):
        sources.acquire(data, AcquireConfig(), "msl", "2011-01", tmp_path / "msl.grib")
    assert list(tmp_path.iterdir()) == []


def test_verify_checks_completeness_with_a_time_step(tmp_path, shared_data):
    from atmorep.config import DataConfig, FieldSpec

    src = shared_data / "era5-t2m-uk-hourly" / "era5-2mt-2019-03-uk.grib"
    data = DataConfig(fields={"t2m": FieldSpec()}, start="2019-03-01", end="2019-03-31T23", step_hours=1)
    assert len(sources.verify(src, data, "t2m", "2019-03")) == 744
    cut = tmp_path / "cut.grib"
    cut.write_bytes(src.read_bytes()[: 3360 * 700])  # the first 700 of 744 hourly messages
    with pytest.raises(
        DataError,
        match=r"has 700 messages, expected 744 .*44 of 744 time steps missing: "
        r"2019-03-30T04:00",
    ):
        sources.verify(cut, data, "t2m", "2019-03")


def test_the_sample_delivers_the_area_the_check_accepts(tmp_path):
    """With the embedded sample any data.area passed `check` and `plan`, then acquire refused it
    ("covers lat 90..-90; data.area expects ...") after the workflow started. The sample now cuts the
    area (across 0° too), and the plan's volume is what arrives."""
    import yaml
    from conftest import REPO

    from atmorep import config as C
    from atmorep import plan, preflight

    raw = yaml.safe_load((REPO / "config" / "config.yaml").read_text())
    raw["data"]["area"] = [60, -30, 30, 30]
    raw["model"]["num_tokens"] = [3, 3, 3]  # a window of 27 x 27 points fits the 27 x 54 kept
    cfg = C.build(C.Config, raw)
    assert preflight.problems(cfg) == []
    out = sources.acquire(cfg.data, cfg.acquire, "t2m", "2026-03", tmp_path / "t2m.grib")
    da = grib.decode(out)
    assert da.shape == (24, 1, 31, 61)
    np.testing.assert_array_equal(da["latitude"].values, np.arange(60, 29, -1))
    np.testing.assert_array_equal(np.mod(da["longitude"].values, 360), np.mod(np.arange(-30, 31), 360))
    store = sources.SampleSource().open()["t2m"]
    want = store.sel(latitude=slice(60, 30)).isel(longitude=np.r_[330:360, 0:31]).values
    np.testing.assert_allclose(da.values[:, 0], want, atol=1e-3)
    assert plan.plan(cfg).grib_bytes == len(cfg.data.fields) * out.stat().st_size
    lats, lons = sources.SampleSource().grid(cfg.data)
    assert (len(lats), len(lons)) == (31, 61)


def test_every_source_says_its_grid_times_and_volume():
    """The protocol's answers that plan and check use, per source (no data read for cds, files, zarr)."""
    from atmorep.config import DataConfig, FieldSpec

    data = DataConfig(fields={"t": FieldSpec((850,), "pl")}, start="2021-01-01T00", end="2021-01-31T23")
    cds, files, zarr = (sources.source(AcquireConfig(source=s)) for s in ("cds", "files", "zarr"))
    assert len(cds.times(data, "2021-01")) == 744  # hourly, as its requests ask without data.step_hours
    assert files.times(data, "2021-01") is None and zarr.times(data, "2021-01") is None  # the data decide
    assert [len(a) for a in cds.grid(data)] == [721, 1440] and files.grid(data) is None
    area = DataConfig(data.fields, data.start, data.end, step_hours=6, grid=(0.5, 0.5), area=(58, -10, 50, 2))
    for s in (cds, files, zarr):
        assert [len(a) for a in s.grid(area)] == [17, 25] and len(s.times(area, "2021-01")) == 124
    assert (cds.bits(data), files.bits(data), files.bits(area), zarr.bits(data)) == (16, 16, 32, 32)
    assert sources.SampleSource().bits(data) == 24
