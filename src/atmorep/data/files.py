"""The ``files`` source: GRIB an HPC centre mirrors (MARS retrievals, ERA5 on disk).

``acquire.files.paths`` names directories (searched recursively) or glob patterns. Files may hold
any mix of fields, several files may make up one month, and GRIB1 and GRIB2, either latitude order
and 0..360 or -180..180 longitudes may be mixed: what matters is the canonical grid. For one
(field, month) the source selects the messages of the field on the configured levels inside the
month and campaign, checks that they are on one usable grid and that no expected
(level, time) combination is missing (naming each missing one), and writes them in (time, level)
order: raw message bytes when the grid is regular lat/lon, regridded values otherwise
(``acquire.regrid``). With ``acquire.derive_vorticity`` vo and d are computed from u and v when the
files have no vo or d.

The message inventory of each file (headers only) is cached in ``acquire.files.index_dir``, keyed
by path, size and modification time, so many small jobs do not rescan a large mirror.
"""

from __future__ import annotations

import glob
import hashlib
import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from atmorep.atomic import Replacement
from atmorep.config import AcquireConfig, DataConfig
from atmorep.data import grib, regrid
from atmorep.data.grib import DataError, Header
from atmorep.data.inventory import Expectation, check_grid, describe_missing, matches

log = logging.getLogger(__name__)

GRIB_SUFFIXES = (".grib", ".grb", ".grib1", ".grib2", ".grb1", ".grb2")


def expand(patterns) -> list[Path]:
    """Files named by directories (recursive) and glob patterns, sorted, without duplicates."""
    found: set[Path] = set()
    for pat in patterns:
        p = Path(os.path.expanduser(pat))
        if p.is_dir():
            found.update(q for q in p.rglob("*") if q.is_file() and not q.name.startswith(".")
                         and (q.suffix.lower() in GRIB_SUFFIXES or _looks_like_grib(q)))
        else:
            found.update(Path(q) for q in glob.glob(str(p), recursive=True) if Path(q).is_file())
    return sorted(found)


def _looks_like_grib(path: Path) -> bool:
    try:
        with open(path, "rb") as f:
            return f.read(4) == b"GRIB"
    except OSError:
        return False


@dataclass
class Located:
    """A message of a file in the mirror."""

    path: Path
    header: Header


class Index:
    """Per-file message inventories, cached on disk by (path, size, mtime)."""

    def __init__(self, index_dir: str):
        self.dir = Path(os.path.expanduser(index_dir)) if index_dir else Path.home() / ".cache" / "atmorep" / "grib-index"

    def headers(self, path: Path) -> list[Header]:
        st = path.stat()
        key = hashlib.sha1(str(path.resolve()).encode()).hexdigest()
        cache = self.dir / f"{key}.json"
        stamp = [st.st_size, st.st_mtime_ns]
        if cache.exists():
            try:
                entry = json.loads(cache.read_text())
                if entry["stamp"] == stamp:
                    return _load(path, entry)
            except (ValueError, KeyError, OSError):
                pass  # a stale or broken cache entry is rebuilt
        headers = grib.scan(path)
        try:
            with Replacement(cache) as tmp:
                tmp.write_text(json.dumps(_dump(headers, stamp)))
        except OSError as exc:
            log.warning("cannot cache the inventory of %s in %s (%s)", path, self.dir, exc)
        return headers


def _dump(headers: list[Header], stamp) -> dict:
    params, levels, grids = {}, {}, {}
    rows = []
    for h in headers:
        p = params.setdefault(h.param, len(params))
        lv = levels.setdefault(h.level, len(levels))
        g = grids.setdefault(id(h.grid), (len(grids), h.index))
        rows.append([h.index, h.offset, h.length, h.edition, p, lv, int(h.time.astype(np.int64)), g[0],
                     int(h.bitmap), int(h.number)])
    return {"stamp": stamp,
            "params": [[p.name, p.short_name, p.param_id, p.units, p.long_name] for p in params],
            "levels": [[lv.type_of_level, lv.kind, lv.level] for lv in levels],
            "grids": [msg for _, msg in grids.values()], "rows": rows}


