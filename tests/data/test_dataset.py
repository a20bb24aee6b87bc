import numpy as np
import pytest

from atmorep.config import parse_time
from atmorep.data.dataset import FieldStore, WindowDataset
from atmorep.data.tokens import tokenize, untokenize


def test_tokenize_roundtrip_and_layout():
    x = np.arange(2 * 6 * 18 * 27, dtype=np.float32).reshape(2, 6, 18, 27)
    tok = tokenize(x, (3, 9, 9))
    assert tok.shape == (2, 2, 2, 3, 243)
    np.testing.assert_array_equal(tok[1, 1, 0, 2].reshape(3, 9, 9), x[1, 3:6, 0:9, 18:27])
    np.testing.assert_array_equal(untokenize(tok, (3, 9, 9)), x)


def test_window_read_wraps_longitude(sample_products):
    store = FieldStore(sample_products["shards"]["u10"])
    full = store.data[:]
    win = store.read(2, 6, 9, 27, 342, 54)  # 342..395 wraps past 360
    expect = np.roll(full, -342, axis=-1)[2:8, :, 9:36, :54].transpose(1, 0, 2, 3)
    np.testing.assert_array_equal(win, expect)


@pytest.fixture(scope="module")
def dataset(sample_products):
    stores = {f: [p] for f, p in sample_products["shards"].items()}
    return WindowDataset(stores, (3, 3, 6), parse_time("2026-03-25T00"), parse_time("2026-03-30T05"))


