"""The zarr source over real HTTP (127.0.0.1, byte ranges) on the real stores in ../shared/data, the
ARCO-ERA5 and WeatherBench 2 layouts, and inspect/acquire agreement on every shared NetCDF/zarr store."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import xarray as xr
import zarr
from tests_helpers import atmorep

from atmorep.config import AcquireConfig, DataConfig, FieldSpec, FilesConfig, ZarrSourceConfig
from atmorep.data.acquire import sources
from atmorep.data.acquire.inspect import describe
from atmorep.errors import DataError
from atmorep.formats import grib

sys.path.append(str(Path(__file__).parent))  # appended: `from conftest import` must find tests/conftest.py
from range_server import RangeServer  # noqa: E402

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def server(shared_data):
    with RangeServer(shared_data) as srv:
        yield srv


def canonical(values, lats, lons):
    """Values T L Y X ordered north to south and by longitude in 0..360 (any source order compares)."""
    lats, lons = np.asarray(lats, float), np.mod(np.asarray(lons, float), 360.0)
    return np.asarray(values)[..., np.argsort(-lats), :][..., np.argsort(lons)]


def decoded(out: Path):
    da = grib.decode(out)
    return canonical(da.values, da.latitude.values, da.longitude.values), da.time.values


def acquire(tmp_path, field, levels, start, end, source="zarr", url="", paths=(), variables=None, **data_kw):
    levtype = data_kw.pop("levtype", "ml")
    data = DataConfig(fields={field: FieldSpec(levels=tuple(levels), levtype=levtype)}, start=start, end=end, **data_kw)
    cfg = AcquireConfig(
        source=source, zarr=ZarrSourceConfig(url=url), files=FilesConfig(paths=tuple(paths)), variables=variables or {}
    )
    return sources.acquire(data, cfg, field, start[:7], tmp_path / f"{field}.grib")


# store (under shared/data), how acquire reaches it, acquire.variables, the campaign inside it
STORES = [
    ("ncep-air-temperature-6h/air_temperature.nc", "files", {}, "2013-01-01T00", "2013-01-31T18"),
    ("ncep-air-temperature-6h/air_temperature.nc", "files", {"t2m": "air"}, "2013-01-01T00", "2013-01-31T18"),
    ("ncep-air-temperature-6h/air_temperature.zarr", "zarr", {"t2m": "air"}, "2014-12-01T00", "2014-12-31T18"),
    ("era5-global-sfc-1deg/era5_sample.zarr", "zarr", {}, "2026-03-25T00", "2026-03-31T23"),
    ("anemoi-ifs-pl-5var-6h/ifs-pl-5var-6h.zarr", "zarr", {}, "2024-06-03T00", "2024-06-04T18"),
    ("anemoi-era5-sfc-natl-hourly/era5-sfc-natl-hourly.zarr", "zarr", {}, "2011-01-01T00", "2011-01-03T23"),
]


def reference(path: Path, var_by_level: dict[int, str], start, end):
    """The store's own values of the unit, read with zarr/xarray directly: (T L Y X, lats, lons)."""
    t0, t1 = np.datetime64(start), np.datetime64(end)
    if (path / ".zattrs").exists() and "variables" in zarr.open_group(path, mode="r").attrs:
        g = zarr.open_group(path, mode="r")
        names, dates = list(g.attrs["variables"]), g["dates"][:]
        ny, nx = g.attrs["field_shape"]
        sel = (dates >= t0) & (dates <= t1)
        vals = np.stack([g["data"][:, names.index(v), 0, :][sel] for v in var_by_level.values()], axis=1)
        return (
            vals.reshape(*vals.shape[:2], ny, nx),
            g["latitudes"][:].reshape(ny, nx)[:, 0],
            g["longitudes"][:].reshape(ny, nx)[0],
        )
    ds = xr.open_dataset(path) if path.suffix == ".nc" else xr.open_zarr(path, consolidated=False)
    (var,) = set(var_by_level.values())
    da = ds[var]
    tdim = next(d for d in da.dims if "time" in d)
    t = ds[tdim].values
    if not np.issubdtype(t.dtype, np.datetime64):  # the embedded sample: hours since 1940 (group attribute)
        t = np.datetime64("1940-01-01T00", "h") + t.astype("timedelta64[h]")
    da = da.isel({tdim: np.flatnonzero((t >= t0) & (t <= t1))})
    lat = next(d for d in ("latitude", "lat") if d in da.dims)
    lon = next(d for d in ("longitude", "lon") if d in da.dims)
    return da.values[:, None].astype(np.float32), ds[lat].values, ds[lon].values


