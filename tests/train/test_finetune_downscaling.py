"""Downscaling on real data, perfect-model: ERA5 msl/u10/v10 over the North Atlantic at 0.25°
(../shared/data/era5-sfc-natl-hourly) is the target, the same data at 1° (every 4th point) the
backbone's input. The head's output lies on the target's grid, each target token covering its backbone
token's footprint; a target grid that does not nest is refused in one line."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest
import torch
import xarray as xr

from atmorep import config as C
from atmorep.errors import DataError

pytestmark = pytest.mark.slow

FIELDS = ("msl", "u10", "v10")
TRAIN = ("2011-01-01T00", "2011-01-02T11")
TEST = ("2011-01-02T12", "2011-01-03T23")
COARSE, FINE = (2, 3, 3), (2, 12, 12)


def _stores(data, grib_dir: Path, token_size, root: Path, fields) -> dict[str, list[str]]:
    from atmorep.data import normalize, shards
    from atmorep.data.acquire import sources

    acq = C.AcquireConfig(source="files", files=C.FilesConfig(paths=(str(grib_dir),)))
    out = {}
    for f in fields:
        g = sources.acquire(data, acq, f, "2011-01", root / "grib" / f"{f}.grib")
        n = normalize.normalize(data, C.NormalizeConfig(), f, "2011-01", g, root / "norm" / f"{f}.zarr")
        out[f] = [str(shards.shard(data, C.ShardConfig(token_size=token_size), f, "2011", [n], root / f"{f}.zarr"))]
    return out


@pytest.fixture(scope="module")
def natl(shared_data, tmp_path_factory):
    """1° shards of msl/u10/v10 (every 4th point of the 0.25° GRIB, written as GRIB) and 0.25° msl shards."""
    from atmorep.formats.grib.write import write_grib

    root = tmp_path_factory.mktemp("natl")
    src = shared_data / "era5-sfc-natl-hourly"
    data = C.DataConfig(fields={f: C.FieldSpec() for f in FIELDS}, start=TRAIN[0], end=TEST[1], step_hours=1)
    coarse_dir = root / "coarse-grib"
    coarse_dir.mkdir()
    names = {"msl": "msl", "u10": "u10", "v10": "v10"}
    ds = xr.open_dataset(src / "era5.grib", engine="cfgrib", backend_kwargs={"indexpath": ""})
    for f, var in names.items():
        values = ds[var].values[:, None, ::4, ::4]  # T L Y X at 1°
        lats, lons = ds["latitude"].values[::4], ds["longitude"].values[::4]
        write_grib(coarse_dir / f"{f}.grib", f, values, ds["time"].values, [0], lats, lons, ieee=True)
    coarse = _stores(data, coarse_dir, COARSE, root / "coarse", FIELDS)
    fine = _stores(dataclasses.replace(data, fields={"msl": C.FieldSpec()}), src, FINE, root / "fine", ("msl",))
    return {"coarse": coarse, "fine": fine["msl"], "root": root}


@pytest.fixture(scope="module")
def backbone(tmp_path_factory) -> Path:
    from atmorep.model.file import save_model
    from atmorep.model.multiformer import FieldGeometry, Multiformer

    torch.manual_seed(0)
    cfg = C.ModelConfig(num_tokens=(3, 2, 2), dim=32, heads=4, encoder_layers=1, decoder_layers=1, ensemble=2)
    path = tmp_path_factory.mktemp("natl-backbone") / "model.safetensors"
    save_model(
        path, Multiformer(dataclasses.replace(cfg, fields=FIELDS), {f: FieldGeometry(1, COARSE) for f in FIELDS})
    )
    return path


def config(natl, **task) -> tuple[C.DataConfig, C.FinetuneConfig]:
    data = C.DataConfig(fields={f: C.FieldSpec() for f in FIELDS}, start=TRAIN[0], end=TEST[1], step_hours=1)
    raw = {
        "tasks": {"down": {"target": "msl", "target_shards": natl["fine"], "head": "mlp", **task}},
        "train": {
            "start": TRAIN[0],
            "end": TRAIN[1],
            "steps": 10,
            "batch_size": 4,
            "lr_start": 1e-3,
            "lr": 1e-3,
            "lr_min": 1e-3,
            "warmup_epochs": 0,
            "epoch_steps": 5,
            "checkpoint_every": 100,
            "tensorboard": False,
            "engine": "torch",
            "ranks": 1,
        },
        "evaluate": {"start": TEST[0], "end": TEST[1], "samples": 6, "bootstrap_iterations": 0},
    }
    return data, C.section({"finetune": raw}, "finetune")


def test_the_downscaling_heads_output_grid_is_the_targets(natl, backbone, tmp_path):
    from atmorep.data.dataset import FieldStore
    from atmorep.eval.finetune import score
    from atmorep.model import heads
    from atmorep.train.finetune import finetune

    data, cfg = config(natl)
    head = finetune(3, data, cfg, "down", backbone, natl["coarse"], tmp_path, fresh=True)
    card = heads.read_head(head)["card"]
    assert card["ratio"] == [4, 4] and card["target_token_size"] == [2, 12, 12]
    score(3, data, cfg, "down", head, natl["coarse"], tmp_path, backbone)
    ds = xr.open_zarr(tmp_path / "windows.zarr", group="msl")
    fine, coarse = FieldStore(natl["fine"][0]), FieldStore(natl["coarse"]["msl"][0])
    assert (ds.sizes["y"], ds.sizes["x"]) == (4 * 2 * 3, 4 * 2 * 3)  # r x (Y tokens x ty) of the backbone window
    for s in range(ds.sizes["sample"]):  # every window's points are consecutive points of the target grid
        lat, lon = ds["latitude"].values[s], ds["longitude"].values[s]
        rows = np.flatnonzero(np.isin(np.round(fine.lats, 4), np.round(lat, 4)))
        cols = np.flatnonzero(np.isin(np.round(fine.lons % 360, 4), np.round(lon, 4)))
        assert (
            len(rows) == len(lat)
            and np.all(np.diff(rows) == 1)
            and len(cols) == len(lon)
            and np.all(np.diff(cols) == 1)
        )
        # each coarse point owns the 4 x 4 target points of its 1° cell: it is the second of them on each axis
        assert np.allclose(lat[1::4], coarse.lats[np.isin(np.round(coarse.lats, 4), np.round(lat[1::4], 4))])
    # Perfect model: the coarse input is the fine field at every 4th point, so the source (the input of the
    # target field on the target grid) equals the truth there.
    truth, source = ds["target"].values, ds["source"].values
    np.testing.assert_allclose(source[:, :, :, 1::4, 1::4], truth[:, :, :, 1::4, 1::4], rtol=1e-5)
    assert np.isfinite(ds["prediction"]).all() and np.isfinite(ds["baseline_raw_linear"]).all()


def test_a_target_grid_that_does_not_nest_is_refused(natl, backbone):
    from atmorep.data.targets import nesting
    from atmorep.model.file import load_model
    from atmorep.model.task import task_dataset

    lats, lons = np.arange(60.0, 40.0, -1.0), np.arange(0.0, 20.0, 1.0)
    with pytest.raises(
        DataError, match=r"t.zarr: the target's latitude spacing 1.25° does not divide the backbone's 1°"
    ):
        nesting(lats, lons, np.arange(60.0, 40.0, -1.25), np.arange(0.0, 20.0, 0.25), "t.zarr")
    with pytest.raises(DataError, match="run the other way"):
        nesting(lats, lons, np.arange(40.0, 60.0, 0.25), np.arange(0.0, 20.0, 0.25), "t.zarr")
    far = nesting(lats, lons, np.arange(-10.0, -20.0, -0.25), np.arange(0.0, 20.0, 0.25), "far.zarr")
    assert not far.rows_covered(np.arange(len(lats) - 6), 6).any()  # such a target: no usable window
    data, cfg = config(natl)
    model, _ = load_model(backbone)
    task = dataclasses.replace(cfg.tasks["down"], target_shards=tuple(natl["coarse"]["u10"]))
    with pytest.raises(DataError, match="holds field 'u10', not the target 'msl'"):
        task_dataset(
            model, backbone, task, "down", natl["coarse"], list(task.target_shards), *map(np.datetime64, TRAIN)
        )
