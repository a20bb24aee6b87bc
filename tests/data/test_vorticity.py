"""Vorticity and divergence on the sphere against fields whose vo and d are known in closed form."""

import numpy as np
import pytest

from atmorep.data.acquire.vorticity import EARTH_RADIUS as A
from atmorep.data.acquire.vorticity import vorticity_divergence
from atmorep.errors import DataError


def _grid(res):
    lats, lons = np.linspace(90, -90, int(180 / res) + 1), np.arange(int(360 / res)) * res
    return lats, lons, np.deg2rad(lats)[:, None], np.deg2rad(lons)[None]


def _analytic(phi, lam, U=20.0, V=5.0):
    """Solid-body rotation + the streamfunction a U sin(phi) cos(phi) cos(lambda) (degree 2, order 1)
    + the velocity potential a V sin(phi) (degree 1): vo = 2U sin/a - 6U sin cos cos(lambda)/a, d = -2V sin/a."""
    u = U * np.cos(phi) - U * np.cos(2 * phi) * np.cos(lam)
    v = -U * np.sin(phi) * np.sin(lam) + V * np.cos(phi) + 0 * lam
    vo = 2 * U * np.sin(phi) / A - 6 * U * np.sin(phi) * np.cos(phi) * np.cos(lam) / A
    d = -2 * V * np.sin(phi) / A + 0 * lam
    return u, v, vo, d


def _errors(res, band=90.0):
    lats, lons, phi, lam = _grid(res)
    u, v, vo_true, d_true = _analytic(phi, lam)
    vo, d = vorticity_divergence(u, v, lats, lons)
    rows = np.abs(lats) <= band
    scale = np.abs(vo_true).max()
    return (np.abs(vo - vo_true)[rows].max() / scale, np.abs(d - d_true)[rows].max() / scale)


def test_solid_body_rotation_including_the_poles():
    lats, lons, phi, lam = _grid(1.0)
    vo, d = vorticity_divergence(20 * np.cos(phi) + 0 * lam, 0 * phi + 0 * lam, lats, lons)
    np.testing.assert_allclose(vo, 2 * 20 * np.sin(phi) / A + 0 * lam, atol=3e-4 * 40 / A)
    assert np.abs(d).max() < 1e-12
    assert abs(vo[0, 0] - 40 / A) < 2e-4 * 40 / A and abs(vo[-1, 0] + 40 / A) < 2e-4 * 40 / A  # polar caps


def test_second_order_away_from_the_poles_and_consistent_everywhere():
    coarse, fine = _errors(2.0, band=80), _errors(1.0, band=80)
    assert max(fine) < 2e-3
    assert coarse[0] / fine[0] > 3.5 and coarse[1] / fine[1] > 3.5  # error falls as the grid spacing squared
    glob_coarse, glob_fine = _errors(2.0), _errors(1.0)
    assert max(glob_fine) < 0.02 and glob_coarse[0] / glob_fine[0] > 1.8  # rows next to a pole: first order


def test_regional_grid_and_bad_shapes():
    lats, lons = np.linspace(60, 30, 31), np.arange(41) * 1.0
    phi, lam = np.deg2rad(lats)[:, None], np.deg2rad(lons)[None]
    u, v, vo_true, d_true = _analytic(phi, lam)
    vo, d = vorticity_divergence(u, v, lats, lons)
    assert np.abs(vo - vo_true).max() < 0.01 * np.abs(vo_true).max()
    with pytest.raises(DataError, match="do not match the grid"):
        vorticity_divergence(u[:-1], v, lats, lons)
