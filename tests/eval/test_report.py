"""`snakemake --report` gathers the evaluation figures with their captions, and the report renders in a
headless Chromium (screenshot not blank, figures present, no console errors).

The infer and score rules run on their own: a Snakefile that includes only ``common.smk`` and ``evaluate.smk``
finds ready shard stores (from the embedded sample) and a small untrained model where the earlier
stages would have put them.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import matplotlib.image as mpimg
import pytest
import yaml
from conftest import REPO

pytestmark = [pytest.mark.slow, pytest.mark.workflow]

CHROMIUM = Path("/usr/bin/chromium")
CONFIG = {
    "run": "tiny",
    "seed": 3,
    "data": {
        "fields": {"t2m": {"levels": [0]}, "u10": {"levels": [0]}},
        "start": "2026-03-25T00",
        "end": "2026-03-31T23",
    },
    "shard": {"token_size": [2, 9, 9], "shard_tokens": [12, 19, 40]},  # as the sample stores and model
    "model": {"num_tokens": [3, 3, 6]},  # a window of 6 steps: each period must hold one (checked at start)
    "train": {"start": "2026-03-25T00", "end": "2026-03-30T05"},  # disjoint from evaluate (checked at start)
    "evaluate": {"start": "2026-03-30T06", "end": "2026-03-31T23", "samples": 4, "batch_size": 4},
}
SNAKEFILE = f"""
import json

configfile: "config.yaml"
include: "{REPO}/workflow/rules/common.smk"

rule pretrain:  # stands in for the real rule: the test provides its model
    output: model=f"results/{{RUN}}/train/model.safetensors"
    shell: "exit 1"

include: "{REPO}/workflow/rules/evaluate.smk"
report: "{REPO}/workflow/report/workflow.rst"

rule all:
    input: rules.score.output

with open("inputs.json", "w") as f:  # where the rule expects the earlier stages' products
    json.dump({{"shards": shard_stores(), "model": rules.pretrain.output.model}}, f)
