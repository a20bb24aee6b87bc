"""The normalize stage and its climatology option: ``normalize`` (decode, check, statistics, write),
``moments`` (one month's moments) and ``climatology`` (moments merged over a training period), the
three library functions behind ``atmorep normalize|moments|climatology``.

Legend: T time steps, L levels, Y latitude rows, X longitude columns.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
import time
from pathlib import Path

import numpy as np
import xarray as xr

from atmorep.config import DataConfig, NormalizeConfig
from atmorep.data.acquire.sources import read_provenance
from atmorep.data.normalize.decode import Month, decode_month, moments_of
from atmorep.data.normalize.statistics import Moments, Stats
from atmorep.data.normalize.store import grid_coords, put_coords, write_normalized
from atmorep.errors import DataError
from atmorep.formats import zarrv3
from atmorep.formats.atomic import Replacement

log = logging.getLogger(__name__)


def _write_json(obj: dict, out: Path) -> None:
    with Replacement(out) as tmp:  # creates the parent directory
        tmp.write_text(json.dumps(obj, indent=1, default=str) + "\n")


def _scratch(cfg: NormalizeConfig, out: Path) -> Path:
    # Beside the output unless normalize.scratch_dir says (node-local disk); the pid keeps two jobs
    # writing the same output (a rerun beside a stale one) off each other's slab.
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
    climatology = climatology if which == "climatology" else None  # a climatology of another field's choice: unread
    if which == "climatology" and climatology is None:
        raise DataError(
            f"field '{field}' uses climatological statistics (normalize.climatology.fields): give the climatology store"
        )
    m = None
    clock = [time.perf_counter()]
    try:
        m = decode_month(source, data, cfg, field, month, _scratch(cfg, out))
        clock.append(time.perf_counter())
        # The month's own moments even with a climatology: the QC summary reports them per level.
        moments = moments_of(m, cfg)
        clock.append(time.perf_counter())
        clim = Climatology(climatology) if climatology is not None else None
        stats = clim.stats(month, method, m) if clim else moments.stats(method)
        attrs = {
            "field": field,
            "month": month,
            "normalization": method,
            "statistics": which,
            "statistics_period": clim.period if clim else month,
            "source": str(source),
            "source_sha256": m.sha256,
            "units": m.param.units,
            "provenance": json.dumps(
                {
                    "config": {"data": dataclasses.asdict(data), "normalize": dataclasses.asdict(cfg)},
                    "acquire": read_provenance(source),
                    # what the store depends on beyond the config: a rebuilt climatology changes it
                    "inputs": {"grib": m.sha256, "climatology": clim.digest if clim else None},
                },
                default=str,
            ),
        }
        write_normalized(m, stats, cfg, out, attrs)
        clock.append(time.perf_counter())
    finally:
        if m is not None:
            m.slab.close()
    # Only now: a month that failed the gate or the write raised above, and gets no QC "pass".
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
        attrs["statistics_period"],
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
    attrs = {"field": field, "month": month, "source_sha256": m.sha256, "units": m.param.units}
    with zarrv3.writing(out, attrs) as store:
        put_coords(store, grid_coords(m.levels, m.grid.lats, m.grid.lons))
        store.put("count", np.full(len(m.levels), acc.count, np.int64), ("level",))  # the same per level
        # float64 as accumulated: merging months must not round their moments first
        store.put("mean", acc.mean, ("level", "latitude", "longitude"), chunks=(1, *acc.mean.shape[1:]))
        store.put("m2", acc.m2, ("level", "latitude", "longitude"), chunks=(1, *acc.m2.shape[1:]))
    log.info("moments of %s %s (%d time steps) -> %s", field, month, acc.count, out)
    return out


def climatology(data: DataConfig, cfg: NormalizeConfig, field: str, inputs: list[str | Path], out: str | Path) -> Path:
    """Merge monthly moments of the training period into per-calendar-month (or overall) moments."""
    out = Path(out)
    clim = cfg.climatology
    want = clim.months()
    by_month: dict[str, Path] = {}
    opened: dict[str, xr.Dataset] = {}
    for p in inputs:
        ds = zarrv3.open_dataset(p, threads=None)
        if ds.attrs.get("field") != field:
            raise DataError(f"{p}: moments of field '{ds.attrs.get('field')}', expected '{field}'")
        # by its own attribute: file names and input order do not matter
        by_month[ds.attrs["month"]], opened[ds.attrs["month"]] = Path(p), ds
    if missing := [m for m in want if m not in by_month]:
        raise DataError(f"climatology of '{field}' {clim.start} .. {clim.end}: no moments for {missing}")
    groups = list(range(1, 13)) if clim.by_calendar_month else [0]
    first = opened[want[0]]
    L, Y, X = first["mean"].shape
    acc = {k: Moments.empty(L, Y, X) for k in groups}
    sources = {}
    for month in want:
        ds = opened[month]
        for c in ("level", "latitude", "longitude"):  # the same points, not merely as many
            if not np.array_equal(ds[c].values, first[c].values):
                raise DataError(f"{by_month[month]}: {c} differs from {by_month[want[0]]}; moments of one grid only")
        key = int(month[5:7]) if clim.by_calendar_month else 0  # 'YYYY-MM' -> 1..12; 0: one set for all
        acc[key].merge(Moments(int(ds["count"].values[0]), ds["mean"].values, ds["m2"].values))
        sources[month] = ds.attrs["source_sha256"]
    present = [k for k in groups if acc[k].count]  # a period shorter than a year lacks some calendar months
    period = f"{clim.start}..{clim.end}"
    # The GRIB digests of every month merged: a normalized store records it, so a changed input shows.
    digest = hashlib.sha256(json.dumps(sources, sort_keys=True).encode()).hexdigest()
    attrs = {
        "field": field,
        "period": period,
        "by_calendar_month": clim.by_calendar_month,
        "months": want,
        "inputs_sha256": digest,
        "units": first.attrs.get("units", ""),
    }
    with zarrv3.writing(out, attrs) as store:
        put_coords(
            store,
            {
                "group": (np.asarray(present, np.int64), {"long_name": "calendar month (0: all months)"}),
                **grid_coords(first["level"].values, first["latitude"].values, first["longitude"].values),
            },
        )
        dims = ("group", "level", "latitude", "longitude")
        store.put("count", np.array([[acc[k].count] * L for k in present], np.int64), ("group", "level"))
        store.put("mean", np.stack([acc[k].mean for k in present]), dims, chunks=(1, 1, Y, X))
        store.put("m2", np.stack([acc[k].m2 for k in present]), dims, chunks=(1, 1, Y, X))
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
        self.ds = zarrv3.open_dataset(self.path, threads=None)
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
        # copies: a Moments owns its arrays (merge updates them in place)
        return Moments(int(sel["count"].values[0]), sel["mean"].values.copy(), sel["m2"].values.copy()).stats(method)