@pytest.mark.slow
@pytest.mark.parametrize(
    "store,how,variables,start,end", STORES, ids=[f"{s[0].split('/')[0]}-{s[1]}-{len(s[2])}" for s in STORES]
)
def test_inspect_and_acquire_agree_on_every_shared_store(
    tmp_path, shared_data, server, store, how, variables, start, end
):
    """Each variable inspect calls usable is ingested (over HTTP for zarr) with the store's values; each
    it calls unusable is refused by acquire with the same reason."""
    path = shared_data / store
    text = describe(path, variables=variables)
    usable, refused = {}, {}
    for name, verdict in re.findall(r"^  (\S+): .*?((?:usable as|not usable).*)$", text, re.M):
        if m := re.match(r"usable as field '(\w+)' \((surface|(\w+) \[(\d+)\])\)", verdict):
            f, kind, lev = m.group(1), m.group(3) or "sfc", int(m.group(4) or 0)
            usable.setdefault((f, kind), {})[lev] = name
        else:
            refused[name] = verdict.removeprefix("not usable: ")
    assert usable or refused, text
    where = dict(url=f"{server.url}/{store}") if how == "zarr" else dict(paths=[str(path)])
    for (f, kind), by_level in usable.items():
        levels = sorted(by_level)
        out = acquire(
            tmp_path,
            f,
            levels,
            start,
            end,
            source=how,
            variables=variables,
            levtype="ml" if kind == "sfc" else kind,
            **where,
        )
        got, _ = decoded(out)
        ref, lats, lons = reference(path, {lev: by_level[lev] for lev in levels}, start, end)
        np.testing.assert_array_equal(got, canonical(ref, lats, lons))
        if how == "zarr":
            prov = json.loads(sources.provenance_path(out).read_text())
            assert 0 < prov["bytes_used"] and 0 < prov["bytes_read"] <= server.bytes_served
    for reason in refused.values():
        with pytest.raises(DataError, match="no variable for field 't2m'"):
            acquire(tmp_path, "t2m", [0], start, end, source=how, variables=variables, **where)
        assert "not in the field catalogue" in reason
        assert not (tmp_path / "t2m.grib").exists()


def test_zarr_v3_over_http_reads_only_the_chunks_of_the_unit(tmp_path, shared_data, server):
    """One day of t2m from the 1° sample: the bytes read are the chunk files of those steps plus metadata."""
    store = shared_data / "era5-global-sfc-1deg" / "era5_sample.zarr"
    server.reset()
    out = acquire(
        tmp_path,
        "t2m",
        [0],
        "2026-03-26T00",
        "2026-03-26T23",
        url=f"{server.url}/era5-global-sfc-1deg/era5_sample.zarr",
    )
    prov = json.loads(sources.provenance_path(out).read_text())
    hours = 755880 + np.array([29, 36, 43])  # 26T05, 26T12, 26T19: the sample's steps on that day
    t = zarr.open_array(store / "time_index", mode="r")[:]
    steps = np.flatnonzero(np.isin(t, hours))
    assert len(steps) == 3 and len(grib.scan(out)) == 3
    chunk_bytes = sum((store / "t2m" / "c" / str(i) / "0" / "0").stat().st_size for i in steps)
    metadata = prov["bytes_read"] - chunk_bytes
    assert 0 <= metadata < 40_000, (prov, chunk_bytes)  # zarr.json files and the coordinate arrays
    assert prov["bytes_used"] == 3 * 181 * 360 * 4
    assert prov["bytes_read"] <= server.bytes_served


def _arco(path: Path, hours=2, ny=19, nx=36):
    sys.path.insert(0, str(REPO / "benchmarks"))
    from zarr_source import build_arco_store

    build_arco_store(path, ny, nx, hours)


