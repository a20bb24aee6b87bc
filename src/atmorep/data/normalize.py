"""Normalize: decode one (field, month) of GRIB, check it, compute AtmoRep statistics, apply them.

AtmoRep normalizes per field, level and (year, month): *global* uses one mean/std per level over
all grid points and hours of the month, *local* one mean/std per grid point over the month's hours.
The *climatological* option takes the statistics of a training period instead (per calendar month
or over the whole period), so a predicted month does not leak into its own normalization. The
inverse ``x = x' * std + mean`` uses the stored statistics.

Bounded memory: a month is decoded message by message into a *slab* (in memory when it fits
``normalize.memory_mb``, else a scratch file), its statistics accumulate over time blocks with
Chan's parallel form of Welford's algorithm in float64, and it is normalized and written block by
block. Peak memory is the slab (if in memory) plus a few blocks of ``normalize.block_mb``.

Store (zarr v3, one per field and month): ``data (time, level, latitude, longitude)`` float32
normalized; ``mean``/``std`` ``(level,)`` for global or ``(level, latitude, longitude)`` for local;
attrs ``field``, ``month``, ``normalization`` (global/local: the shape of mean/std), ``statistics``
(monthly/climatology), ``statistics_period``, ``source``, ``source_sha256``, ``provenance``.

Legend: T time steps, L levels, Y latitude rows, X longitude columns.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import xarray as xr
import zarr

from atmorep.config import DataConfig, NormalizeConfig
from atmorep.data.acquire.inventory import Expectation, check_grid, config_level, describe_kind, matches
from atmorep.data.acquire.sources import read_provenance
from atmorep.data.qc import Gate
from atmorep.formats import grib, zarrio, zarrv3
from atmorep.formats.atomic import Replacement
from atmorep.formats.grib import DataError

log = logging.getLogger(__name__)

_CHUNK_BYTES = 16 << 20  # target size of one chunk of the normalized store


# --------------------------------------------------------------------------------------------
# Statistics


@dataclass(frozen=True)
class Stats:
    """Mean and std of one field and month: shape (L,) for global, (L, Y, X) for local."""

    method: str
    mean: np.ndarray
    std: np.ndarray

    def broadcast(self) -> tuple[np.ndarray, np.ndarray]:
        """Mean and std shaped to broadcast against (T, L, Y, X)."""
        if self.method == "global":
            return self.mean[None, :, None, None], self.std[None, :, None, None]
        return self.mean[None], self.std[None]


@dataclass
class Moments:
    """Count, mean and sum of squared deviations per level and grid point (float64), mergeable.

    ``update`` folds in a block of time steps and ``merge`` another Moments with Chan et al.'s
    pairwise formulas (the parallel form of Welford's algorithm): no sum of squares of raw values,
    so no cancellation for fields like geopotential whose mean dwarfs their spread.
    """

    count: int
    mean: np.ndarray  # L Y X
    m2: np.ndarray  # L Y X

    @classmethod
    def empty(cls, L: int, Y: int, X: int) -> Moments:
        return cls(0, np.zeros((L, Y, X)), np.zeros((L, Y, X)))

    def update(self, block_TLYX: np.ndarray) -> None:
        x = block_TLYX.astype(np.float64)
        mean_b = x.mean(axis=0)
        np.subtract(x, mean_b, out=x)
        np.square(x, out=x)
        self._merge(x.shape[0], mean_b, x.sum(axis=0))

    def merge(self, other: Moments) -> None:
        self._merge(other.count, other.mean, other.m2)

    def _merge(self, n_b: int, mean_b: np.ndarray, m2_b: np.ndarray) -> None:
        if n_b == 0:
            return
        n = self.count + n_b
        delta = mean_b - self.mean
        self.mean += delta * (n_b / n)
        np.square(delta, out=delta)
        self.m2 += m2_b + delta * (self.count * n_b / n)
        self.count = n

    def stats(self, method: str) -> Stats:
        """AtmoRep statistics: population std, as numpy's ``std``; global over all points and times."""
        if self.count == 0:
            raise DataError("no data to compute statistics from")
        if method == "global":
            gmean = self.mean.mean(axis=(1, 2))
            dev = self.mean - gmean[:, None, None]
            var = (self.m2.sum(axis=(1, 2)) + self.count * (dev * dev).sum(axis=(1, 2))) / (
                self.count * self.mean[0].size
            )
            return Stats("global", gmean.astype(np.float32), np.sqrt(var).astype(np.float32))
        if method == "local":
            std = np.sqrt(self.m2 / self.count)
            # a grid point that never changes (e.g. no rain all month) would divide by zero
            floor = 1e-3 * self.stats("global").std.astype(np.float64)[:, None, None]
            return Stats("local", self.mean.astype(np.float32), np.maximum(std, floor).astype(np.float32))
        raise ValueError(f"unknown normalization method {method!r}")

    def level_summary(self, levels) -> dict:
        g = self.stats("global")
        return {int(lev): {"mean": float(g.mean[i]), "std": float(g.std[i])} for i, lev in enumerate(levels)}


def statistics(values_TLYX: np.ndarray, method: str) -> Stats:
    """AtmoRep statistics of one month held in memory, accumulated in float64."""
    m = Moments.empty(*values_TLYX.shape[1:])
    m.update(values_TLYX)
    return m.stats(method)


def apply(values_TLYX: np.ndarray, stats: Stats, out: np.ndarray | None = None) -> np.ndarray:
    mean, std = stats.broadcast()
    out = np.subtract(values_TLYX, mean, out=out, dtype=np.float32)
    return np.divide(out, std, out=out)


def invert(normalized_TLYX: np.ndarray, stats: Stats) -> np.ndarray:
    mean, std = stats.broadcast()
    return (normalized_TLYX * std + mean).astype(np.float32)


def read_stats(ds: xr.Dataset) -> Stats:
    return Stats(ds.attrs["normalization"], ds["mean"].values, ds["std"].values)


# --------------------------------------------------------------------------------------------
# The slab: where a decoded month lives between the passes


class MemorySlab:
    """The month as one float32 array ``(T, L, Y, X)``."""

    def __init__(self, shape):
        self.values = np.empty(shape, np.float32)

    def target(self, it: int, il: int) -> np.ndarray:
        return self.values[it, il]

    def commit(self, it: int, il: int, values_YX: np.ndarray) -> None:
        pass

    def read(self, t0: int, t1: int) -> np.ndarray:
        return self.values[t0:t1]

    def close(self) -> None:
        self.values = None


class FileSlab:
    """The month in a raw float32 scratch file ``(T, L, Y, X)``; only one message or block in memory."""

    def __init__(self, shape, path: Path):
        self.shape, self.path = tuple(shape), Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o600)
        self.frame = int(np.prod(self.shape[2:])) * 4
        os.ftruncate(self.fd, int(np.prod(self.shape)) * 4)
        self.buf = np.empty(self.shape[2:], np.float32)

    def target(self, it: int, il: int) -> np.ndarray:
        return self.buf

    def commit(self, it: int, il: int, values_YX: np.ndarray) -> None:
        _write_all(self.fd, memoryview(values_YX).cast("B"), (it * self.shape[1] + il) * self.frame)

    def read(self, t0: int, t1: int) -> np.ndarray:
        block = np.empty((t1 - t0, *self.shape[1:]), np.float32)
        view = memoryview(block).cast("B")
        offset, done = t0 * self.shape[1] * self.frame, 0
        while done < len(view):
            n = os.preadv(self.fd, [view[done:]], offset + done)
            if n <= 0:
                raise OSError(f"{self.path}: short read")
            done += n
        return block

    def close(self) -> None:
        os.close(self.fd)
        self.path.unlink(missing_ok=True)