def test_windows_lie_on_token_grid_inside_period(dataset):
    store = dataset.stores["t2m"][0]
    assert len(dataset) == 7 * 17 * 40  # 7 time origins (steps 0..12, window ends by step 17), 17 lat, 40 lon
    for w in dataset.windows[:: max(1, len(dataset) // 50)]:
        assert w.t0 % 2 == 0 and w.y0 % 9 == 0 and w.x0 % 9 == 0
        assert store.times[w.t0 + 5] <= parse_time("2026-03-30T05")


def test_sample_shapes_and_token_info(dataset):
    sample = dataset[123]
    tokens, info = sample["t2m"]
    assert tokens.shape == (1, 3, 3, 6, 2 * 9 * 9) and tokens.dtype == np.float32
    assert info.shape == (1, 3, 3, 6, 8)
    assert np.all((info[..., 4] > 0) & (info[..., 4] < 1))  # colatitude / 180, poles excluded
    assert np.all((info[..., 5] >= 0) & (info[..., 5] < 1))
    assert np.isfinite(tokens).all()


def test_denormalize_recovers_physical_values(dataset, sample_products):
    from atmorep.formats import grib

    i = 200
    for f in ("t2m", "u10"):
        store = dataset.stores[f][0]
        t, y, x = dataset.indices(i, f)
        norm = untokenize(dataset[i][f][0], store.token_size)
        phys = store.denormalize(norm, t, y, x)
        raw = grib.decode(sample_products["grib"][f]).values[:, :, 5:176][np.ix_(t, [0], y, x)].transpose(1, 0, 2, 3)
        assert np.abs(phys - raw).max() < 1e-3 * np.abs(raw).max()


def test_direct_token_reads_equal_zarr_reads_including_the_seam(dataset):
    rng = np.random.default_rng(0)
    for f in dataset.fields:
        store = dataset.stores[f][0]
        assert store.dense is not None
        for t0, y0, x0 in [
            (2, 9, 342),
            (0, 0, 0),
            *((2 * rng.integers(7), 9 * rng.integers(17), 9 * rng.integers(40)) for _ in range(5)),
        ]:
            got = store.read_tokens(int(t0), int(y0), int(x0), 3, 3, 6)
            want = tokenize(store.read(int(t0), 6, int(y0), 27, int(x0), 54), store.token_size)
            np.testing.assert_array_equal(got, want)


def test_window_grid_is_lazy_and_indexable(dataset):
    grid = dataset.windows
    assert len(grid) == len(dataset) and grid[-1] == grid[len(grid) - 1]
    s, t, y, x = grid.locate(np.arange(len(grid)))
    assert grid[123] == type(grid[0])(int(s[123]), int(t[123]), int(y[123]), int(x[123]))
    assert len(set(zip(t.tolist(), y.tolist(), x.tolist()))) == len(grid)
    with pytest.raises(IndexError):
        grid[len(grid)]


def test_fields_with_different_token_sizes_share_the_neighbourhood(synthetic):
    stores = {f: [p] for f, p in synthetic["shards"].items()}
    ds = WindowDataset(stores, (2, 4, 4), parse_time("2026-01-31T00"), parse_time("2026-02-01T23"))
    assert ds.extent == (6, 16, 16) and ds.tokens == {"u": (2, 4, 4), "t": (2, 2, 2)}
    assert ds.step == (3, 8, 8)  # origins on both token grids
    sample = ds[len(ds) // 2 + 7]
    assert sample["u"][0].shape == (2, 2, 4, 4, 48) and sample["t"][0].shape == (2, 2, 2, 2, 192)
    assert sample["t"][1].shape == (2, 2, 2, 2, 8)
    for i in (0, len(ds) // 3, len(ds) - 1):  # the same points, cut into different tokens
        assert all(np.array_equal(a, b) for a, b in zip(ds.indices(i, "u"), ds.indices(i, "t")))
        t, y, x = ds.indices(i, "u")
        for f, size in (("u", (3, 4, 4)), ("t", (3, 8, 8))):
            want = ds.stores[f][0].read(t[0], 6, y[0], 16, x[0], 16)
            np.testing.assert_array_equal(untokenize(ds[i][f][0], size), want)
    # token info of the coarse field: colatitude of its token centres
    w = ds.windows[5]
    colat = ds[5]["t"][1][0, 0, :, 0, 4] * 180
    np.testing.assert_allclose(colat, 90 - ds.stores["t"][0].lats[w.y0 + 8 * np.arange(2) + 4])


def test_stores_written_by_other_tools_are_read_through_zarr(synthetic, tmp_path):
    import shutil

    import zarr

    from atmorep.formats import zarrv3

    src = synthetic["shards"]["u"]
    for name, kwargs in {"zstd": {}, "morton": {"compressors": None}}.items():
        dst = tmp_path / f"{name}.zarr"
        shutil.copytree(src, dst, ignore=shutil.ignore_patterns("data"))
        a = zarr.open_array(src / "data", mode="r")
        with zarr.config.set({"codec_pipeline.path": "zarr.core.codec_pipeline.BatchedCodecPipeline"}):
            b = zarr.create_array(
                dst / "data",
                shape=a.shape,
                dtype=a.dtype,
                chunks=a.chunks,
                shards=a.shards,
                dimension_names=a.metadata.dimension_names,
                fill_value=np.nan,
                **kwargs,
            )
            b[:12, :, :24] = a[:12, :, :24]  # what the read below needs
        store = FieldStore(dst)
        assert (store.dense is None) == (name == "zstd")  # zarr-python stores inner chunks in Morton order
        ref = FieldStore(src)
        np.testing.assert_array_equal(store.read_tokens(3, 8, 136, 2, 3, 4), ref.read_tokens(3, 8, 136, 2, 3, 4))
        assert store.dense is None
        zarrv3._MAPS.clear()


def test_windows_of_several_stores_never_cross_a_store(synthetic, tmp_path):
    from atmorep.data import shards

    data, cfg = synthetic["data"], synthetic["shard"]
    parts = [
        shards.shard(data, cfg, "u", f"part{k}", [m], tmp_path / f"u{k}.zarr")
        for k, m in enumerate(synthetic["normalized"]["u"])
    ]
    ds = WindowDataset({"u": parts}, (2, 4, 4), parse_time("2026-01-31T00"), parse_time("2026-02-01T23"))
    per_store = 7 * ds.grid.shape[1] * ds.grid.shape[2]  # (24 steps - 6) / 3 + 1 time origins each
    assert ds.grid.t_origins[0].tolist() == ds.grid.t_origins[1].tolist() == list(range(0, 19, 3))
    assert len(ds) == 2 * per_store and ds.windows[per_store - 1].store == 0 and ds.windows[per_store].store == 1
    w = ds.windows[per_store + 5]
    t, y, x = ds.indices(per_store + 5, "u")
    np.testing.assert_array_equal(
        untokenize(ds[per_store + 5]["u"][0], (3, 4, 4)), FieldStore(parts[1]).read(w.t0, 6, w.y0, 16, w.x0, 16)
    )
    assert ds.stores["u"][1].times[t[0]] >= np.datetime64("2026-02-01T00")


def test_a_tiling_of_windows_never_overlaps_and_leaves_no_room(dataset):
    """sampler.tiling: the windows a label budget counts in share no point, and no other window of the
    grid fits beside them (each overlaps one); around the periodic longitude none wraps onto the first."""
    from atmorep.data.sampler import tiling

    tiles = tiling(dataset)
    # time origins 0, 6, 12 of steps 0..12 (windows of 6 steps); latitude 6 windows of 27 rows in 171;
    # longitude 6 of 54 columns in 360 (a seventh would wrap onto the first)
    assert len(tiles) == 3 * 6 * 6
    points = [np.stack(np.meshgrid(*dataset.indices(i, "t2m"), indexing="ij"), -1).reshape(-1, 3) for i in tiles]
    cells = np.concatenate(points)
    assert len(np.unique(cells, axis=0)) == len(cells)  # no point in two windows
    occupied = {tuple(p) for p in cells}
    for i in range(0, len(dataset), 97):  # any window of the grid meets the tiling
        t, y, x = dataset.indices(i, "t2m")
        assert any((a, b, c) in occupied for a in t for b in y for c in x), i
    some = np.flatnonzero(dataset.grid.locate(np.arange(len(dataset)))[2] >= 18)  # windows from row 18 on
    sub = tiling(dataset, some)
    assert set(sub) <= set(some) and dataset.grid.locate(sub)[2].min() == 18  # counted from the first candidate


def test_label_budgets_are_nested_and_contiguous_in_time(dataset):
    from atmorep.data.sampler import nested_budgets, tiling

    fractions = (0.01, 0.05, 0.1, 0.25, 0.5, 1.0)
    budgets = nested_budgets(dataset, fractions, seed=3)
    tiles = tiling(dataset)
    assert [len(budgets[f]) for f in fractions] == [max(1, round(f * len(tiles))) for f in fractions]
    assert set(budgets[1.0]) == set(tiles)
    slab_of = dict(zip(tiles, np.unravel_index(tiles, dataset.grid.shape)[0]))
    slabs = sorted(set(slab_of.values()))
    per_slab = len(tiles) // len(slabs)
    for small, large in zip(fractions, fractions[1:]):
        assert set(budgets[small]) <= set(budgets[large])  # nested
    for f in fractions:
        used = [slab_of[i] for i in budgets[f]]
        runs = sorted(set(used))
        assert runs == slabs[slabs.index(runs[0]) : slabs.index(runs[0]) + len(runs)]  # consecutive slabs
        assert sum(used.count(s) < per_slab for s in runs) <= 1  # at most one slab partly used
    again, other = nested_budgets(dataset, fractions, seed=3), nested_budgets(dataset, fractions, seed=4)
    assert all(np.array_equal(again[f], budgets[f]) for f in fractions)  # drawn once per seed
    assert not all(np.array_equal(other[f], budgets[f]) for f in fractions[:-1])
    with pytest.raises(ValueError, match=r"label budgets \[0\.0, 1\.5\] are not fractions"):
        nested_budgets(dataset, (0.0, 0.5, 1.5), seed=3)
