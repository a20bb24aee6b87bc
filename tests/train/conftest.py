"""The helpers of test_distributed (its launch parameters) are importable by name by the other training tests.

Appended, not prepended, to sys.path: ``from conftest import ...`` must keep finding tests/conftest.py.
"""

import sys
from pathlib import Path

if str(Path(__file__).parent) not in sys.path:
    sys.path.append(str(Path(__file__).parent))
