"""Shard: one zarr v3 store per (field, year) whose chunks coincide with the model's tokens.

Layout, chosen by measurement (``benchmarks/loader.py`` and ``benchmarks/zarr_write.py``; the figures
are in the README, "The pipeline", shard):

- an inner chunk is one token *position* of every level, ``(tt, L, ty, tx)``: a sample always reads
  all levels of a field, so this reads exactly the sample's bytes while cutting the number of chunks
  (and the per-chunk cost) by ``L``; each level is still its own token;
- chunks are stored uncompressed: normalized values are noise-like floats that compress little, and
  uncompressed chunks allow the direct reader below;
- every chunk of a shard file is present and in C order (zarr-python's own pipeline stores them in
  Morton order; with zarrs the order varies between writes), so
  :class:`~atmorep.formats.zarrv3.DenseShards` writes them and reads a sample as strided slices of
  memory maps, with no per-chunk work; shard indices are read once per process, so the bytes taken
  from the files are the bytes used;
- the sharding codec packs ``shard_tokens`` token positions into one file: few large files keep the
  inode count of a campaign low on a cluster file system, and a sample touches fewer pieces and maps.

Latitude is cropped symmetrically to a whole number of tokens, excluding both poles on a global grid
(AtmoRep never samples them), using the least common multiple of every field's lat token size, so
fields with different token sizes share one grid. On a global grid longitude must be a whole number
of tokens because it is periodic (windows wrap around); a regional grid (its longitudes do not close
the circle) is cropped symmetrically to whole tokens like latitude, and windows never wrap. A sample
whose origin lies on the token grid therefore reads whole chunks and nothing else.

Store layout: ``data (time, level, latitude, longitude)`` normalized float32 (fill NaN); ``mean``/``std``
with a leading ``month`` dim (the statistics of each month, global ``(month, level)`` or local
``(month, level, latitude, longitude)``); attrs ``field``, ``year``, ``token_size``, ``normalization``,
``provenance`` (config slice, input checksums, source latitude rows), CF attributes on the coordinates.

Legend: T time steps, L levels, Y latitude rows, X longitude columns.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import math
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import xarray as xr
from tqdm import tqdm

from atmorep.config import DataConfig, ShardConfig
from atmorep.errors import DataError
from atmorep.formats import zarrv3
from atmorep.formats.grib import periodic

log = logging.getLogger(__name__)

DIMS = ("time", "level", "latitude", "longitude")
CF = {
    "time": {"standard_name": "time", "long_name": "valid time"},
    "level": {"long_name": "vertical level (0: surface)", "positive": "down"},
    "latitude": {"standard_name": "latitude", "long_name": "latitude", "units": "degrees_north"},
    "longitude": {"standard_name": "longitude", "long_name": "longitude", "units": "degrees_east"},
}


def latitude_rows(nlat: int, token_lat: int, poles: bool = True) -> slice:
    """Rows kept: the central whole number of tokens; with ``poles`` (a grid from pole to pole) the
    first and last rows are excluded first (AtmoRep never samples the poles)."""
    usable = nlat - 2 if poles else nlat
    keep = (usable // token_lat) * token_lat
    if keep == 0:
        raise DataError(f"grid of {nlat} latitudes is smaller than one token ({token_lat} rows)")
    first = int(poles) + (usable - keep) // 2  # an odd leftover row goes at the end (south: rows run N -> S)
    return slice(first, first + keep)


def has_poles(lats: np.ndarray) -> bool:
    return bool(np.isclose(abs(lats[0]), 90.0) or np.isclose(abs(lats[-1]), 90.0))


def longitude_columns(lons: np.ndarray, token_lon: int, field: str = "") -> slice:
    """Columns kept: all of a global grid (they must be whole tokens: longitude is periodic); the
    central whole number of tokens of a regional grid (no wrap-around, edges dropped)."""
    n, who = len(lons), f"field '{field}': " if field else ""
    if periodic(lons):
        if n % token_lon:
            raise DataError(
                f"{who}{n} longitudes are not a whole number of {token_lon}-point tokens "
                "(a global grid is periodic); choose shard.token_size[2] dividing it"
            )
        return slice(0, n)
    keep = (n // token_lon) * token_lon
    if keep == 0:
        raise DataError(f"{who}regional grid of {n} longitudes is narrower than one token ({token_lon} columns)")
    first = (n - keep) // 2
    return slice(first, first + keep)


def lat_step(data: DataConfig, cfg: ShardConfig) -> int:
    """Rows every field's latitudes are cropped to a multiple of: the lcm of the lat token sizes."""
    return math.lcm(*(cfg.token_size_for(f)[1] for f in data.fields))


