"""The files source: a mirror of GRIB1/GRIB2 files, any order and convention, precise gap reports."""

import numpy as np
import pytest
from builders import IFS, UK, field_grib, sample_grid, uk_mirror

from atmorep.config import AcquireConfig, DataConfig, FieldSpec, FilesConfig
from atmorep.data.acquire import sources
from atmorep.errors import DataError
from atmorep.formats import grib


def _uk(**kw):
    return DataConfig(
        fields={"t2m": FieldSpec()},
        start="2019-03-01T00",
        end="2019-03-31T23",
        step_hours=1,
        grid=(0.25, 0.25),
        area=(58, -10, 50, 2),
        **kw,
    )


def _files(tmp_path, *paths, **kw):
    return AcquireConfig(source="files", files=FilesConfig(tuple(map(str, paths)), str(tmp_path / "index")), **kw)


@pytest.fixture(scope="module")
def mirror(tmp_path_factory, shared_data):
    return uk_mirror(shared_data, tmp_path_factory.mktemp("mirror"))


def test_mixed_editions_and_conventions_give_the_real_month(tmp_path, mirror, shared_data):
    out = sources.acquire(_uk(), _files(tmp_path, mirror), "t2m", "2019-03", tmp_path / "t2m.grib")
    got, want = grib.decode(out), grib.decode(shared_data.joinpath(*UK))
    assert {h.edition for h in grib.scan(out)} == {1, 2}
    np.testing.assert_array_equal(got["time"].values, want["time"].values)
    np.testing.assert_allclose(got.values, want.values, atol=2e-3)  # re-packed at 16 bits
    # a second job reads the cached inventories instead of rescanning
    assert len(list((tmp_path / "index").glob("*.json"))) == 4
    again = sources.acquire(
        _uk(),
        _files(tmp_path, mirror / "*" / "*.gr*", mirror / "other.grib"),
        "t2m",
        "2019-03",
        tmp_path / "again.grib",
    )
    assert again.read_bytes() == out.read_bytes()


def test_a_partial_month_selects_the_campaign_steps(tmp_path, mirror):
    data = DataConfig(
        fields={"t2m": FieldSpec()},
        start="2019-03-10T12",
        end="2019-03-12T11",
        step_hours=1,
        grid=(0.25, 0.25),
        area=(58, -10, 50, 2),
    )
    out = sources.acquire(data, _files(tmp_path, mirror), "t2m", "2019-03", tmp_path / "t2m.grib")
    t = grib.decode(out)["time"].values
    assert len(t) == 48 and str(t[0])[:13] == "2019-03-10T12"


def test_missing_combinations_are_named_precisely(tmp_path, shared_data):
    holes = uk_mirror(shared_data, tmp_path / "m", drop=(76, 77, 600))
    with pytest.raises(
        DataError,
        match=r"misses 3 of 744 \(level, time\) combinations; level 0: 3 of 744 time "
        r"steps missing: 2019-03-04T04:00, 2019-03-04T05:00, 2019-03-26T00:00",
    ):
        sources.acquire(_uk(), _files(tmp_path, holes), "t2m", "2019-03", tmp_path / "o.grib")
    assert not list(tmp_path.glob("*o.grib*"))


def test_empty_directory_and_no_matching_field_fail_clearly(tmp_path, mirror):
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="matched no GRIB file"):
        sources.acquire(_uk(), _files(tmp_path, tmp_path / "empty"), "t2m", "2019-03", tmp_path / "o.grib")
    data = DataConfig(fields={"msl": FieldSpec()}, start="2019-03-01", end="2019-03-31T23")
    with pytest.raises(DataError, match=r"no message of field 'msl' on levels \[0\].*the files have it .*2011-01-01"):
        sources.acquire(data, _files(tmp_path, mirror), "msl", "2019-03", tmp_path / "o.grib")
    assert not list(tmp_path.glob("*o.grib*"))


def test_a_file_on_another_grid_is_rejected(tmp_path, shared_data):
    root = uk_mirror(shared_data, tmp_path / "m")
    lat, lon = np.linspace(58, 50, 9), np.arange(13) * 1.0 - 10
    field_grib(
        root / "coarse.grib", "t2m", np.full((1, 1, 9, 13), 280.0) + np.arange(13), ["2019-03-05T00"], [0], lat, lon
    )
    with pytest.raises(DataError, match=r"mixed grids: .*33x49 0\.25°x0\.25°.*9x13 1°x1° in .*coarse\.grib"):
        sources.acquire(_uk(), _files(tmp_path, root), "t2m", "2019-03", tmp_path / "o.grib")


