"""What is in an input the pipeline accepts, or why it cannot be used (one line).

Inputs: a GRIB file (GRIB1 or GRIB2; regular lat/lon, or Gaussian when a regrid is configured), a
directory of GRIB (the ``files`` source's mirror), a zarr store (the embedded sample, normalized
and shard stores) and NetCDF. Rejected with one clear line: truncated or foreign files,
spherical-harmonic coefficients, Gaussian grids without ``--regrid linear``, a field on mixed grids.
"""

from __future__ import annotations

import warnings
from collections import defaultdict
from pathlib import Path

import numpy as np
import xarray as xr

from atmorep.data.acquire.inventory import level_types
from atmorep.data.acquire.mirror import expand, is_netcdf, kind
from atmorep.errors import DataError
from atmorep.formats import grib

_LEVEL_NAMES = (
    "level",
    "hybrid",
    "isobaricInhPa",
    "model_level_number",
    "lev",
    "sigma",
    "pressure_level",
    "plev",
    "model_level",
)


def describe(path: str | Path, regrid: str = "none", variables: dict[str, str] | None = None) -> str:
    """A human-readable summary; raises :class:`DataError` (one line) when the input cannot be used.

    NetCDF and zarr variables end with the verdict of the reader acquire uses (``usable as field …``
    or ``not usable: …``); ``variables`` is ``acquire.variables`` (field -> variable name).
    """
    from atmorep.data.acquire import gridded

    path = Path(path)
    k = kind(path)
    if k == "zarr":
        from atmorep.data.acquire.zarrsource import describe_store

        # An anemoi dataset is one array of every variable: described by its own reader, else as xarray.
        anemoi = describe_store(str(path), variables)
        if anemoi is not None:
            return "\n".join([f"{path} (zarr, anemoi dataset)"] + [f"  {n}: {v}" for n, v in anemoi.items()])
    if k == "grib":
        return f"{path} (grib)\n" + _describe_grib({path: grib.scan(path)}, regrid)
    if k == "grib-dir":
        return _describe_dir(path, regrid, variables)
    with warnings.catch_warnings():  # library chatter about merges and foreign files in stores
        warnings.simplefilter("ignore")
        try:
            ds = xr.open_dataset(path) if k == "netcdf" else xr.open_zarr(path, consolidated=False, chunks=None)
        except Exception as exc:
            raise DataError(f"{path}: cannot open as {k} ({type(exc).__name__}: {exc})") from None
    lines = [f"{path} ({k})"]
    verdicts = gridded.describe_vars(ds, str(path), variables)
    for name, da in ds.data_vars.items():
        if da.ndim < 2:
            continue
        lines.append(f"  {name}: {_describe_var(da)}; {verdicts[str(name)]}")
    if len(lines) == 1:
        raise DataError(f"{path}: no gridded field found")
    return "\n".join(lines)


def _describe_dir(path: Path, regrid: str, variables: dict[str, str] | None = None) -> str:
    files = expand([str(path)])
    if not files:
        raise DataError(f"{path}: not a zarr store (no zarr.json or .zgroup) and holds no GRIB file")
    netcdf = [f for f in files if is_netcdf(f)]  # as the files source splits a mirror
    files = [f for f in files if f not in netcdf]
    try:
        scanned = {f: grib.scan(f) for f in files}
    except DataError as exc:
        raise DataError(f"{path}: not a zarr store; as a GRIB directory: {exc}") from None
    parts = [f"{path} (directory of {len(files)} GRIB files)\n" + _describe_grib(scanned, regrid)] if files else []
    return "\n".join(parts + [describe(f, regrid, variables) for f in netcdf])


