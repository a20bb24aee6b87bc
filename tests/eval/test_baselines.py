import numpy as np

from atmorep.eval import baselines, climatology


def _ctx(steps, T=6):
    times = np.datetime64("2026-01-01T00") + np.array([0, 1, 2, 4, 7, 9]) * np.timedelta64(1, "h")
    hours = (times - times[0]) / np.timedelta64(1, "h")
    truth = hours[None, :, None, None] * np.ones((2, T, 3, 4)) * np.array([1.0, -2.0])[:, None, None, None]
    S = len(steps)
    return baselines.Context(truth, times, np.asarray(steps), np.zeros((2, S, 3, 4)), np.ones((2, S, 3, 4)))


def test_persistence_repeats_the_last_context_step():
    ctx = _ctx([4, 5])
    p = baselines.persistence(ctx)
    assert p.shape == (2, 2, 3, 4)
    np.testing.assert_array_equal(p[:, 0], ctx.truth[:, 3])
    np.testing.assert_array_equal(p[:, 1], ctx.truth[:, 3])
    assert np.isnan(baselines.persistence(_ctx([0]))).all()


def test_linear_interpolation_is_exact_for_linear_trends_on_irregular_steps():
    ctx = _ctx([2, 3])
    np.testing.assert_allclose(baselines.linear(ctx), ctx.truth[:, [2, 3]])
    assert np.isnan(baselines.linear(_ctx([4, 5]))).all()  # no context after a forecast


class FakeStore:
    """What climatology() reads of a FieldStore: times, grid, levels, read and denormalize."""

    field = "t2m"

    def __init__(self, values_TLYX, times):
        self.values, self.times = values_TLYX, times
        self.levels = np.array([0])
        self.lats, self.lons = np.array([10.0, 0.0]), np.array([0.0, 1.0, 2.0])

    def read(self, t0, nt, y0, ny, x0, nx):
        return self.values[t0 : t0 + nt, :, y0 : y0 + ny, x0 : x0 + nx].transpose(1, 0, 2, 3)

    def denormalize(self, v, t_idx, y_idx, x_idx):
        return v * 2.0 + 280.0


def test_climatology_is_a_circular_hour_of_day_mean_and_std_of_the_period():
    times = np.arange("2026-01-01T00", "2026-01-11T00", dtype="datetime64[h]")
    hours = (times - times.astype("datetime64[D]")).astype(int)
    rng = np.random.default_rng(0)
    values = np.sin(2 * np.pi * hours / 24)[:, None, None, None] + 0.1 * rng.normal(size=(len(times), 1, 2, 3))
    store = FakeStore(values.astype(np.float32), times)
    end = np.datetime64("2026-01-08T23")
    clim = climatology.climatology([store], times[0], end, window_hours=1, block=50)
    phys = values * 2 + 280
    used = times <= end
    for h in (0, 6, 23):
        sel = phys[used & (hours == h)]
        np.testing.assert_allclose(clim["mean"].sel(hour=h).values, sel.mean(0), rtol=1e-5)
        np.testing.assert_allclose(clim["std"].sel(hour=h).values, sel.std(0), rtol=1e-3, atol=1e-4)
    wide = climatology.climatology([store], times[0], end, window_hours=6)
    sel = phys[used & np.isin(hours, [21, 22, 23, 0, 1, 2, 3])]
    np.testing.assert_allclose(wide["mean"].sel(hour=0).values, sel.mean(0), rtol=1e-5)
    assert int(wide["count"].sel(hour=0)) == len(sel)
    mean, std = climatology.at(clim, times[[6, 30]], np.array([1]), np.array([0, 2]))
    assert mean.shape == (1, 2, 1, 2)
    np.testing.assert_allclose(mean[0, 1], clim["mean"].sel(hour=6).values[0][[1]][:, [0, 2]])


class LargeMeanStore(FakeStore):
    """Geopotential-like values: mean 5e5, spread 10."""

    field = "z"

    def denormalize(self, v, t_idx, y_idx, x_idx):
        return v * np.float32(10) + np.float32(5e5)


def test_climatology_std_of_a_large_mean_field_is_exact_to_float32_rounding():
    # E[x^2] - E[x]^2 in float64 cancels ~10 of its 16 digits here: several float32 ulps off
    times = np.arange("2026-01-01T00", "2026-03-01T00", dtype="datetime64[h]")
    hours = (times - times.astype("datetime64[D]")).astype(int)
    values = np.random.default_rng(0).normal(size=(len(times), 1, 2, 3)).astype(np.float32)
    store = LargeMeanStore(values, times)
    clim = climatology.climatology([store], times[0], times[-1], window_hours=6)
    phys = store.denormalize(values, None, None, None).astype(np.float64)
    for h in range(24):
        near = np.abs((hours - h + 12) % 24 - 12) <= 3
        np.testing.assert_allclose(clim["std"].sel(hour=h).values, phys[near].std(0), rtol=np.finfo(np.float32).eps)
        np.testing.assert_allclose(clim["mean"].sel(hour=h).values, phys[near].mean(0), rtol=np.finfo(np.float32).eps)
