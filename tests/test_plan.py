"""The capacity planner's arithmetic and the shipped campaign configurations."""

import pytest
from conftest import REPO
from tests_helpers import atmorep

from atmorep import config as C
from atmorep.architectures import load_any
from atmorep.model.summary import parameter_count
from atmorep.plan import GRIB1_HEADER, load_profile, plan

CAMPAIGNS = sorted((REPO / "config" / "campaigns").glob("*.yaml"))


@pytest.mark.parametrize("path", CAMPAIGNS, ids=lambda p: p.stem)
def test_campaigns_validate_and_plan(path):
    cfg = C.load(path)
    p = plan(cfg, load_profile(REPO / "profiles" / "slurm"))
    assert p.grib_bytes > 0 and p.zarr_inodes > 0 and p.gpu_hours > 0
    assert p.slurm_jobs["pretrain"] == 1


def test_quickstart_arithmetic():
    cfg = C.load(REPO / "config" / "campaigns" / "quickstart.yaml")
    p = plan(cfg, load_profile(REPO / "profiles" / "slurm"))
    # January 2021, hourly, one level, 721 x 1440 points at 16 bits, one GRIB1 message each
    assert p.grib_bytes == 744 * (GRIB1_HEADER + 721 * 1440 * 2) and p.grib_files == 1
    # latitude cropped to 711 rows (whole 9-point tokens, poles out), float32
    assert p.zarr_bytes == 4 * (744 * 1 * 711 * 1440 + 1 * 1 * 2 * 711 * 1440)
    assert p.slurm_jobs == {"acquire": 1, "normalize": 1, "shard": 1, "pretrain": 1, "infer": 1, "score": 1, "embed": 1}
    demo = plan(C.load(REPO / "config" / "config.yaml"), load_profile(REPO / "profiles" / "slurm")).slurm_jobs
    assert demo["finetune"] == 1 and demo["embed"] == 1  # the demo's tp head: one job per finetune task


def test_paper_campaign_is_the_published_multiformer():
    m = load_any(REPO / "config" / "campaigns" / "paper.yaml")
    # wc5e2i3t: 741,136,272 logged by the original; ours drops its unused legacy token-info Linear (144);
    # temperature in [3,18,18] tokens (P 972 instead of 2187) shrinks its embedding Linear(P, D-16)
    # and its 16 tail heads Linear(D, P) by (2187 - 972) x (1008 + 16 x 1025)
    assert parameter_count(m.model, m.geometry()) == 741_136_272 - 144 - (2187 - 972) * (1008 + 16 * 1025)
    cfg = C.load(REPO / "config" / "campaigns" / "paper.yaml")
    jobs = plan(cfg, load_profile(REPO / "profiles" / "slurm")).slurm_jobs
    assert jobs["acquire"] == -(-6 * 43 * 12 // 24)  # 6 fields x 516 months, 24 per grouped job


def test_cli_plan_prints_every_figure(tmp_path):

    out = tmp_path / "plan.txt"
    r = atmorep(
        "plan",
        "--config",
        str(REPO / "config" / "config.yaml"),
        "--profile",
        str(REPO / "profiles" / "slurm"),
        "--output",
        str(out),
    )
    assert r.returncode == 0, r.stderr
    for word in ("GRIB to download", "inodes", "core-hours", "GPU-hours", "SLURM jobs"):
        assert word in r.stdout
    assert out.read_text().strip() == r.stdout.strip()


def test_regional_campaign_is_cropped_like_the_shard_stage(tmp_path):
    """data.area: the UK box -10..2°E, 58..50°N (33 x 49 points at 0.25°); 9-point tokens keep 27 rows
    (no pole to drop) and 45 columns (cropped to whole tokens: the grid is not periodic)."""
    import yaml

    raw = yaml.safe_load((REPO / "config" / "campaigns" / "quickstart.yaml").read_text())
    raw["data"]["area"] = [58.0, -10.0, 50.0, 2.0]
    (tmp_path / "uk.yaml").write_text(yaml.safe_dump(raw))
    p = plan(C.load(tmp_path / "uk.yaml"))
    assert p.grib_bytes == 744 * (GRIB1_HEADER + 33 * 49 * 2)
    assert p.zarr_bytes == 4 * (744 * 1 * 27 * 45 + 1 * 1 * 2 * 27 * 45)
