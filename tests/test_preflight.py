"""A config file describes a whole run, and what it decides is checked before the first job."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import yaml
from conftest import REPO

from atmorep import config as C
from atmorep import preflight

EXAMPLE = REPO / "config" / "campaigns" / "files-example.yaml"


def _example(rename: dict | None = None, **changes) -> dict:
    raw = yaml.safe_load(EXAMPLE.read_text())
    for old, new in (rename or {}).items():  # a field under another name
        raw["data"]["fields"][new] = raw["data"]["fields"].pop(old)
    for key, value in changes.items():
        node = raw
        *path, last = key.split(".")
        for k in path:
            node = node[k]
        node[last] = value
    return raw


def _problems(raw: dict) -> list[str]:
    return preflight.problems(C.build(C.Config, raw))


def test_the_example_files_campaign_loads_and_is_consistent():
    cfg = C.load(EXAMPLE)
    assert cfg.acquire.source == "files" and "t2m" not in cfg.data.fields
    assert cfg.data.fields["msl"].kind == "sfc" and cfg.data.fields["t"].kind == "pl"
    preflight.check(cfg)


def test_overlapping_periods_are_refused_naming_keys_and_times():
    found = _problems(_example(**{"evaluate.start": "2021-01-20T00"}))
    assert found == [
        "train.start .. train.end 2021-01-01T00:00 .. 2021-01-24T23:00 and evaluate.start .. "
        "evaluate.end 2021-01-20T00:00 .. 2021-01-31T23:00 overlap (2021-01-20T00:00 .. "
        "2021-01-24T23:00): evaluation would score the training period; make them disjoint"
    ]
    raw = _example()
    del raw["evaluate"]  # the default period is the whole campaign, training time included
    assert "evaluate.start .. evaluate.end (default: the campaign) 2021-01-01T00:00" in _problems(raw)[0]


def test_a_period_shorter_than_one_window_is_refused():
    found = _problems(_example(**{"evaluate.start": "2021-01-31T08"}))
    assert found == [
        "evaluate.start .. evaluate.end 2021-01-31T08:00 .. 2021-01-31T23:00 holds 16 time steps of "
        "data.step_hours 1; one window needs model.num_tokens[0] x shard.token_size[0] = 6 x 3 = 18"
    ]


def test_the_embedded_samples_own_steps_and_grid_are_checked():
    raw = yaml.safe_load((REPO / "config" / "config.yaml").read_text())
    assert _problems(raw) == []
    raw["evaluate"]["start"] = "2026-03-31T00"
    raw["model"]["num_tokens"] = [3, 21, 6]
    assert _problems(raw) == [
        "evaluate.start .. evaluate.end 2026-03-31T00:00 .. 2026-03-31T23:00 holds 4 of the embedded sample's time "
        "steps; one window needs model.num_tokens[0] x shard.token_size[0] = 3 x 2 = 6",
        "the grid of data.area null (global) at 1°x1° (the embedded sample) (181 x 360 points) keeps 171 x 360 "
        "points as whole tokens; one window needs model.num_tokens[1:] x shard.token_size[1:] = 21 x 9 by 6 x 9 "
        "= 189 x 54 points",
    ]


def test_a_grid_after_crop_smaller_than_one_window_is_refused():
    found = _problems(_example(**{"data.area": [50, -2, 46, 2]}))
    assert found == [
        "the grid of data.area [50, -2, 46, 2] at 0.25°x0.25° (data.grid) (17 x 17 points) keeps "
        "9 x 9 points as whole tokens; one window needs model.num_tokens[1:] x shard.token_size[1:] "
        "= 4 x 9 by 6 x 9 = 36 x 54 points"
    ]
    found = _problems(_example(**{"data.area": None, "shard.token_size": [3, 9, 7]}))
    assert len(found) == 1 and "1440 longitudes are not a whole number of 7-point tokens" in found[0]


def test_token_sizes_must_tile_and_named_fields_must_exist():
    found = _problems(_example(**{"shard.field_token_size": {"msl": [3, 6, 6]}}))
    # msl's finer tokens set the neighbourhood (6 x 4 x 6 of [3, 6, 6]); t's 9-point tokens do not tile 24
    assert found == [
        "shard token size [3, 9, 9] of field 't' does not tile the neighbourhood [18, 24, 36] "
        "(model.num_tokens x the finest token size)"
    ]
    found = _problems(
        _example(
            **{
                "model.coupling": {"t": ["u", "t2m"]},
                "normalize.local": ["t2m"],
                "evaluate.attention": {"fields": ["q"]},
            }
        )
    )
    assert found == [
        "model.coupling names t2m, not in data.fields (t, u, v, msl)",
        "normalize.local names t2m, not in data.fields (t, u, v, msl)",
        "evaluate.attention.fields names q, not in data.fields (t, u, v, msl)",
    ]
    found = _problems(_example(**{"data.fields.msl": {"levels": [2], "levtype": "sfc"}}))
    assert found == [
        "data.fields.msl.levtype sfc takes levels [0] (one single level), not [2]: name the level "
        "type (e.g. heightAboveGround) to select by level value"
    ]


def test_climatology_months_lie_in_the_campaign():
    clim = {"fields": ["t"], "start": "2020-12", "end": "2021-01"}  # months: YYYY-MM (the schema)
    assert _problems(_example(**{"normalize.climatology": clim})) == [
        "normalize.climatology months 2020-12 .. 2020-12 lie outside the campaign data.start .. data.end "
        "2021-01-01T00 .. 2021-01-31T23"
    ]
    assert _problems(_example(**{"normalize.climatology": {"fields": ["t"]}})) == [
        "normalize.climatology.start and .end are required when normalize.climatology.fields is not empty"
    ]


#: model-level mistakes (issue 23): (changes, what the refusal says); the model itself decides (meta device)
MODEL_MISTAKES = {
    "heads": (
        {"model.heads": 6},
        "256} are not divisible by model.heads = 6",  # the widths per field, in the config file's order
    ),
    "self-coupling": (
        {"model.coupling": {"t": ["t", "u"]}},
        "model.coupling: fields cannot attend to themselves: ['t']",
    ),
    "attention layer": (
        {"evaluate.attention": {"fields": ["u"], "layers": [0, 4]}},
        "evaluate.attention: the model has no encoder layer 4 for field 'u'",
    ),
    "attention head": (
        {"evaluate.attention": {"heads": [8]}},
        "evaluate.attention.heads: the encoder has self heads 0 .. 7",
    ),
    "decoder depth": ({"model.decoder_layers": 5}, "model.decoder_layers (5) exceeds model.encoder_layers (4)"),
}
#: names that become paths and module names: the schema's patterns refuse them (config load, before preflight)
NAME_MISTAKES = {
    "field name": ({"rename": {"msl": "../msl"}, "model.coupling": {}}, "data.fields: '../msl' does not match"),
    "run name": ({"run": "../elsewhere"}, "run: '../elsewhere' does not match"),
    "run name dots": ({"run": ".."}, "run: '..' does not match"),
}


@pytest.mark.parametrize("case", list(NAME_MISTAKES))
def test_field_and_run_names_are_names(case):
    changes, message = NAME_MISTAKES[case]
    with pytest.raises(C.ConfigError, match=re.escape(message)):
        C.build(C.Config, _example(**changes))  # the declaration's patterns (the schema is generated from them)


@pytest.mark.parametrize("case", list(MODEL_MISTAKES))
def test_what_the_model_would_refuse_is_refused_before_anything_runs(case):
    changes, message = MODEL_MISTAKES[case]
    found = _problems(_example(**changes))
    assert len(found) == 1 and message in found[0], found


def test_the_model_check_builds_the_model_and_repeats_none_of_its_rules(monkeypatch):
    """The refusal is the model's own: a rule the model gains is refused at workflow start too."""
    from atmorep.model import multiformer

    assert _problems(_example()) == []

    def pickier(cfg, fields):
        raise ValueError(f"a new rule of the model for {sorted(fields)}")

    monkeypatch.setattr(multiformer, "field_dims", pickier)
    assert _problems(_example()) == ["a new rule of the model for ['msl', 't', 'u', 'v']"]


