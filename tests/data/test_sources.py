import numpy as np
import pytest

from atmorep.config import AcquireConfig
from atmorep.data import grib, sources
from atmorep.data.grib import DataError
from conftest import data_config


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


@pytest.mark.parametrize("field, month, data_kwargs, message", [
    ("vo", "2026-03", {"fields": ("vo",)}, "not in the embedded sample"),
    ("t2m", "2026-04", {"end": "2026-04-30"}, "no time step of 2026-04"),
    ("u10", "2026-03", {}, "not in data.fields"),
    ("t2m", "2025-03", {}, "outside the campaign"),
])
def test_bad_requests_fail_clearly_and_leave_nothing(tmp_path, field, month, data_kwargs, message):
    kwargs = {"fields": ("t2m",), **data_kwargs}
    data = data_config(kwargs.pop("fields"), **kwargs)
    out = tmp_path / "out.grib"
    with pytest.raises(DataError, match=message):
        sources.acquire(data, AcquireConfig(), field, month, out)
    assert list(tmp_path.iterdir()) == []
