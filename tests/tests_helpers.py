"""Small builders shared by tests (importable as `tests_helpers` thanks to conftest's sys.path)."""

import yaml

from atmorep import config as C


def schema() -> dict:
    return yaml.safe_load(C.schema_path().read_text())


def atmorep(*args, timeout: float = 300, env: dict | None = None):
    """``python -m atmorep ARGS`` in a subprocess (what a user types), its output captured as text."""
    import subprocess
    import sys

    cmd = [sys.executable, "-m", "atmorep", *map(str, args)]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env)
