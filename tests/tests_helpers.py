"""Small builders shared by tests (importable as `tests_helpers` thanks to conftest's sys.path)."""

import yaml

from atmorep import config as C


def schema() -> dict:
    return yaml.safe_load(C.schema_path().read_text())
