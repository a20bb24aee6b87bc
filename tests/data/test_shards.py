import json

import numpy as np
import pytest
import xarray as xr
import zarr

from atmorep.config import ShardConfig
from atmorep.data import shards
from atmorep.data.grib import DataError
from conftest import data_config


def test_latitude_rows_exclude_poles_symmetrically():
    s = shards.latitude_rows(181, 9)
    assert (s.start, s.stop) == (5, 176) and (s.stop - s.start) % 9 == 0
    s = shards.latitude_rows(721, 18)
    assert s.start >= 1 and s.stop <= 720 and (s.stop - s.start) % 18 == 0
    assert s.start - 1 == 720 - s.stop or s.start - 1 + 1 == 720 - s.stop


def test_store_is_token_aligned_and_readable_by_plain_xarray(sample_products):
    path = sample_products["shards"]["t2m"]
    ds = xr.open_zarr(path, consolidated=False)  # plain xarray, no atmorep code
    assert ds["data"].dims == ("time", "level", "latitude", "longitude")
    assert ds.sizes["latitude"] == 171 and ds.sizes["longitude"] == 360
    assert float(ds["latitude"][0]) == 85.0 and float(ds["latitude"][-1]) == -85.0
    arr = zarr.open_array(path / "data", mode="r")
    assert arr.metadata.zarr_format == 3
    assert tuple(arr.chunks) == (2, 1, 9, 9)  # inner chunk = one token of one level
    assert tuple(arr.shards) == (8, 1, 45, 90)
    prov = json.loads(ds.attrs["provenance"])
    assert prov["config"]["shard"]["token_size"] == [2, 9, 9] and "2026-03" in prov["inputs"]


def test_store_equals_normalized_source(sample_products):
    src = xr.open_zarr(sample_products["normalized"]["u10"], consolidated=False)
    dst = xr.open_zarr(sample_products["shards"]["u10"], consolidated=False)
    np.testing.assert_array_equal(dst["data"].values, src["data"].sel(latitude=dst["latitude"]).values)
    np.testing.assert_array_equal(dst["mean"].values[0], src["mean"].values)


def test_longitudes_must_be_whole_tokens(sample_products, tmp_path):
    with pytest.raises(DataError, match="360 longitudes are not a whole number of 7-point tokens"):
        shards.shard(data_config(), ShardConfig(token_size=(2, 9, 7)), "t2m", "2026",
                     [sample_products["normalized"]["t2m"]], tmp_path / "x.zarr")
    assert not (tmp_path / "x.zarr").exists()
