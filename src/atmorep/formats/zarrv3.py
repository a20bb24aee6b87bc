"""Zarr v3, the one module that reads and writes it: the codec pipeline, xarray stores, a writer of
regular uncompressed arrays, and the dense token shards of :mod:`atmorep.data.shards` (writer and
memory-mapped reader).

Legend: C a chunk's shape, K chunks per shard along each dimension, V the in-bounds part of K.
"""

from __future__ import annotations

import itertools
import json
import logging
import math
import mmap
import os
import warnings
from collections import OrderedDict
from pathlib import Path

import google_crc32c
import numpy as np
import xarray as xr
import zarr

from atmorep.formats.atomic import Replacement, space_for

log = logging.getLogger(__name__)

# zarr-python's default codec pipeline costs ~0.5 ms per chunk: token-sized chunks would read at a
# few MB/s. The Rust `zarrs` pipeline reads the same store 30-60x faster (../shared/ENVIRONMENT.md §7).
zarr.config.set({"codec_pipeline.path": "zarrs.ZarrsCodecPipeline"})

#: shard files kept memory-mapped per process (least recently used are unmapped)
MAX_OPEN_SHARDS = 64


def write_dataset(ds: xr.Dataset, out: str | Path, encoding: dict | None = None) -> Path:
    """Write ``ds`` as a zarr v3 store, atomically."""
    with Replacement(out) as tmp, space_for(out, ds.nbytes):
        ds.to_zarr(tmp, zarr_format=3, consolidated=False, encoding=encoding or {}, mode="w")
    return Path(out)


def open_dataset(path: str | Path, threads: int | None = 1) -> xr.Dataset:
    """Open a store for random access (no dask: one dask task per chunk would be very slow).

    ``threads=1`` (the default) makes the arrays' codec pipeline single-threaded: zarrs' thread
    pool does not survive ``fork``, and DataLoader workers are forked from the process that opened
    the stores. ``None`` uses every core (writers).
    """
    with warnings.catch_warnings(), zarr.config.set({"threading.max_workers": threads}):
        # Snakemake leaves a .snakemake_timestamp in directory outputs
        warnings.filterwarnings("ignore", message=".*not recognized as a component of a Zarr hierarchy")
        return xr.open_zarr(path, consolidated=False, chunks=None, zarr_format=3)


def open_array(path: str | Path, forked: bool = False) -> zarr.Array:
    """A read-only array with a single-threaded codec pipeline.

    zarrs runs on rayon's global thread pool, whose threads do not survive ``fork``: a forked child
    (a DataLoader worker) whose parent used zarrs hangs in its first multi-chunk read. ``forked=True``
    opens the array with zarr-python's own pipeline instead (slow, but safe after fork).
    """
    conf = {"threading.max_workers": 1}
    if forked:
        conf["codec_pipeline.path"] = "zarr.core.codec_pipeline.BatchedCodecPipeline"
    with zarr.config.set(conf):
        return zarr.open_array(str(path), mode="r")


class NotDense(ValueError):
    """The array or one of its shard files is not laid out as :class:`DenseShards` requires."""


EMPTY = np.iinfo(np.uint64).max  # index entry of a chunk that is not stored


def create_dense(
    group: str | Path,
    name: str,
    shape: tuple[int, ...],
    chunks: tuple[int, ...],
    shards: tuple[int, ...],
    dims: tuple[str, ...],
    attrs: dict,
) -> DenseShards:
    """Create an uncompressed, sharded float32 array (fill NaN) and return its writer/reader."""
    zarr.open_group(str(group), mode="a", zarr_format=3).create_array(
        name,
        shape=shape,
        dtype="float32",
        chunks=chunks,
        shards=shards,
        compressors=None,
        fill_value=np.float32("nan"),
        dimension_names=dims,
        attributes=attrs,
    )
    return DenseShards(Path(group) / name)


