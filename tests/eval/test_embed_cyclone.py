"""The tropical-cyclone detector on the real embedded ERA5 sample (the cyclone off north-west Australia,
25-27 March 2026) and on quiet and synthetic fields; the case study of ``atmorep embed`` on the sample
(slow: shards of msl, u10 and v10)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import xarray as xr

from atmorep.data.acquire.sources import SampleSource
from atmorep.eval import cyclones


@pytest.fixture(scope="module")
def sample():
    ds = SampleSource().open()
    return ds["msl"], np.hypot(ds["u10"], ds["v10"])


def test_the_detector_finds_the_cyclone_of_the_real_sample(sample):
    msl, wind = sample
    tracks = cyclones.tropical_cyclones(msl, wind)
    assert set(tracks["track"]) == {0}  # one tropical cyclone in the week, nothing else passes
    fixes = tracks[tracks["tropical"]]
    assert len(fixes) == 10
    assert np.all(np.diff(fixes["time"].values) <= np.timedelta64(8, "h"))  # consecutive steps
    first, last = fixes.iloc[0], fixes.iloc[-1]
    assert str(first["time"])[:13] == "2026-03-25 00" and str(last["time"])[:13] == "2026-03-27 17"
    assert abs(first["lat"] + 17) <= 1 and abs(first["lon"] - 120) <= 1  # 17°S 120°E
    assert abs(last["lat"] + 27) <= 1 and abs(last["lon"] - 115) <= 1  # 27°S 115°E, near the coast
    assert abs(fixes["msl_hpa"].min() - 963.0) < 0.5  # central pressure at 1°
    assert fixes["depth_hpa"].max() > 30 and fixes["wind_max"].max() > 28
    assert np.all(np.diff(fixes["lat"].values) <= 0)  # moving south, then
    after = tracks[~tracks["tropical"] & (tracks["time"] > last["time"])]
    assert len(after) and after["lat"].min() < -40  # the extratropical continuation stays on the track


def test_no_track_on_a_quiet_field(sample):
    msl, wind = sample
    zonal = msl.mean("longitude").broadcast_like(msl)  # the real pressure without its eddies
    assert len(cyclones.nodes(zonal, wind)) == 0
    assert len(cyclones.tropical_cyclones(zonal, wind)) == 0
    rng = np.random.default_rng(0)
    noisy = zonal + rng.normal(0, 20.0, zonal.shape)  # 0.2 hPa noise: minima, none closed by 2 hPa
    assert len(cyclones.tropical_cyclones(noisy, wind)) == 0


def _synthetic(lat0, lon0, depth_hpa, wind_ms, steps=6):
    lats, lons = np.arange(60.0, -61.0, -1.0), np.arange(0.0, 360.0)
    times = np.datetime64("2026-01-01T00", "ns") + np.arange(steps) * np.timedelta64(6, "h")
    la, lo = np.meshgrid(lats, lons, indexing="ij")
    msl, wind = [], []
    for k in range(steps):
        r2 = (la - lat0 + 0.5 * k) ** 2 + (lo - lon0 - k) ** 2
        msl.append(101300.0 - 100 * depth_hpa * np.exp(-r2 / 8.0))
        wind.append(wind_ms * np.exp(-r2 / 8.0))
    coords = {"time": times, "latitude": lats, "longitude": lons}
    dims = ("time", "latitude", "longitude")
    return xr.DataArray(np.array(msl), coords, dims), xr.DataArray(np.array(wind), coords, dims)


@pytest.mark.parametrize(
    "lat0, depth, wind, found",
    [
        (-15.0, 30.0, 35.0, True),  # a tropical cyclone
        (-15.0, 1.0, 35.0, False),  # a weak low: no closed 2 hPa contour
        (-15.0, 30.0, 10.0, False),  # closed but below gale force: a tropical low, not a storm
        (-50.0, 30.0, 35.0, False),  # an extratropical cyclone: tracked, not tropical
    ],
)
def test_synthetic_lows(lat0, depth, wind, found):
    msl, w = _synthetic(lat0, 200.0, depth, wind)
    tracks = cyclones.tropical_cyclones(msl, w)
    assert (len(tracks) > 0) == found
    if found:
        assert len(tracks) == 6 and np.allclose(tracks["lon"], 200 + np.arange(6))
    if depth > 2:  # closed lows are nodes and are stitched into one track whatever their latitude
        assert cyclones.stitch(cyclones.nodes(msl, w))["track"].nunique() == 1


def test_stitch_respects_the_speed_limit():
    nodes = pd.DataFrame(
        {
            "time": np.datetime64("2026-01-01T00", "ns") + np.array([0, 6, 12]) * np.timedelta64(1, "h"),
            "lat": [-15.0, -15.0, -15.0],
            "lon": [100.0, 107.0, 125.0],  # 7° in 6 h joins (< 8°), 18° does not
            "msl_hpa": [990.0] * 3,
            "depth_hpa": [10.0] * 3,
            "wind_max": [30.0] * 3,
        }
    )
    assert list(cyclones.stitch(nodes)["track"]) == [0, 0, 1]