def test_gaussian_grid_needs_a_regrid_and_is_interpolated_with_one(tmp_path):
    import eccodes

    gid = eccodes.codes_grib_new_from_samples("reduced_gg_sfc_grib1")
    lats = np.sort(eccodes.codes_get_array(gid, "distinctLatitudes"))[::-1]  # rows run north to south
    pl = eccodes.codes_get_array(gid, "pl", int)
    eccodes.codes_release(gid)
    # f = 280 + 10 sin(lat) + 5 cos(lat) cos(lon): smooth, known everywhere
    vals = np.concatenate(
        [
            280
            + 10 * np.sin(np.deg2rad(la))
            + 5 * np.cos(np.deg2rad(la)) * np.cos(np.deg2rad(360.0 * np.arange(n) / n))
            for la, n in zip(lats, pl)
        ]
    )
    root = tmp_path / "gg"
    root.mkdir()
    p = sample_grid("reduced_gg_sfc_grib1", root / "gg.grib", vals)
    t = grib.scan(p)[0].time
    data = DataConfig(fields={"t2m": FieldSpec()}, start=str(t)[:13], end=str(t)[:13], grid=(2.0, 2.0))
    month = str(t.astype("datetime64[M]"))
    with pytest.raises(DataError, match="Gaussian grid .*acquire.regrid: linear"):
        sources.acquire(data, _files(tmp_path, root), "t2m", month, tmp_path / "o.grib")
    out = sources.acquire(data, _files(tmp_path, root, regrid="linear"), "t2m", month, tmp_path / "o.grib")
    da = grib.decode(out)
    la, lo = np.deg2rad(da["latitude"].values)[:, None], np.deg2rad(da["longitude"].values)[None]
    truth = 280 + 10 * np.sin(la) + 5 * np.cos(la) * np.cos(lo)
    assert da.shape == (1, 1, 91, 180)
    assert np.abs(da.values[0, 0] - truth).max() < 0.15  # linear interpolation from N32 (~2.8°)


def test_spectral_coefficients_are_rejected(tmp_path):
    root = tmp_path / "sh"
    root.mkdir()
    p = sample_grid("sh_ml_grib2", root / "sh.grib", level=137)
    h = grib.scan(p)[0]
    data = DataConfig(fields={"t": FieldSpec((137,))}, start=str(h.time)[:13], end=str(h.time)[:13])
    with pytest.raises(DataError, match="spherical-harmonic coefficients"):
        sources.acquire(
            data, _files(tmp_path, root, regrid="linear"), "t", str(h.time.astype("datetime64[M]")), tmp_path / "o.grib"
        )


def test_vorticity_and_divergence_derived_from_real_winds(tmp_path, shared_data):
    root = tmp_path / "ifs"
    root.mkdir()
    (root / "pl.grib").write_bytes(shared_data.joinpath(*IFS).read_bytes())
    data = DataConfig(
        fields={"vo": FieldSpec((500, 850), "pl"), "d": FieldSpec((500, 850), "pl")},
        start="2024-06-03T00",
        end="2024-06-04T18",
        step_hours=6,
        grid=(10.0, 10.0),
    )
    with pytest.raises(DataError, match="no message of field 'vo'"):
        sources.acquire(data, _files(tmp_path, root), "vo", "2024-06", tmp_path / "vo.grib")
    cfg = _files(tmp_path, root, derive_vorticity=True)
    vo = grib.decode(sources.acquire(data, cfg, "vo", "2024-06", tmp_path / "vo.grib"))
    d = grib.decode(sources.acquire(data, cfg, "d", "2024-06", tmp_path / "d.grib"))
    assert vo.shape == (8, 2, 19, 36) and list(vo["level"].values) == [500, 850]
    # synoptic magnitudes at 10°: 1e-6 .. 1e-4 s-1; cyclonic (positive) vorticity dominates the NH storm track
    for x in (vo, d):
        assert 1e-7 < float(np.abs(x).mean()) < 1e-4 and float(np.abs(x).max()) < 1e-3
    assert float(vo.sel(latitude=slice(70, 40)).mean()) > float(vo.sel(latitude=slice(-40, -70)).mean())
    # a derived unit records where it came from, as every other unit of the files source does (it had none)
    prov = sources.read_provenance(tmp_path / "vo.grib")
    assert prov["derived_from"] == ["u", "v"] and prov["files"] == [str(root / "pl.grib")]
    assert prov["field"] == "vo" and prov["month"] == "2024-06" and prov["crop"] is None
