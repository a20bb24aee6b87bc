"""The ``files`` source: GRIB an HPC centre mirrors (MARS retrievals, ERA5 on disk).

``acquire.files.paths`` names directories (searched recursively) or glob patterns. Files may hold
any mix of fields, several files may make up one month, and GRIB1 and GRIB2, either latitude order
and 0..360 or -180..180 longitudes may be mixed: what matters is the canonical grid. For one
(field, month) the source selects the messages of the field on its level type and levels
(``data.fields.<f>.levtype``, matched against each message's typeOfLevel), its ensemble member
(``acquire.files.member``) and valid times inside the month and campaign, checks that they are on
one usable grid containing ``data.area`` and that no expected (level, time) combination is missing
(naming each missing one), and writes them in (time, level) order: raw message bytes when the grid
is regular lat/lon and is the area, the area cut out (:func:`~atmorep.data.acquire.inventory.crop_indices`,
values as 32-bit IEEE, exactly what a direct read decodes) when it is bigger, regridded values
otherwise (``acquire.regrid``). With ``acquire.derive_vorticity`` vo and d are computed from u and v
when the files have no vo or d.

Nothing is chosen silently: several members without ``acquire.files.member``, or two different
messages for one (valid time, level) (two level types, two members, step 0 of one run and step 6 of
the previous without ``acquire.files.same_valid_time``) are refused naming both messages. What was
cut from where is recorded beside the output (:func:`atmorep.data.acquire.sources.provenance_path`).

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

from atmorep.config import AcquireConfig, DataConfig
from atmorep.data.acquire import inventory, regrid
from atmorep.data.acquire.inventory import (
    Expectation,
    check_grid,
    config_level,
    crop_indices,
    describe_missing,
    level_types,
    matches,
    why_twice,
)
from atmorep.errors import DataError
from atmorep.formats import grib
from atmorep.formats.atomic import Replacement
from atmorep.formats.grib import Header

log = logging.getLogger(__name__)

GRIB_SUFFIXES = (".grib", ".grb", ".grib1", ".grib2", ".grb1", ".grb2")
NETCDF_SUFFIXES = (".nc", ".nc4", ".netcdf", ".cdf")


def expand(patterns) -> list[Path]:
    """Files named by directories (recursive) and glob patterns, sorted, without duplicates."""
    found: set[Path] = set()
    for pat in patterns:
        p = Path(os.path.expanduser(pat))
        if p.is_dir():
            found.update(
                q
                for q in p.rglob("*")
                if q.is_file()
                and not q.name.startswith(".")
                and (q.suffix.lower() in GRIB_SUFFIXES + NETCDF_SUFFIXES or _looks_like_grib(q))
            )
        else:
            found.update(Path(q) for q in glob.glob(str(p), recursive=True) if Path(q).is_file())
    return sorted(found)


def _is_netcdf(path: Path) -> bool:
    from atmorep.data.acquire.inspect import kind

    return path.suffix.lower() in NETCDF_SUFFIXES or kind(path) == "netcdf"


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
        self.dir = (
            Path(os.path.expanduser(index_dir)) if index_dir else Path.home() / ".cache" / "atmorep" / "grib-index"
        )

    def headers(self, path: Path) -> list[Header]:
        st = path.stat()
        key = hashlib.sha1(str(path.resolve()).encode()).hexdigest()
        cache = self.dir / f"{key}.json"
        stamp = [st.st_size, st.st_mtime_ns, _INDEX_VERSION]
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


_INDEX_VERSION = 2  # 2: level values of every level type, base times


def _dump(headers: list[Header], stamp) -> dict:
    params, levels, grids = {}, {}, {}
    rows = []
    for h in headers:
        p = params.setdefault(h.param, len(params))
        lv = levels.setdefault(h.level, len(levels))
        g = grids.setdefault(id(h.grid), (len(grids), h.index))
        rows.append(
            [
                h.index,
                h.offset,
                h.length,
                h.edition,
                p,
                lv,
                int(h.time.astype(np.int64)),
                g[0],
                int(h.bitmap),
                int(h.number),
                int(h.base.astype(np.int64)),
            ]
        )
    return {
        "stamp": stamp,
        "params": [[p.name, p.short_name, p.param_id, p.units, p.long_name] for p in params],
        "levels": [[lv.type_of_level, lv.kind, lv.level] for lv in levels],
        "grids": [msg for _, msg in grids.values()],
        "rows": rows,
    }


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
    return [
        Header(
            r[0],
            r[1],
            r[2],
            r[3],
            params[r[4]],
            levels[r[5]],
            np.datetime64(r[6], "s"),
            grids[r[7]],
            bool(r[8]),
            r[9],
            np.datetime64(r[10], "s"),
        )
        for r in rows
    ]


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
    def fetch(self, data: DataConfig, cfg: AcquireConfig, field: str, month: str, out: Path) -> dict:
        paths = expand(cfg.files.paths)
        if not cfg.files.paths:
            raise DataError("acquire.source is 'files' but acquire.files.paths is empty")
        if not paths:
            raise DataError(f"acquire.files.paths {list(cfg.files.paths)} matched no GRIB file")
        netcdf = [p for p in paths if _is_netcdf(p)]
        if netcdf:  # NetCDF is read through xarray (atmorep.data.acquire.gridded); GRIB below
            paths = [p for p in paths if p not in netcdf]
            prov = self.fetch_netcdf(netcdf, paths, data, cfg, field, month, out)
            if prov is not None:
                return prov
        exp = Expectation.for_month(data, field, month, cfg.regrid)
        index = Index(cfg.files.index_dir)
        mirror = [Located(p, h) for p in paths for h in index.headers(p)]
        chosen = self.select(mirror, exp, field, cfg.files)
        if not chosen and cfg.derive_vorticity and field in ("vo", "d"):
            return self.derive(mirror, exp, data, cfg, field, out)
        if not chosen:
            raise DataError(self._nothing(mirror, exp, field, month, len(paths)))
        grid = self.one_grid(chosen, exp)
        chosen = self.complete(chosen, exp, cfg.files.same_valid_time)
        crop = self.write(chosen, grid, data, field, out)
        return {
            "source": "files",
            "field": field,
            "month": month,
            "levtype": exp.kind,
            "member": cfg.files.member,
            "same_valid_time": cfg.files.same_valid_time,
            "files": sorted({str(loc.path) for loc in chosen}),
            "crop": crop,
        }

    @staticmethod
    def select(mirror: list[Located], exp: Expectation, field: str, files=None) -> list[Located]:
        """The field's messages on its level type and levels, inside the month, of the chosen member."""
        chosen = [
            loc
            for loc in mirror
            if matches(loc.header, field)
            and config_level(loc.header.level, exp.kind) in exp.levels
            and exp.first <= loc.header.time <= exp.last
        ]
        members = sorted({loc.header.number for loc in chosen})
        member = None if files is None else files.member
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

    @staticmethod
    def _nothing(mirror, exp: Expectation, field: str, month: str, nfiles: int) -> str:
        same = [loc for loc in mirror if matches(loc.header, field)]
        have = sorted({loc.header.param.name for loc in mirror})
        if not same:
            return f"files: no message of field '{field}' in {nfiles} files (they hold {have})"
        t = np.array([loc.header.time for loc in same])
        on_type = [loc for loc in same if config_level(loc.header.level, exp.kind) is not None]
        if not on_type:
            return (
                f"files: field '{field}' is not on {inventory.describe_kind(exp.kind)} "
                f"(data.fields.{field}.levtype: {exp.kind}); the files have it only on "
                f"{level_types(loc.header for loc in same)}"
            )
        return (
            f"files: no message of field '{field}' on levels {list(exp.levels)} ({exp.kind}) in {month} "
            f"∩ the campaign ({exp.window}); the files have it on {level_types(loc.header for loc in same)}, "
            f"{str(t.min())[:16]} .. {str(t.max())[:16]}"
        )

    @staticmethod
    def one_grid(chosen: list[Located], exp: Expectation) -> grib.Grid:
        grids: dict[tuple, list[Located]] = {}
        for loc in chosen:
            grids.setdefault(loc.header.grid.key, []).append(loc)
        if len(grids) > 1:
            parts = [f"{v[0].header.grid.describe()} in {sorted({str(x.path) for x in v})[0]}" for v in grids.values()]
            raise DataError(f"files: field '{exp.field}' comes on mixed grids: " + "; ".join(parts))
        grid = chosen[0].header.grid
        check_grid(grid, exp, str(chosen[0].path), crop=True)
        return grid

    @staticmethod
    def complete(chosen: list[Located], exp: Expectation, same_valid_time: str = "refuse") -> list[Located]:
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
            for loc in locs:
                distinct.setdefault(read_message(loc) if len(locs) > 1 else b"", loc)
            locs = list(distinct.values())
            runs = {loc.header.base for loc in locs}
            if (
                len(locs) > 1
                and same_valid_time != "refuse"
                and len(runs) == len(locs)
                and len({(loc.header.level, loc.header.number) for loc in locs}) == 1
            ):
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

    @staticmethod
    def write(chosen: list[Located], grid: grib.Grid, data: DataConfig, field: str, out: Path) -> dict | None:
        """Write the messages (cut to data.area when the grid is bigger); the crop done, if any."""
        if grid.regular:
            rows, cols = (
                (np.arange(grid.ny), np.arange(grid.nx))
                if data.area is None
                else crop_indices(grid.lats, grid.lons, data.area)
            )
            whole = (
                len(rows) == grid.ny
                and len(cols) == grid.nx
                and np.array_equal(rows, np.arange(grid.ny))
                and np.array_equal(cols, np.arange(grid.nx))
            )
            with open(out, "wb") as f:
                for loc in chosen:
                    f.write(read_message(loc) if whole else crop_message(loc, rows, cols, data.area))
            if whole:
                return None
            crop = {
                "area": list(data.area),
                "from": grid.describe(),
                "from_extent": {
                    "lat": [float(grid.lats[0]), float(grid.lats[-1])],
                    "lon": [float(grid.lons[0]), float(grid.lons[-1])],
                },
                "rows": [int(rows[0]), int(rows[-1])],
                "columns": [int(cols[0]), int(cols[-1])],
            }
            log.info(
                "files: cut %s %s out of %s (rows %d..%d, columns %d..%d)",
                field,
                list(data.area),
                grid.describe(),
                rows[0],
                rows[-1],
                cols[0],
                cols[-1],
            )
            return crop
        if data.grid is None:
            raise DataError(f"files: field '{field}' is on {grid.describe()}: regridding needs data.grid")
        lats, lons = regrid.target_grid(*data.grid)
        spec = data.fields[field]
        times = sorted({loc.header.time for loc in chosen})
        levels = list(spec.levels)
        values = np.empty((1, len(levels), len(lats), len(lons)), np.float32)
        for t in times:  # one time step at a time keeps memory bounded
            for loc in (x for x in chosen if x.header.time == t):
                values[0, levels.index(config_level(loc.header.level, spec.kind))] = regrid.gaussian_to_regular(
                    decode_located(loc), loc.header.grid, lats, lons
                )
            grib.write_grib(
                out, field, values, np.array([t]), levels, lats, lons, bits_per_value=24, levtype=spec.kind, append=True
            )
        log.info("files: regridded %s from %s to %gx%g", field, grid.describe(), *data.grid)
        return None

    def derive(
        self, mirror: list[Located], exp: Expectation, data: DataConfig, cfg: AcquireConfig, field: str, out: Path
    ) -> None:
        """vo or d from u and v (see :mod:`atmorep.data.acquire.vorticity`)."""
        from atmorep.data.acquire.vorticity import vorticity_divergence

        winds = {}
        for comp in ("u", "v"):
            sel = self.select(mirror, exp, comp, cfg.files)
            if not sel:
                raise DataError(f"files: no '{field}' and no '{comp}' to derive it from (acquire.derive_vorticity)")
            self.one_grid(sel, exp)
            winds[comp] = {
                (loc.header.time, config_level(loc.header.level, exp.kind)): loc
                for loc in self.complete(sel, exp, cfg.files.same_valid_time)
            }
        if winds["u"].keys() != winds["v"].keys():
            raise DataError(f"files: u and v cover different (time, level) combinations; cannot derive '{field}'")
        grid = next(iter(winds["u"].values())).header.grid
        if not grid.regular:
            raise DataError(f"files: deriving '{field}' needs u and v on a regular lat/lon grid, not {grid.describe()}")
        spec = data.fields[field]
        levels = list(spec.levels)
        # derived on the whole grid (the differences need the neighbours), then cut to data.area
        rows, cols = (
            (np.arange(grid.ny), np.arange(grid.nx))
            if data.area is None
            else crop_indices(grid.lats, grid.lons, data.area)
        )
        lons = grid.lons if data.area is None else float(data.area[1]) + grid.dlon * np.arange(len(cols))
        for t in sorted({k[0] for k in winds["u"]}):
            values = np.empty((1, len(levels), len(rows), len(cols)), np.float32)
            for il, lev in enumerate(levels):
                u_loc, v_loc = winds["u"][(t, lev)], winds["v"][(t, lev)]
                u = u_loc.header.grid.to_canonical(decode_located(u_loc))
                v = v_loc.header.grid.to_canonical(decode_located(v_loc))
                vo, d = vorticity_divergence(u, v, grid.lats, grid.lons)
                values[0, il] = (vo if field == "vo" else d)[np.ix_(rows, cols)]
            grib.write_grib(
                out,
                field,
                values,
                np.array([t]),
                levels,
                grid.lats[rows],
                lons,
                bits_per_value=24,
                levtype=spec.kind,
                append=True,
            )
        log.info("files: derived %s from u and v on %s", field, grid.describe())

    def fetch_netcdf(
        self,
        netcdf: list[Path],
        grib_paths: list[Path],
        data: DataConfig,
        cfg: AcquireConfig,
        field: str,
        month: str,
        out: Path,
    ) -> dict | None:
        """Write the field from NetCDF when a NetCDF file holds it and return its provenance (None: none
        does, try the GRIB)."""
        import xarray as xr

        from atmorep.data.acquire import gridded

        opened = []
        try:
            for p in netcdf:
                try:
                    opened.append((str(p), xr.open_dataset(p)))
                except Exception as exc:
                    raise DataError(f"{p}: cannot open as NetCDF ({type(exc).__name__}: {exc})") from None
            if not any(gridded.find(ds, field, where, cfg.variables) for where, ds in opened):
                if grib_paths:
                    return None
            else:
                index = Index(cfg.files.index_dir)
                both = [p for p in grib_paths if any(matches(h, field) for h in index.headers(p))]
                if both:
                    raise DataError(
                        f"files: field '{field}' is in NetCDF ({netcdf[0]}) and in GRIB "
                        f"({both[0]}); keep one of them in acquire.files.paths"
                    )
            prov = gridded.fetch(opened, data, cfg, field, month, out, "files")
        finally:
            for _, ds in opened:
                ds.close()
        log.info(
            "files: %s %s from NetCDF %s", field, month, ", ".join(f"{w} ({v})" for w, v in prov["variables"].items())
        )
        return prov


