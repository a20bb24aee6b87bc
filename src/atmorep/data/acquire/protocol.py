"""What a source is: the :class:`Source` protocol, and what the sources on a configured grid share.

A source knows more than how to fetch a unit: the grid it delivers after ``data.area``, the valid
times of a month, how many bits a value takes in the GRIB it writes, and which settings of the
configuration it acts on. ``atmorep check`` (:mod:`atmorep.preflight`), ``atmorep plan`` and acquire
ask the source (never ``if source == ...``), so what the check accepts is what acquire delivers.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Protocol

import numpy as np

from atmorep import geometry
from atmorep.config import AcquireConfig, DataConfig


class Source(Protocol):
    #: what messages call it ("the embedded sample")
    name: str
    #: the keys of :data:`SETTINGS` this source acts on; the check refuses the others when they are set
    honours: frozenset[str]

    def fetch(self, data: DataConfig, cfg: AcquireConfig, field: str, month: str, out: Path) -> dict | None:
        """Write all messages of ``field`` for ``month`` ('YYYY-MM') inside the campaign to ``out``.

        A returned dict is recorded as the unit's provenance (:func:`provenance_path`)."""

    def grid(self, data: DataConfig) -> tuple[np.ndarray, np.ndarray] | None:
        """(latitudes north to south, longitudes west to east) it delivers after ``data.area``; None
        when the data decide (files or a store without ``data.grid``)."""

    def times(self, data: DataConfig, month: str) -> np.ndarray | None:
        """The valid times (datetime64[s]) of ``month`` inside the campaign it delivers; None when the
        data decide (irregular steps: ``data.step_hours`` 0)."""

    def bits(self, data: DataConfig) -> int:
        """Bits per value in the GRIB it writes (the download volume of ``atmorep plan``)."""

    def problems(self, data: DataConfig, cfg: AcquireConfig) -> list[str]:
        """What of the configuration it cannot deliver, one message per problem naming the key
        (:func:`unhonoured` for the settings it ignores, plus its own)."""


#: settings some sources act on, and whether a configuration sets them (its value for the message)
SETTINGS: dict[str, Callable[[DataConfig, AcquireConfig], object]] = {
    "data.grid": lambda data, cfg: list(data.grid) if data.grid else None,
    "data.area": lambda data, cfg: list(data.area) if data.area else None,
    "data.step_hours": lambda data, cfg: data.step_hours or None,
    "acquire.regrid": lambda data, cfg: cfg.regrid if cfg.regrid != "none" else None,
    "acquire.variables": lambda data, cfg: cfg.variables or None,
    "acquire.derive_vorticity": lambda data, cfg: cfg.derive_vorticity or None,
}


class _Honours(Protocol):
    honours: frozenset[str]


def unhonoured(source: _Honours, data: DataConfig, cfg: AcquireConfig) -> list[str]:
    """One message per setting of :data:`SETTINGS` that is set and that ``source`` does not act on."""
    out = []
    for key, value in SETTINGS.items():
        if key not in source.honours and (v := value(data, cfg)) is not None:
            out.append(
                f"{key} {v} is set, but acquire.source {cfg.source} does not use it "
                f"(it uses {', '.join(sorted(source.honours)) or 'none of ' + ', '.join(SETTINGS)}): remove it"
            )
    return out


class ConfiguredGrid:
    """A source that delivers ``data.grid`` cut to ``data.area`` (its own default grid without
    ``data.grid``, or the data's when it has none) at every ``data.step_hours`` step: cds, files, zarr."""

    name = "the source"
    honours: frozenset[str] = frozenset({"data.grid", "data.area", "data.step_hours"})
    #: the grid delivered without data.grid (dlat, dlon); None: the data decide
    default_grid: tuple[float, float] | None = None
    #: bits per value of what it writes
    bits_per_value = 16

    def grid(self, data: DataConfig) -> tuple[np.ndarray, np.ndarray] | None:
        step = data.grid or self.default_grid
        return None if step is None else geometry.regular_grid(step, data.area)

    def times(self, data: DataConfig, month: str) -> np.ndarray | None:
        return data.times(month) if data.step_hours > 0 else None

    def bits(self, data: DataConfig) -> int:
        return self.bits_per_value

    def problems(self, data: DataConfig, cfg: AcquireConfig) -> list[str]:
        return unhonoured(self, data, cfg)
