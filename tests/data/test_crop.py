"""Cutting data.area out of a bigger mirror: the index arithmetic and the files source."""

import numpy as np
import pytest

from atmorep.data.grib import DataError
from atmorep.data.inventory import crop_indices

LATS = np.arange(90, -90.1, -0.25)
LONS = np.arange(0, 360, 0.25)


@pytest.mark.parametrize("lat_order", [1, -1])
@pytest.mark.parametrize("shift", [0.0, -180.0])
def test_crop_indices_any_order_and_convention_across_0(lat_order, shift):
    lats, lons = LATS[::lat_order], LONS + shift
    rows, cols = crop_indices(lats, lons, (58, -10, 50, 2))
    assert len(rows) == 33 and len(cols) == 49
    np.testing.assert_allclose(lats[rows], np.arange(58, 49.9, -0.25))  # north to south
    np.testing.assert_allclose(np.mod(lons[cols] + 180, 360) - 180, np.arange(-10, 2.01, 0.25))  # contiguous


def test_crop_indices_whole_globe_and_regional_grids():
    rows, cols = crop_indices(LATS, LONS, (90, -180, -90, 180))
    assert len(rows) == 721 and len(cols) == 1440 and LONS[cols[0]] == 180
    uk_lats, uk_lons = np.arange(58, 49.9, -0.25), np.arange(-10, 2.01, 0.25)
    rows, cols = crop_indices(uk_lats, uk_lons, (56, -5, 52, 0))
    assert uk_lats[rows].tolist() == list(np.arange(56, 51.9, -0.25)) and uk_lons[cols[[0, -1]]].tolist() == [-5, 0]


@pytest.mark.parametrize("area, message", [
    ((58, -20, 50, 2), r"lat 58..50, lon -20..2 is not inside the files' extent lat 58..50, lon -10..2"),
    ((60, -10, 50, 2), r"lat 60..50, lon -10..2 is not inside the files' extent lat 58..50, lon -10..2"),
    ((58, -10.1, 50, 2), r"west edge -10.1 is not a grid point of the files' 0.25° grid"),
])
def test_crop_indices_refuses_an_area_outside_or_off_the_grid(area, message):
    with pytest.raises(DataError, match=message):
        crop_indices(np.arange(58, 49.9, -0.25), np.arange(-10, 2.01, 0.25), area)
