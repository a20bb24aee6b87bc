import numpy as np
import pytest

from atmorep.data.acquire.inventory import config_level
from atmorep.errors import DataError
from atmorep.formats import grib


def _field(T=3, L=2, Y=7, X=12, seed=0):
    rng = np.random.default_rng(seed)
    lat = np.linspace(60, 0, Y)
    lon = np.arange(X) * 30.0
    base = 280 + 10 * np.cos(np.deg2rad(lat))[None, None, :, None]
    values = (base + rng.normal(0, 2, (T, L, Y, X))).astype(np.float32)
    times = np.datetime64("2021-03-01T00") + np.arange(T) * np.timedelta64(1, "h")
    return values, times, lat, lon


def test_roundtrip_model_levels(tmp_path):
    values, times, lat, lon = _field()
    path = tmp_path / "t.grib"
    grib.write_grib(path, "t", values, times, [96, 137], lat, lon)
    da = grib.decode(path, "t")
    assert da.dims == ("time", "level", "latitude", "longitude")
    assert da.dtype == np.float32
    assert list(da["level"].values) == [96, 137]
    np.testing.assert_array_equal(da["time"].values, times.astype("datetime64[ns]"))
    # 24-bit packing: relative error far below the values' spread
    assert np.abs(da.values - values).max() < 1e-5 * np.abs(values).max()


