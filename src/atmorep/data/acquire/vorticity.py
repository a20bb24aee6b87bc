"""Relative vorticity and divergence from u and v on the sphere.

ERA5 has vorticity (vo) and divergence (d) directly; a source with only winds can derive them:

    vo = 1/(a cos phi) * ( dv/dlambda - d(u cos phi)/dphi )
    d  = 1/(a cos phi) * ( du/dlambda + d(v cos phi)/dphi )

with second-order centred differences (periodic in longitude on a global grid, one-sided second
order at the edges of a regional one; ``numpy.gradient`` handles uneven latitude spacing). At a
pole, where 1/cos phi is singular, Stokes' and Gauss' theorems over the polar cap bounded by the
nearest latitude ring phi_1 give the cap means

    vo_NP = +mean(u_1) cos phi_1 / (a (1 - sin phi_1)),  d_NP = -mean(v_1) cos phi_1 / (a (1 - sin phi_1))
    vo_SP = -mean(u_1) cos phi_1 / (a (1 + sin phi_1)),  d_SP = +mean(v_1) cos phi_1 / (a (1 + sin phi_1))

The scheme is second-order accurate; tests hold it against solid-body rotation and spherical
harmonics, whose vorticity and divergence are known in closed form. Expect it to be smoother than
ERA5's own spectral vo/d at the grid scale.
"""

from __future__ import annotations

import numpy as np

from atmorep.errors import DataError
from atmorep.formats.grib import periodic

EARTH_RADIUS = 6371229.0  # m, the radius of ECMWF's IFS


def vorticity_divergence(
    u_YX: np.ndarray, v_YX: np.ndarray, lats: np.ndarray, lons: np.ndarray, radius: float = EARTH_RADIUS
) -> tuple[np.ndarray, np.ndarray]:
    """(vo, d) in s-1 on the grid of ``u``/``v`` (latitudes north to south, longitudes ascending)."""
    # float64: differences of neighbouring winds lose most of float32's digits.
    u, v = np.asarray(u_YX, np.float64), np.asarray(v_YX, np.float64)
    lats, lons = np.asarray(lats, float), np.asarray(lons, float)
    if u.shape != v.shape or u.shape != (len(lats), len(lons)):
        raise DataError(f"u {u.shape} and v {v.shape} do not match the grid ({len(lats)}, {len(lons)})")
    if len(lats) < 3 or len(lons) < 3:
        raise DataError("vorticity needs at least 3 latitudes and 3 longitudes")
    phi, lam = np.deg2rad(lats), np.deg2rad(lons)
    dlam = lam[1] - lam[0]
    wraps = periodic(lons)
    cos = np.cos(phi)[:, None]
    pole = np.abs(np.abs(lats) - 90.0) < 1e-9

    def d_dlambda(f):
        if wraps:  # np.gradient does not wrap: centred differences across 0°/360° by hand
            return (np.roll(f, -1, axis=1) - np.roll(f, 1, axis=1)) / (2 * dlam)
        return np.gradient(f, lam, axis=1, edge_order=2)

    def d_dphi(f):
        # With the coordinates, not a spacing: rows run north to south (phi decreasing), and the sign follows.
        return np.gradient(f, phi, axis=0, edge_order=2)

    # cos phi is 0 on a pole row: inf/NaN there, replaced by the cap means below.
    with np.errstate(divide="ignore", invalid="ignore"):
        vo = (d_dlambda(v) - d_dphi(u * cos)) / (radius * cos)
        d = (d_dlambda(u) + d_dphi(v * cos)) / (radius * cos)
    for j in np.flatnonzero(pole):
        if not wraps:
            raise DataError("a grid that includes a pole must be global in longitude")
        ring = j + 1 if lats[j] > 0 else j - 1  # the latitude ring next to the pole (rows north to south)
        c1, s1 = np.cos(phi[ring]), np.sin(phi[ring])
        if lats[j] > 0:
            scale = c1 / (radius * (1 - s1))
            vo[j], d[j] = u[ring].mean() * scale, -v[ring].mean() * scale
        else:
            scale = c1 / (radius * (1 + s1))
            vo[j], d[j] = -u[ring].mean() * scale, v[ring].mean() * scale
    return vo.astype(np.float32), d.astype(np.float32)
