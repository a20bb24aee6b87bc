"""What is in a GRIB, NetCDF or zarr input: fields, levels, grid and time steps, or why it is unusable."""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import xarray as xr

from atmorep.data.grib import DataError, _check_complete

_LEVEL_NAMES = ("level", "hybrid", "isobaricInhPa", "model_level_number", "lev", "sigma")


def kind(path: Path) -> str:
    """'zarr', 'grib' or 'netcdf' from the content (not the name)."""
    if path.is_dir():
        if (path / "zarr.json").exists() or (path / ".zgroup").exists() or (path / ".zarray").exists():
            return "zarr"
        raise DataError(f"{path}: a directory but not a zarr store (no zarr.json or .zgroup)")
    if not path.exists():
        raise DataError(f"{path}: no such file")
    with open(path, "rb") as f:
        head = f.read(8)
    if not head:
        raise DataError(f"{path}: empty file")
    if head.startswith(b"GRIB"):
        return "grib"
    if head.startswith(b"CDF") or head.startswith(b"\x89HDF"):
        return "netcdf"
    raise DataError(f"{path}: not GRIB, NetCDF or zarr (starts with {head[:4]!r})")


def open_any(path: Path) -> list[xr.Dataset]:
    k = kind(path)
    try:
        if k == "grib":
            import cfgrib

            _check_complete(path)
            return cfgrib.open_datasets(str(path), backend_kwargs={"indexpath": ""}, decode_timedelta=True)
        if k == "netcdf":
            return [xr.open_dataset(path)]
        return [xr.open_zarr(path, consolidated=False, chunks=None)]
    except DataError:
        raise
    except Exception as exc:
        raise DataError(f"{path}: cannot open as {k} ({type(exc).__name__}: {exc})") from None


def describe(path: str | Path) -> str:
    """A human-readable summary; raises :class:`DataError` when the input cannot be used."""
    path = Path(path)
    with warnings.catch_warnings():  # library chatter about merges and foreign files in stores
        warnings.simplefilter("ignore")
        datasets = open_any(path)
    lines = [f"{path} ({kind(path)})"]
    for ds in datasets:
        for name, da in ds.data_vars.items():
            if da.ndim < 2:
                continue
            lines.append(f"  {name}: {_describe_var(da)}")
    if len(lines) == 1:
        raise DataError(f"{path}: no gridded field found")
    return "\n".join(lines)


def _describe_var(da: xr.DataArray) -> str:
    parts = [da.attrs.get("long_name", da.attrs.get("GRIB_name", "")).strip() or "?"]
    if units := da.attrs.get("units"):
        parts[0] += f" [{units}]"
    lev = next((d for d in _LEVEL_NAMES if d in da.coords), None)
    if lev is not None:
        vals = np.atleast_1d(da[lev].values)
        parts.append(f"levels {lev}={[v.item() for v in vals]}")
    else:
        parts.append("levels surface")
    if "number" in da.dims:
        parts.append(f"{da.sizes['number']} ensemble members")
    parts.append(_grid(da))
    parts.append(_times(da))
    return "; ".join(p for p in parts if p)


def _grid(da: xr.DataArray) -> str:
    lat = next((c for c in ("latitude", "lat") if c in da.coords), None)
    lon = next((c for c in ("longitude", "lon") if c in da.coords), None)
    if lat is None or lon is None:
        gt = da.attrs.get("GRIB_gridType")
        raise DataError(f"field '{da.name}' is not on a regular lat/lon grid"
                        + (f" (gridType {gt})" if gt else "") + "; regrid it first")
    la, lo = da[lat].values, da[lon].values
    if la.ndim != 1 or lo.ndim != 1:
        raise DataError(f"field '{da.name}' has 2-D coordinates (a curvilinear grid); regrid it first")
    res = f"{abs(la[1] - la[0]):g}°x{abs(lo[1] - lo[0]):g}°" if len(la) > 1 and len(lo) > 1 else "single point"
    return f"grid {len(la)}x{len(lo)} {res}, lat {la.max():g}..{la.min():g}, lon {lo.min():g}..{lo.max():g}"


def _times(da: xr.DataArray) -> str:
    for name in ("valid_time", "time"):
        if name in da.coords:
            t = np.atleast_1d(da[name].values).ravel()
            if np.issubdtype(t.dtype, np.datetime64):
                t = np.unique(t)
                steps = np.unique(np.diff(t).astype("timedelta64[h]").astype(int)) if len(t) > 1 else []
                step = "" if not len(steps) else f", step {'/'.join(map(str, steps[:4]))} h"
                return f"{len(t)} time steps {str(t[0])[:16]} .. {str(t[-1])[:16]}{step}"
            return f"{len(t)} time steps ({name} as {t.dtype})"
    dim = next((d for d in da.dims if "time" in str(d)), None)
    if dim is not None:
        return f"{da.sizes[dim]} time steps ({dim}, not decoded as dates: see the store's attributes)"
    return "no time axis"