def test_arco_layout_model_levels_over_http_with_the_chunk_arithmetic(tmp_path):
    """ARCO-ERA5 layout (long names, hybrid levels, 1x18xYxX chunks, consolidated v2): AtmoRep's 5 levels
    read 3 level chunks per hour (91-108, 109-126, 127-144) and come through equal."""
    _arco(tmp_path / "arco.zarr")
    with RangeServer(tmp_path) as srv:
        out = acquire(
            tmp_path,
            "t",
            [96, 105, 114, 123, 137],
            "2021-01-01T00",
            "2021-01-01T01",
            url=f"{srv.url}/arco.zarr",
            step_hours=1,
        )
        served = srv.bytes_served
    prov = json.loads(sources.provenance_path(out).read_text())
    chunk = 18 * 19 * 36 * 4
    assert prov["bytes_used"] == 2 * 5 * 19 * 36 * 4
    assert 2 * 3 * chunk <= prov["bytes_read"] < 2 * 3 * chunk + 20_000
    assert prov["bytes_read"] <= served
    ref = xr.open_zarr(tmp_path / "arco.zarr", chunks=None)["temperature"]
    ref = ref.sel(hybrid=[96, 105, 114, 123, 137])
    got, times = decoded(out)
    np.testing.assert_array_equal(got, canonical(ref.values, ref.latitude, ref.longitude))
    assert list(times) == list(ref.time.values)
    # the normalized store carries the source's report in its provenance
    from atmorep.config import NormalizeConfig
    from atmorep.data import normalize

    data = DataConfig(
        fields={"t": FieldSpec(levels=(96, 105, 114, 123, 137), levtype="ml")},
        start="2021-01-01T00",
        end="2021-01-01T01",
        step_hours=1,
    )
    store = normalize.normalize(data, NormalizeConfig(), "t", "2021-01", out, tmp_path / "t.zarr")
    recorded = json.loads(zarr.open_group(store, mode="r").attrs["provenance"])["acquire"]
    assert recorded["bytes_read"] == prov["bytes_read"] and recorded["layout"] == "xarray"


def test_weatherbench2_layout_crop_across_greenwich(tmp_path):
    """WB2: long names, 'level' in hPa, longitude before latitude, latitude south to north; a UK area."""
    lat = np.arange(-90.0, 90.1, 2.5)
    lon = np.arange(0.0, 360.0, 2.5)
    times = np.datetime64("2020-01-01T00", "ns") + np.arange(4) * np.timedelta64(6, "h")
    rng = np.random.default_rng(1)
    z = rng.normal(5e4, 1e3, (4, 3, len(lon), len(lat))).astype("f4")
    ds = xr.Dataset(
        {
            "geopotential": (("time", "level", "longitude", "latitude"), z, {"units": "m**2 s**-2"}),
            "2m_temperature": (("time", "longitude", "latitude"), z[:, 0] / 200, {"units": "K"}),
        },
        coords={"time": times, "level": [500, 700, 850], "longitude": lon, "latitude": lat},
    )
    ds.to_zarr(tmp_path / "wb2.zarr", zarr_format=3, consolidated=True)
    area = (60.0, -10.0, 50.0, 2.5)
    with RangeServer(tmp_path) as srv:
        out = acquire(
            tmp_path,
            "z",
            [850, 500],
            "2020-01-01T00",
            "2020-01-01T18",
            levtype="pl",
            url=f"{srv.url}/wb2.zarr",
            area=area,
            step_hours=6,
        )
    got, _ = decoded(out)
    ref = ds["geopotential"].sel(level=[500, 850], latitude=slice(50, 60))  # grib.decode sorts levels
    ref = ref.sel(longitude=np.mod(np.arange(-10.0, 2.6, 2.5), 360)).transpose("time", "level", "latitude", "longitude")
    np.testing.assert_array_equal(got, canonical(ref.values, ref.latitude, ref.longitude))
    assert got.shape == (4, 2, 5, 6)