def _load(path: Path, entry: dict) -> list[Header]:
    params = [grib.Param(*p) for p in entry["params"]]
    levels = [grib.Level(*lv) for lv in entry["levels"]]
    rows = entry["rows"]
    by_index = {r[0]: r for r in rows}
    grids = []
    for msg in entry["grids"]:  # rebuild each grid from one message that has it
        r = by_index[msg]
        with open(path, "rb") as f:
            f.seek(r[1])
            raw = grib.Raw(msg, r[1], r[2], f.read(r[2]))
        grids.append(_grid_of(raw))
    return [Header(r[0], r[1], r[2], r[3], params[r[4]], levels[r[5]], np.datetime64(r[6], "s"), grids[r[7]],
                   bool(r[8]), r[9]) for r in rows]


def _grid_of(raw: grib.Raw) -> grib.Grid:
    import eccodes

    gid = eccodes.codes_new_from_message(raw.data)
    try:
        return grib._grid_from_handle(gid)
    finally:
        eccodes.codes_release(gid)


def read_message(loc: Located) -> bytes:
    with open(loc.path, "rb") as f:
        f.seek(loc.header.offset)
        return f.read(loc.header.length)


def decode_located(loc: Located) -> np.ndarray:
    """Values of one mirrored message, float64 in file order (NaN where missing)."""
    import eccodes

    gid = eccodes.codes_new_from_message(read_message(loc))
    try:
        return grib.values(gid, loc.header)
    finally:
        eccodes.codes_release(gid)


