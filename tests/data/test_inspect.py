"""`atmorep inspect` on every input kind the pipeline accepts, and one clear line for what it cannot use."""

import subprocess
import sys

import pytest
from builders import IFS, sample_grid, uk_mirror

from atmorep.data.acquire.inspect import describe
from atmorep.errors import DataError


def test_grib_files_of_both_editions_and_a_mirror_directory(tmp_path, shared_data):
    text = describe(shared_data.joinpath(*IFS))
    assert "t: Temperature [K]; levels isobaricInhPa=[1000.0, 850.0, 700.0, 500.0, 400.0, 300.0]" in text
    assert "8 time steps 2024-06-03T00:00 .. 2024-06-04T18:00, step 6 h; GRIB1" in text
    mirror = uk_mirror(shared_data, tmp_path / "m")
    text = describe(mirror)
    assert "directory of 4 GRIB files" in text
    # GRIB1 says surface, GRIB2 heightAboveGround 2: one single-level field
    want = "t2m: 2 metre temperature [K]; levels single-level heightAboveGround 2, surface 0; grid 33x49 0.25°x0.25°"
    assert want in text
    assert "744 time steps 2019-03-01T00:00 .. 2019-03-31T23:00, step 1 h; GRIB1+2" in text
    assert "msl: Mean sea level pressure" in text


def test_normalized_store_is_described(sample_products):
    text = describe(sample_products["normalized"]["u10"])
    assert "data: u10 normalized with global monthly statistics" in text and "24 time steps" in text


@pytest.mark.parametrize(
    "sample, why",
    [
        ("sh_ml_grib2", "spherical-harmonic coefficients (spherical harmonics T63)"),
        ("reduced_gg_pl_grib2", "Gaussian grid (reduced_gg N32 (64 latitudes)): set acquire.regrid: linear"),
    ],
)
def test_unusable_grids_are_one_clear_line(tmp_path, sample, why):
    p = sample_grid(sample, tmp_path / "x.grib")
    r = subprocess.run([sys.executable, "-m", "atmorep", "inspect", str(p)], capture_output=True, text=True)
    assert r.returncode == 1 and r.stdout == ""
    (line,) = r.stderr.strip().splitlines()
    assert str(p) in line and why in line, line


def test_gaussian_grid_is_accepted_with_a_regrid(tmp_path):
    p = sample_grid("reduced_gg_pl_grib2", tmp_path / "gg.grib")
    assert "grid reduced_gg N32 (64 latitudes) (regridded linear)" in describe(p, regrid="linear")


def test_mixed_grids_of_one_field_are_rejected(tmp_path, shared_data):
    import numpy as np
    from builders import field_grib

    root = uk_mirror(shared_data, tmp_path / "m")
    field_grib(
        root / "coarse.grib",
        "t2m",
        np.full((1, 1, 9, 13), 280.0) + np.arange(13),
        ["2019-03-05T00"],
        [0],
        np.linspace(58, 50, 9),
        np.arange(13) * 1.0 - 10,
    )
    with pytest.raises(DataError, match=r"field 't2m' is on mixed grids: 33x49 0\.25°x0\.25° .* and 9x13 1°x1°"):
        describe(root)


def test_empty_directory(tmp_path):
    with pytest.raises(DataError, match="not a zarr store .* and holds no GRIB file"):
        describe(tmp_path)
