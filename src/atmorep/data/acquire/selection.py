"""Choosing the messages of one (field, month) from a mirror's inventory, explicitly or not at all.

A mirror holds what its centre retrieved, not what one job needs: several fields per file, a field
on several level types (u at 1000 hPa, at the tropopause, at 10 m), ensemble members, and forecasts
whose steps give one valid time twice (step 6 of one run, step 0 of the next). Each of these would
make a different training set, so each is selected by a config key and never guessed: the level
type and levels by ``data.fields.<f>.levtype``/``levels``, the member by ``acquire.files.member``, a
forecast step by ``acquire.files.same_valid_time``. What is left ambiguous is refused naming the
messages and the key that decides. A message found twice with the same bytes (a mirror's copy) is
one message. The result is one message per (valid time, level), sorted, on one grid, with every
expected combination present.
"""

from __future__ import annotations

import logging

import numpy as np

from atmorep.data.acquire.crop import holds
from atmorep.data.acquire.inventory import (
    Expectation,
    check_grid,
    config_level,
    describe_kind,
    describe_missing,
    level_types,
    matches,
    why_twice,
)
from atmorep.data.acquire.mirror import Located, read_message
from atmorep.errors import DataError
from atmorep.formats import grib

log = logging.getLogger(__name__)


def select(mirror: list[Located], exp: Expectation, field: str, member: int | None) -> list[Located]:
    """The field's messages on its level type and levels, inside the month, of ``member``
    (``acquire.files.member``; None: the files must hold one member)."""
    chosen = [
        loc
        for loc in mirror
        if matches(loc.header, field)
        and config_level(loc.header.level, exp.kind) in exp.levels
        and exp.first <= loc.header.time <= exp.last
    ]
    # Members are chosen before anything is deduplicated: two members are two forecasts, never copies.
    members = sorted({loc.header.number for loc in chosen})
    if member is None and len(members) > 1:
        where = sorted({str(loc.path) for loc in chosen})
        raise DataError(
            f"files: field '{field}' comes as {len(members)} ensemble members {members} in "
            f"{where[0]}"
            + (f" and {len(where) - 1} more files" if len(where) > 1 else "")
            + ": choose one with acquire.files.member"
        )
    if member is not None:
        mine = [loc for loc in chosen if loc.header.number == member]
        if chosen and not mine:
            raise DataError(
                f"files: field '{field}' has no ensemble member {member} (acquire.files.member); "
                f"the files hold members {members}"
            )
        chosen = mine
    return chosen


def why_none(mirror: list[Located], exp: Expectation, field: str, month: str, nfiles: int) -> str:
    """Why :func:`select` found no message of ``field``: what the files hold instead."""
    # From the broadest miss to the narrowest: no such field, not on that level type, not those levels/times.
    same = [loc for loc in mirror if matches(loc.header, field)]
    have = sorted({loc.header.param.name for loc in mirror})
    if not same:
        return f"files: no message of field '{field}' in {nfiles} files (they hold {have})"
    t = np.array([loc.header.time for loc in same])
    on_type = [loc for loc in same if config_level(loc.header.level, exp.kind) is not None]
    if not on_type:
        return (
            f"files: field '{field}' is not on {describe_kind(exp.kind)} "
            f"(data.fields.{field}.levtype: {exp.kind}); the files have it only on "
            f"{level_types(loc.header for loc in same)}"
        )
    return (
        f"files: no message of field '{field}' on levels {list(exp.levels)} ({exp.kind}) in {month} "
        f"∩ the campaign ({exp.window}); the files have it on {level_types(loc.header for loc in same)}, "
        f"{str(t.min())[:16]} .. {str(t.max())[:16]}"
    )