def test_anemoi_irregular_grid_and_missing_dates_are_refused(tmp_path, shared_data):
    src = shared_data / "anemoi-era5-sfc-natl-hourly" / "era5-sfc-natl-hourly.zarr"
    store = tmp_path / "natl.zarr"
    shutil.copytree(src, store)
    lat = zarr.open_array(store / "latitudes", mode="r+")
    values = lat[:]
    values[5] += 0.1  # one cell off its row: no longer a regular lat/lon grid
    lat[:] = values
    with pytest.raises(DataError, match=r"natl.zarr: the anemoi grid \(7209 cells.*not a regular lat/lon"):
        acquire(tmp_path, "msl", [0], "2011-01-01T00", "2011-01-01T23", url=str(store))
    assert not (tmp_path / "msl.grib").exists()
    assert not sources.provenance_path(tmp_path / "msl.grib").exists()
    # a date anemoi marks missing holds no data: refused, not ingested as values
    store = tmp_path / "ifs.zarr"
    shutil.copytree(shared_data / "anemoi-ifs-pl-5var-6h" / "ifs-pl-5var-6h.zarr", store)
    attrs = json.loads((store / ".zattrs").read_text())
    attrs["missing_dates"] = ["2024-06-03T12:00:00"]
    (store / ".zattrs").write_text(json.dumps(attrs))
    with pytest.raises(DataError, match=r"ifs.zarr: the dataset marks 1 dates of 2024-06 as missing"):
        acquire(tmp_path, "t", [850], "2024-06-03T00", "2024-06-04T18", url=str(store), levtype="pl")
    assert not (tmp_path / "t.grib").exists()


def _cli_acquire(tmp_path, url, field="t2m", variables=None):
    cfg = {
        "run": "x",
        "data": {"fields": {field: {"levels": [0]}}, "start": "2026-03-25T00", "end": "2026-03-31T23"},
        "acquire": {"source": "zarr", "zarr": {"url": url}, "variables": variables or {}},
    }
    (tmp_path / "c.yaml").write_text(json.dumps(cfg))
    out = tmp_path / "out" / f"{field}.grib"
    r = atmorep(
        "acquire",
        "--config",
        str(tmp_path / "c.yaml"),
        "--field",
        field,
        "--month",
        "2026-03",
        "--output",
        str(out),
        timeout=300,
    )
    return r, out


@pytest.mark.slow
def test_bad_zarr_input_one_line_and_nothing_left(tmp_path, shared_data):
    sample = shared_data / "era5-global-sfc-1deg" / "era5_sample.zarr"
    bad_units = tmp_path / "s.zarr"
    shutil.copytree(sample, bad_units)
    meta = json.loads((bad_units / "t2m" / "zarr.json").read_text())
    meta["attributes"]["units"] = "degC"
    (bad_units / "t2m" / "zarr.json").write_text(json.dumps(meta))
    no_time = tmp_path / "n.zarr"
    shutil.copytree(sample, no_time)
    meta = json.loads((no_time / "zarr.json").read_text())
    del meta["attributes"]["time_units"]
    (no_time / "zarr.json").write_text(json.dumps(meta))
    cases = [
        (str(bad_units), "t2m", None, r"s.zarr: variable 't2m' is in 'degC'; field 't2m' needs 'K'"),
        (str(no_time), "t2m", None, r"n.zarr: the time axis 'time_index' holds int64 values without 'units'"),
        (str(sample), "t2m", {"t2m": "air"}, r"no variable for field 't2m' \(acquire.variables maps it"),
        (str(tmp_path / "absent.zarr"), "t2m", None, r"acquire.zarr.url .*absent.zarr: no such store"),
    ]
    for url, field, variables, message in cases:
        r, out = _cli_acquire(tmp_path, url, field, variables)
        assert r.returncode == 1, r.stderr
        lines = [ln for ln in r.stderr.splitlines() if "error" in ln]
        assert len(lines) == 1 and re.search(message, lines[0]), r.stderr
        assert not out.exists() and not list(out.parent.glob("*"))


@pytest.mark.slow
def test_benchmark_quick(tmp_path):
    r = subprocess.run(
        [sys.executable, str(REPO / "benchmarks" / "zarr_source.py"), "--quick"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert r.returncode == 0, r.stderr[-2000:]
    last = r.stdout.strip().splitlines()[-1]
    ratio = float(last.removeprefix("zarr_source_read_amplification="))
    assert 10.7 < ratio < 11.0  # 3 level chunks of 18 for 5 levels, plus metadata
