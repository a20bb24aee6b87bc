"""Shard: one zarr v3 store per (field, year) whose chunks coincide with the model's tokens.

Each inner chunk is one token of one level, ``(tt, 1, ty, tx)``; the sharding codec packs
``shard_tokens`` of them into one file so a cluster file system sees few inodes. Latitude is cropped
to a whole number of tokens, symmetrically, excluding both poles (AtmoRep never samples them);
longitude must be a whole number of tokens because it is periodic. A sample whose origin lies on the
token grid therefore reads whole chunks and nothing else.

Store layout: ``data (time, level, latitude, longitude)`` normalized float32; ``mean``/``std`` with
a leading ``month`` dim (the statistics of each month, global ``(month, level)`` or local
``(month, level, latitude, longitude)``); attrs ``field``, ``token_size``, ``normalization``,
``provenance``.
"""

from __future__ import annotations

import dataclasses
import json
import logging
from pathlib import Path

import numpy as np
import xarray as xr

from atmorep.config import DataConfig, ShardConfig
from atmorep.data import zarrio
from atmorep.data.grib import DataError

log = logging.getLogger(__name__)


def latitude_rows(nlat: int, token_lat: int) -> slice:
    """Rows kept: the central whole number of tokens, poles excluded (first and last row)."""
    usable = nlat - 2
    keep = (usable // token_lat) * token_lat
    if keep == 0:
        raise DataError(f"grid of {nlat} latitudes is smaller than one token ({token_lat} rows)")
    first = 1 + (usable - keep) // 2
    return slice(first, first + keep)


def shard(data: DataConfig, cfg: ShardConfig, field: str, year: str, inputs: list[str | Path],
          out: str | Path) -> Path:
    """Concatenate the normalized months of ``field`` in ``year`` into a token-aligned store."""
    if not inputs:
        raise DataError(f"no normalized input for field '{field}' in {year}")
    months = [zarrio.open_dataset(p) for p in sorted(map(str, inputs))]
    methods = {m.attrs["normalization"] for m in months}
    if len(methods) != 1:
        raise DataError(f"field '{field}' {year}: months use different normalizations {sorted(methods)}")
    tt, ty, tx = cfg.token_size
    nlon = months[0].sizes["longitude"]
    if nlon % tx:
        raise DataError(f"field '{field}': {nlon} longitudes are not a whole number of {tx}-point tokens "
                        "(longitude is periodic); choose shard.token_size[2] dividing it")
    rows = latitude_rows(months[0].sizes["latitude"], ty)
    ds = xr.concat([m[["data"]] for m in months], dim="time").isel(latitude=rows)
    stats = xr.concat([m[["mean", "std"]] for m in months], dim="month")
    if "latitude" in stats.dims:
        stats = stats.isel(latitude=rows)
    stats = stats.assign_coords(month=[np.datetime64(m.attrs["month"], "ns") for m in months])
    ds = xr.merge([ds, stats])
    ds.attrs = {
        "field": field, "year": year, "token_size": [tt, ty, tx],
        "normalization": methods.pop(),
        "provenance": json.dumps({"config": {"data": dataclasses.asdict(data), "shard": dataclasses.asdict(cfg)},
                                  "inputs": {m.attrs["month"]: m.attrs["source_sha256"] for m in months}}),
    }
    ds["data"].attrs = {"long_name": f"{field}, normalized per month", "units": "1"}
    shape = [ds.sizes[d] for d in ("time", "level", "latitude", "longitude")]
    chunk = (tt, 1, ty, tx)
    per_shard = (cfg.shard_tokens[0], 1, cfg.shard_tokens[1], cfg.shard_tokens[2])
    shards = tuple(c * min(k, -(-n // c)) for c, k, n in zip(chunk, per_shard, shape))
    zarrio.write_dataset(ds, out, encoding={"data": {"chunks": chunk, "shards": shards}})
    log.info("sharded %s %s: %s, chunks %s, shards %s -> %s", field, year, shape, chunk, shards, out)
    return Path(out)