"""


def _snakemake(work: Path, *args, timeout=300):
    env = {
        **os.environ,
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
        "OMP_NUM_THREADS": "1",
    }
    return subprocess.run(
        [sys.executable, "-m", "snakemake", "-s", "Snakefile", "--cores", "1", *args],
        cwd=work,
        capture_output=True,
        text=True,
        env=env,
        timeout=timeout,
    )


@pytest.fixture(scope="module")
def report(tmp_path_factory, sample_products, model_path):
    work = tmp_path_factory.mktemp("report")
    (work / "config.yaml").write_text(yaml.safe_dump(CONFIG))
    (work / "Snakefile").write_text(SNAKEFILE)
    r = _snakemake(work, "--list-rules")
    assert r.returncode == 0, (r.stdout + r.stderr)[-5000:]
    inputs = json.loads((work / "inputs.json").read_text())
    for path in inputs["shards"]:  # .../{field}/{year}.zarr
        field = Path(path).parent.name
        shutil.copytree(sample_products["shards"][field], work / path)
    (work / inputs["model"]).parent.mkdir(parents=True, exist_ok=True)
    shutil.copy(model_path, work / inputs["model"])
    r = _snakemake(work, "all")
    assert r.returncode == 0, (r.stdout + r.stderr)[-5000:]
    r = _snakemake(work, "all", "--report", "report.html")
    assert r.returncode == 0, (r.stdout + r.stderr)[-5000:]
    return work


def test_report_holds_every_figure_and_caption(report):
    html = (report / "report.html").read_text()
    for name in (
        "forecast_t2m.png",
        "forecast_u10.png",
        "scores_t2m.png",
        "rank_histogram_u10.png",
        "skill.png",
        "attention_t2m.png",
        "scores.csv",
        "scorecard.png",
        "spectra.png",
        "comparisons.csv",
    ):
        assert name in html, name
    assert "Rank of the truth among the ensemble members" in html  # a caption
    assert "hatched" in html.lower() and "radially averaged" in html  # the scorecard's and spectra's
    assert "AtmoRep (Lessig et al. 2023) as a reproducible pipeline" in html  # the workflow description


def _jobs(out: str) -> set[str]:
    table = out.split("Job stats:")[1].split("\n\n")[0].splitlines()[3:]
    return {line.split()[0] for line in table if line.split() and line.split()[0] != "total"}


def test_a_scoring_setting_reruns_score_and_nothing_upstream(report):
    """evaluate.bootstrap_iterations is a scoring key (config.SCORING_KEYS): the infer rule's params lack
    it, so the stored forecasts stay and only `score` reruns; an inference key reruns both."""
    r = _snakemake(report, "-n", "all")
    assert "Nothing to be done" in r.stdout + r.stderr, (r.stdout + r.stderr)[-3000:]
    for change, expected in (
        ({"bootstrap_iterations": 200}, {"score", "all"}),
        ({"climatology_window_hours": 24}, {"score", "all"}),
        ({"samples": 3}, {"infer", "score", "all"}),
    ):
        cfg = {**CONFIG, "evaluate": {**CONFIG["evaluate"], **change}}
        (report / "changed.yaml").write_text(yaml.safe_dump(cfg))
        r = _snakemake(report, "-n", "all", "--configfile", "changed.yaml")
        assert r.returncode == 0, (r.stdout + r.stderr)[-3000:]
        assert _jobs(r.stdout) == expected, change


#: clicks through the report as a person would: Results > Evaluation > Maps > the eye of the first entry
NAVIGATE = """<script>
function clickText(t) {
  const el = [...document.querySelectorAll("body *")].find(e => e.children.length === 0 && e.textContent.trim() === t);
  if (el) { el.click(); } else { console.log("navigation: no element '" + t + "'"); }
}
setTimeout(() => clickText("Results"), 1000);
setTimeout(() => clickText("Evaluation"), 2000);
setTimeout(() => clickText("Maps"), 3000);
setTimeout(() => document.querySelector('a[iconname="eye"]').click(), 4000);
</script>"""


def _chromium(url: str, profile: Path, *args) -> subprocess.CompletedProcess:
    flags = [
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--disable-dev-shm-usage",
        "--hide-scrollbars",
        f"--user-data-dir={profile}",
        "--enable-logging=stderr",
        "--v=0",
        "--virtual-time-budget=10000",
        "--window-size=1400,1000",
    ]
    return subprocess.run([str(CHROMIUM), *flags, *args, url], capture_output=True, text=True, timeout=120)


def _console_errors(stderr: str) -> list[str]:
    console = [line for line in stderr.splitlines() if "CONSOLE" in line]
    return [line for line in console if re.search(r"error|uncaught|failed|navigation:", line, re.I)]


@pytest.mark.skipif(not CHROMIUM.exists(), reason="needs Debian's chromium (/usr/bin/chromium)")
def test_report_renders_in_headless_chromium_with_its_figures(report, tmp_path):
    html = (report / "report.html").read_text()
    end = html.rfind("</body>")
    clicked = tmp_path / "clicked.html"
    clicked.write_text(html[:end] + NAVIGATE + html[end:])
    for name, page in (("front", report / "report.html"), ("figure", clicked)):
        shot = tmp_path / f"{name}.png"
        r = _chromium(page.as_uri(), tmp_path / f"profile-{name}", f"--screenshot={shot}")
        assert shot.exists(), r.stderr[-3000:]
        assert not _console_errors(r.stderr), _console_errors(r.stderr)
        img = mpimg.imread(shot)
        assert img.shape[0] >= 900 and img[..., :3].std() > 0.02, f"the report's {name} page renders blank"
    # the figure page shows the map: a colourful region right of the navigation panel
    content = img[:, 400:, :3]
    assert (content.max(-1) - content.min(-1) > 0.3).mean() > 0.01, "no figure drawn"
    dom = _chromium(clicked.as_uri(), tmp_path / "profile-dom", "--dump-dom")
    assert re.search(r'<img src="data:image/png;[^"]*filename=forecast_t2m\.png', dom.stdout), "figure not rendered"