def test_decode_sorts_south_to_north_and_signed_longitudes(tmp_path):
    values, times, lat, lon = _field(L=1)
    path = tmp_path / "flip.grib"
    # the file runs south to north and from 180W: column j holds longitude lon[j] - 180
    flipped = np.roll(values[:, :, ::-1], len(lon) // 2, axis=-1)
    grib.write_grib(path, "t2m", flipped, times, [0], lat[::-1], lon - 180)
    da = grib.decode(path)
    assert da["latitude"].values[0] > da["latitude"].values[-1]
    assert da["longitude"].values.min() >= 0 and np.all(np.diff(da["longitude"].values) > 0)
    # the value at (60N, 0E) is the same whatever order the file used
    orig = values[:, 0, 0, 0]
    got = da.sel(latitude=60, longitude=0).values[:, 0]
    np.testing.assert_allclose(got, orig, rtol=1e-6)


def test_decode_real_era5_t2m(shared_data):
    da = grib.decode(shared_data / "era5-t2m-uk-hourly" / "era5-2mt-2019-03-uk.grib")
    assert da.name == "t2m"
    assert da.shape == (744, 1, 33, 49)
    assert np.diff(da["time"].values).astype("timedelta64[h]").astype(int).tolist() == [1] * 743
    assert 250 < float(da.mean()) < 290


def test_decode_selects_field_from_multi_field_file(shared_data):
    path = shared_data / "era5-sfc-natl-hourly" / "era5.grib"
    msl = grib.decode(path, "msl")
    assert msl.shape[0] == 72 and msl.shape[1] == 1
    assert 90000 < float(msl.min()) and float(msl.max()) < 110000
    with pytest.raises(DataError, match="holds fields"):
        grib.decode(path)
    with pytest.raises(DataError, match="field 'vo' not found"):
        grib.decode(path, "vo")


def test_truncated_grib_is_rejected(tmp_path, shared_data):
    src = (shared_data / "era5-t2m-uk-hourly" / "era5-2mt-2019-03-uk.grib").read_bytes()
    cut = tmp_path / "cut.grib"
    cut.write_bytes(src[: len(src) // 2 + 17])
    with pytest.raises(DataError, match=r"cut\.grib: message \d+ is truncated"):
        grib.decode(cut)


@pytest.mark.parametrize("content, message", [(b"", "empty file"), (b"hello world" * 10, "not a GRIB file")])
def test_not_grib_is_rejected(tmp_path, content, message):
    p = tmp_path / "x.grib"
    p.write_bytes(content)
    with pytest.raises(DataError, match=message):
        grib.decode(p)


# --- the streaming reader: editions, conventions, identity caches ------------------------------

from builders import IFS, UK, messages, reencode  # noqa: E402


def test_reader_canonicalises_grib2_and_south_to_north_real_messages(shared_data):
    msgs = messages(shared_data.joinpath(*UK))[:4]
    ref = grib.Decoder()
    want = [h.grid.to_canonical(grib.values(g, h)) for h, g in ref.messages(shared_data.joinpath(*UK))][:4]
    for variant in (dict(edition=2), dict(south_to_north=True), dict(edition=2, south_to_north=True)):
        raw = [reencode(m, **variant) for m in msgs]
        d = grib.Decoder()
        for r, w in zip(raw, want):
            import eccodes

            gid = eccodes.codes_new_from_message(r)
            try:
                h = d.header(gid, grib.Raw(0, 0, len(r), r), shared_data)
                got = h.grid.to_canonical(grib.values(gid, h))
            finally:
                eccodes.codes_release(gid)
            # GRIB2 says heightAboveGround 2 where GRIB1 says surface: both are the single-level field (level 0)
            assert h.param.name == "t2m" and h.level.kind == "sfc" and config_level(h.level, "sfc") == 0
            assert h.grid.lats[0] == 58 and h.grid.lons[0] == -10 and np.allclose(np.diff(h.grid.lons), 0.25)
            np.testing.assert_allclose(got, w, atol=2e-3)  # re-packing at 16 bits


def test_a_regional_grid_across_0_degrees_stays_contiguous(shared_data):
    """The UK grid runs -10..2°E: its columns keep the file's west-to-east order (as cfgrib's), not
    0..2 glued in front of 350..360 (which would put a seam through the middle of every window)."""
    import xarray as xr

    path = shared_data.joinpath(*UK)
    da = grib.decode(path)
    ref = xr.open_dataset(path, engine="cfgrib", backend_kwargs={"indexpath": ""})
    np.testing.assert_allclose(da["longitude"].values, ref["longitude"].values)
    np.testing.assert_array_equal(da.isel(time=7, level=0).values, ref["t2m"].isel(time=7).values)
    ref.close()


def test_iter_raw_skips_junk_and_hashes_every_byte(tmp_path, shared_data):
    import hashlib

    msgs = messages(shared_data.joinpath(*IFS))[:5]
    blob = b"junk" + msgs[0] + b"\0" * 7 + b"".join(msgs[1:]) + b"trailer"
    p = tmp_path / "junk.grib"
    p.write_bytes(blob)
    h = hashlib.sha256()
    raws = list(grib.iter_raw(p, h))
    assert [r.data for r in raws] == msgs and raws[0].offset == 4
    assert h.hexdigest() == hashlib.sha256(blob).hexdigest()


def test_scan_names_fields_levels_members_and_valid_times(shared_data):
    ens = grib.scan(shared_data / "era5-ens-pl-tz" / "era5-levels-members.grib")
    assert {h.param.name for h in ens} == {"t", "z"} and {h.number for h in ens} == set(range(10))
    assert {h.level.kind for h in ens} == {"pl"} and {h.level.level for h in ens} == {500, 850}
    ifs = grib.scan(shared_data.joinpath(*IFS))  # forecasts at steps 0 and 6 h: valid times 6-hourly
    assert len(np.unique([h.time for h in ifs])) == 8


def test_decode_reports_ensembles_as_duplicates(shared_data):
    with pytest.raises(DataError, match="appears twice"):
        grib.decode(shared_data / "era5-ens-pl-tz" / "era5-levels-members.grib", "t")


def test_bitmap_missing_values_decode_as_nan(tmp_path):
    values, times, lat, lon = _field(T=1, L=1)
    values[0, 0, 2, 3] = np.nan
    p = tmp_path / "nan.grib"
    grib.write_grib(p, "t2m", values, times, [0], lat, lon)
    da = grib.decode(p)
    assert np.isnan(da.values[0, 0, 2, 3]) and np.isfinite(da.values).sum() == values.size - 1


@pytest.mark.parametrize("sample, why", [("sh_ml_grib2", "spherical-harmonic"), ("reduced_gg_sfc_grib1", "Gaussian")])
def test_unusable_grids_are_named(tmp_path, sample, why):
    from builders import sample_grid

    p = sample_grid(sample, tmp_path / "x.grib")
    with pytest.raises(DataError, match=why):
        grib.decode(p)


@pytest.mark.slow
def test_grib1_message_over_8_mb_is_split_correctly(tmp_path):
    # ECMWF encodes GRIB1 lengths over 8 MB in 120-byte units: the splitter must follow it
    lat, lon = np.linspace(90, -90, 1801), np.arange(3600) * 0.1
    x = (np.cos(np.deg2rad(lat))[:, None] * np.sin(np.deg2rad(lon))[None] * 10 + 280).astype(np.float32)
    p = tmp_path / "big.grib"
    grib.write_grib(
        p,
        "t2m",
        np.stack([x[None], x[None] + 1]),
        np.array(["2021-01-01T00", "2021-01-01T01"], "datetime64[h]"),
        [0],
        lat,
        lon,
        bits_per_value=16,
    )
    raws = list(grib.iter_raw(p))
    assert len(raws) == 2 and raws[0].length > 8 << 20 and sum(r.length for r in raws) == p.stat().st_size
    da = grib.decode(p)
    np.testing.assert_allclose(da.values[1, 0], x + 1, atol=1e-3)


def test_times_off_the_hour_are_written_to_the_minute(tmp_path):
    """Sub-hourly times (a NetCDF at HH:30) keep their minutes; the writer once dropped them silently."""
    values, times, lat, lon = _field(T=2)
    times = times + np.timedelta64(30, "m")
    path = tmp_path / "t.grib"
    grib.write_grib(path, "t", values, times, [96, 137], lat, lon)
    np.testing.assert_array_equal(grib.decode(path, "t")["time"].values, times.astype("datetime64[ns]"))


def test_times_with_seconds_are_refused(tmp_path):
    values, times, lat, lon = _field(T=1)
    with pytest.raises(DataError, match=r"t at 2021-03-01T00:00:20: GRIB holds times to the minute"):
        grib.write_grib(tmp_path / "t.grib", "t", values, times + np.timedelta64(20, "s"), [96, 137], lat, lon)


def test_grib1_message_over_8_mb_with_a_bitmap_is_split_correctly(tmp_path):
    """ERA5-Land-like: missing points (sea) make a bitmap section of ~800 KB before the data; the
    splitter once looked for section 4 in the first 4 KB only and refused the file as truncated."""
    lat, lon = np.linspace(90, -90, 1801), np.arange(3600) * 0.1
    x = (np.cos(np.deg2rad(lat))[:, None] * np.sin(np.deg2rad(lon))[None] * 10 + 280).astype(np.float32)
    x[:600] = np.nan
    p = tmp_path / "land.grib"
    grib.write_grib(p, "t2m", x[None, None], np.array(["2021-01-01T00"], "datetime64[h]"), [0], lat, lon,
                    bits_per_value=16)  # fmt: skip
    raws = list(grib.iter_raw(p))
    assert len(raws) == 1 and raws[0].length > 8 << 20 and raws[0].length == p.stat().st_size
    got = grib.decode(p).values[0, 0]
    assert np.isnan(got[:600]).all() and not np.isnan(got[600:]).any()
