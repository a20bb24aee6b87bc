"""Quality gate of the normalize stage: checks one (field, month) message by message.

Checks: non-finite values (NaN/inf), values outside the field's physical range, a message or a
whole level that is constant, wrong units, duplicated and missing (level, time) combinations.
Every failure names the file, field, level and time; :meth:`Gate.summary` is the stage's QC
product (JSON), written only when the gate passes.

Legend: T time steps, L levels, Y latitude rows, X longitude columns.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np

from atmorep import fields
from atmorep.config import QCConfig
from atmorep.errors import DataError
from atmorep.formats.grib import Param

log = logging.getLogger(__name__)

#: the order in which failures are reported (the most fundamental first)
CHECKS = ("finite", "units", "range", "duplicates", "missing", "constant")


@dataclass
class Issue:
    check: str
    text: str  # "level 137 time 2021-03-04T05:00: 12 non-finite values (NaN/inf)"


def _t(time) -> str:
    return str(np.datetime64(time, "m"))


class Gate:
    """Collects the checks of one field and month; ``raise_if_failed`` turns them into one error."""

    def __init__(self, source: str, field: str, levels: list[int], times: np.ndarray, cfg: QCConfig):
        self.source, self.field, self.levels, self.times = source, field, list(levels), times
        self.info = fields.info(field)
        rng = cfg.ranges.get(field) or (self.info.valid_range if self.info else None)
        self.range = tuple(float(r) for r in rng) if rng is not None else None
        self.check_units = cfg.check_units
        self.issues: list[Issue] = []
        L = len(self.levels)
        self.minimum = [np.inf] * L
        self.maximum = [-np.inf] * L
        self.constant_ok = self.info is not None and self.info.may_be_constant  # tp: 0 everywhere at some times
        self.units: str | None = None
        self.messages = 0

    def _add(self, check: str, text: str) -> None:
        if sum(i.check == check for i in self.issues) < 1000:  # keep the first ones of each kind
            self.issues.append(Issue(check, text))

    def param(self, p: Param) -> None:
        """Once per parameter: units as the catalogue expects them."""
        if self.units is not None:
            return
        self.units = p.units
        if self.check_units and self.info is not None and p.units != self.info.units:
            self._add("units", f"has units '{p.units}' (paramId {p.param_id}), expected '{self.info.units}'")

    def message(self, il: int, time, values_YX: np.ndarray) -> None:
        """Checks one decoded message (canonical float32 values)."""
        self.messages += 1
        lo, hi = float(values_YX.min()), float(values_YX.max())  # NaN and inf show up in min or max
        if not (np.isfinite(lo) and np.isfinite(hi)):
            bad = int((~np.isfinite(values_YX)).sum())
            self._add("finite", f"{self._where(il, time)}: {bad} non-finite values (NaN/inf) of {values_YX.size}")
            finite = values_YX[np.isfinite(values_YX)]  # the range and constancy checks on what is left
            if finite.size == 0:
                return
            lo, hi = float(finite.min()), float(finite.max())
        if lo < self.minimum[il]:
            self.minimum[il] = lo
        if hi > self.maximum[il]:
            self.maximum[il] = hi
        rng = self.range
        if rng is not None and (lo < rng[0] or hi > rng[1]):
            n = int(((values_YX < rng[0]) | (values_YX > rng[1])).sum())
            self._add(
                "range",
                f"{self._where(il, time)}: {n} values outside the physical range [{rng[0]:g}, "
                f"{rng[1]:g}] {self.units or ''} (min {lo:g}, max {hi:g})".replace("  ", " "),
            )
        if lo == hi and not self.constant_ok:  # weather is never one value over the grid: a broken message
            self._add("constant", f"{self._where(il, time)}: every value is {lo:g}")

    def _where(self, il: int, time) -> str:
        return f"level {self.levels[il]} time {_t(time)}"

    def duplicate(self, il: int, time) -> None:
        self._add("duplicates", f"level {self.levels[il]} time {_t(time)} appears more than once")

    def coverage(self, filled_TL: np.ndarray) -> None:
        """Every expected (level, time) combination is present: names the missing ones per level."""
        for il, lev in enumerate(self.levels):
            gone = np.flatnonzero(~filled_TL[:, il])
            if len(gone):
                shown = ", ".join(_t(self.times[i]) for i in gone[:8]) + (", ..." if len(gone) > 8 else "")
                self._add("missing", f"level {lev}: {len(gone)} of {len(self.times)} time steps missing: {shown}")

    def month(self) -> None:
        """A level that never changes over the month (after all messages)."""
        for il, lev in enumerate(self.levels):
            if self.minimum[il] == self.maximum[il] and not (self.info is not None and self.info.may_be_constant):
                # One issue for the level instead of one per message of it.
                self.issues = [
                    i for i in self.issues if not (i.check == "constant" and i.text.startswith(f"level {lev} time"))
                ]
                self._add("constant", f"level {lev} is constant ({self.minimum[il]:g}) over the whole month")

    def error(self) -> DataError:
        order = {c: i for i, c in enumerate(CHECKS)}
        issues = sorted(self.issues, key=lambda i: order[i.check])
        first = issues[0]
        more = (
            f" (+{len(issues) - 1} more: {', '.join(sorted({i.check for i in issues[1:]}))})" if len(issues) > 1 else ""
        )
        return DataError(f"{self.source}: field '{self.field}' {first.text}{more}")

    def raise_if_failed(self) -> None:
        if self.issues:
            for i in self.issues[:50]:  # the log lists the first ones; the error names the most fundamental
                log.error("QC %s: %s", i.check, i.text)
            raise self.error()

    def summary(self, stats_by_level: dict | None = None) -> dict:
        """The QC product: what was checked, per-level extremes and statistics, the verdict."""
        levels = {}
        for il, lev in enumerate(self.levels):
            entry = {"min": float(self.minimum[il]), "max": float(self.maximum[il])}
            if stats_by_level:
                entry.update(stats_by_level[lev])
            levels[str(lev)] = entry
        return {
            "source": self.source,
            "field": self.field,
            "messages": self.messages,
            "units": self.units,
            "range": list(self.range) if self.range else None,
            "time_steps": len(self.times),
            "first": _t(self.times[0]) if len(self.times) else None,
            "last": _t(self.times[-1]) if len(self.times) else None,
            "checks": {c: ("fail" if any(i.check == c for i in self.issues) else "pass") for c in CHECKS},
            "issues": [f"{i.check}: {i.text}" for i in self.issues],
            "levels": levels,
            "status": "fail" if self.issues else "pass",
        }
