"""atmorep embed: the latents are the model's own encoder output of the window each token names, at
the token centres (global, regional, across 0°), in a store xarray opens with CF attributes; a layer
the model lacks is refused in one line."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import xarray as xr
from eval_builders import tiny_model

from atmorep.config import DataConfig, EmbedConfig, FieldSpec, ModelConfig, ShardConfig
from atmorep.eval import attention, embed, windows
from atmorep.model.batch import Batch
from atmorep.model.file import read_card, save_model
from atmorep.model.multiformer import FieldGeometry, Multiformer

DATA = DataConfig(fields={"t2m": FieldSpec(), "u10": FieldSpec()}, start="2026-03-25T00", end="2026-03-31T23")


def embed_into(tmp: Path, stores, model_path, data=DATA, **cfg) -> xr.Dataset:
    path = embed.embed(data, EmbedConfig(**cfg), model_path, stores, tmp / "embed")
    return {f: xr.open_zarr(path, group=f) for f in stores}


def assert_latents_are_encoder_outputs(groups: dict, stores, model_path, layers: list[int]):
    """Every token: its latent equals the encoder output of the window ``source_window`` names, at the
    token found by its footprint in that window (attention.georeference: an independent derivation)."""
    from atmorep.model.file import load_model

    model, _ = load_model(model_path)
    dataset = embed.open_dataset(stores, model, model_path)
    for f, g in groups.items():
        src = g["source_window"].values
        bnds = g["time_bnds"].values
        lat, lon = g["latitude"].values, g["longitude"].values % 360.0
        for w in np.unique(src):
            with torch.no_grad():
                enc = model.encode(*_batch(dataset, int(w)))
            geo = attention.georeference(dataset, int(w), f)
            for t, y, x in np.argwhere(src == w):
                match = np.flatnonzero(
                    (geo["token_level_index"].values == 0)
                    & (geo["time"].values == bnds[t, 1])
                    & np.isclose(geo["latitude"].values, lat[y])
                    & np.isclose(geo["longitude"].values, lon[x])
                )
                assert len(match) == 1, (f, w, t, y, x)
                for k, layer in enumerate(layers):
                    got = g["latent"].values[t, k, 0, y, x]
                    want = enc[f][layer][0, match[0]].numpy()
                    # one window here, a batch of them in embed: BLAS blocking may differ in the last bit
                    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)


def _batch(dataset, w: int):
    b = Batch.collate([dataset[w]])
    return b.tokens, b.info


@pytest.fixture(scope="module")
def regional_run(tmp_path_factory, stores, model_path):
    tmp = tmp_path_factory.mktemp("embed-regional")
    cfg = dict(
        start="2026-03-26T00",
        end="2026-03-27T23",
        area=(10.0, 100.0, -40.0, 170.0),
        layers=(0, -1),
        token_overlap=(0, 1, 2),
        pooling=("window", "area"),
        batch_size=3,
    )
    return embed_into(tmp, stores, model_path, **cfg), tmp


def test_latents_equal_the_models_encoder_output_of_their_window(regional_run, stores, model_path):
    groups, _ = regional_run
    assert list(groups["t2m"]["layer"].values) == [0, 1]
    assert not np.isnan(groups["t2m"]["latent"].values).any()
    assert_latents_are_encoder_outputs(groups, stores, model_path, [0, 1])


def test_each_token_comes_from_the_window_where_it_is_most_central(regional_run, stores, model_path):
    """With overlap a token lies in several windows of the tiling; the one named is one whose nearest
    edge is farthest from the token, along each axis (brute force over every window of the tiling)."""
    from atmorep.model.file import load_model

    groups, _ = regional_run
    model, _ = load_model(model_path)
    dataset = embed.open_dataset(stores, model, model_path)
    cfg = EmbedConfig(
        start="2026-03-26T00", end="2026-03-27T23", area=(10.0, 100.0, -40.0, 170.0), token_overlap=(0, 1, 2)
    )
    plan = embed.Plan(dataset, ["u10"], cfg, DATA)
    nt, ny, nx = dataset.extent
    src = groups["u10"]["source_window"].values
    starts = (plan.time["u10"][0].start, plan.lat["u10"].start, plan.lon["u10"].start)
    shared = 0
    for t, y, x in np.ndindex(src.shape):
        w = dataset.windows[int(src[t, y, x])]
        named = (w.t0, w.y0, w.x0)
        for axis, (p, origins, n, size) in enumerate(
            zip(
                (starts[0][t], starts[1][y], starts[2][x]),
                (plan.t_origins[0], plan.y_origins, plan.x_origins),
                (nt, ny, nx),
                dataset.token_sizes["u10"],
            )
        ):
            margins = {
                o % plan.nlon if axis == 2 else o: min(p - o, o + n - p - size)
                for o in origins
                if o <= p and p + size <= o + n
            }
            shared += len(margins) > 1
            assert named[axis] in margins and margins[named[axis]] == max(margins.values()), (axis, t, y, x)
    assert shared  # the overlap does put tokens in several windows


def test_pooled_vectors(regional_run, stores, model_path):
    from atmorep.model.file import load_model

    groups, _ = regional_run
    g = groups["t2m"]
    model, _ = load_model(model_path)
    dataset = embed.open_dataset(stores, model, model_path)
    w = int(g["window"].values[0])
    with torch.no_grad():
        enc = model.encode(*_batch(dataset, w))
    np.testing.assert_allclose(
        g["pooled_window"].sel(window=w).values[1, 0], enc["t2m"][1][0].mean(0), rtol=1e-5, atol=1e-6
    )
    weights = np.cos(np.deg2rad(g["latitude"]))
    want = g["latent"].weighted(weights).mean(("latitude", "longitude"))
    np.testing.assert_allclose(g["pooled_area"].values, want.values, rtol=1e-4, atol=1e-6)
    assert set(np.unique(g["source_window"].values)) <= set(g["window"].values)


def test_global_coordinates_are_the_token_centres(tmp_path, stores, model_path):
    groups = embed_into(tmp_path, stores, model_path, start="2026-03-25T00", end="2026-03-26T23", layers=(1,))
    g = groups["t2m"]
    src = xr.open_zarr(stores["t2m"][0], consolidated=False)
    lats, lons, times = src["latitude"].values, src["longitude"].values, src["time"].values
    assert g.sizes["latitude"] == len(lats) // 9 and g.sizes["longitude"] == len(lons) // 9  # every token
    np.testing.assert_allclose(g["latitude"].values, lats.reshape(-1, 9).mean(1))
    np.testing.assert_allclose(g["longitude"].values, lons.reshape(-1, 9).mean(1))
    steps = times[: 2 * g.sizes["time"]].reshape(-1, 2).astype("datetime64[ns]")
    want = steps[:, 0] + (steps[:, 1] - steps[:, 0]) / 2  # irregular steps: the mean of the token's two
    np.testing.assert_array_equal(g["time"].values, want)
    np.testing.assert_array_equal(g["time_bnds"].values, steps)
    np.testing.assert_allclose(g["latitude_bnds"].values[0], [lats[8] - 0.5, lats[0] + 0.5])
    np.testing.assert_allclose(g["longitude_bnds"].values[0], [-0.5, 8.5])
    assert (g["source_window"].values >= 0).all() and not np.isnan(g["latent"].values).any()
    assert g.attrs["layers"] == [1]


def test_an_area_across_0_degrees_of_a_global_grid(tmp_path, stores, model_path):
    groups = embed_into(
        tmp_path, stores, model_path, start="2026-03-25T00", end="2026-03-25T23", area=(20.0, 350.0, -20.0, 10.0)
    )
    g = groups["u10"]
    # tokens of 9 columns: 351..359 (centre 355) and 0..8 (centre 4), increasing across 0°
    np.testing.assert_allclose(g["longitude"].values, [-5.0, 4.0])
    np.testing.assert_allclose(g["longitude_bnds"].values, [[-9.5, -0.5], [-0.5, 8.5]])
    assert_latents_are_encoder_outputs(groups, stores, model_path, [1])


def test_lon_centres_are_periodic_means():
    np.testing.assert_allclose(embed.lon_centres(np.array([[358.0, 359.0, 0.0, 1.0], [10, 11, 12, 13]])), [359.5, 11.5])
    np.testing.assert_allclose(embed.monotonic(np.array([355.0, 4.0])), [-5.0, 4.0])


# --- a regional grid across 0°, from the pipeline's own writers ----------------------------------------


@pytest.fixture(scope="module")
def regional_store(tmp_path_factory):
    from atmorep.data import shards
    from atmorep.formats import zarrv3

    root = tmp_path_factory.mktemp("regional")
    lats, lons = np.arange(50.0, 37.0, -1.0), np.arange(-4.0, 8.0)  # 13 x 12 points, across 0°
    times = np.arange("2026-01-01T00", "2026-01-02T00", dtype="datetime64[h]").astype("datetime64[ns]")
    data = DataConfig(fields={"t": FieldSpec((0,))}, start="2026-01-01T00", end="2026-01-01T23")
    rng = np.random.default_rng(0)
    month = xr.Dataset(
        {
            "data": (
                ("time", "level", "latitude", "longitude"),
                rng.standard_normal((24, 1, 13, 12), dtype=np.float32),
            ),
            "mean": ("level", np.array([280.0], np.float32)),
            "std": ("level", np.array([5.0], np.float32)),
        },
        coords={"time": times, "level": [0], "latitude": lats, "longitude": lons},
        attrs={
            "field": "t",
            "month": "2026-01",
            "normalization": "global",
            "source": "t.grib",
            "source_sha256": "0" * 64,
        },
    )
    norm = zarrv3.write_dataset(month, root / "t-2026-01.zarr")
    cfg = ShardConfig(token_size=(2, 3, 3), shard_tokens=(4, 2, 2))
    store = shards.shard(data, cfg, "t", "2026", [norm], root / "t.zarr")
    torch.manual_seed(0)
    mcfg = ModelConfig(
        num_tokens=(2, 2, 2), dim=32, heads=2, encoder_layers=2, decoder_layers=1, ensemble=2, dropout=0.0
    )
    model = root / "model.safetensors"
    save_model(model, Multiformer(mcfg, {"t": FieldGeometry(1, (2, 3, 3))}).eval())
    return {"t": [str(store)]}, model, data


def test_regional_coordinates_across_0_degrees(tmp_path, regional_store):
    stores, model, data = regional_store
    groups = embed_into(tmp_path, stores, model, data=data, layers=(0,), token_overlap=(1, 1, 1))
    g = groups["t"]
    src = xr.open_zarr(stores["t"][0], consolidated=False)
    lats, lons = src["latitude"].values, src["longitude"].values
    assert list(lons) == list(range(-4, 8))  # a regional grid across 0° keeps its contiguous longitudes
    np.testing.assert_allclose(g["longitude"].values, [-3.0, 0.0, 3.0, 6.0])  # the second token astride 0°
    np.testing.assert_allclose(g["latitude"].values, lats[: len(lats) // 3 * 3].reshape(-1, 3).mean(1))
    assert g.sizes["time"] == 12 and not np.isnan(g["latent"].values).any()
    assert_latents_are_encoder_outputs(groups, stores, model, [0])


def test_the_store_opens_with_xarray_with_cf_attributes(regional_run, model_path):
    groups, tmp = regional_run
    g = xr.open_zarr(tmp / "embed" / "embeddings.zarr", group="t2m", decode_cf=True)
    assert g.attrs["Conventions"].startswith("CF-")
    assert g.attrs["model_sha256"] == read_card(model_path)["sha256"] and g.attrs["layers"] == [0, 1]
    assert g.attrs["model"] == str(model_path) and g.attrs["field"] == "t2m"
    assert g["latitude"].attrs["units"] == "degrees_north" and g["latitude"].attrs["standard_name"] == "latitude"
    assert g["longitude"].attrs["units"] == "degrees_east" and g["longitude"].attrs["bounds"] == "longitude_bnds"
    assert g["time"].attrs["standard_name"] == "time" and g["time"].attrs["bounds"] == "time_bnds"
    assert np.issubdtype(g["time"].dtype, np.datetime64)
    assert g["latent"].dims == ("time", "layer", "level", "latitude", "longitude", "channel")
    assert g["latent"].dtype == np.float32 and g["source_window"].dtype == np.int64
    assert g.sel(layer=1, level=0)["latent"].shape == (g.sizes["time"], g.sizes["latitude"], g.sizes["longitude"], 32)


def _cli(*args, cwd=None):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.run(
        [sys.executable, "-m", "atmorep", *args], capture_output=True, text=True, env=env, cwd=cwd, timeout=120
    )


def test_a_model_without_the_requested_layer_is_refused_in_one_line(tmp_path, stores, model_path):
    params = json.dumps(
        {"data": {"fields": {"t2m": {}, "u10": {}}, "start": DATA.start, "end": DATA.end}, "embed": {"layers": [5]}}
    )
    shards = [p for f in stores for p in stores[f]]
    r = _cli(
        "embed",
        "--params",
        params,
        "--model",
        str(model_path),
        "--shards",
        *shards,
        "--output-dir",
        str(tmp_path / "out"),
    )
    assert r.returncode != 0
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and "embed.layers [5]" in lines[0] and "2 encoder layers" in lines[0], r.stderr
    assert not (tmp_path / "out").exists()


def test_cover_covers_every_point_from_valid_origins():
    for lo, hi, size, stride, step, length in [
        (0, 180, 27, 27, 9, 180),
        (9, 40, 12, 6, 3, 60),
        (20, 23, 12, 12, 3, 60),
    ]:
        origins = windows.cover(lo, hi, size, stride, step, length, periodic=False)
        covered = set().union(*(range(o, o + size) for o in origins))
        assert set(range(lo, hi)) <= covered and all(o % step == 0 and 0 <= o <= length - size for o in origins)
    assert windows.cover(0, 360, 54, 54, 9, 360, periodic=True) == [0, 54, 108, 162, 216, 270, 324]  # the last wraps
    with pytest.raises(ValueError, match="cannot be covered"):
        windows.cover(0, 61, 12, 12, 3, 60, periodic=False)


def test_a_field_the_model_lacks_is_refused(tmp_path, stores, model_path):
    with pytest.raises(ValueError, match="embed.fields"):
        embed.embed(DATA, EmbedConfig(fields=("msl",)), model_path, stores, tmp_path / "e")


def test_tiny_model_has_two_layers():
    assert tiny_model().cfg.encoder_layers == 2  # the refusal test above names 2 layers