class DenseShards:
    """Direct writes and reads of boxes of whole inner chunks of a sharded zarr v3 array.

    *Dense* shards: the inner chunks are uncompressed (``sharding_indexed`` with only the ``bytes``
    codec), and every in-bounds chunk of a shard file is present and stored in C order. A shard
    file then *is* a C-ordered array ``(V..., C...)`` followed (or preceded) by its index, so a box
    of chunks is a strided slice of a memory map: one ``numpy`` copy per shard touched, no per-chunk
    work and no decoding. :meth:`write` produces such files (any zarr v3 reader reads them); zarrs
    does not promise the order for large shards, so it is not used for them. Reads check each
    shard's index once per process and raise :class:`NotDense` for a shard laid out otherwise.

    ``bytes_read`` counts what :meth:`read` takes from the files: index bytes and chunk bytes.
    """

    def __init__(self, path: str | Path):
        self.path = Path(path)
        meta = json.loads((self.path / "zarr.json").read_text())
        codecs = meta.get("codecs", [])
        if meta.get("node_type") != "array" or len(codecs) != 1 or codecs[0]["name"] != "sharding_indexed":
            raise NotDense(f"{self.path}: not a sharded zarr v3 array")
        conf = codecs[0]["configuration"]
        inner = conf["codecs"]
        if len(inner) != 1 or inner[0]["name"] != "bytes":
            raise NotDense(f"{self.path}: inner chunks are encoded with {[c['name'] for c in inner]}, not plain bytes")
        self.crc = [c["name"] for c in conf["index_codecs"]] == ["bytes", "crc32c"]
        if not self.crc and [c["name"] for c in conf["index_codecs"]] != ["bytes"]:
            raise NotDense(f"{self.path}: unsupported shard index codecs")
        order = "<" if inner[0].get("configuration", {}).get("endian", "little") == "little" else ">"
        self.dtype = np.dtype(meta["data_type"]).newbyteorder(order)
        fill = meta["fill_value"]
        self.fill = float(fill) if isinstance(fill, str) else fill  # "NaN", "Infinity", ...
        self.shape = tuple(meta["shape"])
        self.shard = tuple(meta["chunk_grid"]["configuration"]["chunk_shape"])
        self.chunk = tuple(conf["chunk_shape"])
        self.per_shard = tuple(s // c for s, c in zip(self.shard, self.chunk))  # K
        self.grid = tuple(-(-n // c) for n, c in zip(self.shape, self.chunk))  # chunks along each dim
        self.chunk_bytes = math.prod(self.chunk) * self.dtype.itemsize
        self.index_bytes = 16 * math.prod(self.per_shard) + 4 * self.crc
        self.index_at_end = conf.get("index_location", "end") == "end"
        enc = meta.get("chunk_key_encoding", {"name": "default"})
        sep = enc.get("configuration", {}).get("separator", "/" if enc["name"] == "default" else ".")
        self._prefix = ["c"] if enc["name"] == "default" else []
        self._sep = sep
        self.bytes_read = 0
        self._checked: set[tuple[int, ...]] = set()

    @classmethod
    def open(cls, path: str | Path) -> DenseShards | None:
        """The reader, or None when the array's codecs rule it out."""
        try:
            return cls(path)
        except NotDense as exc:
            log.debug("direct reads off: %s", exc)
            return None

    def key_path(self, key: tuple[int, ...]) -> Path:
        return self.path / self._sep.join(self._prefix + [str(k) for k in key])

    def shard_keys(self) -> list[tuple[int, ...]]:
        """Every shard of the array, in C order."""
        return list(itertools.product(*(range(-(-g // k)) for g, k in zip(self.grid, self.per_shard))))

    def _valid(self, key: tuple[int, ...]) -> tuple[int, ...]:
        """In-bounds chunks of shard ``key`` along each dimension (V)."""
        return tuple(min(k, g - i * k) for k, g, i in zip(self.per_shard, self.grid, key))

    # -- writing ------------------------------------------------------------------------------

    def write(self, origin: tuple[int, ...], values: np.ndarray) -> None:
        """Write ``values`` at ``origin`` (array indices): whole shards, or up to the array's end."""
        end = tuple(o + n for o, n in zip(origin, values.shape))
        for o, e, s, n in zip(origin, end, self.shard, self.shape):
            if o % s or (e % s and e != n):
                raise ValueError(f"{self.path}: region {origin}..{end} does not cover whole shards of {self.shard}")
        keys = itertools.product(*(range(o // s, -(-e // s)) for o, e, s in zip(origin, end, self.shard)))
        for key in keys:
            box = tuple(
                slice(k * s - o, min((k + 1) * s, n) - o) for k, s, n, o in zip(key, self.shard, self.shape, origin)
            )
            self._write_shard(key, values[box])

    def _write_shard(self, key: tuple[int, ...], values: np.ndarray) -> None:
        valid = self._valid(key)
        full = tuple(v * c for v, c in zip(valid, self.chunk))
        if values.shape != full:  # chunks reaching past the array's end are stored whole, padded
            padded = np.full(full, self.fill, self.dtype)
            padded[tuple(slice(0, n) for n in values.shape)] = values
            values = padded
        nd = len(valid)
        split = values.astype(self.dtype, copy=False).reshape([x for v, c in zip(valid, self.chunk) for x in (v, c)])
        body = np.ascontiguousarray(split.transpose([*range(0, 2 * nd, 2), *range(1, 2 * nd, 2)]))
        index = np.full((*self.per_shard, 2), EMPTY, "<u8")
        rank = np.arange(math.prod(valid), dtype=np.uint64).reshape(valid)
        box = tuple(slice(0, v) for v in valid)
        base = 0 if self.index_at_end else self.index_bytes
        index[box + (0,)] = base + rank * np.uint64(self.chunk_bytes)
        index[box + (1,)] = self.chunk_bytes
        tail = index.tobytes()
        if self.crc:
            tail += np.array([google_crc32c.value(tail)], "<u4").tobytes()
        path = self.key_path(key)
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(path, "wb") as f:
            if not self.index_at_end:
                f.write(tail)
            f.write(memoryview(body).cast("B"))
            if self.index_at_end:
                f.write(tail)

    # -- reading ------------------------------------------------------------------------------

    def read(self, start: tuple[int, ...], count: tuple[int, ...], wrap: tuple[bool, ...] | None = None) -> np.ndarray:
        """Chunks ``start .. start + count`` (chunk-grid units) as ``(count..., C...)``.

        A dimension with ``wrap`` is periodic (its extent must be whole chunks): a range crossing
        its end continues at 0, i.e. at most two contiguous ranges.
        """
        wrap = wrap or (False,) * len(self.shape)
        out = np.empty((*count, *self.chunk), self.dtype)
        runs = [self._runs(s, n, d, w) for d, (s, n, w) in enumerate(zip(start, count, wrap))]
        for combo in itertools.product(*runs):
            shard = self._shard(tuple(r[0] for r in combo))
            out[tuple(slice(r[3], r[3] + r[2]) for r in combo)] = shard[tuple(slice(r[1], r[1] + r[2]) for r in combo)]
        self.bytes_read += out.nbytes
        return out

    def _runs(self, start: int, n: int, dim: int, wrap: bool) -> list[tuple[int, int, int, int]]:
        """(shard index, offset in shard, length, offset in output) pieces of one dimension's range."""
        grid, k = self.grid[dim], self.per_shard[dim]
        if wrap:
            if self.shape[dim] % self.chunk[dim] or n > grid:
                raise ValueError(f"{self.path}: dimension {dim} cannot wrap ({self.shape[dim]} points, {n} chunks)")
            start %= grid
        elif start < 0 or start + n > grid:
            raise IndexError(f"{self.path}: chunks {start}..{start + n} outside 0..{grid} along dimension {dim}")
        runs, done = [], 0
        while done < n:
            c = (start + done) % grid
            s, o = divmod(c, k)
            length = min(k - o, n - done, grid - c)
            runs.append((s, o, length, done))
            done += length
        return runs

    def _shard(self, key: tuple[int, ...]) -> np.ndarray:
        """Shard ``key`` as a memory-mapped array ``(V..., C...)``; its index is checked on first use."""
        view = _MAPS.get((self.path, key))
        if view is not None:
            _MAPS.move_to_end((self.path, key))
            return view
        path = self.key_path(key)
        valid = self._valid(key)
        nbytes = math.prod(valid) * self.chunk_bytes
        with open(path, "rb") as f:
            if key not in self._checked:
                self._check(f, key, valid, nbytes)
            mm = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
        base = 0 if self.index_at_end else self.index_bytes
        view = np.frombuffer(mm, self.dtype, count=nbytes // self.dtype.itemsize, offset=base)
        view = view.reshape(*valid, *self.chunk)
        _MAPS[(self.path, key)] = view
        while len(_MAPS) > MAX_OPEN_SHARDS:
            _MAPS.popitem(last=False)
        return view

    def _check(self, f, key: tuple[int, ...], valid: tuple[int, ...], nbytes: int) -> None:
        """The index must list exactly the in-bounds chunks, each ``chunk_bytes`` long, in C order."""
        size = os.fstat(f.fileno()).st_size
        if size != nbytes + self.index_bytes:
            raise NotDense(f"{f.name}: {size} bytes, a dense shard has {nbytes + self.index_bytes}")
        offset = size - self.index_bytes if self.index_at_end else 0
        raw = os.pread(f.fileno(), self.index_bytes, offset)
        self.bytes_read += len(raw)
        n = 16 * math.prod(self.per_shard)
        if self.crc and np.frombuffer(raw[n:], "<u4")[0] != google_crc32c.value(raw[:n]):
            raise NotDense(f"{f.name}: shard index checksum mismatch")
        index = np.frombuffer(raw[:n], "<u8").reshape(*self.per_shard, 2)
        base = 0 if self.index_at_end else self.index_bytes
        want = np.full((*self.per_shard, 2), EMPTY, np.uint64)
        box = tuple(slice(0, v) for v in valid)
        rank = np.arange(math.prod(valid), dtype=np.uint64).reshape(valid)
        want[box + (0,)] = base + rank * np.uint64(self.chunk_bytes)
        want[box + (1,)] = self.chunk_bytes
        if not np.array_equal(index, want):
            raise NotDense(f"{f.name}: chunks missing or not in C order")
        self._checked.add(key)

    def check_all(self) -> int:
        """Check every shard file's index and size (see :meth:`_check`); returns the number of shards."""
        keys = self.shard_keys()
        for key in keys:
            valid = self._valid(key)
            with open(self.key_path(key), "rb") as f:
                self._check(f, key, valid, math.prod(valid) * self.chunk_bytes)
        return len(keys)


#: (array path, shard key) -> memory-mapped shard view, least recently used first (per process;
#: forked children inherit it)
_MAPS: OrderedDict[tuple[Path, tuple[int, ...]], np.ndarray] = OrderedDict()


# -- regular, uncompressed arrays written directly --------------------------------------------------
#
# A minimal writer of uncompressed zarr v3 stores (regular chunks, the ``bytes`` codec only).
#
# The normalize stage writes many small stores; zarr-python spends a few milliseconds of Python per
# array creation, which for a month of a small domain costs as much as decoding it. Uncompressed
# v3 is simple enough to write directly: a ``zarr.json`` per node and one file of little-endian
# bytes per chunk (``c/i/j/...``), edge chunks padded with the fill value. Stores are read back with
# zarr-python and xarray (``dimension_names`` name the dimensions); tests hold the two together.
# Normalized float32 compresses only ~1.1x (../shared/ENVIRONMENT.md measures 1.09-1.27x), so no
# codec is lost.


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
