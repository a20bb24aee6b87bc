"""Training sampler and background loading: area weighting, determinism, disjointness across ranks
and steps, and reads in forked workers."""

import numpy as np
import pytest
from torch.utils.data import DataLoader

from atmorep.config import parse_time
from atmorep.data.dataset import WindowDataset, WindowGrid
from atmorep.data.sampler import SphereSampler, StepBatches
from atmorep.errors import DataError


def grid(nt=50, lats=None, nx=40) -> WindowGrid:
    lats = np.arange(-80, 81, 5.0) if lats is None else lats
    w = np.cos(np.deg2rad(lats))
    return WindowGrid([np.arange(nt) * 3], np.arange(len(lats)) * 5, np.arange(nx) * 9, w)


def test_epoch_is_seeded_distinct_and_changes_with_the_epoch():
    g = grid()
    s = SphereSampler(g, 5000, seed=3)
    a, b = s.order(0), s.order(0)
    np.testing.assert_array_equal(a, b)
    assert len(np.unique(a)) == len(a) == 5000 and a.min() >= 0 and a.max() < len(g)
    assert not np.array_equal(a, s.order(1))
    assert not np.array_equal(a, SphereSampler(g, 5000, seed=4).order(0))


def test_latitude_is_area_weighted_time_and_longitude_uniform():
    lats = np.arange(-80, 81, 5.0)
    g = grid(nt=400, lats=lats, nx=100)  # 1.3 M windows: 20k distinct draws are nearly independent
    _, t, y, x = g.locate(SphereSampler(g, 20000, seed=1).order(0))
    freq = np.bincount(y // 5, minlength=len(lats)) / 20000
    want = np.cos(np.deg2rad(lats)) / np.cos(np.deg2rad(lats)).sum()
    assert np.abs(freq - want).max() < 0.01
    assert freq[len(lats) // 2] > 4 * freq[0]  # equator vs 80°S: cos 0 / cos 80 = 5.8
    assert abs(np.mean(np.abs(lats[y // 5])) - np.sum(want * np.abs(lats))) < 1.0
    for counts in (np.bincount(t // 3, minlength=400), np.bincount(x // 9, minlength=100)):
        assert counts.std() / counts.mean() < 0.25  # Poisson noise of ~50 / ~200 per bin


def test_dataset_weights_are_the_area_of_each_centre_band(sample_products):
    ds = WindowDataset(
        {f: [p] for f, p in sample_products["shards"].items()},
        (3, 3, 6),
        parse_time("2026-03-25T00"),
        parse_time("2026-03-30T05"),
    )
    lats = ds.stores["t2m"][0].lats
    centre = (lats[ds.grid.y_origins] + lats[ds.grid.y_origins + 26]) / 2
    ratio = ds.grid.weights / np.cos(np.deg2rad(centre))
    np.testing.assert_allclose(ratio, ratio[0], rtol=1e-6)  # sin(c+h) - sin(c-h) = 2 cos c sin h
    assert np.isclose(ds.grid.weights.sum(), 1.0)


def test_sampler_refuses_more_windows_than_exist():
    with pytest.raises(DataError, match="distinct windows"):
        SphereSampler(grid(nt=1, nx=2), 10**6, seed=0)


def test_step_batches_are_disjoint_across_ranks_and_world_invariant(sample_products):
    stores = {f: [p] for f, p in sample_products["shards"].items()}
    dataset = WindowDataset(stores, (3, 3, 6), parse_time("2026-03-25T00"), parse_time("2026-03-30T05"))
    plan = StepBatches(dataset, seed=5, global_batch=8, epoch_steps=12)
    for step in (0, 3, 11, 12, 13):  # 12 steps per epoch: 12 and 13 are in the second epoch
        two = [plan.indices(step, rank=r, world=2, micro_steps=1)[0] for r in range(2)]
        assert not set(two[0]) & set(two[1]) and len(two[0]) == 4
        one = plan.indices(step, rank=0, world=1, micro_steps=2)  # one rank, two micro-steps: the same global batch
        assert sorted(one[0] + one[1]) == sorted(two[0] + two[1])
    epoch0 = [i for s in range(12) for r in range(2) for i in plan.indices(s, rank=r, world=2, micro_steps=1)[0]]
    assert len(set(epoch0)) == 96  # no window twice within an epoch
    assert plan.indices(12, rank=0, world=2, micro_steps=1) != plan.indices(
        0, rank=0, world=2, micro_steps=1
    )  # each epoch draws anew


def zstd_copy(src, dst):
    """The same store with zstd-compressed chunks, written by zarrs with its thread pool (so the
    process that forks the workers has used that pool): the loader then reads through zarr."""
    import shutil

    import zarr

    from atmorep.formats import zarrv3

    shutil.copytree(src, dst, ignore=shutil.ignore_patterns("data"))
    with zarrv3.pipeline(None):  # zarrs and its thread pool, as the comment above says
        a = zarr.open_array(src / "data", mode="r")
        b = zarr.create_array(
            dst / "data",
            shape=a.shape,
            dtype=a.dtype,
            chunks=a.chunks,
            shards=a.shards,
            dimension_names=a.metadata.dimension_names,
            fill_value=np.nan,
        )
        b[:] = a[:]
    return dst


@pytest.mark.timeout(120)
def test_forked_workers_read_what_the_main_process_reads(sample_products, synthetic, tmp_path):
    compressed = {f: zstd_copy(p, tmp_path / f"{f}.zarr") for f, p in sample_products["shards"].items()}
    for shards, num_tokens, period in (
        (sample_products["shards"], (3, 3, 6), ("2026-03-25T00", "2026-03-30T05")),
        (compressed, (3, 3, 6), ("2026-03-25T00", "2026-03-30T05")),
        (synthetic["shards"], (2, 4, 4), ("2026-01-31T00", "2026-02-01T23")),
    ):
        ds = WindowDataset({f: [p] for f, p in shards.items()}, num_tokens, *map(parse_time, period))
        assert all((s[0].dense is None) == (shards is compressed) for s in ds.stores.values())
        sampler = SphereSampler(ds.grid, 24, seed=2).order(0).tolist()
        loader = DataLoader(
            ds, batch_size=4, sampler=sampler, num_workers=2, collate_fn=list, multiprocessing_context="fork"
        )
        got = [s for batch in loader for s in batch]
        for i, sample in zip(sampler, got):
            want = ds[i]
            for f in ds.fields:
                np.testing.assert_array_equal(sample[f][0], want[f][0])
                np.testing.assert_array_equal(sample[f][1], want[f][1])
