"""The normalized store of one (field, month), written block by block as uncompressed zarr v3, and
its check on disk (every value and statistic finite).

Store: ``data (time, level, latitude, longitude)`` float32 normalized; ``mean``/``std`` ``(level,)`` for
global or ``(level, latitude, longitude)`` for local; attrs ``field``, ``month``, ``normalization``
(global/local: the shape of mean/std), ``statistics`` (monthly/climatology), ``statistics_period``,
``source``, ``source_sha256``, ``provenance``.

Legend: T time steps, L levels, Y latitude rows, X longitude columns.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

from atmorep.config import NormalizeConfig
from atmorep.data.normalize.decode import Month
from atmorep.data.normalize.slabs import block_steps
from atmorep.data.normalize.statistics import Stats, apply
from atmorep.errors import DataError
from atmorep.formats import zarrv3

log = logging.getLogger(__name__)


def _time_values(times: np.ndarray) -> tuple[np.ndarray, dict]:
    t = np.asarray(times, "datetime64[s]").astype(np.int64)
    if (t % 3600 == 0).all():  # hours when every step is on the hour (ERA5), as CF readers expect
        return t // 3600, {
            "units": "hours since 1970-01-01 00:00:00",
            "calendar": "proleptic_gregorian",
            "standard_name": "time",
        }
    return t, {"units": "seconds since 1970-01-01 00:00:00", "calendar": "proleptic_gregorian", "standard_name": "time"}


_LAT = {"units": "degrees_north", "standard_name": "latitude"}
_LON = {"units": "degrees_east", "standard_name": "longitude"}
_LEVEL = {"long_name": "level (model level number, hPa, or 0 at the surface)"}


def grid_coords(levels, lats, lons) -> dict:
    return {
        "level": (np.asarray(levels, np.int64), _LEVEL),
        "latitude": (np.asarray(lats, np.float64), _LAT),
        "longitude": (np.asarray(lons, np.float64), _LON),
    }


def put_coords(store: zarrv3.Store, coords: dict[str, tuple[np.ndarray, dict]]) -> None:
    """One-dimensional coordinate arrays ``name -> (values, attributes)``, each named after its dimension."""
    for name, (values, attrs) in coords.items():
        store.put(name, values, (name,), attrs)


def write_normalized(m: Month, stats: Stats, cfg: NormalizeConfig, out: Path, attrs: dict) -> Path:
    """Pass 3: the normalized store of ``m`` at ``out``, atomically: coordinates, statistics, then the
    data normalized block by block (the slab is normalized in place). ``attrs`` are the store's (its
    ``normalization``, ``statistics`` and ``statistics_period`` also name the data)."""
    T, L, Y, X = m.shape
    nt, chunk_t = block_steps(cfg, m.shape)
    describe = (
        f"normalized with {attrs['normalization']} {attrs['statistics']} statistics of {attrs['statistics_period']}"
    )
    with zarrv3.writing(out, attrs, nbytes=4 * T * L * Y * X) as store:
        put_coords(store, {"time": _time_values(m.times), **grid_coords(m.levels, m.grid.lats, m.grid.lons)})
        dims = ("level",) if stats.method == "global" else ("level", "latitude", "longitude")
        store.put("mean", stats.mean, dims, {"long_name": f"{m.field} mean ({stats.method})", "units": m.param.units})
        store.put("std", stats.std, dims, {"long_name": f"{m.field} standard deviation", "units": m.param.units})
        data = store.create(
            "data",
            (T, L, Y, X),
            np.float32,
            (chunk_t, 1, Y, X),  # one level's whole grid for chunk_t steps: up to 16 MiB (slabs._CHUNK_BYTES)
            ("time", "level", "latitude", "longitude"),
            {"long_name": f"{m.field} {describe}", "units": "1"},
        )
        for t0 in range(0, T, nt):
            block = m.slab.read(t0, min(T, t0 + nt))
            block = apply(block, stats, out=block)
            _finite(out, block, t0, m, stats)  # before the write: a refused month leaves no store
            data.write(t0, block)
    return Path(out)


def _finite(out: Path, block: np.ndarray, t0: int, m: Month, stats: Stats) -> None:
    """Refuse non-finite normalized values (e.g. a zero standard deviation): training cannot use them."""
    bad = ~np.isfinite(block)
    if not bad.any():
        return
    t, lev, y, x = (int(i) for i in np.argwhere(bad)[0])
    std_ = stats.broadcast()[1]
    # min(): a global std is (1, L, 1, 1), a local one (1, L, Y, X)
    std = float(std_[0, lev, min(y, std_.shape[2] - 1), min(x, std_.shape[3] - 1)])
    raise DataError(
        f"{out}: field '{m.field}' normalizes to {int(bad.sum())} non-finite values "
        f"(first at {np.datetime_as_string(m.times[t0 + t], 'h')}, level {m.levels[lev]}, "
        f"lat {m.grid.lats[y]:g}, lon {m.grid.lons[x]:g}, std {std:g} there); check the source "
        "and normalize.method / normalize.local; nothing was written"
    )


def check(path: str | Path) -> dict:
    """Check a normalized store on disk: every value and statistic finite, every std positive.

    Raises :class:`DataError` naming the first bad value; returns counts.
    """
    ds = zarrv3.open_dataset(path, threads=None)
    field, month = ds.attrs.get("field"), ds.attrs.get("month")
    for name in ("mean", "std"):
        v = ds[name].values
        if not np.isfinite(v).all() or (name == "std" and (v <= 0).any()):
            raise DataError(
                f"{path}: field '{field}' {month}: its {name} is not finite and positive "
                "everywhere; rebuild it (atmorep normalize)"
            )
    data = ds["data"].transpose("time", "level", "latitude", "longitude")  # by name: no order assumed of the store
    T = data.shape[0]
    step = max(1, (64 << 20) // max(1, 4 * int(np.prod(data.shape[1:]))))  # ~64 MB a block: bounded memory
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
