import numpy as np
import pytest

from atmorep.data.dataset import FieldStore, RankSampler, WindowDataset, tokenize, untokenize
from atmorep.config import parse_time


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
    from atmorep.data import grib

    i = 200
    for f in ("t2m", "u10"):
        store = dataset.stores[f][0]
        t, y, x = dataset.indices(i, f)
        norm = untokenize(dataset[i][f][0], store.token_size)
        phys = store.denormalize(norm, t, y, x)
        raw = grib.decode(sample_products["grib"][f]).values[:, :, 5:176][np.ix_(t, [0], y, x)].transpose(1, 0, 2, 3)
        assert np.abs(phys - raw).max() < 1e-3 * np.abs(raw).max()


def test_rank_sampler_is_disjoint_complete_and_seeded():
    n, world = 103, 2
    parts = [list(RankSampler(n, seed=7, rank=r, world=world)) for r in range(world)]
    assert len(parts[0]) == len(parts[1]) == n // world
    assert not set(parts[0]) & set(parts[1])
    assert len(set(parts[0]) | set(parts[1])) == 2 * (n // world)
    again = RankSampler(n, seed=7, rank=0, world=world)
    assert list(again) == parts[0]
    again.set_epoch(1)
    assert list(again) != parts[0]