def test_a_field_the_config_does_not_have_is_named_once():
    found = _problems(_example(**{"model.coupling": {"t": ["q"]}}))
    assert found == ["model.coupling names q, not in data.fields (t, u, v, msl)"]  # not again by the model


@pytest.mark.slow
def test_check_refuses_model_mistakes_in_seconds_writing_nothing(tmp_path):
    for case, (changes, message) in {**MODEL_MISTAKES, **NAME_MISTAKES}.items():
        bad = tmp_path / f"{case.replace(' ', '_')}.yaml"
        bad.write_text(yaml.safe_dump(_example(**changes)))
        before = sorted(tmp_path.rglob("*"))
        t0 = time.perf_counter()
        r = subprocess.run(
            [sys.executable, "-m", "atmorep", "check", "--config", str(bad)],
            capture_output=True,
            text=True,
            timeout=120,
            cwd=tmp_path,
        )
        took = time.perf_counter() - t0
        assert r.returncode == 1 and len(r.stderr.strip().splitlines()) == 1, (case, r.stderr)
        where = f"{bad}: " if case in MODEL_MISTAKES else ""  # the schema's errors name the key alone
        assert r.stderr.startswith(f"atmorep check: error: {where}") and message in r.stderr, (case, r.stderr)
        assert took < 30 and sorted(tmp_path.rglob("*")) == before, (case, took)


