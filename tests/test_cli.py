"""The console script as users call it: help, inspect, clean one-line errors."""

import subprocess
import sys

from conftest import REPO


def run(*args, **kwargs):
    return subprocess.run([sys.executable, "-m", "atmorep", *map(str, args)], capture_output=True, text=True, **kwargs)


def test_help_lists_every_stage():
    out = run("--help").stdout
    for cmd in ("acquire", "normalize", "shard", "train", "infer", "score", "evaluate", "inspect"):
        assert cmd in out


def test_inspect_reports_fields_levels_grid_and_times(shared_data):
    r = run(
        "inspect",
        shared_data / "era5-sfc-natl-hourly" / "era5.grib",
        shared_data / "ncep-air-temperature-6h" / "air_temperature.nc",
        shared_data / "ncep-air-temperature-6h" / "air_temperature.zarr",
        shared_data / "era5-ens-pl-tz" / "era5-levels-members.grib",
    )
    assert r.returncode == 0, r.stderr
    out = r.stdout
    assert "u10: 10 metre U wind component" in out
    assert "grid 81x89 0.25°x0.25°" in out and "72 time steps 2011-01-01T00:00 .. 2011-01-03T23:00, step 1 h" in out
    assert out.count("air: ") == 2 and "2920 time steps" in out and "step 6 h" in out
    assert "levels isobaricInhPa=[850.0, 500.0]; 10 ensemble members" in out


def test_inspect_rejects_unusable_input_with_one_line(tmp_path, shared_data):
    cut = tmp_path / "cut.grib"
    cut.write_bytes((shared_data / "era5-t2m-uk-hourly" / "era5-2mt-2019-03-uk.grib").read_bytes()[:3000])
    text = tmp_path / "notes.txt"
    text.write_text("not data\n")
    for path, why in (
        (cut, "truncated"),
        (text, "not GRIB, NetCDF or zarr"),
        (tmp_path / "nope", "no such file"),
        (tmp_path, "not a zarr store"),
    ):
        r = run("inspect", path)
        assert r.returncode == 1
        lines = r.stderr.strip().splitlines()
        assert len(lines) == 1 and why in lines[0] and str(path) in lines[0], r.stderr
        assert "Traceback" not in r.stderr


def test_stage_errors_are_one_line_without_traceback(tmp_path):
    r = run(
        "acquire",
        "--params",
        '{"data": {"fields": {"t2m": {}}, "start": "2026-03-25", "end": "2026-03-26"}, "acquire": {"sorce": "sample"}}',
        "--field",
        "t2m",
        "--month",
        "2026-03",
        "--output",
        tmp_path / "x",
    )
    assert r.returncode == 1
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("atmorep acquire: error: unknown config key 'acquire.sorce'")
    assert "source" in lines[0]  # names what is allowed
    r = run(
        "normalize",
        "--config",
        REPO / "config" / "config.yaml",
        "--field",
        "t2m",
        "--month",
        "2026-03",
        "--input",
        tmp_path / "missing.grib",
        "--output",
        tmp_path / "o.zarr",
    )
    assert r.returncode == 1 and "missing.grib: no such file" in r.stderr and "Traceback" not in r.stderr


def test_moments_and_climatology_are_subcommands_equal_to_the_library(sample_products, tmp_path):
    """The moments and climatology rules call their own subcommands (one rule, one command, one function)."""
    import json

    import numpy as np
    import zarr

    from atmorep import config as C
    from atmorep.data import normalize as N

    data = sample_products["data"]
    params = json.dumps(
        {
            "data": {"fields": {"t2m": {"levels": [0]}}, "start": data.start, "end": data.end},
            "normalize": {
                # months, YYYY-MM (the schema's pattern, which --params is held to as well)
                "climatology": {
                    "fields": ["t2m"],
                    "start": data.start[:7],
                    "end": data.end[:7],
                    "by_calendar_month": True,
                }
            },
        }
    )
    grib = sample_products["grib"]["t2m"]
    r = run(
        "moments",
        "--params",
        params,
        "--field",
        "t2m",
        "--month",
        "2026-03",
        "--input",
        grib,
        "--output",
        tmp_path / "m.zarr",
    )
    assert r.returncode == 0, r.stderr
    r = run(
        "climatology",
        "--params",
        params,
        "--field",
        "t2m",
        "--inputs",
        tmp_path / "m.zarr",
        "--output",
        tmp_path / "c.zarr",
    )
    assert r.returncode == 0, r.stderr
    raw = C.from_slice(params)
    data, cfg = C.section(raw, "data"), C.section(raw, "normalize")
    N.moments(data, cfg, "t2m", "2026-03", grib, tmp_path / "lib_m.zarr")
    N.climatology(data, cfg, "t2m", [tmp_path / "lib_m.zarr"], tmp_path / "lib_c.zarr")
    cli, lib = zarr.open_group(tmp_path / "c.zarr", mode="r"), zarr.open_group(tmp_path / "lib_c.zarr", mode="r")
    assert sorted(cli.array_keys()) == sorted(lib.array_keys()) and list(cli.array_keys())
    for name in cli.array_keys():
        np.testing.assert_array_equal(cli[name][...], lib[name][...])
    assert run("normalize", "--help").stdout.count("--moments") == 0


def test_a_requeue_exits_75_with_one_line_also_under_debug(monkeypatch, capsys):
    """The library raises Requeue (Trainer.stop_if_signalled); only the CLI turns it into exit 75."""
    from atmorep import cli
    from atmorep.commands import COMMANDS
    from atmorep.train.launch import ROOM, Requeue

    def checkpointed(args):
        raise Requeue("SIGUSR1: checkpoint at step 3 saved in out/checkpoints")

    monkeypatch.setattr(COMMANDS["check"], "run", checkpointed)
    monkeypatch.delenv(ROOM, raising=False)  # not launched: the rank prints its own line
    monkeypatch.setenv("ATMOREP_DEBUG", "")  # restored afterwards (--debug sets it)
    for argv in (["check", "--config", "x.yaml"], ["--debug", "check", "--config", "x.yaml"]):
        assert cli.main(argv) == 75
        assert capsys.readouterr().err.splitlines() == [
            "atmorep check: SIGUSR1: checkpoint at step 3 saved in out/checkpoints: checkpointed, requeue (exit 75)"
        ]
