"""Fixtures of the evaluation tests: shard stores from the embedded ERA5 sample (the session fixture
``sample_products``: t2m local, u10 global, tokens 2x9x9), a small untrained model saved as
``atmorep train`` saves it, and the same model briefly trained (``trained``). Builders are
importable by name (``from eval_builders import ...``)."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

if str(Path(__file__).parent) not in sys.path:
    sys.path.append(str(Path(__file__).parent))

from eval_builders import EVAL, NUM_TOKENS, tiny_model, trained_model  # noqa: E402


@pytest.fixture(scope="session")
def stores(sample_products) -> dict[str, list[str]]:
    return {f: [str(p)] for f, p in sample_products["shards"].items()}


@pytest.fixture(scope="session")
def model_path(tmp_path_factory):
    from atmorep.model.file import save_model

    path = tmp_path_factory.mktemp("model") / "model.safetensors"
    save_model(path, tiny_model())
    return path


@pytest.fixture(scope="session")
def dataset(stores):
    from atmorep.data.dataset import WindowDataset

    return WindowDataset(stores, NUM_TOKENS, np.datetime64(EVAL[0]), np.datetime64(EVAL[1]))


@pytest.fixture(scope="session")
def trained(stores):
    """The small model after a few seconds of training before the evaluation period."""
    return trained_model(stores)