@pytest.mark.slow
def test_check_on_the_command_line_is_one_line_and_exit_1(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump(_example(**{"evaluate.start": "2021-01-20T00"})))
    r = subprocess.run(
        [sys.executable, "-m", "atmorep", "check", "--config", str(bad)], capture_output=True, text=True, timeout=120
    )
    assert r.returncode == 1 and len(r.stderr.strip().splitlines()) == 1
    assert r.stderr.startswith(f"atmorep check: error: {bad}: train.start .. train.end") and "overlap" in r.stderr
    ok = subprocess.run(
        [sys.executable, "-m", "atmorep", "check", "--config", str(EXAMPLE)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert ok.returncode == 0, ok.stderr


def _checkout(where: Path) -> Path:
    """The workflow's files as a user's checkout holds them (Snakefile, rules, schemas, default config)."""
    shutil.copy(REPO / "Snakefile", where / "Snakefile")
    for d in ("workflow", "config", "profiles"):
        shutil.copytree(REPO / d, where / d)
    return where


def _snakemake(checkout: Path, *args, timeout=300):
    env = {
        **os.environ,
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
        "OMP_NUM_THREADS": "1",
    }
    # from the checkout's root, as a user runs it: the embedded default config/config.yaml is at hand
    return subprocess.run(
        [sys.executable, "-m", "snakemake", "--cores", "1", "-n", *args],
        cwd=checkout,
        capture_output=True,
        text=True,
        env=env,
        timeout=timeout,
    )


def _jobs(out: str) -> dict[str, int]:
    table = out.split("Job stats:")[1].split("\n\n")[0].splitlines()[3:]
    return {line.split()[0]: int(line.split()[1]) for line in table if line.split()}


@pytest.mark.slow
def test_configfile_replaces_the_default(tmp_path, shared_data):
    raw = _example(**{"acquire.files.paths": [str(shared_data / "ifs-pl-5var-6h")]})
    mine = tmp_path / "mine.yaml"
    mine.write_text(yaml.safe_dump(raw))
    checkout = _checkout(tmp_path)
    r = _snakemake(checkout, "--configfile", str(mine))
    assert r.returncode == 0, r.stderr[-3000:]
    assert _jobs(r.stdout)["acquire"] == 4  # t, u, v, msl for one month: no t2m, u10, v10 of the demo
    assert "t2m" not in r.stdout and "resources/files-example/grib/msl/2021-01.grib" in r.stdout
    r = _snakemake(checkout)  # no --configfile: the embedded demo
    assert r.returncode == 0, r.stderr[-3000:]
    assert "resources/demo/grib/t2m/2026-03.grib" in r.stdout


@pytest.mark.slow
def test_workflow_start_refuses_in_seconds_writing_nothing(tmp_path):
    cases = {
        "overlap": ({"evaluate.start": "2021-01-20T00"}, "overlap (2021-01-20T00:00 .. 2021-01-24T23:00)"),
        "grid": ({"data.area": [50, -2, 46, 2]}, "keeps 9 x 9 points as whole tokens"),
        "fields": ({"normalize.local": ["t2m"]}, "normalize.local names t2m, not in data.fields"),
        "period": (
            {"evaluate.start": "2021-01-31T08"},
            "holds 16 time steps of data.step_hours 1; one "
            "window needs model.num_tokens[0] x shard.token_size[0] = 6 x 3 = 18",
        ),
        "tokens": (
            {"shard.field_token_size": {"msl": [3, 6, 6]}},
            "shard token size [3, 9, 9] of field 't' does not tile the neighbourhood [18, 24, 36]",
        ),
        "heads": MODEL_MISTAKES["heads"],
        "self-coupling": MODEL_MISTAKES["self-coupling"],
    }
    work = _checkout(tmp_path)
    for name, (changes, message) in cases.items():
        cfg = tmp_path / f"{name}.yaml"
        cfg.write_text(yaml.safe_dump(_example(**changes)))
        t0 = time.perf_counter()
        r = _snakemake(work, "--configfile", str(cfg), timeout=120)
        assert r.returncode != 0 and message in r.stdout + r.stderr, (r.stdout + r.stderr)[-3000:]
        assert f"invalid configuration ({cfg}):" in r.stdout + r.stderr  # where the keys came from
        assert time.perf_counter() - t0 < 60
        assert not (work / "resources").exists() and not (work / "results").exists()
    # --config on top of a config file: both are named (`A or B + C` used to drop "--config" here)
    r = _snakemake(work, "--configfile", str(cfg), "--config", "seed=2", timeout=120)
    assert r.returncode != 0 and f"invalid configuration ({cfg} + --config):" in r.stdout + r.stderr


def _demo(**changes) -> dict:
    raw = yaml.safe_load((REPO / "config" / "config.yaml").read_text())
    for key, value in changes.items():
        node = raw
        *path, last = key.split(".")
        for k in path:
            node = node[k]
        node[last] = value
    return raw


def test_the_check_counts_training_windows_as_the_loader_does(sample_products):
    """`check` used to ask for one window per period while `train` needs a global batch of windows: a
    small campaign passed the check and was refused by train after acquire, normalize and shard ran
    ("1 training windows are fewer than one global batch of 8"). Both count with atmorep.geometry."""
    from atmorep import geometry
    from atmorep.data.dataset import WindowDataset

    # a regional box of 27 x 54 points at 1°: exactly one window position on the grid
    raw = _demo(**{"data.area": [60, 0, 34, 53], "train.batch_size": 4, "train.ranks": 2})
    found = _problems(raw)
    assert len(found) == 1 and found[0].startswith(
        "train.start .. train.end 2026-03-25T00:00 .. 2026-03-30T05:00 holds "
    )
    assert "complete window(s) of 6x27x54 points" in found[0] and "1 position(s) on the grid" in found[0]
    assert found[0].endswith(
        "training needs one global batch of train.batch_size x train.gradient_accumulation x train.ranks "
        "= 4 x 1 x 2 = 8"
    )
    windows = int(found[0].split(" holds ")[1].split()[0])
    assert 1 <= windows < 8
    assert _problems(_demo(**{"data.area": [60, 0, 34, 53], "train.batch_size": 2, "train.ranks": 2})) == []
    # the count is the loader's: the same campaign's shard stores (t2m, u10 of the sample, global)
    cfg = C.build(C.Config, _demo(**{"data.fields": {"t2m": {"levels": [0]}, "u10": {"levels": [0]}}}))
    stores = {f: [str(p)] for f, p in sample_products["shards"].items()}
    for start, end in (("2026-03-25T00", "2026-03-30T05"), ("2026-03-30T06", "2026-03-31T23")):
        loader = WindowDataset(stores, cfg.model.num_tokens, np.datetime64(start), np.datetime64(end))
        times, _ = preflight._valid_times(cfg)
        _, kept = preflight._window_on_grid(cfg)
        n = geometry.count_windows(
            times, geometry.config_window(cfg), kept.shape, kept.periodic, np.datetime64(start), np.datetime64(end)
        )
        assert n == len(loader) > 0


def test_each_source_refuses_what_it_cannot_deliver():
    """What `check` accepts, acquire delivers: what a source cannot honour (the sample: an area off its
    grid, data.step_hours, another grid, other fields; files without paths; cds: acquire.variables) is
    refused up front, not by acquire after the workflow started."""
    assert _problems(_demo(**{"data.area": [60.5, -30, 30, 30]})) == [
        "data.area [60.5, -30, 30, 30] and the embedded sample's global 1° grid: data.area north edge 60.5 is "
        "not a grid point of the files' 1° grid (choose area edges on the grid)"
    ]
    found = _problems(
        _demo(**{"data.step_hours": 6, "data.grid": [0.25, 0.25], "data.fields": {"t": {"levels": [850]}}})
    )
    assert set(found) >= {
        "data.step_hours 6 is set, but acquire.source sample does not use it (it uses data.area, data.grid): remove it",
        "data.fields.t: not in the embedded sample (it has t2m, u10, v10, msl, tp)",
        "data.grid [0.25, 0.25]: the embedded sample is on its own 1°x1° grid (set it null)",
    }
    assert _problems(_example(**{"acquire.files.paths": []})) == [
        "acquire.source is 'files' but acquire.files.paths is empty"
    ]
    cds = _example(**{"acquire.source": "cds", "acquire.variables": {"t": "ta"}})
    assert _problems(cds) == [
        "acquire.variables {'t': 'ta'} is set, but acquire.source cds does not use it (it uses data.area, "
        "data.grid, data.step_hours): remove it"
    ]


def test_an_area_around_the_globe_is_the_whole_circle_for_plan_check_and_acquire():
    """data.area [60, -180, 30, 180] at 1°: plan.grid gave 31 x 1 points ("narrower than one token"),
    preflight 31 x 361 (a repeated seam column), acquire's grid check expected 1 longitude. One
    function now: 31 x 360, periodic."""
    from atmorep import geometry, plan
    from atmorep.data.acquire.inventory import _area_lons

    lats, lons = geometry.regular_grid((1.0, 1.0), (60, -180, 30, 180))
    assert (len(lats), len(lons)) == (31, 360) and lons[0] == -180 and lons[-1] == 179
    raw = yaml.safe_load((REPO / "config" / "campaigns" / "quickstart.yaml").read_text())
    raw["data"].update(grid=[1.0, 1.0], area=[80, -180, 20, 180])
    cfg = C.build(C.Config, raw)
    p_lats, p_lons = plan.grid(cfg)
    c_lats, c_lons, _ = preflight._grid(cfg)
    np.testing.assert_array_equal(p_lats, c_lats)
    np.testing.assert_array_equal(p_lons, c_lons)
    assert len(_area_lons(-180, 180, 1.0)) == 360
    assert plan.plan(cfg).grib_bytes == 744 * (plan.GRIB1_HEADER + 61 * 360 * 2)
    assert preflight.problems(cfg) == []
