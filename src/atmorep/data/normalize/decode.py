"""Pass 1 of normalize: decode the messages of one (field, month) into a slab, held against the
configuration (levels, times, grid) and the QC gate; pass 2: its moments over time blocks.

Legend: T time steps, L levels, Y latitude rows, X longitude columns.
"""

from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from atmorep.config import DataConfig, NormalizeConfig
from atmorep.data.acquire.inventory import Expectation, check_grid, config_level, describe_kind, matches
from atmorep.data.normalize.qc import Gate
from atmorep.data.normalize.slabs import FileSlab, MemorySlab, block_steps, make_slab
from atmorep.data.normalize.statistics import Moments
from atmorep.errors import DataError
from atmorep.formats import grib

log = logging.getLogger(__name__)


@dataclass
class Month:
    """A decoded and checked (field, month)."""

    field: str
    month: str
    source: Path
    sha256: str
    times: np.ndarray  # T datetime64[s]
    levels: list[int]
    grid: grib.Grid
    slab: MemorySlab | FileSlab
    gate: Gate
    param: grib.Param

    @property
    def shape(self) -> tuple[int, int, int, int]:
        return len(self.times), len(self.levels), self.grid.ny, self.grid.nx


def decode_month(
    source: str | Path, data: DataConfig, cfg: NormalizeConfig, field: str, month: str, scratch: Path
) -> Month:
    """Decode the messages of ``field`` into a slab, holding them against the config and the QC gate."""
    source = grib.check_file(source)
    exp = Expectation.for_month(data, field, month)
    levels = list(exp.levels)
    times = exp.times if exp.times is not None else _scan_times(source, field, exp)
    if len(times) == 0:
        raise DataError(f"{source}: no time step of {month} inside the campaign {data.start} … {data.end}")
    gate = Gate(str(source), field, levels, times, cfg.qc)
    filled = np.zeros((len(times), len(levels)), bool)  # which (time, level) messages arrived
    t_index = {t: i for i, t in enumerate(times)}
    l_index = {lev: i for i, lev in enumerate(levels)}
    hasher = hashlib.sha256()  # fed by the message reader in the same pass: the file is read once
    slab, grid, param = None, None, None
    others, bad_levels = set(), set()
    try:
        decoder = grib.Decoder()
        for h, gid in decoder.messages(source, hasher):
            if not matches(h, field):
                others.add(h.param.name)
                continue
            lev = config_level(h.level, exp.kind)
            if lev is None:
                raise DataError(
                    f"{source}: field '{field}' is on {h.level.describe()} levels; the config "
                    f"expects {describe_kind(exp.kind)} (data.fields.{field}.levtype)"
                )
            if lev not in l_index:  # collected: one error naming every unexpected level, after the loop
                bad_levels.add(lev)
                continue
            it = t_index.get(h.time)
            if it is None:
                raise DataError(_off_axis(source, field, h, exp, month))
            if grid is None:  # the first message of the field: only now is the slab's (Y, X) known
                check_grid(h.grid, exp, str(source))
                grid, param = h.grid, h.param
                shape = (len(times), len(levels), grid.ny, grid.nx)
                slab = make_slab(shape, cfg, scratch)
                gate.param(h.param)
            elif h.grid is not grid and h.grid.key != grid.key:  # `is`: the decoder caches one Grid per grid
                raise DataError(
                    f"{source}: field '{field}' mixes grids {grid.describe()} and {h.grid.describe()} "
                    f"(message {h.index + 1}, level {lev} time {str(h.time)[:16]})"
                )
            il = l_index[lev]
            if filled[it, il]:  # the first copy stays; the gate fails the month on the duplicate
                gate.duplicate(il, h.time)
                continue
            filled[it, il] = True
            assert slab is not None  # made with the field's first message, above
            target = slab.target(it, il)
            # Decoded straight into the slab (in memory) or its one-message buffer (scratch file),
            # checked in canonical order, then committed.
            h.grid.to_canonical(decoder.values(gid, h), out=target)
            gate.message(il, h.time, target)
            slab.commit(it, il, target)
        if bad_levels:
            raise DataError(
                f"{source}: field '{field}' has levels {sorted(bad_levels)} the config does not "
                f"expect (expects {levels})"
            )
        if slab is None:
            raise DataError(f"{source}: field '{field}' not found (found {sorted(others) or 'no fields'})")
        if others:
            raise DataError(
                f"{source}: also holds fields {sorted(others)} the config does not expect here "
                f"(one field per file, '{field}')"
            )
        assert grid is not None and param is not None  # set with the slab
        gate.coverage(filled)
        gate.month()
        gate.raise_if_failed()
    except BaseException:  # Ctrl-C too: a scratch file of a month can be as large as the month
        if slab is not None:
            slab.close()
        raise
    return Month(field, month, source, hasher.hexdigest(), times, levels, grid, slab, gate, param)


def _off_axis(source, field, h, exp: Expectation, month: str) -> str:
    where = f"{source}: field '{field}' has time {str(h.time)[:16]}"
    if h.time < exp.first or h.time > exp.last:
        return f"{where} outside {month} ∩ the campaign ({exp.window})"
    return f"{where}, not one of the expected steps (data.step_hours)"


def _scan_times(source: Path, field: str, exp: Expectation) -> np.ndarray:
    """The distinct valid times of ``field`` (data.step_hours = 0: irregular steps)."""
    times = np.unique([h.time for h in grib.scan(source) if matches(h, field)])
    inside = (times >= exp.first) & (times <= exp.last)
    if not inside.all():
        raise DataError(
            f"{source}: field '{field}' has time {str(times[~inside][0])[:16]} outside "
            f"{exp.first.astype('datetime64[M]')} ∩ the campaign ({exp.window})"
        )
    return times


def moments_of(m: Month, cfg: NormalizeConfig) -> Moments:
    """Pass 2: statistics over time blocks of the slab."""
    T, L, Y, X = m.shape
    nt, _ = block_steps(cfg, m.shape)  # a block's float64 copy fits normalize.block_mb
    acc = Moments.empty(L, Y, X)
    for t0 in range(0, T, nt):
        acc.update(m.slab.read(t0, min(T, t0 + nt)))
    return acc