def crop_message(loc: Located, rows: np.ndarray, cols: np.ndarray, area) -> bytes:
    """The message cut to ``area``: same identity (parameter, level, times, member), canonical scanning,
    values as 32-bit IEEE so that they decode to exactly what reading the bigger grid gives."""
    import eccodes

    grid = loc.header.grid
    gid = eccodes.codes_new_from_message(read_message(loc))
    try:
        values = grid.to_canonical(grib.values(gid, loc.header))[np.ix_(rows, cols)].astype(np.float64)
        west = float(area[1])  # a grid point (crop_indices); the cut keeps the area's longitude convention
        east = west + grid.dlon * (len(cols) - 1)
        if loc.header.edition == 2:  # GRIB2 longitudes are unsigned
            west, east = west % 360.0, east % 360.0
        for key, value in (
            ("Ni", len(cols)),
            ("Nj", len(rows)),
            ("iScansNegatively", 0),
            ("jScansPositively", 0),
            ("jPointsAreConsecutive", 0),
            ("latitudeOfFirstGridPointInDegrees", float(grid.lats[rows[0]])),
            ("latitudeOfLastGridPointInDegrees", float(grid.lats[rows[-1]])),
            ("longitudeOfFirstGridPointInDegrees", west),
            ("longitudeOfLastGridPointInDegrees", east),
        ):
            eccodes.codes_set(gid, key, value)
        eccodes.codes_set(gid, "packingType", "grid_ieee")
        eccodes.codes_set(gid, "precision", 1)
        if np.isnan(values).any():
            eccodes.codes_set(gid, "missingValue", grib.MISSING)
            eccodes.codes_set(gid, "bitmapPresent", 1)
            values = np.where(np.isnan(values), grib.MISSING, values)
        eccodes.codes_set_values(gid, values.ravel())
        return eccodes.codes_get_message(gid)
    finally:
        eccodes.codes_release(gid)
