"""Small synthetic normalized stores for the shard and loader tests: several levels, two months, two
token sizes, fast to build. Import the fixture by name: ``from shard_builders import synthetic``."""

from __future__ import annotations

import numpy as np
import pytest
import xarray as xr

from atmorep.config import DataConfig, FieldSpec, ShardConfig
from atmorep.formats import zarrv3

#: 2° x 2.5° global grid, 2 model levels, 48 hourly steps across a month boundary
LATS = np.linspace(90, -90, 91)
LONS = np.arange(144) * 2.5
LEVELS = (96, 137)
MONTHS = {
    "2026-01": np.arange("2026-01-31T00", "2026-02-01T00", dtype="datetime64[h]"),
    "2026-02": np.arange("2026-02-01T00", "2026-02-02T00", dtype="datetime64[h]"),
}
SHARD = ShardConfig(token_size=(3, 4, 4), field_token_size={"t": (3, 8, 8)}, shard_tokens=(4, 3, 5))


def normalized_month(path, field: str, month: str, seed: int):
    """A store shaped like `atmorep normalize` output (global statistics)."""
    times = MONTHS[month].astype("datetime64[ns]")
    rng = np.random.default_rng(seed)
    data = rng.standard_normal((len(times), len(LEVELS), len(LATS), len(LONS)), dtype=np.float32)
    ds = xr.Dataset(
        {
            "data": (("time", "level", "latitude", "longitude"), data),
            "mean": ("level", np.array([280.0, 250.0], np.float32)),
            "std": ("level", np.array([10.0, 5.0], np.float32)),
        },
        coords={"time": times, "level": list(LEVELS), "latitude": LATS, "longitude": LONS},
        attrs={
            "field": field,
            "month": month,
            "normalization": "global",
            "source": f"{field}-{month}.grib",
            "source_sha256": f"{seed:064d}",
        },
    )
    return zarrv3.write_dataset(ds, path)


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory):
    """Normalized months and shard stores of fields u (tokens 3x4x4) and t (3x8x8)."""
    from atmorep.data import shards

    root = tmp_path_factory.mktemp("synthetic")
    data = DataConfig(fields={f: FieldSpec(LEVELS) for f in ("u", "t")}, start="2026-01-31T00", end="2026-02-01T23")
    out = {"root": root, "data": data, "shard": SHARD, "normalized": {}, "shards": {}}
    for k, f in enumerate(data.fields):
        months = [
            normalized_month(root / "normalized" / f / f"{m}.zarr", f, m, 10 * k + j) for j, m in enumerate(MONTHS)
        ]
        out["normalized"][f] = months
        out["shards"][f] = shards.shard(data, SHARD, f, "2026", months[::-1], root / "shards" / f"{f}.zarr")
    return out
