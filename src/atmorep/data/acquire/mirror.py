"""A mirror of GRIB and NetCDF files: finding its files, and the inventory of the messages in them.

The ``files`` source reads ``acquire.files.paths`` (directories, searched recursively, and glob
patterns) and holds every message header of every GRIB file in memory at once, to select from
(:mod:`.selection`). Scanning a large mirror for each of the many small (field, month) jobs would
repeat the same work, so each file's headers are cached in ``acquire.files.index_dir``, keyed by
path, size and modification time: a changed file is scanned again, a stale or broken entry rebuilt.
An entry stores parameters and levels once each and a row of numbers per message; a grid is not
stored but rebuilt from one message that has it, by the code that made it in the first place (one
canonicalisation, no second copy in JSON that could disagree with it).
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
            # Hidden files are skipped (partial downloads, editors' files); a file without a known suffix
            # counts when it starts like GRIB (MARS output is often named without one).
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


def is_netcdf(path: Path) -> bool:
    return path.suffix.lower() in NETCDF_SUFFIXES or kind(path) == "netcdf"


def kind(path: Path) -> str:
    """'zarr', 'grib', 'grib-dir' or 'netcdf' from the content (not the name)."""
    if path.is_dir():
        # zarr v3 keeps zarr.json at the root, v2 .zgroup (a group) or .zarray (a bare array).
        if (path / "zarr.json").exists() or (path / ".zgroup").exists() or (path / ".zarray").exists():
            return "zarr"
        return "grib-dir"
    if not path.exists():
        raise DataError(f"{path}: no such file")
    # By the first bytes, not the name: a misnamed file is described for what it is.
    with open(path, "rb") as f:
        head = f.read(8)
    if not head:
        raise DataError(f"{path}: empty file")
    if head.startswith(b"GRIB"):
        return "grib"
    if head.startswith(b"CDF") or head.startswith(b"\x89HDF"):  # netCDF3 classic, netCDF4 (HDF5)
        return "netcdf"
    raise DataError(f"{path}: not GRIB, NetCDF or zarr (starts with {head[:4]!r})")


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


def read_message(loc: Located) -> bytes:
    return _read(loc.path, loc.header.offset, loc.header.length)


def decode_located(loc: Located) -> np.ndarray:
    """Values of one mirrored message, float64 in file order (NaN where missing)."""
    with grib.handle(read_message(loc)) as gid:
        return grib.values(gid, loc.header)


def _read(path: Path, offset: int, length: int) -> bytes:
    with open(path, "rb") as f:
        f.seek(offset)
        return f.read(length)


class Index:
    """Per-file message inventories, cached on disk by (path, size, mtime)."""

    def __init__(self, index_dir: str):
        self.dir = (
            Path(os.path.expanduser(index_dir)) if index_dir else Path.home() / ".cache" / "atmorep" / "grib-index"
        )

    def headers(self, path: Path) -> list[Header]:
        st = path.stat()
        # A hash of the resolved path: one flat file per mirrored file, whatever its name or depth.
        key = hashlib.sha1(str(path.resolve()).encode()).hexdigest()
        cache = self.dir / f"{key}.json"
        # Nanosecond mtime: a file rewritten within the same second still invalidates its entry.
        stamp = [st.st_size, st.st_mtime_ns, _INDEX_VERSION]
        if cache.exists():
            try:
                entry = json.loads(cache.read_text())
                if entry["stamp"] == stamp:
                    return _load(path, entry)
            except (ValueError, KeyError, OSError):
                pass  # a stale or broken cache entry is rebuilt
        headers = grib.scan(path)
        # Atomic: parallel jobs scanning the same file each write a whole entry, never a torn one.
        try:
            with Replacement(cache) as tmp:
                tmp.write_text(json.dumps(_dump(headers, stamp)))
        except OSError as exc:  # a read-only cache only costs time: the headers are still right
            log.warning("cannot cache the inventory of %s in %s (%s)", path, self.dir, exc)
        return headers


_INDEX_VERSION = 2  # 2: level values of every level type, base times


def _dump(headers: list[Header], stamp) -> dict:
    params: dict[grib.Param, int] = {}
    levels: dict[grib.Level, int] = {}
    grids: dict[int, tuple[int, int]] = {}
    rows = []
    for h in headers:
        assert h.base is not None  # scan() reads base times (members=True) for the index
        p = params.setdefault(h.param, len(params))
        lv = levels.setdefault(h.level, len(levels))
        # By identity: the Decoder makes one Grid object per distinct grid section (md5GridSection).
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
        with grib.handle(_read(path, r[1], r[2])) as gid:
            grids.append(grib.grid_from_handle(gid))
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