def in_area(chosen: list[Located], exp: Expectation) -> list[Located]:
    """The messages whose grid holds ``data.area`` (a mirror may hold other regions: their files are
    skipped, and logged, before any grid is judged); all of them when no grid holds it, so that
    :func:`one_grid` names why."""
    if exp.area is None:
        return chosen
    by_grid: dict[tuple, list[Located]] = {}
    for loc in chosen:
        by_grid.setdefault(loc.header.grid.key, []).append(loc)
    keep = []
    for locs in by_grid.values():
        g = locs[0].header.grid
        if g.regular and not holds(g.lats, g.lons, exp.area):
            files = sorted({str(loc.path) for loc in locs})
            shown = ", ".join(files[:3]) + (f" and {len(files) - 3} more" if len(files) > 3 else "")
            log.info("files: skipped %s: its %s grid does not hold data.area %s", shown, g.describe(), list(exp.area))
            continue
        keep += locs
    return keep or chosen


def one_grid(chosen: list[Located], exp: Expectation) -> grib.Grid:
    """The grid of the chosen messages: one, usable, of data.grid's resolution and containing data.area."""
    # By key, not by object: the same grid from two files (or editions) is one grid.
    grids: dict[tuple, list[Located]] = {}
    for loc in chosen:
        grids.setdefault(loc.header.grid.key, []).append(loc)
    if len(grids) > 1:
        parts = [f"{v[0].header.grid.describe()} in {sorted({str(x.path) for x in v})[0]}" for v in grids.values()]
        raise DataError(f"files: field '{exp.field}' comes on mixed grids: " + "; ".join(parts))
    grid = chosen[0].header.grid
    check_grid(grid, exp, str(chosen[0].path), crop=True)
    return grid


def complete(chosen: list[Located], exp: Expectation, same_valid_time: str) -> list[Located]:
    """One message per (valid time, level), sorted; every expected combination present.

    A message found twice (a mirror's copy: the same bytes) counts once; two different messages for
    one (valid time, level) are taken by ``same_valid_time`` when they are forecast steps of
    different runs, else refused naming both.
    """
    groups: dict[tuple, list[Located]] = {}
    for loc in chosen:
        groups.setdefault((loc.header.time, config_level(loc.header.level, exp.kind)), []).append(loc)
    by_key: dict[tuple, Located] = {}
    for key, locs in groups.items():
        distinct: dict[bytes, Located] = {}
        # Copies are told by their bytes; the bytes are read only when a key has candidates to compare.
        for loc in locs:
            distinct.setdefault(read_message(loc) if len(locs) > 1 else b"", loc)
        locs = list(distinct.values())
        runs = {loc.header.base for loc in locs}
        # same_valid_time only settles forecast steps: one message per run, on one level type and member.
        # Anything else (two level types, members) stays ambiguous and is refused below.
        if (
            len(locs) > 1
            and same_valid_time != "refuse"
            and len(runs) == len(locs)
            and len({(loc.header.level, loc.header.number) for loc in locs}) == 1
        ):
            # Shortest step: the latest run; longest: the earliest one.
            locs = sorted(locs, key=lambda x: x.header.step_hours)
            locs = [locs[0] if same_valid_time == "shortest_step" else locs[-1]]
        if len(locs) > 1:
            both = "; ".join(
                f"{loc.path} message {loc.header.index + 1} (base {str(loc.header.base)[:16]}, "
                f"step {loc.header.step_hours:g} h, {loc.header.level.describe()}, "
                f"member {loc.header.number})"
                for loc in locs[:2]
            )
            raise DataError(
                f"files: field '{exp.field}' level {key[1]} valid time {str(key[0])[:16]} is in "
                f"{len(locs)} different messages: {both}; {why_twice([x.header for x in locs])}"
            )
        by_key[key] = locs[0]
    times = np.array(sorted({k[0] for k in by_key}))
    axis = exp.time_index(times)
    filled = np.zeros((len(axis), len(exp.levels)), bool)
    for t, lev in by_key:
        it = int(np.searchsorted(axis, t))
        if it >= len(axis) or axis[it] != t:
            raise DataError(
                f"files: field '{exp.field}' has time {str(t)[:16]} off the {exp.window} steps (data.step_hours)"
            )
        filled[it, exp.levels.index(lev)] = True
    if missing := describe_missing(exp.levels, axis, filled):
        raise DataError(
            f"files: field '{exp.field}' misses {int((~filled).sum())} of {filled.size} "
            f"(level, time) combinations; " + "; ".join(missing)
        )
    return [by_key[k] for k in sorted(by_key)]