class FilesSource:
    def fetch(self, data: DataConfig, cfg: AcquireConfig, field: str, month: str, out: Path) -> None:
        paths = expand(cfg.files.paths)
        if not cfg.files.paths:
            raise DataError("acquire.source is 'files' but acquire.files.paths is empty")
        if not paths:
            raise DataError(f"acquire.files.paths {list(cfg.files.paths)} matched no GRIB file")
        exp = Expectation.for_month(data, field, month, cfg.regrid)
        index = Index(cfg.files.index_dir)
        mirror = [Located(p, h) for p in paths for h in index.headers(p)]
        chosen = self.select(mirror, exp, field)
        if not chosen and cfg.derive_vorticity and field in ("vo", "d"):
            return self.derive(mirror, exp, data, field, out)
        if not chosen:
            raise DataError(self._nothing(mirror, exp, field, month, len(paths)))
        grid = self.one_grid(chosen, exp)
        chosen = self.complete(chosen, exp)
        self.write(chosen, grid, data, field, out)

    @staticmethod
    def select(mirror: list[Located], exp: Expectation, field: str) -> list[Located]:
        return [loc for loc in mirror if matches(loc.header, field) and loc.header.level.kind == exp.kind
                and loc.header.level.level in exp.levels and exp.first <= loc.header.time <= exp.last]

    @staticmethod
    def _nothing(mirror, exp: Expectation, field: str, month: str, nfiles: int) -> str:
        same = [loc for loc in mirror if matches(loc.header, field)]
        have = sorted({loc.header.param.name for loc in mirror})
        if not same:
            return f"files: no message of field '{field}' in {nfiles} files (they hold {have})"
        kinds = sorted({loc.header.level.type_of_level for loc in same})
        levels = sorted({loc.header.level.level for loc in same})
        t = np.array([loc.header.time for loc in same])
        return (f"files: no message of field '{field}' on levels {list(exp.levels)} ({exp.kind}) in {month} "
                f"∩ the campaign ({exp.window}); the files have it on {kinds} levels {levels}, "
                f"{str(t.min())[:16]} .. {str(t.max())[:16]}")

    @staticmethod
    def one_grid(chosen: list[Located], exp: Expectation) -> grib.Grid:
        grids: dict[tuple, list[Located]] = {}
        for loc in chosen:
            grids.setdefault(loc.header.grid.key, []).append(loc)
        if len(grids) > 1:
            parts = [f"{v[0].header.grid.describe()} in {sorted({str(x.path) for x in v})[0]}" for v in grids.values()]
            raise DataError(f"files: field '{exp.field}' comes on mixed grids: " + "; ".join(parts))
        grid = chosen[0].header.grid
        check_grid(grid, exp, str(chosen[0].path))
        return grid

    @staticmethod
    def complete(chosen: list[Located], exp: Expectation) -> list[Located]:
        """One message per (time, level), sorted; every expected combination present."""
        by_key: dict[tuple, Located] = {}
        for loc in chosen:
            key = (loc.header.time, loc.header.level.level)
            if key in by_key:
                log.warning("files: %s level %s time %s is in %s and %s; using the first", exp.field, key[1],
                            str(key[0])[:16], by_key[key].path, loc.path)
                continue
            by_key[key] = loc
        times = np.array(sorted({k[0] for k in by_key}))
        axis = exp.time_index(times)
        filled = np.zeros((len(axis), len(exp.levels)), bool)
        for t, lev in by_key:
            it = int(np.searchsorted(axis, t))
            if it >= len(axis) or axis[it] != t:
                raise DataError(f"files: field '{exp.field}' has time {str(t)[:16]} off the {exp.window} steps "
                                "(data.step_hours)")
            filled[it, exp.levels.index(lev)] = True
        if missing := describe_missing(exp.levels, axis, filled):
            raise DataError(f"files: field '{exp.field}' misses {int((~filled).sum())} of {filled.size} "
                            f"(level, time) combinations; " + "; ".join(missing))
        return [by_key[k] for k in sorted(by_key)]

    @staticmethod
    def write(chosen: list[Located], grid: grib.Grid, data: DataConfig, field: str, out: Path) -> None:
        if grid.regular:
            with open(out, "wb") as f:
                for loc in chosen:
                    f.write(read_message(loc))
            return
        if data.grid is None:
            raise DataError(f"files: field '{field}' is on {grid.describe()}: regridding needs data.grid")
        lats, lons = regrid.target_grid(*data.grid)
        spec = data.fields[field]
        times = sorted({loc.header.time for loc in chosen})
        levels = list(spec.levels)
        values = np.empty((1, len(levels), len(lats), len(lons)), np.float32)
        for t in times:  # one time step at a time keeps memory bounded
            for loc in (x for x in chosen if x.header.time == t):
                values[0, levels.index(loc.header.level.level)] = regrid.gaussian_to_regular(
                    decode_located(loc), loc.header.grid, lats, lons)
            grib.write_grib(out, field, values, np.array([t]), levels, lats, lons, bits_per_value=24,
                            levtype=spec.kind, append=True)
        log.info("files: regridded %s from %s to %gx%g", field, grid.describe(), *data.grid)

    def derive(self, mirror: list[Located], exp: Expectation, data: DataConfig, field: str, out: Path) -> None:
        """vo or d from u and v (see :mod:`atmorep.data.vorticity`)."""
        from atmorep.data.vorticity import vorticity_divergence

        winds = {}
        for comp in ("u", "v"):
            sel = self.select(mirror, exp, comp)
            if not sel:
                raise DataError(f"files: no '{field}' and no '{comp}' to derive it from (acquire.derive_vorticity)")
            self.one_grid(sel, exp)
            winds[comp] = {(loc.header.time, loc.header.level.level): loc for loc in self.complete(sel, exp)}
        if winds["u"].keys() != winds["v"].keys():
            raise DataError(f"files: u and v cover different (time, level) combinations; cannot derive '{field}'")
        grid = next(iter(winds["u"].values())).header.grid
        if not grid.regular:
            raise DataError(f"files: deriving '{field}' needs u and v on a regular lat/lon grid, not {grid.describe()}")
        spec = data.fields[field]
        levels = list(spec.levels)
        for t in sorted({k[0] for k in winds["u"]}):
            values = np.empty((1, len(levels), grid.ny, grid.nx), np.float32)
            for il, lev in enumerate(levels):
                u_loc, v_loc = winds["u"][(t, lev)], winds["v"][(t, lev)]
                u = u_loc.header.grid.to_canonical(decode_located(u_loc))
                v = v_loc.header.grid.to_canonical(decode_located(v_loc))
                vo, d = vorticity_divergence(u, v, grid.lats, grid.lons)
                values[0, il] = vo if field == "vo" else d
            grib.write_grib(out, field, values, np.array([t]), levels, grid.lats, grid.lons, bits_per_value=24,
                            levtype=spec.kind, append=True)
        log.info("files: derived %s from u and v on %s", field, grid.describe())
