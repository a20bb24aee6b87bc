"""Scoring orchestration on synthetic window layouts: which rows exist, over which points they average."""

import numpy as np
import xarray as xr

from atmorep.eval import metrics, scores


def layout(S=3, lead=2, Y=5, X=6, M=4, seed=0, clim=True):
    """A window-layout dataset as inference writes it (one level), all points targets."""
    rng = np.random.default_rng(seed)
    dims = ("sample", "lead", "level", "y", "x")
    shape = (S, lead, 1, Y, X)
    truth = rng.normal(size=shape)
    ens = truth[..., None] + rng.normal(size=(*shape, M))
    cm = rng.normal(size=shape) if clim else np.full(shape, np.nan)
    cs = rng.uniform(0.5, 2.0, size=shape) if clim else np.full(shape, np.nan)
    ds = xr.Dataset({"target": (dims, truth), "prediction": (dims, ens.mean(-1)), "mask": (dims, np.ones(shape, bool)),
                     "ensemble": ((*dims, "member"), ens), "climatology_mean": (dims, cm),
                     "climatology_std": (dims, cs), "baseline_climatology": (dims, cm),
                     "baseline_persistence": (dims, truth + 0.5)},
                    coords={"sample": np.arange(S), "lead": np.arange(1, lead + 1), "level": [0],
                            "member": np.arange(M),
                            "latitude": (("sample", "y"), np.tile(np.linspace(50, 40, Y), (S, 1))),
                            "init_time": ("sample", np.datetime64("2026-01-01T00", "ns")
                                          + np.arange(S) * np.timedelta64(1, "h"))})
    return ds


def test_the_climatology_spread_averages_over_the_target_points_only():
    ds = layout()
    mask = ds["mask"].copy(data=np.zeros(ds["mask"].shape, bool))
    mask[0, :, :, :2] = True  # sample 0: two target rows; samples 1 and 2: no targets at all
    ds["mask"] = mask
    per = scores.per_sample(ds, ("climatology",)).sel(forecast="climatology")
    w = metrics.latitude_weights(ds["latitude"], "y")
    expect = np.sqrt(metrics.weighted_mean(ds["climatology_std"].where(mask) ** 2, w, ("y", "x")))
    np.testing.assert_allclose(per["spread"].values, expect.values)
    assert np.isnan(per["spread"].isel(sample=[1, 2])).all() and np.isnan(per["rmse"].isel(sample=[1, 2])).all()
