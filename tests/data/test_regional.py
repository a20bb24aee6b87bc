"""Regional (non-periodic) grids end to end on real data: the UK t2m grid (-10..2°E, 33 x 49 points,
across 0°) is normalized, sharded with longitude cropped to whole tokens, and read as windows that
never wrap from the east edge to the west edge."""

import numpy as np
import pytest
import xarray as xr
from builders import UK

from atmorep.config import DataConfig, FieldSpec, NormalizeConfig, ShardConfig, parse_time
from atmorep.data import normalize, shards
from atmorep.data.dataset import WindowDataset
from atmorep.errors import DataError


@pytest.fixture(scope="module")
def uk(shared_data, tmp_path_factory):
    root = tmp_path_factory.mktemp("uk")
    data = DataConfig(fields={"t2m": FieldSpec(levels=(0,))}, start="2019-03-01T00", end="2019-03-31T23", step_hours=1)
    shard_cfg = ShardConfig(token_size=(3, 2, 5), shard_tokens=(4, 4, 3))
    norm = normalize.normalize(
        data, NormalizeConfig(method="local"), "t2m", "2019-03", shared_data.joinpath(*UK), root / "t2m-2019-03.zarr"
    )
    store = shards.shard(data, shard_cfg, "t2m", "2019", [norm], root / "t2m-2019.zarr")
    return {"data": data, "shard": shard_cfg, "normalized": norm, "store": store}


def test_regional_longitudes_are_cropped_to_whole_tokens_and_stay_contiguous(uk):
    src = xr.open_zarr(uk["normalized"], consolidated=False)
    dst = xr.open_zarr(uk["store"], consolidated=False)
    lons = dst["longitude"].values
    assert len(lons) == 45 and np.allclose(np.diff(lons), 0.25)  # 49 columns -> 9 tokens of 5, no seam
    np.testing.assert_array_equal(lons, src["longitude"].values[2:47])  # the central whole tokens
    assert lons[0] == -9.5 and lons[-1] == 1.5
    assert dst.sizes["latitude"] == 32  # no pole to drop: 33 rows -> 16 tokens of 2
    np.testing.assert_array_equal(
        dst["data"].values, src["data"].isel(latitude=slice(0, 32), longitude=slice(2, 47)).values
    )
    np.testing.assert_array_equal(
        dst["mean"].values[0], src["mean"].isel(latitude=slice(0, 32), longitude=slice(2, 47)).values
    )
    summary = shards.verify(uk["store"], "t2m", [uk["normalized"]], uk["data"], uk["shard"])
    assert summary["values"] == 744 * 1 * 32 * 45


def test_regional_windows_never_wrap(uk):
    ds = WindowDataset({"t2m": [uk["store"]]}, (2, 4, 3), parse_time("2019-03-01T00"), parse_time("2019-03-03T23"))
    assert not ds.stores["t2m"][0].periodic
    assert list(ds.windows.x_origins) == [0, 5, 10, 15, 20, 25, 30]  # the last window ends at column 45
    values = xr.open_zarr(uk["store"], consolidated=False)["data"].values
    for i in (0, len(ds) - 1):
        tokens, info = ds[i]["t2m"]
        t, y, x = ds.indices(i, "t2m")
        assert np.all(np.diff(x) == 1)  # contiguous columns: no jump back to the west edge
        want = values[t][:, :, y][:, :, :, x].transpose(1, 0, 2, 3)  # (L, T, Y, X)
        from atmorep.data.tokens import untokenize

        np.testing.assert_array_equal(untokenize(tokens, (3, 2, 5)), want)
        lon = info[0, 0, 0, :, 5] * 360.0  # token-info longitude of each token's centre
        assert np.all(np.diff(lon) > 0)


def test_too_narrow_a_region_is_named(uk, tmp_path):
    with pytest.raises(DataError, match="narrower than one token"):
        shards.shard(
            uk["data"], ShardConfig(token_size=(3, 2, 50)), "t2m", "2019", [uk["normalized"]], tmp_path / "x.zarr"
        )
    assert not (tmp_path / "x.zarr").exists()


def test_global_forecast_names_a_regional_store(uk):
    from atmorep.config import EvaluateConfig
    from atmorep.eval import modes

    ds = WindowDataset({"t2m": [uk["store"]]}, (2, 4, 3), parse_time("2019-03-01T00"), parse_time("2019-03-03T23"))
    with pytest.raises(ValueError, match="needs a global grid.*t2m-2019.zarr is regional"):
        modes.get("global_forecast").select(ds, EvaluateConfig(mode="global_forecast"), 0)
