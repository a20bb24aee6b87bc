"""Bad input through the command line: one clear line, exit status 1, nothing that looks complete."""

import json
import subprocess
import sys

import numpy as np
import pytest
from builders import UK, field_grib, hourly

PARAMS = {"fields": {"t2m": {}}, "start": "2019-03-01T00", "end": "2019-03-01T03", "step_hours": 1}


def _run(*args):
    return subprocess.run([sys.executable, "-m", "atmorep", *map(str, args)], capture_output=True, text=True)


def _one_error(r, stage):
    assert r.returncode == 1 and "Traceback" not in r.stderr, r.stderr
    errors = [line for line in r.stderr.splitlines() if line.startswith(f"atmorep {stage}: error:")]
    assert len(errors) == 1, r.stderr
    return errors[0]


@pytest.mark.parametrize(
    "case", ["nan", pytest.param("grid", marks=pytest.mark.slow), pytest.param("field", marks=pytest.mark.slow)]
)
def test_normalize_rejects(tmp_path, shared_data, case):
    data = dict(PARAMS)
    if case == "nan":
        src = field_grib(
            tmp_path / "in.grib",
            "t2m",
            np.full((4, 1, 5, 8), np.nan),
            hourly("2019-03-01T00", 4),
            [0],
            np.linspace(60, 50, 5),
            np.arange(8.0),
        )
        want = "in.grib: field 't2m' level 0 time 2019-03-01T00:00: 40 non-finite values"
    elif case == "grid":
        src = shared_data.joinpath(*UK)
        data.update(end="2019-03-31T23", grid=[1.0, 1.0])
        want = "is on a 33x49 0.25°x0.25° grid; data.grid expects 1°x1°"
    else:
        src = shared_data / "era5-sfc-natl-hourly" / "era5.grib"
        want = "field 't2m' not found (found ['msl', 'u10', 'v10'])"
    r = _run(
        "normalize",
        "--params",
        json.dumps({"data": data}),
        "--field",
        "t2m",
        "--month",
        "2019-03",
        "--input",
        src,
        "--output",
        tmp_path / "out.zarr",
        "--qc",
        tmp_path / "qc.json",
    )
    assert want in _one_error(r, "normalize")
    assert not [p for p in tmp_path.iterdir() if p.name != "in.grib"]


def test_acquire_from_an_empty_directory(tmp_path):
    (tmp_path / "mirror").mkdir()
    params = {
        "data": PARAMS,
        "acquire": {
            "source": "files",
            "files": {"paths": [str(tmp_path / "mirror")], "index_dir": str(tmp_path / "idx")},
        },
    }
    r = _run(
        "acquire",
        "--params",
        json.dumps(params),
        "--field",
        "t2m",
        "--month",
        "2019-03",
        "--output",
        tmp_path / "out" / "t2m.grib",
    )
    assert "matched no GRIB file" in _one_error(r, "acquire")
    assert not list((tmp_path / "out").iterdir())
