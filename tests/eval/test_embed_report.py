"""The embed rule on its own (a Snakefile with common.smk and embed.smk, shards of the real sample and a
small untrained model where the earlier stages would put them): embeddings.zarr, the cyclone case study
(its track on the real data), and `snakemake --report` gathering cyclone.png with its caption."""

from __future__ import annotations

import json
import shutil

import pandas as pd
import pytest
import xarray as xr
import yaml
from conftest import REPO
from test_report import _snakemake

from atmorep.config import AcquireConfig, DataConfig, FieldSpec, ModelConfig, NormalizeConfig, ShardConfig

pytestmark = [pytest.mark.slow, pytest.mark.workflow]

FIELDS = ("u10", "v10", "msl")
CONFIG = {
    "run": "tiny",
    "data": {"fields": {f: {"levels": [0]} for f in FIELDS}, "start": "2026-03-25T00", "end": "2026-03-31T23"},
    "shard": {"token_size": [2, 9, 9], "shard_tokens": [4, 5, 10]},
    "model": {"num_tokens": [3, 3, 6]},
    "train": {"start": "2026-03-25T00", "end": "2026-03-30T05"},
    "evaluate": {"start": "2026-03-30T06", "end": "2026-03-31T23"},
    "embed": {"layers": [0, -1], "token_overlap": [0, 1, 2], "case_study": True},
}
SNAKEFILE = f"""
import json

configfile: "config.yaml"
include: "{REPO}/workflow/rules/common.smk"

rule pretrain:  # stands in for the real rule: the test provides its model
    output: model=f"results/{{RUN}}/train/model.safetensors"
    shell: "exit 1"

include: "{REPO}/workflow/rules/embed.smk"
report: "{REPO}/workflow/report/workflow.rst"

rule all:
    input: rules.embed.output

with open("inputs.json", "w") as f:
    json.dump({{"shards": shard_stores(), "model": rules.pretrain.output.model}}, f)
"""


@pytest.fixture(scope="module")
def work(tmp_path_factory):
    import torch

    from atmorep.data import normalize, shards
    from atmorep.data.acquire import sources
    from atmorep.model.file import save_model
    from atmorep.model.multiformer import FieldGeometry, Multiformer

    work = tmp_path_factory.mktemp("embed-report")
    (work / "config.yaml").write_text(yaml.safe_dump(CONFIG))
    (work / "Snakefile").write_text(SNAKEFILE)
    r = _snakemake(work, "--list-rules")
    assert r.returncode == 0, (r.stdout + r.stderr)[-5000:]
    inputs = json.loads((work / "inputs.json").read_text())
    data = DataConfig(fields={f: FieldSpec() for f in FIELDS}, start="2026-03-25T00", end="2026-03-31T23")
    scratch = tmp_path_factory.mktemp("embed-report-data")
    for path in inputs["shards"]:  # .../{field}/{year}.zarr
        f = path.split("/")[-2]
        g = sources.acquire(data, AcquireConfig(), f, "2026-03", scratch / f"{f}.grib")
        n = normalize.normalize(data, NormalizeConfig(), f, "2026-03", g, scratch / f"{f}.zarr")
        s = shards.shard(
            data, ShardConfig(token_size=(2, 9, 9), shard_tokens=(4, 5, 10)), f, "2026", [n], scratch / f"{f}-2026.zarr"
        )
        shutil.copytree(s, work / path)
    torch.manual_seed(0)
    cfg = ModelConfig(
        num_tokens=(3, 3, 6),
        dim=32,
        heads=4,
        encoder_layers=2,
        decoder_layers=1,
        coupling={"msl": ("u10", "v10"), "u10": ("msl",), "v10": ("msl",)},
        ensemble=2,
        dropout=0.0,
    )
    (work / inputs["model"]).parent.mkdir(parents=True, exist_ok=True)
    save_model(work / inputs["model"], Multiformer(cfg, {f: FieldGeometry(1, (2, 9, 9)) for f in FIELDS}).eval())
    r = _snakemake(work, "all")
    assert r.returncode == 0, (r.stdout + r.stderr)[-5000:]
    r = _snakemake(work, "all", "--report", "report.html")
    assert r.returncode == 0, (r.stdout + r.stderr)[-5000:]
    return work


def test_the_rule_writes_the_embeddings_and_the_case_study(work):
    out = work / "results" / "tiny" / "embed"
    g = xr.open_zarr(out / "embeddings.zarr", group="msl")
    assert list(g["layer"].values) == [0, 1] and g.sizes["time"] == 12
    track = pd.read_csv(out / "cyclone_track.csv", parse_dates=["time"])
    fixes = track[track["tropical"]]
    assert len(fixes) == 10 and abs(fixes["msl_hpa"].min() - 963.0) < 0.5  # from the shards, denormalized
    sim = pd.read_csv(out / "cyclone_similarity.csv")
    assert len(sim) == 12 and sim["centre_time"].sum() == 1
    assert sim["latent_similarity"].between(-1.0001, 1.0001).all()
    assert sim.dropna(subset=["track_lat"]).shape[0] >= 4  # the times the cyclone is tropical
    assert (out / "cyclone.png").stat().st_size > 20_000
    assert (work / "logs" / "tiny" / "embed.benchmark.tsv").exists()


def test_the_report_holds_the_cyclone_figure_and_its_caption(work):
    html = (work / "report.html").read_text()
    assert "cyclone.png" in html and "cyclone_track.csv" in html
    assert "off north-west Australia" in html  # the caption
