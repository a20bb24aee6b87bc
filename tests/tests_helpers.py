"""Small builders shared by tests (importable as `tests_helpers` thanks to conftest's sys.path)."""

import yaml


def schema() -> dict:
    """The committed (generated) JSON schema, workflow/schemas/config.schema.yaml."""
    from atmorep.schema import path

    return yaml.safe_load(path().read_text())


def atmorep(*args, timeout: float = 300, env: dict | None = None):
    """``python -m atmorep ARGS`` in a subprocess (what a user types), its output captured as text."""
    import subprocess
    import sys

    cmd = [sys.executable, "-m", "atmorep", *map(str, args)]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env)


class Payload:
    """What a crafted model file carries: unpickling it runs ``touch MARKER`` (``__reduce__``)."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        import os

        return os.system, (f"touch {self.marker}",)


def write_payload(path, marker, kind: str = "torch"):
    """A file at ``path`` whose loading by pickle creates ``marker``: ``torch`` a torch.save zip of a
    record like an old atmorep model.pt (format, weights, the payload), ``pickle`` a bare pickle."""
    import pickle

    import torch

    record = {"format": "atmorep-model/1", "state_dict": {"w": torch.zeros(2)}, "extra": Payload(marker)}
    if kind == "torch":
        torch.save(record, path)
    else:
        with open(path, "wb") as f:
            pickle.dump(record, f)
    return path
