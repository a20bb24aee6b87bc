"""Normalize: decode one (field, month) of GRIB, check it, compute AtmoRep statistics, apply them.

AtmoRep normalizes per field, level and (year, month): *global* uses one mean/std per level over
all grid points and hours of the month, *local* one mean/std per grid point over the month's hours.
The inverse ``x = x' * std + mean`` uses the stored statistics.

Legend: T time steps, L levels, Y latitude rows, X longitude columns.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import xarray as xr

from atmorep.config import DataConfig, NormalizeConfig
from atmorep.data import grib, zarrio
from atmorep.data.grib import DataError

log = logging.getLogger(__name__)


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


def check(da: xr.DataArray, source: str) -> None:
    """Quality gate: finite values and no constant level. Names file, field, level and time."""
    values = da.values
    bad = ~np.isfinite(values)
    if bad.any():
        it, il = np.argwhere(bad)[0][:2]
        raise DataError(f"{source}: field '{da.name}' level {int(da['level'][il])} time "
                        f"{str(da['time'].values[it])[:16]}: {int(bad.sum())} non-finite values (NaN/inf)")
    for il, lev in enumerate(da["level"].values):
        if np.ptp(values[:, il]) == 0:
            raise DataError(f"{source}: field '{da.name}' level {int(lev)} is constant "
                            f"({float(values[0, il, 0, 0])}) over the whole month")


def statistics(values_TLYX: np.ndarray, method: str) -> Stats:
    """AtmoRep statistics of one month, accumulated in float64."""
    x = values_TLYX.astype(np.float64)
    if method == "global":
        mean = x.mean(axis=(0, 2, 3))
        std = x.std(axis=(0, 2, 3))
    elif method == "local":
        mean = x.mean(axis=0)
        std = x.std(axis=0)
        # a grid point that never changes (e.g. no rain all month) would divide by zero
        floor = 1e-3 * x.std(axis=(0, 2, 3))[:, None, None]
        std = np.maximum(std, floor)
    else:
        raise ValueError(f"unknown normalization method {method!r}")
    return Stats(method, mean.astype(np.float32), std.astype(np.float32))


def apply(values_TLYX: np.ndarray, stats: Stats) -> np.ndarray:
    mean, std = stats.broadcast()
    return ((values_TLYX - mean) / std).astype(np.float32)


def invert(normalized_TLYX: np.ndarray, stats: Stats) -> np.ndarray:
    mean, std = stats.broadcast()
    return (normalized_TLYX * std + mean).astype(np.float32)


def normalize(data: DataConfig, cfg: NormalizeConfig, field: str, month: str,
              source: str | Path, out: str | Path) -> Path:
    """Decode ``source`` (GRIB of one field and month), check, normalize, write a zarr v3 store."""
    da = grib.decode(source, field)
    want = list(data.fields[field].levels)
    got = [int(v) for v in da["level"].values]
    if got != want:
        raise DataError(f"{source}: field '{field}' has levels {got}, config expects {want}")
    start, end = data.period
    times = da["time"].values
    outside = (times < start) | (times > end) | (times.astype("datetime64[M]") != np.datetime64(month, "M"))
    if outside.any():
        raise DataError(f"{source}: field '{field}' has time {str(times[outside][0])[:16]} outside "
                        f"{month} ∩ {data.start} … {data.end}")
    if len(np.unique(times)) != len(times):
        raise DataError(f"{source}: field '{field}' has duplicated time steps")
    check(da, str(source))
    method = cfg.method_for(field)
    stats = statistics(da.values, method)
    stat_dims = ("level",) if method == "global" else ("level", "latitude", "longitude")
    ds = xr.Dataset(
        {"data": (da.dims, apply(da.values, stats)),
         "mean": (stat_dims, stats.mean), "std": (stat_dims, stats.std)},
        coords=da.coords,
        attrs={"field": field, "month": month, "normalization": method,
               "source": str(source), "source_sha256": zarrio.sha256(source)},
    )
    ds["data"].attrs = {"long_name": f"{field} normalized with {method} statistics of {month}",
                        "units": "1"}
    zarrio.write_dataset(ds, out)
    log.info("normalized %s %s (%s) -> %s", field, month, method, out)
    return Path(out)


def read_stats(ds: xr.Dataset) -> Stats:
    return Stats(ds.attrs["normalization"], ds["mean"].values, ds["std"].values)
