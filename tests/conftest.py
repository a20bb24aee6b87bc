"""Shared fixtures: the real data in ../shared/data and small pipeline products built from the
embedded ERA5 sample (session-scoped, built once)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from atmorep.config import AcquireConfig, DataConfig, FieldSpec, NormalizeConfig, ShardConfig

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).parent))  # tests_helpers
SHARED_DATA = REPO.parent / "shared" / "data"


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """The read-only real ERA5/IFS/NCEP files that sit beside the repository."""
    if not SHARED_DATA.exists():
        pytest.skip(f"{SHARED_DATA} is not present")
    return SHARED_DATA


def data_config(fields=("t2m", "u10"), start="2026-03-25T00", end="2026-03-31T23") -> DataConfig:
    return DataConfig(fields={f: FieldSpec() for f in fields}, start=start, end=end)


@pytest.fixture(scope="session")
def sample_products(tmp_path_factory):
    """GRIB, normalized and shard stores for t2m (local) and u10 (global) from the embedded sample."""
    from atmorep.data import normalize, shards
    from atmorep.data.acquire import sources

    root = tmp_path_factory.mktemp("sample")
    data = data_config()
    norm = NormalizeConfig(method="global", local=("t2m",))
    shard_cfg = ShardConfig(token_size=(2, 9, 9), shard_tokens=(4, 5, 10))
    out = {"root": root, "data": data, "shard": shard_cfg, "grib": {}, "normalized": {}, "shards": {}}
    for f in data.fields:
        g = sources.acquire(data, AcquireConfig(), f, "2026-03", root / "grib" / f"{f}.grib")
        n = normalize.normalize(data, norm, f, "2026-03", g, root / "normalized" / f"{f}.zarr")
        s = shards.shard(data, shard_cfg, f, "2026", [n], root / "shards" / f"{f}.zarr")
        out["grib"][f], out["normalized"][f], out["shards"][f] = g, n, s
    return out
