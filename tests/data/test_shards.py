import json

import numpy as np
import pytest
import xarray as xr
import zarr

from atmorep.config import DataConfig, FieldSpec, ShardConfig
from atmorep.data import shards
from atmorep.errors import DataError


def data_config(fields=("t2m", "u10")) -> DataConfig:
    return DataConfig(fields={f: FieldSpec() for f in fields}, start="2026-03-25T00", end="2026-03-31T23")


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
        shards.shard(
            data_config(),
            ShardConfig(token_size=(2, 9, 7)),
            "t2m",
            "2026",
            [sample_products["normalized"]["t2m"]],
            tmp_path / "x.zarr",
        )
    assert not (tmp_path / "x.zarr").exists()


# -- token-aligned layout on synthetic multi-level, multi-month, two-token-size stores ---------------


def test_chunks_are_token_positions_of_all_levels_and_fields_share_a_grid(synthetic):
    u = zarr.open_array(synthetic["shards"]["u"] / "data", mode="r")
    t = zarr.open_array(synthetic["shards"]["t"] / "data", mode="r")
    assert tuple(u.chunks) == (3, 2, 4, 4) and tuple(t.chunks) == (3, 2, 8, 8)  # (tt, L, ty, tx)
    assert tuple(u.shards) == (12, 2, 12, 20) and tuple(t.shards) == (12, 2, 24, 40)
    assert u.shape == t.shape == (48, 2, 88, 144)  # lat cropped to the lcm (8) of both token sizes
    du = xr.open_zarr(synthetic["shards"]["u"], consolidated=False)
    dt = xr.open_zarr(synthetic["shards"]["t"], consolidated=False)
    np.testing.assert_array_equal(du["latitude"], dt["latitude"])
    assert float(du["latitude"][0]) == 88.0 and float(du["latitude"][-1]) == -86.0  # poles excluded
    assert du["latitude"].attrs["units"] == "degrees_north" and du["longitude"].attrs["units"] == "degrees_east"
    assert du["data"].attrs["units"] == "1" and du.attrs["Conventions"].startswith("CF")
    assert list(du["month"].values.astype("datetime64[M]").astype(str)) == ["2026-01", "2026-02"]


def test_latitude_crop_uses_the_lcm_of_all_lat_token_sizes():
    data = data_config(("a", "b"))
    cfg = ShardConfig(token_size=(3, 9, 9), field_token_size={"b": (3, 18, 18)})
    assert shards.lat_step(data, cfg) == 18
    rows = shards.latitude_rows(721, shards.lat_step(data, cfg))
    assert (rows.start, rows.stop) == (9, 711) and (rows.stop - rows.start) % 18 == 0


def test_verify_proves_bit_equality_across_months(synthetic):
    for f in ("u", "t"):
        summary = shards.verify(
            synthetic["shards"][f], f, synthetic["normalized"][f], synthetic["data"], synthetic["shard"]
        )
        assert summary["months"] == 2 and summary["values"] == 48 * 2 * 88 * 144
        assert summary["shards"] == 4 * 1 * 8 * 8 if f == "u" else 4 * 1 * 4 * 4


def test_verify_finds_a_flipped_value_and_a_broken_index(synthetic, tmp_path):
    import shutil

    store = tmp_path / "u.zarr"
    shutil.copytree(synthetic["shards"]["u"], store)
    shard_file = store / "data" / "c" / "1" / "0" / "2" / "3"
    raw = bytearray(shard_file.read_bytes())
    raw[4 * 1000] ^= 1  # one bit of one value
    shard_file.write_bytes(bytes(raw))
    with pytest.raises(DataError, match="differs from the normalized source"):
        shards.verify(store, "u", synthetic["normalized"]["u"])
    raw[4 * 1000] ^= 1
    raw[-10] ^= 1  # the shard index (its checksum no longer matches)
    shard_file.write_bytes(bytes(raw))
    with pytest.raises(DataError, match="checksum"):
        shards.verify(store, "u", synthetic["normalized"]["u"])


def test_verify_rejects_another_configuration(synthetic):
    cfg = ShardConfig(token_size=(3, 4, 4))  # t would then have 4x4 tokens
    with pytest.raises(DataError, match="not the configured ones"):
        shards.verify(synthetic["shards"]["t"], "t", synthetic["normalized"]["t"], synthetic["data"], cfg)


def test_cli_shard_verify(synthetic, tmp_path, capsys):
    from atmorep import cli

    params = json.dumps(
        {
            "data": {
                "fields": {"u": {"levels": [96, 137]}, "t": {"levels": [96, 137]}},
                "start": "2026-01-31T00",
                "end": "2026-02-01T23",
            },
            "shard": {"token_size": [3, 4, 4], "field_token_size": {"t": [3, 8, 8]}, "shard_tokens": [4, 3, 5]},
        }
    )
    inputs = [str(p) for p in synthetic["normalized"]["u"]]
    argv = [
        "shard",
        "--params",
        params,
        "--field",
        "u",
        "--year",
        "2026",
        "--inputs",
        *inputs,
        "--output",
        str(tmp_path / "u.zarr"),
    ]
    assert cli.main(argv + ["--verify"]) == 1  # --verify checks what is there and writes nothing
    assert not (tmp_path / "u.zarr").exists()
    capsys.readouterr()
    assert cli.main(argv) == 0
    rc = cli.main(argv + ["--verify"])
    assert rc == 0
    assert json.loads(capsys.readouterr().out)["verified"]["values"] == 48 * 2 * 88 * 144


def test_dense_reader_wraps_longitude_in_at_most_two_ranges(synthetic):
    from atmorep.formats.zarrv3 import DenseShards

    r = DenseShards(synthetic["shards"]["u"] / "data")
    runs = r._runs(33, 6, 3, wrap=True)  # lon chunks 33, 34, 35 | 0, 1, 2 of 36
    ranges = [[s * r.per_shard[3] + o, s * r.per_shard[3] + o + n] for s, o, n, _ in runs]
    merged = [ranges[0]]
    for a, b in ranges[1:]:
        if a == merged[-1][1]:
            merged[-1][1] = b
        else:
            merged.append([a, b])
    assert merged == [[33, 36], [0, 3]]
    arr = zarr.open_array(synthetic["shards"]["u"] / "data", mode="r")
    got = r.read((2, 0, 5, 33), (4, 1, 3, 6), (False, False, False, True))  # T L Y X tt cl ty tx
    want = np.concatenate([arr[6:18, :, 20:32, 132:], arr[6:18, :, 20:32, :12]], axis=-1)
    np.testing.assert_array_equal(
        got.transpose(1, 5, 0, 4, 2, 6, 3, 7).reshape(2, 12, 12, 24), want.transpose(1, 0, 2, 3)
    )