def lon_step(data: DataConfig, cfg: ShardConfig) -> int:
    """Columns a regional grid is cropped to a multiple of: the lcm of the lon token sizes."""
    return math.lcm(*(cfg.token_size_for(f)[2] for f in data.fields))


def layout(cfg: ShardConfig, token_size, shape: tuple[int, int, int, int]):
    """Inner chunk ``(tt, L, ty, tx)`` and shard shape (whole chunks, at most the array) of a store."""
    tt, ty, tx = token_size
    chunk = (tt, shape[1], ty, tx)
    per_shard = (cfg.shard_tokens[0], 1, cfg.shard_tokens[1], cfg.shard_tokens[2])  # a chunk has every level
    # At most the array rounded up to whole chunks: a small store is not one mostly-empty shard.
    shards = tuple(c * min(k, -(-n // c)) for c, k, n in zip(chunk, per_shard, shape))
    return chunk, shards


class Months:
    """The normalized monthly stores of one field, opened lazily, as one time axis."""

    def __init__(self, field: str, year: str, inputs: Sequence[str | Path]):
        if not inputs:
            raise DataError(f"no normalized input for field '{field}' in {year}")
        opened = sorted(  # by the month each store says it holds, not by path or argument order
            ((zarrv3.open_dataset(p, threads=None), str(p)) for p in inputs), key=lambda mp: mp[0].attrs["month"]
        )
        self.months = [m for m, _ in opened]
        self.paths = [p for _, p in opened]
        methods = {m.attrs["normalization"] for m in self.months}
        if len(methods) != 1:
            raise DataError(f"field '{field}' {year}: months use different normalizations {sorted(methods)}")
        self.method = methods.pop()
        first = self.months[0]
        for m, p in zip(self.months[1:], self.paths[1:]):
            for c in ("level", "latitude", "longitude"):
                if not np.array_equal(m[c].values, first[c].values):
                    raise DataError(f"{p}: field '{field}' {c} differs from {self.paths[0]}")
        self.times = np.concatenate([m["time"].values for m in self.months])
        if np.any(np.diff(self.times) <= np.timedelta64(0)):
            raise DataError(f"field '{field}' {year}: time steps of {self.paths} overlap or are unsorted")
        self.offsets = np.cumsum([0] + [m.sizes["time"] for m in self.months])
        self.first = first

    def block(self, t0: int, t1: int, rows: slice, cols: slice = slice(None)) -> np.ndarray:
        """Normalized values ``(t1 - t0, L, rows, cols)`` across month boundaries; non-finite values
        (which normalize never writes: a store changed since) are refused, naming the month's store."""
        parts = []
        for m, path, off in zip(self.months, self.paths, self.offsets):
            a, b = max(t0, off), min(t1, off + m.sizes["time"])
            if a < b:
                da = m["data"].transpose(*DIMS).isel(time=slice(a - off, b - off), latitude=rows, longitude=cols)
                parts.append(da.values)
                _finite(path, m, parts[-1], a - off, rows, cols)
        return np.concatenate(parts) if len(parts) > 1 else parts[0]  # no copy inside one month


def _finite(path: str, month: xr.Dataset, values: np.ndarray, t0: int, rows: slice, cols: slice) -> None:
    bad = ~np.isfinite(values)
    if bad.any():
        t, lev, y, x = (int(i) for i in np.argwhere(bad)[0])
        raise DataError(
            f"{path}: field '{month.attrs.get('field')}' has {int(bad.sum())} non-finite normalized "
            f"values here (first at {np.datetime_as_string(month['time'].values[t0 + t], 'h')}, "
            f"level {int(month['level'].values[lev])}, "
            f"lat {month['latitude'].values[rows][y]:g}, lon {month['longitude'].values[cols][x]:g}); "
            "normalize writes none, so the store was changed since: rebuild it (atmorep normalize)"
        )


def shard(
    data: DataConfig, cfg: ShardConfig, field: str, year: str, inputs: Sequence[str | Path], out: str | Path
) -> Path:
    """Write the normalized months of ``field`` in ``year`` as a token-aligned store, block by block.

    Memory: one row of shards, ``shard_tokens[0]*tt`` steps x L x ``shard_tokens[1]*ty`` rows x X.
    """
    months = Months(field, year, inputs)
    src = months.first
    token = cfg.token_size_for(field)
    rows, cols = crop(data, cfg, field, src["latitude"].values, src["longitude"].values)
    shape = (len(months.times), src.sizes["level"], rows.stop - rows.start, cols.stop - cols.start)
    chunk, shards = layout(cfg, token, shape)
    # The template (coordinates, monthly statistics, attributes) goes through xarray: its CF encoding
    # of the time and month coordinates is what every reader decodes, and it is a few small arrays.
    template = _template(data, cfg, field, year, months, rows, cols, token)
    with zarrv3.writing(out, nbytes=4 * math.prod(shape), template=template) as store:
        arr = store.create_sharded(
            "data", shape, chunk, shards, DIMS, {"long_name": f"{field}, normalized per month", "units": "1"}
        )
        for t0, t1, y0, y1 in tqdm(  # disable=None: a bar on a terminal only, none in Snakemake's logs
            list(_blocks(shape, shards)), desc=f"shard {field} {year}", disable=None, mininterval=5
        ):
            values = months.block(t0, t1, slice(rows.start + y0, rows.start + y1), cols)
            arr.write((t0, 0, y0, 0), values)
    log.info("sharded %s %s: %s, chunks %s, shards %s -> %s", field, year, shape, chunk, shards, out)
    return Path(out)


def identity(store: str | Path) -> dict:
    """What a model trained on ``store`` was trained on: the digest of its provenance and
    attributes (config slice, input checksums), and of its files' names, sizes and modification
    times (a rebuilt or rewritten store differs). Cheap: no data is read."""
    store = Path(store)
    attrs = json.loads((store / "zarr.json").read_text()).get("attributes", {})
    files = sorted(
        (str(p.relative_to(store)), p.stat().st_size, p.stat().st_mtime_ns)  # mtime: rewritten in place, same size
        for p in store.rglob("*")
        if p.is_file() and not p.name.startswith(".")  # not Snakemake's timestamp or other dot files
    )
    return {
        "field": attrs.get("field"),
        "year": attrs.get("year"),
        "provenance": hashlib.sha256(json.dumps(attrs, sort_keys=True).encode()).hexdigest(),
        "files": hashlib.sha256(json.dumps(files).encode()).hexdigest(),
    }


def crop(data: DataConfig, cfg: ShardConfig, field: str, lats: np.ndarray, lons: np.ndarray) -> tuple[slice, slice]:
    """(rows, columns) of the source grid a store keeps: whole tokens of every field (see the module doc)."""
    return (
        latitude_rows(len(lats), lat_step(data, cfg), has_poles(lats)),
        longitude_columns(lons, lon_step(data, cfg), field),
    )


def _blocks(shape, shards):
    """(t0, t1, y0, y1) of every row of shards, all levels and longitudes."""
    for t0 in range(0, shape[0], shards[0]):
        for y0 in range(0, shape[2], shards[2]):
            yield t0, min(t0 + shards[0], shape[0]), y0, min(y0 + shards[2], shape[2])


def _template(
    data: DataConfig, cfg: ShardConfig, field: str, year: str, months: Months, rows: slice, cols: slice, token
) -> xr.Dataset:
    """Everything but ``data``: coordinates (CF), monthly statistics, attributes and provenance."""
    src = months.first.isel(latitude=rows, longitude=cols)
    stats = xr.concat([m[["mean", "std"]] for m in months.months], dim="month")
    if "latitude" in stats.dims:  # local statistics are per grid point: cropped like the data
        stats = stats.isel(latitude=rows, longitude=cols)
    stats = stats.assign_coords(month=[np.datetime64(m.attrs["month"], "ns") for m in months.months])
    ds = stats.assign_coords(
        time=("time", months.times),
        latitude=src["latitude"].values,
        longitude=src["longitude"].values,
        level=src["level"].values,
    )
    for name, attrs in CF.items():
        ds[name].attrs = {**src[name].attrs, **attrs} if name in src else dict(attrs)
    ds.attrs = {
        "Conventions": "CF-1.10",
        "field": field,
        "year": year,
        "token_size": list(token),
        "normalization": months.method,
        "provenance": json.dumps(
            {
                "config": {"data": dataclasses.asdict(data), "shard": dataclasses.asdict(cfg)},
                "inputs": {m.attrs["month"]: m.attrs["source_sha256"] for m in months.months},
                # what `atmorep verify` compares the store with
                "normalized": {m.attrs["month"]: p for m, p in zip(months.months, months.paths)},
                "latitude_rows": [rows.start, rows.stop, months.first.sizes["latitude"]],
                "longitude_columns": [cols.start, cols.stop, months.first.sizes["longitude"]],
            }
        ),
    }
    return ds


def recorded_inputs(store: str | Path) -> list[Path]:
    """The normalized monthly stores ``store`` was sharded from (as its provenance records them)."""
    ds = zarrv3.open_dataset(store, threads=None)
    recorded = json.loads(ds.attrs["provenance"]).get("normalized")
    if not recorded:
        raise DataError(
            f"{store}: its provenance names no normalized inputs (sharded by an older atmorep): give them with --inputs"
        )
    missing = [p for p in recorded.values() if not Path(p).exists()]
    if missing:
        raise DataError(
            f"{store}: its normalized input(s) {', '.join(missing)} are gone (paths are relative to "
            "the directory it was sharded in): run from there or give them with --inputs"
        )
    return [Path(p) for p in recorded.values()]


def verify(
    store: str | Path,
    field: str | None = None,
    inputs: Sequence[str | Path] | None = None,
    data: DataConfig | None = None,
    cfg: ShardConfig | None = None,
) -> dict:
    """Prove that ``store``, as it is on disk, holds the normalized ``inputs`` bit for bit, token-aligned.

    Checks coordinates, attributes, that the inputs are the months (and GRIB digests) the store was
    made from, the statistics of every month, that every value is finite, and every value twice:
    through zarr (which also checks every shard index's CRC32C) and through the direct reader the
    loader uses (after checking that every shard file is dense). ``field`` and ``inputs`` default to
    what the store's attributes and provenance record. With ``data`` and ``cfg``, also that the token
    size and latitude crop are the configured ones. Raises :class:`DataError` at the first difference;
    returns counts.
    """
    ds = zarrv3.open_dataset(store, threads=None)
    year = ds.attrs["year"]
    field = field or ds.attrs["field"]
    months = Months(field, year, inputs if inputs else recorded_inputs(store))
    src = months.first
    if ds.attrs["field"] != field or ds.attrs["normalization"] != months.method:
        raise DataError(
            f"{store}: holds {ds.attrs['field']} ({ds.attrs['normalization']}), inputs are {field} ({months.method})"
        )
    prov = json.loads(ds.attrs["provenance"])
    made_from = {m.attrs["month"]: m.attrs["source_sha256"] for m in months.months}
    if made_from != prov["inputs"]:
        raise DataError(
            f"{store}: was sharded from the GRIB months {prov['inputs']}, the inputs come from "
            f"{made_from}: these are not its sources; rebuild it (atmorep shard)"
        )
    first, stop, nlat = prov["latitude_rows"]
    # a store without the key (sharded before regional grids) kept every column
    west, east, nlon = prov.get("longitude_columns", [0, src.sizes["longitude"], src.sizes["longitude"]])
    rows, cols = slice(first, stop), slice(west, east)
    token = tuple(ds.attrs["token_size"])
    lats, lons = src["latitude"].values, src["longitude"].values
    if cfg is not None and data is not None:
        if token != tuple(cfg.token_size_for(field)) or (rows, cols) != crop(data, cfg, field, lats, lons):
            raise DataError(
                f"{store}: token size {token} / rows {first}..{stop} / columns {west}..{east} are not "
                "the configured ones"
            )
    poles = has_poles(lats)
    if (  # poles excluded; centred to within one row (an odd leftover); whole tokens
        (poles and (first < 1 or stop > nlat - 1))
        or abs(first - int(poles) - (nlat - int(poles) - stop)) > 1
        or (stop - first) % token[1]
    ):
        raise DataError(
            f"{store}: latitude rows {first}..{stop} of {nlat} are not whole tokens, centred"
            + (", poles excluded" if poles else "")
        )
    # whole tokens, and either every column (global) or centred to within one column (regional)
    if (east - west) % token[2] or (east - west != nlon and (not 0 <= west or abs(west - (nlon - east)) > 1)):
        raise DataError(f"{store}: longitude columns {west}..{east} of {nlon} are not whole tokens, centred")
    _equal(store, "time", ds["time"].values, months.times)
    _equal(store, "latitude", ds["latitude"].values, lats[rows])
    _equal(store, "longitude", ds["longitude"].values, lons[cols])
    _equal(store, "level", ds["level"].values, src["level"].values)
    for k, m in enumerate(months.months):
        for s in ("mean", "std"):
            want = m[s].isel(latitude=rows, longitude=cols).values if "latitude" in m[s].dims else m[s].values
            _equal(store, f"{s} of {m.attrs['month']}", ds[s].values[k], want)
    arr = zarrv3.open_array(Path(store) / "data")
    shape = arr.shape
    if arr.shards is None:
        raise DataError(f"{store}: not a sharded token store (its data array has no shards)")
    chunk, shards = tuple(arr.chunks), tuple(arr.shards)
    if chunk != (token[0], shape[1], token[1], token[2]):
        raise DataError(f"{store}: inner chunks {chunk} are not one token position {token} of all {shape[1]} levels")
    try:
        dense = zarrv3.DenseShards(Path(store) / "data")
        nshards = dense.check_all()
    except zarrv3.NotDense as exc:
        raise DataError(f"{store}: not a dense token store: {exc}") from None
    for t0, t1, y0, y1 in tqdm(
        list(_blocks(shape, shards)), desc=f"verify {Path(store).name}", disable=None, mininterval=5
    ):
        want = months.block(t0, t1, slice(first + y0, first + y1), cols)
        _equal(store, f"data[{t0}:{t1}, :, {y0}:{y1}] (zarr)", np.asarray(arr[t0:t1, :, y0:y1, :]), want)
        nt = -(-(t1 - t0) // chunk[0])  # the year's last chunk may reach past its end (NaN padding)
        blk = dense.read((t0 // chunk[0], 0, y0 // chunk[2], 0), (nt, 1, (y1 - y0) // chunk[2], dense.grid[3]))
        # (nt, 1, Yc, Xc, tt, L, ty, tx) -> (1, L, nt, tt, Yc, ty, Xc, tx): chunk-grid and in-chunk axes interleaved
        direct = blk.transpose(1, 5, 0, 4, 2, 6, 3, 7).reshape(shape[1], nt * chunk[0], y1 - y0, shape[3])
        _equal(store, f"data[{t0}:{t1}, :, {y0}:{y1}] (direct)", direct.transpose(1, 0, 2, 3)[: t1 - t0], want)
    summary = {
        "store": str(store),
        "values": int(np.prod(shape)),
        "months": len(months.months),
        "shards": nshards,
        "chunk": list(chunk),
        "shard": list(shards),
    }
    log.info(
        "verified %s: %d values bit-identical to %d normalized months (%d dense shards)",
        store,
        summary["values"],
        summary["months"],
        nshards,
    )
    return summary


def _equal(store, what: str, got: np.ndarray, want: np.ndarray) -> None:
    """Bit-for-bit equality (NaN-safe: compares the bits, not the values)."""
    got, want = np.ascontiguousarray(got), np.ascontiguousarray(want)
    if got.shape != want.shape or got.dtype != want.dtype:
        raise DataError(f"{store}: {what} is {got.dtype}{list(got.shape)}, the source {want.dtype}{list(want.shape)}")
    bits = f"u{got.dtype.itemsize}"  # as integers: NaN equals NaN, and -0.0 differs from 0.0
    a, b = got.view(bits), want.view(bits)
    if np.array_equal(a, b):
        return
    diff = a != b
    where = tuple(int(i) for i in np.argwhere(diff)[0])
    raise DataError(
        f"{store}: {what} differs from the normalized source at index {where}: "
        f"{got[where]!r} vs {want[where]!r} ({int(diff.sum())} values differ)"
    )
