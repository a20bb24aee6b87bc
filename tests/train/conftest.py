"""The helpers of test_distributed (its launch parameters) are importable by name by the other training tests;
``products``: the sample's products with shard stores of the test's own.

Appended, not prepended, to sys.path: ``from conftest import ...`` must keep finding tests/conftest.py.
"""

import shutil
import sys
from pathlib import Path

import pytest

if str(Path(__file__).parent) not in sys.path:
    sys.path.append(str(Path(__file__).parent))


@pytest.fixture
def products(sample_products, tmp_path):
    """The sample's products with a private copy of its shard stores (tests rebuild and damage them)."""
    return {
        **sample_products,
        "shards": {
            f: Path(shutil.copytree(p, tmp_path / "shards" / Path(p).name))
            for f, p in sample_products["shards"].items()
        },
    }