def _describe_grib(scanned: dict[Path, list[grib.Header]], regrid: str) -> str:
    by_field: dict[tuple, list[tuple[Path, grib.Header]]] = defaultdict(list)
    for path, headers in scanned.items():
        for h in headers:
            # one line per identity the files source selects by (data.fields.<f>.levtype): field and level
            # type, the single-level types (what levtype sfc takes) together
            by_field[(h.param.name, "sfc" if h.level.kind == "sfc" else h.level.type_of_level)].append((path, h))
    lines = []
    for (name, _), items in by_field.items():
        first_path, h0 = items[0]
        grids = {h.grid.key: (p, h.grid) for p, h in items}
        if len(grids) > 1:
            (p1, g1), (p2, g2) = list(grids.values())[:2]
            raise DataError(
                f"{first_path}: field '{name}' is on mixed grids: {g1.describe()} ({p1.name}) and "
                f"{g2.describe()} ({p2.name}); one grid per field is required"
            )
        if (why := h0.grid.unusable(regrid)) is not None:
            raise DataError(f"{first_path}: field '{name}' is on {why}")
        lines.append(f"  {name}: {_grib_line([h for _, h in items], regrid)}")
    return "\n".join(lines)


def _grib_line(headers: list[grib.Header], regrid: str) -> str:
    h0 = headers[0]
    parts = [f"{h0.param.long_name} [{h0.param.units}]"]
    levels = list(dict.fromkeys(h.level.level for h in headers))
    if {h.level.type_of_level for h in headers} == {"surface"} and levels == [0]:
        parts.append("levels surface")
    elif h0.level.kind == "sfc":
        parts.append(f"levels single-level {level_types(headers)}")
    else:
        levels.sort(reverse=h0.level.kind == "pl")
        parts.append(f"levels {h0.level.type_of_level}={[float(v) for v in levels]}")
    members = {h.number for h in headers}
    if len(members) > 1:
        parts.append(f"{len(members)} ensemble members")
    steps = sorted({h.step_hours for h in headers})
    if steps != [0.0]:
        runs = len({h.base for h in headers})
        parts.append(f"forecasts: {runs} runs, steps {'/'.join(f'{s:g}' for s in steps)} h")
    g = h0.grid
    if g.regular:
        lat = f"lat {max(g.file_lats):g}..{min(g.file_lats):g}"
        parts.append(f"grid {g.describe()}, {lat}, lon {g.file_lons[0]:g}..{g.file_lons[1]:g}")
    else:
        parts.append(f"grid {g.describe()} (regridded {regrid})")
    parts.append(_times_of(np.array([h.time for h in headers])))
    editions = sorted({h.edition for h in headers})
    parts.append("GRIB" + "+".join(map(str, editions)))
    return "; ".join(parts)


def _times_of(t: np.ndarray) -> str:
    t = np.unique(t)
    steps = np.unique(np.diff(t).astype("timedelta64[h]").astype(int)) if len(t) > 1 else np.array([], int)
    step = "" if not len(steps) else f", step {'/'.join(map(str, steps[:4]))} h"
    return f"{len(t)} time steps {str(t[0])[:16]} .. {str(t[-1])[:16]}{step}"


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
    from atmorep.data.acquire import gridded

    lat = next((c for c in ("latitude", "lat") if c in da.coords), None)
    lon = next((c for c in ("longitude", "lon") if c in da.coords), None)
    if lat is None or lon is None:
        raise DataError(f"field '{da.name}' has no latitude/longitude coordinates: not on a regular lat/lon grid")
    la, lo = da[lat].values, da[lon].values
    if la.ndim != 1 or lo.ndim != 1:
        raise DataError(f"field '{da.name}' has 2-D coordinates (a curvilinear grid); regrid it first")
    # The steps at the coordinates' own precision (float32 0.2° reads 0.200001 step by step).
    la, lo = (a if (r := gridded.regular_axis(a)) is None else r for a in (la, lo))
    res = f"{abs(la[1] - la[0]):g}°x{abs(lo[1] - lo[0]):g}°" if len(la) > 1 and len(lo) > 1 else "single point"
    return f"grid {len(la)}x{len(lo)} {res}, lat {la.max():g}..{la.min():g}, lon {lo.min():g}..{lo.max():g}"


def _times(da: xr.DataArray) -> str:
    for name in ("valid_time", "time", "month"):
        if name in da.coords:
            t = np.atleast_1d(da[name].values).ravel()
            if np.issubdtype(t.dtype, np.datetime64):
                return _times_of(t)
            return f"{len(t)} time steps ({name} as {t.dtype})"
    dim = next((d for d in da.dims if "time" in str(d)), None)
    if dim is not None:
        return f"{da.sizes[dim]} time steps ({dim}, not decoded as dates: see the store's attributes)"
    return "no time axis"
