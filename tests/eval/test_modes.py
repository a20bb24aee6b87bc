"""Inference modes on real windows of the embedded sample with a small untrained model."""

import numpy as np
import pytest
from eval_builders import eval_config, tiny_model

from atmorep.eval import evaluate as E
from atmorep.eval import modes


def _truth(dataset, f, sample, steps=None):
    """Physical values (L, nt, ny, nx) of a window, read straight from the store."""
    t_idx, y_idx, x_idx = dataset.indices(sample, f)
    store = dataset.stores[f][dataset.windows[sample].store]
    raw = np.stack(
        [store.read(int(t), 1, int(y_idx[0]), len(y_idx), int(x_idx[0]), len(x_idx))[:, 0] for t in t_idx], axis=1
    )
    phys = store.denormalize(raw, t_idx, y_idx, x_idx)
    return phys if steps is None else phys[:, steps]


@pytest.fixture(scope="module")
def model():
    return tiny_model()


def test_spread_inflation_scales_the_members_about_an_unchanged_mean(model, dataset):
    plain = E.run_mode(model, dataset, eval_config(mode="forecast", samples=3), seed=1)["t2m"]
    wide = E.run_mode(model, dataset, eval_config(mode="forecast", samples=3, spread_inflation=2.5), seed=1)["t2m"]
    np.testing.assert_allclose(wide["prediction"], plain["prediction"], rtol=1e-5)
    dev_plain = plain["ensemble"] - plain["prediction"]
    dev_wide = wide["ensemble"] - wide["prediction"]
    np.testing.assert_allclose(dev_wide, 2.5 * dev_plain, rtol=1e-3, atol=1e-3)
    assert float(dev_plain.std()) > 0  # the members do differ


def test_every_mode_is_a_plugin_with_a_masking_strategy():
    assert set(modes.MODES) == {"forecast", "temporal_interpolation", "bert", "global_forecast"}
    with pytest.raises(ValueError, match="unknown 'nowcast'"):
        modes.get("nowcast")


def test_forecast_outputs_the_last_slab_in_physical_units(model, dataset):
    out = E.run_mode(model, dataset, eval_config(mode="forecast"), seed=1)
    ds = out["t2m"]
    assert dict(ds.sizes) == {"sample": 6, "lead": 2, "level": 1, "y": 27, "x": 54, "member": 4, "window_step": 6}
    assert ds["mask"].all() and np.isfinite(ds["prediction"]).all() and np.isfinite(ds["ensemble"]).all()
    i = int(ds["sample"][0])
    np.testing.assert_allclose(
        ds["target"].isel(sample=0).transpose("level", "lead", ...).values, _truth(dataset, "t2m", i, [4, 5]), rtol=1e-6
    )
    np.testing.assert_allclose(
        ds["baseline_persistence"].isel(sample=0, lead=1).values, _truth(dataset, "t2m", i, [3])[:, 0], rtol=1e-6
    )
    assert (ds["init_time"] == ds["window_time"].isel(window_step=3)).all()
    assert (ds["lead_time"] > np.timedelta64(0)).all()
    assert 200 < float(ds["prediction"].mean()) < 330  # kelvin, not normalized units
    assert ((ds["longitude"] >= 0) & (ds["longitude"] < 360)).all()
    # the model input keeps the context and replaces the target slab by the month's mean
    src = ds["source"].isel(sample=0)
    np.testing.assert_allclose(src.isel(window_step=0).values, _truth(dataset, "t2m", i, [0])[:, 0], rtol=1e-6)


def test_temporal_interpolation_masks_the_middle_slab_and_has_the_linear_baseline(model, dataset):
    ds = E.run_mode(model, dataset, eval_config(mode="temporal_interpolation", samples=3), seed=1)["u10"]
    assert ds.sizes["lead"] == 2
    assert (ds["time"] == ds["window_time"].isel(window_step=[2, 3]).values).all()
    lin = ds["baseline_linear"].isel(sample=0).values
    i = int(ds["sample"][0])
    t = (ds["window_time"].isel(sample=0) - ds["window_time"].isel(sample=0, window_step=1)).values
    w = (t[2] / (t[4])).astype(float)
    a, b = _truth(dataset, "u10", i, [1])[:, 0], _truth(dataset, "u10", i, [4])[:, 0]
    np.testing.assert_allclose(lin[0, 0], ((1 - w) * a + w * b)[0], rtol=1e-5, atol=1e-5)


def test_bert_keeps_every_step_and_predicts_only_masked_tokens(model, dataset):
    ds = E.run_mode(model, dataset, eval_config(mode="bert", samples=3, bert_rate=0.6), seed=2)["t2m"]
    assert ds.sizes["lead"] == 6
    mask = ds["mask"].values.astype(bool)
    assert 0 < mask.mean() < 1
    assert np.isfinite(ds["prediction"].values[mask]).all() and np.isnan(ds["prediction"].values[~mask]).all()


@pytest.mark.parametrize("overlap, count", [((0, 0), 7 * 7), ((1, 2), 9 * 10), ((2, 0), 17 * 7)])
def test_global_tiles_cover_the_globe(dataset, overlap, count):
    cfg = eval_config(mode="global_forecast", token_overlap=overlap)
    (tiles,) = modes.get("global_forecast").select(dataset, cfg, 0).tiles.values()
    assert len(tiles) == count
    store = dataset.stores["t2m"][0]
    covered = np.zeros((len(store.lats), len(store.lons)), int)
    for t in tiles:
        covered[t.y0 : t.y0 + 27, (t.x0 + np.arange(54)) % len(store.lons)] += 1
    assert covered.min() >= 1


