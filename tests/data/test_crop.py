"""Cutting data.area out of a bigger mirror: the index arithmetic and the files source."""

import numpy as np
import pytest

from atmorep.data.acquire.crop import crop_indices
from atmorep.errors import DataError

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


@pytest.mark.parametrize(
    "area, message",
    [
        ((58, -20, 50, 2), r"lat 58..50, lon -20..2 is not inside the files' extent lat 58..50, lon -10..2"),
        ((60, -10, 50, 2), r"lat 60..50, lon -10..2 is not inside the files' extent lat 58..50, lon -10..2"),
        ((58, -10.1, 50, 2), r"west edge -10.1 is not a grid point of the files' 0.25° grid"),
    ],
)
def test_crop_indices_refuses_an_area_outside_or_off_the_grid(area, message):
    with pytest.raises(DataError, match=message):
        crop_indices(np.arange(58, 49.9, -0.25), np.arange(-10, 2.01, 0.25), area)


# --- the files source cuts data.area out of a bigger mirror ------------------------------------------

import json  # noqa: E402

from builders import IFS, uk_mirror  # noqa: E402

from atmorep.config import AcquireConfig, DataConfig, FieldSpec, FilesConfig, NormalizeConfig  # noqa: E402
from atmorep.data import normalize  # noqa: E402
from atmorep.data.acquire import sources  # noqa: E402
from atmorep.formats import grib, zarrv3  # noqa: E402


def _files(tmp_path, root):
    return AcquireConfig(source="files", files=FilesConfig((str(root),), str(tmp_path / "index")))


def _uk(area, start="2019-03-01T00", end="2019-03-31T23"):
    return DataConfig(fields={"t2m": FieldSpec()}, start=start, end=end, step_hours=1, grid=(0.25, 0.25), area=area)


@pytest.mark.slow
def test_a_crop_across_0_equals_the_area_read_directly(tmp_path, shared_data):
    # the UK mirror: GRIB1 north-south -10..2, GRIB2 350..2 in 0..360, GRIB1 south-north
    mirror = uk_mirror(shared_data, tmp_path / "m")
    whole = grib.decode(
        sources.acquire(_uk((58, -10, 50, 2)), _files(tmp_path, mirror), "t2m", "2019-03", tmp_path / "whole.grib")
    )
    out = sources.acquire(_uk((56, -5, 52, 1)), _files(tmp_path, mirror), "t2m", "2019-03", tmp_path / "cut.grib")
    cut = grib.decode(out)
    want = whole.sel(latitude=slice(56, 52), longitude=slice(-5, 1))
    assert cut.shape == (744, 1, 17, 25) and {h.edition for h in grib.scan(out)} == {1, 2}
    np.testing.assert_array_equal(cut["longitude"].values, want["longitude"].values)
    np.testing.assert_array_equal(cut.values, want.values)  # bit for bit what the direct read decodes
    crop = json.loads(sources.provenance_path(out).read_text())["crop"]
    assert crop["area"] == [56, -5, 52, 1] and crop["from"] == "33x49 0.25°x0.25°"
    # normalize carries the record into its store's provenance
    store = normalize.normalize(
        _uk((56, -5, 52, 1), end="2019-03-01T05"),
        NormalizeConfig(),
        "t2m",
        "2019-03",
        sources.acquire(
            _uk((56, -5, 52, 1), end="2019-03-01T05"),
            _files(tmp_path, mirror),
            "t2m",
            "2019-03",
            tmp_path / "short.grib",
        ),
        tmp_path / "n.zarr",
    )
    prov = json.loads(zarrv3.open_dataset(store).attrs["provenance"])
    assert prov["acquire"]["crop"]["rows"] == [8, 24] and prov["acquire"]["crop"]["columns"] == [20, 44]


@pytest.mark.slow
def test_a_uk_area_from_a_global_0_360_file_and_an_area_outside(tmp_path, shared_data):
    root = tmp_path / "global"
    root.mkdir()
    (root / "pl.grib").write_bytes(shared_data.joinpath(*IFS).read_bytes())
    data = DataConfig(
        fields={"z": FieldSpec((500,), "pl")},
        start="2024-06-03T00",
        end="2024-06-04T18",
        step_hours=6,
        grid=(10.0, 10.0),
        area=(60, -30, 30, 20),
    )
    out = sources.acquire(data, _files(tmp_path, root), "z", "2024-06", tmp_path / "z.grib")
    cut = grib.decode(out)
    full = grib.decode(shared_data.joinpath(*IFS), "z").sel(level=[500])
    want = full.roll(longitude=3, roll_coords=True).sel(latitude=slice(60, 30)).isel(longitude=slice(0, 6))
    assert list(cut["longitude"].values) == [-30, -20, -10, 0, 10, 20]
    np.testing.assert_array_equal(cut.values, want.values)
    sources.verify(out, data, "z", "2024-06")  # the cut is the campaign's area
    far = DataConfig(
        fields={"t2m": FieldSpec()},
        start="2019-03-01T00",
        end="2019-03-01T23",
        step_hours=1,
        grid=(0.25, 0.25),
        area=(60, -20, 50, 2),
    )
    with pytest.raises(
        DataError,
        match=r"field 't2m': data.area lat 60..50, lon -20..2 is not inside the files' "
        r"extent lat 58..50, lon -10..2",
    ):
        sources.acquire(
            far, _files(tmp_path, uk_mirror(shared_data, tmp_path / "m")), "t2m", "2019-03", tmp_path / "far.grib"
        )
    assert not list(tmp_path.glob("*far.grib*"))


def test_vorticity_derived_on_the_global_grid_then_cut(tmp_path, shared_data):
    root = tmp_path / "global"
    root.mkdir()
    (root / "pl.grib").write_bytes(shared_data.joinpath(*IFS).read_bytes())
    fields = {"vo": FieldSpec((500,), "pl")}
    kw = dict(start="2024-06-03T00", end="2024-06-03T18", step_hours=6, grid=(10.0, 10.0))
    cfg = AcquireConfig(source="files", files=FilesConfig((str(root),), str(tmp_path / "index")), derive_vorticity=True)
    full = grib.decode(sources.acquire(DataConfig(fields=fields, **kw), cfg, "vo", "2024-06", tmp_path / "g.grib"))
    cut = grib.decode(
        sources.acquire(
            DataConfig(fields=fields, area=(60, -30, 30, 20), **kw), cfg, "vo", "2024-06", tmp_path / "c.grib"
        )
    )
    want = full.roll(longitude=3, roll_coords=True).sel(latitude=slice(60, 30)).isel(longitude=slice(0, 6))
    assert list(cut["longitude"].values) == [-30, -20, -10, 0, 10, 20]
    np.testing.assert_allclose(cut.values, want.values, rtol=0, atol=1e-10)  # both packed at 24 bits (~1e-11 s-1)
