"""A minimal writer of uncompressed zarr v3 stores (regular chunks, the ``bytes`` codec only).

The normalize stage writes many small stores; zarr-python spends a few milliseconds of Python per
array creation, which for a month of a small domain costs as much as decoding it. Uncompressed
v3 is simple enough to write directly: a ``zarr.json`` per node and one file of little-endian
bytes per chunk (``c/i/j/...``), edge chunks padded with the fill value. Stores are read back with
zarr-python and xarray (``dimension_names`` name the dimensions); tests hold the two together.
Normalized float32 compresses only ~1.1x (../shared/ENVIRONMENT.md measures 1.09-1.27x), so no
codec is lost.
"""

from __future__ import annotations

import itertools
import json
import math
from pathlib import Path

import numpy as np


def _fill_json(fill, dtype: np.dtype):
    if dtype.kind == "f":
        return "NaN" if np.isnan(fill) else float(fill)
    return int(fill)


class Store:
    """A zarr v3 hierarchy under ``root``: one group, arrays directly below it."""

    def __init__(self, root: str | Path, attributes: dict | None = None):
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        self.attributes = dict(attributes or {})
        self.arrays: dict[str, Array] = {}
        self._write_group()

    def _write_group(self) -> None:
        (self.root / "zarr.json").write_text(
            json.dumps({"zarr_format": 3, "node_type": "group", "attributes": self.attributes}, indent=1, default=str)
        )

    def update_attributes(self, attrs: dict) -> None:
        self.attributes.update(attrs)
        self._write_group()

    def create(self, name: str, shape, dtype, chunks=None, dims=(), attributes=None, fill=None) -> Array:
        a = Array(self.root / name, shape, dtype, chunks or shape, dims, attributes or {}, fill)
        self.arrays[name] = a
        return a

    def put(self, name: str, values: np.ndarray, dims, attributes=None, fill=None) -> Array:
        """A whole array as one chunk."""
        values = np.asarray(values)
        a = self.create(name, values.shape, values.dtype, values.shape or (1,), dims, attributes, fill)
        a.write_chunk((0,) * values.ndim, values)
        return a


class Array:
    def __init__(self, path: Path, shape, dtype, chunks, dims, attributes: dict, fill=None):
        self.path, self.shape, self.dtype = path, tuple(int(s) for s in shape), np.dtype(dtype)
        self.chunks = tuple(int(c) for c in chunks)
        self.fill = (np.nan if self.dtype.kind == "f" else 0) if fill is None else fill
        path.mkdir(parents=True, exist_ok=True)
        meta = {
            "zarr_format": 3,
            "node_type": "array",
            "shape": list(self.shape),
            "data_type": self.dtype.name,
            "chunk_grid": {"name": "regular", "configuration": {"chunk_shape": list(self.chunks)}},
            "chunk_key_encoding": {"name": "default", "configuration": {"separator": "/"}},
            "fill_value": _fill_json(self.fill, self.dtype),
            "codecs": [{"name": "bytes", "configuration": {"endian": "little"}}],
            "attributes": attributes,
            "dimension_names": list(dims) if dims else None,
            "storage_transformers": [],
        }
        (path / "zarr.json").write_text(json.dumps(meta, indent=1, default=str))

    def write_chunk(self, index: tuple[int, ...], values: np.ndarray) -> None:
        """Chunk ``index``; ``values`` may be smaller than a chunk at the array's edge (padded with fill)."""
        values = np.asarray(values, dtype=self.dtype.newbyteorder("<"))
        if values.shape != self.chunks:
            full = np.full(self.chunks, self.fill, self.dtype.newbyteorder("<"))
            full[tuple(slice(0, n) for n in values.shape)] = values
            values = full
        key = self.path / "c" / Path(*map(str, index)) if index else self.path / "c"
        key.parent.mkdir(parents=True, exist_ok=True)
        with open(key, "wb") as f:
            f.write(memoryview(np.ascontiguousarray(values)).cast("B"))

    def write(self, start: int, values: np.ndarray) -> None:
        """Rows ``start:start+len(values)`` along the first axis; ``start`` must be a chunk boundary
        and the block whole chunks (or end at the array's end). Other axes are written whole."""
        c0 = self.chunks[0]
        if start % c0:
            raise ValueError(f"{self.path.name}: block start {start} is not on a chunk boundary ({c0})")
        n = values.shape[0]
        if n % c0 and start + n != self.shape[0]:
            raise ValueError(f"{self.path.name}: block of {n} rows is not whole chunks of {c0}")
        rest = [range(math.ceil(s / c)) for s, c in zip(self.shape[1:], self.chunks[1:])]
        for i in range(math.ceil(n / c0)):
            rows = values[i * c0 : (i + 1) * c0]
            for idx in itertools.product(*rest):
                sl = tuple(slice(j * c, (j + 1) * c) for j, c in zip(idx, self.chunks[1:]))
                self.write_chunk((start // c0 + i, *idx), rows[(slice(None), *sl)])
