"""The files source selects explicitly: level type, ensemble member, forecast step; never silently."""

import json

import numpy as np
import pytest
import xarray as xr
from builders import ENS, IFS, messages, relabel
from tests_helpers import atmorep

from atmorep.config import AcquireConfig, DataConfig, FieldSpec, FilesConfig
from atmorep.data.acquire import inspect, sources
from atmorep.errors import DataError
from atmorep.formats import grib


def _files(tmp_path, root, **kw):
    return AcquireConfig(source="files", files=FilesConfig((str(root),), str(tmp_path / "index"), **kw))


def _ifs(fields, **kw):
    return DataConfig(fields=fields, start="2024-06-03T00", end="2024-06-04T18", step_hours=6, grid=(10.0, 10.0), **kw)


@pytest.fixture
def gfs_like(tmp_path, shared_data):
    """The real IFS file plus u on other level types, as GFS files hold it: the tropopause (shifted by
    +100 m/s so a wrong pick shows) and 20 m / 30 m above ground."""
    root = tmp_path / "mirror"
    root.mkdir()
    path = shared_data.joinpath(*IFS)
    msgs = messages(path)
    u1000 = [msgs[h.index] for h in grib.scan(path) if h.param.name == "u" and h.level.level == 1000]
    extra = [relabel(m, add=100.0, typeOfLevel="tropopause", level=0) for m in u1000]
    extra += [relabel(m, add=float(hag), typeOfLevel="heightAboveGround", level=hag) for hag in (20, 30) for m in u1000]
    (root / "gfs-like.grib").write_bytes(path.read_bytes() + b"".join(extra))  # one file, four level types
    return root


def test_a_field_on_other_level_types_is_refused_naming_them(tmp_path, gfs_like):
    # today u at levels [0] silently took u at the tropopause; 20 m and 30 m are single levels too
    with pytest.raises(
        DataError,
        match=r"field 'u' level 0 valid time 2024-06-03T00:00 is in 2 different messages"
        r".*on heightAboveGround 20, heightAboveGround 30: name one in "
        r"data.fields.<field>.levtype",
    ):
        sources.acquire(_ifs({"u": FieldSpec()}), _files(tmp_path, gfs_like), "u", "2024-06", tmp_path / "u.grib")
    # z exists only on pressure levels
    with pytest.raises(
        DataError,
        match=r"field 'z' is not on a single-level field .*the files have it only on "
        r"isobaricInhPa 300..1000",
    ):
        sources.acquire(_ifs({"z": FieldSpec()}), _files(tmp_path, gfs_like), "z", "2024-06", tmp_path / "z.grib")
    assert not list(tmp_path.glob("*.grib*"))


def test_a_named_level_type_selects_exactly_its_messages(tmp_path, gfs_like, shared_data):
    direct = grib.decode(shared_data.joinpath(*IFS), "u").sel(level=1000).values
    cfg = _files(tmp_path, gfs_like)
    for spec, add in (
        (FieldSpec((0,), "tropopause"), 100.0),
        (FieldSpec((30,), "heightAboveGround"), 30.0),
        (FieldSpec((1000,), "pl"), 0.0),
    ):
        out = sources.acquire(_ifs({"u": spec}), cfg, "u", "2024-06", tmp_path / f"u-{spec.levtype}.grib")
        assert {h.level.type_of_level for h in grib.scan(out)} == {
            {"pl": "isobaricInhPa"}.get(spec.levtype, spec.levtype)
        }
        np.testing.assert_allclose(grib.decode(out).values[:, 0], direct + add, atol=0.01)
    # verify holds the output against the same identity: the tropopause file is not a pressure-level field
    with pytest.raises(DataError, match=r"is on tropopause 0 levels; the config expects pressure levels"):
        sources.verify(tmp_path / "u-tropopause.grib", _ifs({"u": FieldSpec((1000,), "pl")}), "u", "2024-06")
    # inspect lists each level type of u on its own line
    text = inspect.describe(gfs_like)
    assert "levels tropopause=[0.0]" in text and "levels single-level heightAboveGround 20..30" in text


def _ens(**kw):
    return DataConfig(
        fields={"t": FieldSpec((500, 850), "pl")},
        start="2017-01-01T00",
        end="2017-01-02T12",
        step_hours=12,
        grid=(3.0, 3.0),
        **kw,
    )