@pytest.mark.slow
def test_global_forecast_stitches_overlapping_tiles_back_exactly(model, dataset):
    cfg = eval_config(mode="global_forecast", token_overlap=(1, 2))
    ds = E.run_mode(model, dataset, cfg, seed=0)["t2m"]
    store = dataset.stores["t2m"][0]
    assert ds.sizes["sample"] == 1 and (ds.sizes["y"], ds.sizes["x"]) == (len(store.lats), len(store.lons))
    np.testing.assert_array_equal(ds["latitude"].values, store.lats)
    assert ds["mask"].all() and np.isfinite(ds["prediction"]).all()
    # every tile's truth agrees where tiles overlap, so the stitched truth is the store's field
    t = np.searchsorted(store.times, ds["time"].values[0].astype(store.times.dtype))
    raw = store.read(int(t[0]), len(t), 0, len(store.lats), 0, len(store.lons))
    phys = store.denormalize(raw, t, np.arange(len(store.lats)), np.arange(len(store.lons)))
    np.testing.assert_allclose(ds["target"].isel(sample=0).transpose("level", "lead", "y", "x").values, phys, rtol=1e-6)


def test_times_select_windows_by_the_valid_time_of_their_last_step(dataset):
    from atmorep.eval import windows

    (last,) = {str(p.last_time)[:13] for p in windows.time_positions(dataset)}
    assert [p.position for p in windows.at_times(dataset, (last,))] == [0]
    with pytest.raises(ValueError, match="evaluate.times"):
        windows.at_times(dataset, ("2026-03-30T01",))


def test_windows_are_drawn_across_every_time_position(stores):
    from atmorep.data.dataset import WindowDataset
    from atmorep.eval import windows

    ds = WindowDataset(stores, (3, 3, 6), np.datetime64("2026-03-25T00"), np.datetime64("2026-03-31T23"))
    positions = windows.time_positions(ds)
    assert [p.position for p in positions] == list(range(len(positions))) and len(positions) > 2
    chosen = windows.sample(ds, positions, samples=40, seed=0)
    assert len(set(chosen)) == 40
    t0 = {ds.windows[int(i)].t0 for i in chosen}
    assert len(t0) > 2  # not every window at the first time
    for p in positions:
        w = ds.windows[windows.window_index(ds, p.position, 9, 18)]
        assert (w.t0, w.y0, w.x0) == (p.t0, 9, 18)
        assert ds.stores["t2m"][0].times[w.t0 + 5] == p.last_time


@pytest.mark.slow
def test_global_forecast_without_a_climatology_scores_no_acc_and_no_climatology(model, dataset):
    from atmorep.eval import scores

    ds = E.run_mode(model, dataset, eval_config(mode="global_forecast"), seed=0, clims=None)["t2m"]
    assert np.isnan(ds["climatology_mean"]).all() and np.isnan(ds["baseline_climatology"]).all()
    table = scores.table({"t2m": scores.per_sample(ds, modes.get("global_forecast").baselines)})
    assert set(table.forecast) == {"atmorep", "persistence"} and "acc" not in set(table.metric)


@pytest.mark.slow
def test_stitching_overlapping_tiles_keeps_the_ensemble_spread(trained, dataset):
    from atmorep.eval import inference

    cfg = eval_config(mode="global_forecast", token_overlap=(1, 2))
    mode = modes.get("global_forecast")
    sel = mode.select(dataset, cfg, 0)
    tiles = inference.run(
        trained,
        dataset,
        sel.indices,
        strategy=mode.masking(cfg, dataset.token_sizes),
        target_slabs=mode.target_slabs(cfg),
        batch_size=8,
        seed=0,
    )
    stitched = mode.finish(dataset, sel, tiles, cfg)
    for f in ("t2m", "u10"):
        store = dataset.stores[f][0]
        nlat, nlon = len(store.lats), len(store.lons)
        w = np.outer(modes.taper(27, 9), modes.taper(54, 18))
        num, den, count = np.zeros((2, nlat, nlon)), np.zeros((nlat, nlon)), np.zeros((nlat, nlon))
        for t in next(iter(sel.tiles.values())):
            var = tiles[f]["ensemble"].sel(sample=t.index).isel(level=0).var("member", ddof=1)
            cols = (t.x0 + np.arange(54)) % nlon
            num[:, t.y0 : t.y0 + 27, cols] += w * var.transpose("lead", "y", "x").values
            den[t.y0 : t.y0 + 27, cols] += w
            count[t.y0 : t.y0 + 27, cols] += 1
        got = stitched[f]["ensemble"].isel(sample=0, level=0).var("member", ddof=1)
        got = got.transpose("lead", "y", "x")
        overlap = count > 1
        assert overlap.mean() > 0.5
        # the members' spread in the overlaps is the tiles' (weighted), not shrunk by averaging members
        # (to float32 precision: deviations of ~0.01 on values of ~300)
        np.testing.assert_allclose(got.values[:, overlap], (num / den)[:, overlap], rtol=2e-2)
        ratio = got.values[:, overlap].mean() / (num / den)[:, overlap].mean()
        assert float(ratio) == pytest.approx(1, abs=2e-3)
        mean = stitched[f]["ensemble"].mean("member")
        np.testing.assert_allclose(mean.values, stitched[f]["prediction"].values, rtol=1e-5, atol=1e-4)
