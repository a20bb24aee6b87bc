"""Helpers of the data tests (the fake CDS server, GRIB builders) are importable by name; the
``synthetic`` fixture (shard_builders) is available to every data test.

Appended, not prepended, to sys.path: ``from conftest import ...`` must keep finding tests/conftest.py.
"""

import sys
from pathlib import Path

if str(Path(__file__).parent) not in sys.path:
    sys.path.append(str(Path(__file__).parent))

from shard_builders import synthetic  # noqa: E402, F401 (the fixture, after the path above)