def _write_all(fd: int, view: memoryview, offset: int) -> None:
    done = 0
    while done < len(view):
        done += os.pwrite(fd, view[done:], offset + done)


# --------------------------------------------------------------------------------------------
# Pass 1: decode, check, place


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
    filled = np.zeros((len(times), len(levels)), bool)
    t_index = {t: i for i, t in enumerate(times)}
    l_index = {lev: i for i, lev in enumerate(levels)}
    hasher = hashlib.sha256()
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
            if lev not in l_index:
                bad_levels.add(lev)
                continue
            it = t_index.get(h.time)
            if it is None:
                raise DataError(_off_axis(source, field, h, exp, month))
            if grid is None:
                check_grid(h.grid, exp, str(source))
                grid, param = h.grid, h.param
                shape = (len(times), len(levels), grid.ny, grid.nx)
                slab = _slab(shape, cfg, scratch)
                gate.param(h.param)
            elif h.grid is not grid and h.grid.key != grid.key:
                raise DataError(
                    f"{source}: field '{field}' mixes grids {grid.describe()} and {h.grid.describe()} "
                    f"(message {h.index + 1}, level {lev} time {str(h.time)[:16]})"
                )
            il = l_index[lev]
            if filled[it, il]:
                gate.duplicate(il, h.time)
                continue
            filled[it, il] = True
            target = slab.target(it, il)
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
        gate.coverage(filled)
        gate.month()
        gate.raise_if_failed()
    except BaseException:
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