def test_ensemble_members_are_never_dropped_silently(tmp_path, shared_data):
    root = tmp_path / "ens"
    root.mkdir()
    (root / "members.grib").write_bytes(shared_data.joinpath(*ENS).read_bytes())
    with pytest.raises(
        DataError,
        match=r"field 't' comes as 10 ensemble members \[0, 1, 2, 3, 4, 5, 6, 7, 8, 9\] "
        r"in .*members.grib: choose one with acquire.files.member",
    ):
        sources.acquire(_ens(), _files(tmp_path, root), "t", "2017-01", tmp_path / "t.grib")
    with pytest.raises(
        DataError,
        match=r"no ensemble member 12 \(acquire.files.member\); the files hold members "
        r"\[0, 1, 2",
    ):
        sources.acquire(_ens(), _files(tmp_path, root, member=12), "t", "2017-01", tmp_path / "t.grib")
    assert not list(tmp_path.glob("*t.grib*"))
    out = sources.acquire(_ens(), _files(tmp_path, root, member=3), "t", "2017-01", tmp_path / "t.grib")
    want = xr.open_dataset(shared_data.joinpath(*ENS), engine="cfgrib", backend_kwargs={"indexpath": ""})
    want = want["t"].sel(number=3, isobaricInhPa=[500, 850]).values
    np.testing.assert_array_equal(grib.decode(out).values, want.astype(np.float32))
    assert {h.number for h in grib.scan(out)} == {3}
    assert json.loads(sources.provenance_path(out).read_text())["member"] == 3


@pytest.fixture
def overlapping(tmp_path, shared_data):
    """The real IFS forecasts (runs 00/12 UTC, steps 0/6 h) plus a run at 06 UTC whose step 6 has the
    valid time of the 12 UTC run's step 0 (values +5 K so the pick shows)."""
    root = tmp_path / "fc"
    root.mkdir()
    path = shared_data.joinpath(*IFS)
    msgs = messages(path)
    t12 = [
        msgs[h.index]
        for h in grib.scan(path)
        if h.param.name == "t" and str(h.base)[:13] == "2024-06-03T12" and h.step_hours == 0
    ]
    (root / "fc.grib").write_bytes(path.read_bytes())
    (root / "run06.grib").write_bytes(b"".join(relabel(m, add=5.0, dataTime=600, stepRange="6") for m in t12))
    return root


def test_overlapping_forecast_steps_are_refused_or_resolved_by_the_rule(tmp_path, overlapping, shared_data):
    data = _ifs({"t": FieldSpec((500, 850), "pl")})
    with pytest.raises(
        DataError,
        match=r"field 't' level \d+ valid time 2024-06-03T12:00 is in 2 different "
        r"messages: .*fc.grib message \d+ \(base 2024-06-03T12:00, step 0 h.*\); "
        r".*run06.grib message \d+ \(base 2024-06-03T06:00, step 6 h.*"
        r"set acquire.files.same_valid_time",
    ):
        sources.acquire(data, _files(tmp_path, overlapping), "t", "2024-06", tmp_path / "t.grib")
    direct = grib.decode(shared_data.joinpath(*IFS), "t").sel(level=[500, 850]).values
    new = grib.decode(
        sources.acquire(
            data, _files(tmp_path, overlapping, same_valid_time="shortest_step"), "t", "2024-06", tmp_path / "t.grib"
        )
    )
    np.testing.assert_array_equal(new.values, direct)
    old = grib.decode(
        sources.acquire(
            data, _files(tmp_path, overlapping, same_valid_time="longest_step"), "t", "2024-06", tmp_path / "t2.grib"
        )
    )
    assert "forecasts: 5 runs, steps 0/6 h" in inspect.describe(overlapping)  # inspect shows the runs
    differs = ~np.isclose(old.values, direct).all(axis=(1, 2, 3))
    assert [str(t)[:13] for t in old["time"].values[differs]] == ["2024-06-03T12"]
    np.testing.assert_allclose(old.values[differs], direct[differs] + 5.0, atol=0.01)


@pytest.mark.slow
def test_the_cli_refuses_several_members_in_one_line(tmp_path, shared_data):
    cfg = tmp_path / "ens.yaml"
    cfg.write_text(
        json.dumps(
            {
                "run": "ens",
                "data": {
                    "fields": {"t": {"levels": [500, 850], "levtype": "pl"}},
                    "start": "2017-01-01T00",
                    "end": "2017-01-02T12",
                    "step_hours": 12,
                    "grid": [3.0, 3.0],
                },
                "acquire": {
                    "source": "files",
                    "files": {"paths": [str(shared_data / ENS[0])], "index_dir": str(tmp_path / "index")},
                },
            }
        )
    )
    r = atmorep(
        "acquire", "--config", cfg, "--field", "t", "--month", "2017-01", "--output", tmp_path / "t.grib", timeout=120
    )
    assert r.returncode == 1 and len(r.stderr.strip().splitlines()) == 1
    assert "field 't' comes as 10 ensemble members" in r.stderr and "acquire.files.member" in r.stderr
    assert not list(tmp_path.glob("*t.grib*"))


def test_the_same_message_in_two_files_counts_once(tmp_path, shared_data):
    root = tmp_path / "copies"
    for d in ("a", "b"):  # a mirror that holds one file twice: the same bytes, nothing to choose
        (root / d).mkdir(parents=True)
        (root / d / "pl.grib").write_bytes(shared_data.joinpath(*IFS).read_bytes())
    data = _ifs({"t": FieldSpec((500,), "pl")})
    got = grib.decode(sources.acquire(data, _files(tmp_path, root), "t", "2024-06", tmp_path / "t.grib"))
    np.testing.assert_array_equal(got.values, grib.decode(shared_data.joinpath(*IFS), "t").sel(level=[500]).values)