def _slab(shape, cfg: NormalizeConfig, scratch: Path) -> MemorySlab | FileSlab:
    nbytes = int(np.prod(shape)) * 4
    if nbytes <= cfg.memory_mb << 20:
        return MemorySlab(shape)
    log.info("month decodes to %.1f GB > normalize.memory_mb: streaming through %s", nbytes / 1e9, scratch)
    return FileSlab(shape, scratch)


def block_steps(cfg: NormalizeConfig, shape) -> tuple[int, int]:
    """(time steps per block, per chunk): a block's float64 copy fits ``block_mb``; blocks hold whole chunks."""
    T, L, Y, X = shape
    per_chunk = max(1, min(T, _CHUNK_BYTES // (Y * X * 4)))
    per_block = max(1, min(T, (cfg.block_mb << 20) // (L * Y * X * 8)))
    per_chunk = min(per_chunk, per_block)
    return (per_block // per_chunk) * per_chunk, per_chunk


def moments_of(m: Month, cfg: NormalizeConfig) -> Moments:
    """Pass 2: statistics over time blocks of the slab."""
    T, L, Y, X = m.shape
    nt, _ = block_steps(cfg, m.shape)
    acc = Moments.empty(L, Y, X)
    for t0 in range(0, T, nt):
        acc.update(m.slab.read(t0, min(T, t0 + nt)))
    return acc


# --------------------------------------------------------------------------------------------
# Writing zarr v3 block by block


def _time_values(times: np.ndarray) -> tuple[np.ndarray, dict]:
    t = np.asarray(times, "datetime64[s]").astype(np.int64)
    if (t % 3600 == 0).all():
        return t // 3600, {
            "units": "hours since 1970-01-01 00:00:00",
            "calendar": "proleptic_gregorian",
            "standard_name": "time",
        }
    return t, {"units": "seconds since 1970-01-01 00:00:00", "calendar": "proleptic_gregorian", "standard_name": "time"}


def _coords(g: zarr.Group, coords: dict[str, tuple[np.ndarray, dict]]) -> None:
    for name, (values, attrs) in coords.items():
        a = g.create_array(
            name,
            shape=values.shape,
            dtype=values.dtype,
            chunks=values.shape or (1,),
            dimension_names=(name,),
            attributes=attrs,
            compressors=None,
        )
        a[...] = values


def _array(g: zarr.Group, name: str, values: np.ndarray, dims, attrs=None, chunks=None) -> zarr.Array:
    a = g.create_array(
        name,
        shape=values.shape,
        dtype=values.dtype,
        chunks=chunks or values.shape,
        dimension_names=dims,
        attributes=attrs or {},
        compressors=None,
        fill_value=np.nan if values.dtype.kind == "f" else 0,
    )
    a[...] = values
    return a


_LAT = {"units": "degrees_north", "standard_name": "latitude"}
_LON = {"units": "degrees_east", "standard_name": "longitude"}
_LEVEL = {"long_name": "level (model level number, hPa, or 0 at the surface)"}


def _grid_coords(levels, lats, lons) -> dict:
    return {
        "level": (np.asarray(levels, np.int64), _LEVEL),
        "latitude": (np.asarray(lats, np.float64), _LAT),
        "longitude": (np.asarray(lons, np.float64), _LON),
    }


class StoreWriter:
    """The normalized store of one (field, month), written into a temporary directory and renamed.

    Written with :mod:`atmorep.formats.zarrv3` (uncompressed zarr v3): zarr-python's per-array cost
    would be as large as decoding a small month.
    """

    def __init__(self, out: Path, cfg: NormalizeConfig, method: str, describe: str):
        self.out, self.cfg, self.method, self.describe = Path(out), cfg, method, describe
        self._replacement = Replacement(self.out)
        self.tmp = self._replacement.tmp

    def finish(self, m: Month, stats: Stats, attrs: dict) -> Path:
        """Coordinates, statistics, normalized data block by block (the slab is normalized in place)."""
        T, L, Y, X = m.shape
        nt, chunk_t = block_steps(self.cfg, m.shape)
        store = zarrv3.Store(self.tmp, attrs)
        for name, (values, cattrs) in {
            "time": _time_values(m.times),
            **_grid_coords(m.levels, m.grid.lats, m.grid.lons),
        }.items():
            store.put(name, values, (name,), cattrs)
        dims = ("level",) if self.method == "global" else ("level", "latitude", "longitude")
        store.put("mean", stats.mean, dims, {"long_name": f"{m.field} mean ({self.method})", "units": m.param.units})
        store.put("std", stats.std, dims, {"long_name": f"{m.field} standard deviation", "units": m.param.units})
        data = store.create(
            "data",
            (T, L, Y, X),
            np.float32,
            (chunk_t, 1, Y, X),
            ("time", "level", "latitude", "longitude"),
            {"long_name": f"{m.field} {self.describe}", "units": "1"},
        )
        with zarrio.space_for(self.out, 4 * T * L * Y * X):
            for t0 in range(0, T, nt):
                block = m.slab.read(t0, min(T, t0 + nt))
                block = apply(block, stats, out=block)
                self._finite(block, t0, m, stats)
                data.write(t0, block)
            self._replacement.commit()
        return self.out

    def _finite(self, block: np.ndarray, t0: int, m: Month, stats: Stats) -> None:
        """Refuse non-finite normalized values (e.g. a zero standard deviation): training cannot use them."""
        bad = ~np.isfinite(block)
        if not bad.any():
            return
        t, lev, y, x = (int(i) for i in np.argwhere(bad)[0])
        std = stats.broadcast()[1]
        std = float(std[0, lev, min(y, std.shape[2] - 1), min(x, std.shape[3] - 1)])
        raise DataError(
            f"{self.out}: field '{m.field}' normalizes to {int(bad.sum())} non-finite values "
            f"(first at {np.datetime_as_string(m.times[t0 + t], 'h')}, level {m.levels[lev]}, "
            f"lat {m.grid.lats[y]:g}, lon {m.grid.lons[x]:g}, std {std:g} there); check the source "
            "and normalize.method / normalize.local; nothing was written"
        )

    def close(self) -> None:
        """Remove whatever was not committed."""
        self._replacement.close()


def check(path: str | Path) -> dict:
    """Check a normalized store on disk: every value and statistic finite, every std positive.

    Raises :class:`DataError` naming the first bad value; returns counts.
    """
    ds = zarrio.open_dataset(path, threads=None)
    field, month = ds.attrs.get("field"), ds.attrs.get("month")
    for name in ("mean", "std"):
        v = ds[name].values
        if not np.isfinite(v).all() or (name == "std" and (v <= 0).any()):
            raise DataError(
                f"{path}: field '{field}' {month}: its {name} is not finite and positive "
                "everywhere; rebuild it (atmorep normalize)"
            )
    data = ds["data"].transpose("time", "level", "latitude", "longitude")
    T = data.shape[0]
    step = max(1, (64 << 20) // max(1, 4 * int(np.prod(data.shape[1:]))))  # ~64 MB a block
    for t0 in range(0, T, step):
        block = data.isel(time=slice(t0, t0 + step)).values
        bad = ~np.isfinite(block)
        if bad.any():
            t, lev, y, x = (int(i) for i in np.argwhere(bad)[0])
            when = np.datetime_as_string(ds["time"].values[t0 + t], "h")
            raise DataError(
                f"{path}: field '{field}' {month} has {int(bad.sum())} non-finite values in time "
                f"steps {t0}..{min(T, t0 + step)} (first at {when}, level {int(ds['level'].values[lev])}"
                f", lat {ds['latitude'].values[y]:g}, lon {ds['longitude'].values[x]:g}); normalize "
                "writes none: rebuild it (atmorep normalize)"
            )
    summary = {"store": str(path), "field": field, "month": month, "values": int(np.prod(data.shape))}
    log.info("checked %s: %d normalized values, all finite", path, summary["values"])
    return summary


def write_normalized(m: Month, stats: Stats, cfg: NormalizeConfig, out: Path, attrs: dict) -> Path:
    """Pass 3 on its own: normalize the slab block by block into a zarr v3 store at ``out`` (atomically)."""
    w = StoreWriter(
        out,
        cfg,
        stats.method,
        f"normalized with {attrs['normalization']} {attrs['statistics']} statistics of {attrs['statistics_period']}",
    )
    try:
        return w.finish(m, stats, attrs)
    finally:
        w.close()


def _write_json(obj: dict, out: Path) -> None:
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    with Replacement(out) as tmp:
        tmp.write_text(json.dumps(obj, indent=1, default=str) + "\n")


def _scratch(cfg: NormalizeConfig, out: Path) -> Path:
    base = Path(cfg.scratch_dir) if cfg.scratch_dir else Path(out).parent
    return base / f".{Path(out).name}.scratch{os.getpid()}"


# --------------------------------------------------------------------------------------------
# The stage


def normalize(
    data: DataConfig,
    cfg: NormalizeConfig,
    field: str,
    month: str,
    source: str | Path,
    out: str | Path,
    qc_out: str | Path | None = None,
    climatology: str | Path | None = None,
) -> Path:
    """Decode ``source`` (GRIB of one field and month), check, normalize, write a zarr v3 store.

    ``climatology`` (a store from :func:`climatology`) is required for fields listed in
    ``normalize.climatology.fields`` and gives their statistics. ``qc_out`` receives the QC summary.
    """
    out = Path(out)
    if field not in data.fields:
        raise DataError(f"field '{field}' is not in data.fields ({', '.join(data.fields)})")
    method, which = cfg.method_for(field), cfg.statistics_for(field)
    if which == "climatology" and climatology is None:
        raise DataError(
            f"field '{field}' uses climatological statistics (normalize.climatology.fields): give the climatology store"
        )
    period = f"{cfg.climatology.start}..{cfg.climatology.end}" if which == "climatology" else month
    writer = StoreWriter(out, cfg, method, f"normalized with {method} {which} statistics of {period}")
    m = None
    clock = [time.perf_counter()]
    try:
        m = decode_month(source, data, cfg, field, month, _scratch(cfg, out))
        clock.append(time.perf_counter())
        moments = moments_of(m, cfg)
        clock.append(time.perf_counter())
        clim = Climatology(climatology) if which == "climatology" else None
        stats = clim.stats(month, method, m) if clim else moments.stats(method)
        attrs = {
            "field": field,
            "month": month,
            "normalization": method,
            "statistics": which,
            "statistics_period": clim.period if clim else period,
            "source": str(source),
            "source_sha256": m.sha256,
            "units": m.param.units,
            "provenance": json.dumps(
                {
                    "config": {"data": dataclasses.asdict(data), "normalize": dataclasses.asdict(cfg)},
                    "acquire": read_provenance(source),
                    "inputs": {"grib": m.sha256, "climatology": clim.digest if clim else None},
                },
                default=str,
            ),
        }
        writer.finish(m, stats, attrs)
        clock.append(time.perf_counter())
    finally:
        writer.close()
        if m is not None:
            m.slab.close()
    summary = m.gate.summary(moments.level_summary(m.levels))
    summary.update(month=month, sha256=m.sha256, grid=m.grid.describe(), normalization=method, statistics=which)
    if qc_out is not None:
        _write_json(summary, Path(qc_out))
    log.info(
        "normalized %s %s (%s, %s statistics of %s): %d x %d levels on %s -> %s",
        field,
        month,
        method,
        which,
        period,
        len(m.times),
        len(m.levels),
        m.grid.describe(),
        out,
    )
    log.info("decode+QC %.1f s, statistics %.1f s, normalize+write %.1f s (%s)", *np.diff(clock), type(m.slab).__name__)
    return out


# --------------------------------------------------------------------------------------------
# Climatology: moments per month, merged over a training period


def moments(
    data: DataConfig, cfg: NormalizeConfig, field: str, month: str, source: str | Path, out: str | Path
) -> Path:
    """Decode and check one (field, month); store its moments (count, mean, M2 per grid point)."""
    out = Path(out)
    m = decode_month(source, data, cfg, field, month, _scratch(cfg, out))
    try:
        acc = moments_of(m, cfg)
    finally:
        m.slab.close()
    with Replacement(out) as tmp:
        g = zarr.open_group(
            tmp,
            mode="w",
            zarr_format=3,
            attributes={"field": field, "month": month, "source_sha256": m.sha256, "units": m.param.units},
        )
        _coords(g, _grid_coords(m.levels, m.grid.lats, m.grid.lons))
        _array(g, "count", np.full(len(m.levels), acc.count, np.int64), ("level",))
        _array(g, "mean", acc.mean, ("level", "latitude", "longitude"), chunks=(1, *acc.mean.shape[1:]))
        _array(g, "m2", acc.m2, ("level", "latitude", "longitude"), chunks=(1, *acc.m2.shape[1:]))
    log.info("moments of %s %s (%d time steps) -> %s", field, month, acc.count, out)
    return out


def climatology(data: DataConfig, cfg: NormalizeConfig, field: str, inputs: list[str | Path], out: str | Path) -> Path:
    """Merge monthly moments of the training period into per-calendar-month (or overall) moments."""
    out = Path(out)
    clim = cfg.climatology
    want = clim.months()
    by_month: dict[str, Path] = {}
    for p in inputs:
        g = zarr.open_group(p, mode="r")
        if g.attrs.get("field") != field:
            raise DataError(f"{p}: moments of field '{g.attrs.get('field')}', expected '{field}'")
        by_month[g.attrs["month"]] = Path(p)
    if missing := [m for m in want if m not in by_month]:
        raise DataError(f"climatology of '{field}' {clim.start} .. {clim.end}: no moments for {missing}")
    groups = list(range(1, 13)) if clim.by_calendar_month else [0]
    first = xr.open_zarr(by_month[want[0]], consolidated=False, chunks=None, zarr_format=3)
    L, Y, X = first["mean"].shape
    acc = {k: Moments.empty(L, Y, X) for k in groups}
    sources = {}
    for month in want:
        ds = xr.open_zarr(by_month[month], consolidated=False, chunks=None, zarr_format=3)
        if ds["mean"].shape != (L, Y, X) or not np.array_equal(ds["latitude"].values, first["latitude"].values):
            raise DataError(f"{by_month[month]}: grid or levels differ from {by_month[want[0]]}")
        key = int(month[5:7]) if clim.by_calendar_month else 0
        acc[key].merge(Moments(int(ds["count"].values[0]), ds["mean"].values, ds["m2"].values))
        sources[month] = ds.attrs["source_sha256"]
    present = [k for k in groups if acc[k].count]
    period = f"{clim.start}..{clim.end}"
    digest = hashlib.sha256(json.dumps(sources, sort_keys=True).encode()).hexdigest()
    with Replacement(out) as tmp:
        g = zarr.open_group(
            tmp,
            mode="w",
            zarr_format=3,
            attributes={
                "field": field,
                "period": period,
                "by_calendar_month": clim.by_calendar_month,
                "months": want,
                "inputs_sha256": digest,
                "units": first.attrs.get("units", ""),
            },
        )
        _coords(
            g,
            {
                "group": (np.asarray(present, np.int64), {"long_name": "calendar month (0: all months)"}),
                **_grid_coords(first["level"].values, first["latitude"].values, first["longitude"].values),
            },
        )
        dims = ("group", "level", "latitude", "longitude")
        _array(g, "count", np.array([[acc[k].count] * L for k in present], np.int64), ("group", "level"))
        _array(g, "mean", np.stack([acc[k].mean for k in present]), dims, chunks=(1, 1, Y, X))
        _array(g, "m2", np.stack([acc[k].m2 for k in present]), dims, chunks=(1, 1, Y, X))
    log.info(
        "climatology of %s over %s (%s) -> %s",
        field,
        period,
        "per calendar month" if clim.by_calendar_month else "one set",
        out,
    )
    return out


class Climatology:
    """A climatology store: the statistics it gives a month."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        if not self.path.exists():
            raise DataError(f"{self.path}: no such climatology store")
        self.ds = xr.open_zarr(self.path, consolidated=False, chunks=None, zarr_format=3)
        self.period = self.ds.attrs["period"]
        self.digest = self.ds.attrs["inputs_sha256"]

    def stats(self, month: str, method: str, m: Month | None = None) -> Stats:
        key = int(month[5:7]) if self.ds.attrs["by_calendar_month"] else 0
        if key not in self.ds["group"].values:
            raise DataError(f"{self.path}: no statistics for calendar month {key} in {self.period}")
        sel = self.ds.sel(group=key)
        if m is not None:
            if (
                list(sel["level"].values) != list(m.levels)
                or sel["mean"].shape[1:] != (m.grid.ny, m.grid.nx)
                or not np.allclose(sel["latitude"].values, m.grid.lats)
                or not np.allclose(sel["longitude"].values, m.grid.lons)
            ):
                raise DataError(f"{self.path}: levels or grid differ from {m.source}")
        return Moments(int(sel["count"].values[0]), sel["mean"].values.copy(), sel["m2"].values.copy()).stats(method)
