"""Zarr v3, the one module that writes and reads it (over 400 lines on purpose: the metadata, both
writers and the reader describe one layout, and are checked together).

- :func:`array_metadata` builds every ``zarr.json`` of an array atmorep writes: regular chunks, or
  shards (``sharding_indexed``: inner chunks plain ``bytes``, index ``bytes`` + ``crc32c`` at the end).
- :func:`writing` writes a store atomically through one writer, :class:`Store`: whole or row-block
  regular arrays (normalize, moments, climatology) and dense sharded arrays (shard, with an xarray
  template of coordinates and statistics).
- :class:`DenseShards` writes dense shard files and reads boxes of chunks out of memory maps.
- :func:`open_dataset`, :func:`open_array`, :func:`write_dataset`: zarr-python and xarray, with the
  Rust ``zarrs`` codec pipeline chosen around this module's own calls only (:func:`pipeline`).

Why hand-written metadata rather than zarr-python's: the normalize stage writes many small stores
and zarr-python spends milliseconds of Python per array it creates; the shard writer must know the
exact layout (codecs, index location) of the files it writes, so writer and reader read one
description; and the JSON is ~20 lines that tests hold against zarr-python (both pipelines) and
tensorstore (``tests/formats/test_zarrv3.py``). Why our own dense shard writer rather than
zarr-python's ``shards=``: with zarrs it writes the same files only in most writes (the order of a
shard's chunks varies from write to write, and the mmap reader needs C order), and more slowly (see
``benchmarks/zarr_write.py``).

Uncompressed throughout: normalized float32 compresses little and compressed chunks read slower
(``benchmarks/loader.py``; the figures are in the README, "The pipeline", shard), and uncompressed
chunks are what lets :class:`DenseShards` read without decoding.

Legend: C a chunk's shape, K chunks per shard along each dimension, V the in-bounds part of K.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import logging
import math
import mmap
import os
import warnings
from collections import OrderedDict
from collections.abc import Iterator
from pathlib import Path

import google_crc32c
import numpy as np
import xarray as xr
import zarr

from atmorep.formats.atomic import Replacement, space_for

log = logging.getLogger(__name__)

#: zarr-python's own pipeline pays a fixed Python cost per chunk, far too much for token-sized
#: chunks; the Rust ``zarrs`` pipeline reads them many times faster (measured by
#: ../shared/env-scripts/zarr_shard_bench.py; the figures are in ../shared/ENVIRONMENT.md §7).
ZARRS = "zarrs.ZarrsCodecPipeline"
PYTHON = "zarr.core.codec_pipeline.BatchedCodecPipeline"

#: shard files kept memory-mapped per process (least recently used are unmapped)
MAX_OPEN_SHARDS = 64

EMPTY = np.iinfo(np.uint64).max  # index entry of a chunk that is not stored (2^64 - 1, the v3 spec's)


def pipeline(threads: int | None, path: str = ZARRS):
    """zarr-python's configuration while this module (or a caller that asks for it) opens or writes
    arrays, and nobody else's: ``with pipeline(None): zarr.open_array(...)``.

    zarr 3.1 fixes an array's codec pipeline (and zarrs its thread count) when the array object is
    created (``AsyncArray.__init__`` calls ``create_codec_pipeline``); xarray keeps the array objects
    it opened. Setting the pipeline around the creation is therefore enough for every later read,
    and importing atmorep leaves zarr's process-wide default alone. (Only zarr-python's own
    pipeline looks the setting up again at each read, for the inner chunks of a shard.)
    """
    return zarr.config.set({"codec_pipeline.path": path, "threading.max_workers": threads})


def open_dataset(path: str | Path, threads: int | None = 1) -> xr.Dataset:
    """Open a store for random access (no dask: one dask task per chunk would be very slow).

    ``threads=1`` (the default) makes the arrays' codec pipeline single-threaded: zarrs' thread
    pool does not survive ``fork``, and DataLoader workers are forked from the process that opened
    the stores. ``None`` uses every core (writers).
    """
    with warnings.catch_warnings(), pipeline(threads):
        # Snakemake leaves a .snakemake_timestamp in directory outputs
        warnings.filterwarnings("ignore", message=".*not recognized as a component of a Zarr hierarchy")
        return xr.open_zarr(path, consolidated=False, chunks=None, zarr_format=3)


def open_array(path: str | Path, forked: bool = False) -> zarr.Array:
    """A read-only array with a single-threaded codec pipeline.

    zarrs runs on rayon's global thread pool, whose threads do not survive ``fork``: a forked child
    (a DataLoader worker) whose parent used zarrs hangs in its first multi-chunk read. ``forked=True``
    opens the array with zarr-python's own pipeline instead (slow, but safe after fork).
    """
    with pipeline(1, PYTHON if forked else ZARRS):  # 1 thread: a process may fork after opening
        return zarr.open_array(str(path), mode="r")


def _to_zarr(ds: xr.Dataset, path: Path, encoding: dict | None = None) -> None:
    with pipeline(None):
        ds.to_zarr(path, zarr_format=3, consolidated=False, encoding=encoding or {}, mode="w")


def write_dataset(ds: xr.Dataset, out: str | Path, encoding: dict | None = None) -> Path:
    """Write ``ds`` through xarray (its CF encoding) as a zarr v3 store, atomically."""
    with Replacement(out) as tmp, space_for(out, ds.nbytes):  # ds.nbytes: uncompressed, an upper bound
        _to_zarr(ds, tmp, encoding)
    return Path(out)


# -- metadata -----------------------------------------------------------------------------------------


def array_metadata(shape, dtype, chunks, dims=(), attributes=None, fill=None, shards=None) -> dict:
    """The ``zarr.json`` of an uncompressed, little-endian array with regular ``chunks``; with
    ``shards``, of a regular grid of shards each holding whole ``chunks`` (index at the end).
    ``fill`` defaults to NaN (floats) or 0."""
    dtype, floats = np.dtype(dtype), np.dtype(dtype).kind == "f"
    fill = (np.nan if floats else 0) if fill is None else fill  # NaN: a chunk never written reads as missing
    raw = [{"name": "bytes", "configuration": {"endian": "little"}}]
    codecs, grid = raw, chunks
    if shards is not None:
        sharding = {"chunk_shape": [int(c) for c in chunks], "codecs": raw}
        sharding.update(index_codecs=[*raw, {"name": "crc32c"}], index_location="end")
        codecs, grid = [{"name": "sharding_indexed", "configuration": sharding}], shards
    return {
        "zarr_format": 3,
        "node_type": "array",
        "shape": [int(s) for s in shape],
        "data_type": dtype.name,
        "chunk_grid": {"name": "regular", "configuration": {"chunk_shape": [int(c) for c in grid]}},
        "chunk_key_encoding": {"name": "default", "configuration": {"separator": "/"}},
        # NaN as the spec's string "NaN": JSON has no NaN
        "fill_value": ("NaN" if np.isnan(fill) else float(fill)) if floats else int(fill),
        "codecs": codecs,
        "attributes": attributes or {},
        "dimension_names": list(dims) if dims else None,
        "storage_transformers": [],
    }


def _write_json(path: Path, obj: dict) -> None:
    path.mkdir(parents=True, exist_ok=True)
    (path / "zarr.json").write_text(json.dumps(obj, indent=1, default=str))


# -- the writer -----------------------------------------------------------------------------------------


@contextlib.contextmanager
def writing(
    out: str | Path, attributes: dict | None = None, nbytes: int | None = None, template: xr.Dataset | None = None
) -> Iterator[Store]:
    """Write a store at ``out`` atomically: into a temporary sibling, renamed when the block ends
    without an exception (a full disk is reported as :class:`~atmorep.formats.atomic.DiskFull`,
    ``nbytes`` being what the store needs).

    ``template``: an xarray dataset written first (coordinates, statistics, attributes) through
    xarray, whose CF encoding of times is what readers decode; the arrays added to the store join it.
    """
    with Replacement(out) as tmp, space_for(out, nbytes):
        if template is not None:
            _to_zarr(template, tmp)
        # with a template the group's zarr.json (and its attributes) is xarray's: kept as written
        yield Store(tmp, attributes if template is None else None)


class Store:
    """A zarr v3 group being written at ``root``: uncompressed arrays directly below it."""

    def __init__(self, root: str | Path, attributes: dict | None = None):
        """``attributes`` None: the group's ``zarr.json`` exists already (an xarray template)."""
        self.root = Path(root)
        if attributes is not None or not (self.root / "zarr.json").exists():
            _write_json(self.root, {"zarr_format": 3, "node_type": "group", "attributes": attributes or {}})

    def create(self, name: str, shape, dtype, chunks=None, dims=(), attributes=None, fill=None) -> Array:
        """An empty regular array (no chunk written: reads give ``fill``)."""
        return Array(self.root / name, array_metadata(shape, dtype, chunks or shape, dims, attributes, fill))

    def put(self, name: str, values, dims, attributes=None, chunks=None, fill=None) -> Array:
        """A whole array (at least one dimension), as one chunk unless ``chunks``."""
        values = np.asarray(values)
        a = self.create(name, values.shape, values.dtype, chunks or values.shape, dims, attributes, fill)
        a.write(0, values)
        return a

    def create_sharded(self, name: str, shape, chunks, shards, dims, attributes=None) -> DenseShards:
        """An empty sharded float32 array (fill NaN), to be written shard by shard with :meth:`DenseShards.write`."""
        _write_json(self.root / name, array_metadata(shape, np.float32, chunks, dims, attributes, shards=shards))
        return DenseShards(self.root / name)


class Array:
    """A regular array of a :class:`Store`, written chunk by chunk (``c/i/j/...``, little-endian
    bytes, edge chunks padded with the fill value)."""

    def __init__(self, path: Path, meta: dict):
        self.path, self.shape = path, tuple(meta["shape"])
        self.dtype = np.dtype(meta["data_type"]).newbyteorder("<")
        self.chunks = tuple(meta["chunk_grid"]["configuration"]["chunk_shape"])
        fill = meta["fill_value"]
        self.fill = float(fill) if isinstance(fill, str) else fill  # "NaN"
        _write_json(path, meta)

    def write_chunk(self, index: tuple[int, ...], values: np.ndarray) -> None:
        """Chunk ``index``; ``values`` may be smaller than a chunk at the array's edge (padded with fill)."""
        values = np.asarray(values, dtype=self.dtype)  # little-endian, as the metadata's bytes codec says
        if values.shape != self.chunks:  # v3 stores edge chunks whole
            full = np.full(self.chunks, self.fill, self.dtype)
            full[tuple(slice(0, n) for n in values.shape)] = values
            values = full
        # default chunk keys: c/i/j/...; a 0-d array's one chunk is "c"
        key = self.path / "c" / Path(*map(str, index)) if index else self.path / "c"
        key.parent.mkdir(parents=True, exist_ok=True)
        with open(key, "wb") as f:
            f.write(np.ascontiguousarray(values).data.cast("B"))

    def write(self, start: int, values: np.ndarray) -> None:
        """Rows ``start:start+len(values)`` along the first axis; ``start`` must be a chunk boundary
        and the block whole chunks (or end at the array's end). Other axes are written whole."""
        c0 = self.chunks[0]
        if start % c0:
            raise ValueError(f"{self.path.name}: block start {start} is not on a chunk boundary ({c0})")
        n = values.shape[0]
        if n % c0 and start + n != self.shape[0]:
            raise ValueError(f"{self.path.name}: block of {n} rows is not whole chunks of {c0}")
        rest = [range(math.ceil(s / c)) for s, c in zip(self.shape[1:], self.chunks[1:])]  # chunks of the other axes
        for i in range(math.ceil(n / c0)):
            rows = values[i * c0 : (i + 1) * c0]
            for idx in itertools.product(*rest):
                sl = tuple(slice(j * c, (j + 1) * c) for j, c in zip(idx, self.chunks[1:]))
                self.write_chunk((start // c0 + i, *idx), rows[(slice(None), *sl)])


# -- dense shards ---------------------------------------------------------------------------------------


class NotDense(ValueError):
    """The array or one of its shard files is not laid out as :class:`DenseShards` requires."""


class DenseShards:
    """Direct writes and reads of boxes of whole inner chunks of a sharded zarr v3 array.

    *Dense* shards: the inner chunks are uncompressed (``sharding_indexed`` with only the ``bytes``
    codec), and every in-bounds chunk of a shard file is present and stored in C order. A shard
    file then *is* a C-ordered array ``(V..., C...)`` followed (or preceded) by its index, so a box
    of chunks is a strided slice of a memory map: one ``numpy`` copy per shard touched, no per-chunk
    work and no decoding. :meth:`write` produces such files (any zarr v3 reader reads them). Reads
    check each shard's index once per process and raise :class:`NotDense` for a shard laid out
    otherwise (zarr-python's own pipeline, for one, stores inner chunks in Morton order).

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
        # Our writer's index codecs, or the bare form other writers may use; anything else is refused.
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
        self.index_bytes = 16 * math.prod(self.per_shard) + 4 * self.crc  # (offset, nbytes) uint64 per chunk
        self.index_at_end = conf.get("index_location", "end") == "end"
        self._body = 0 if self.index_at_end else self.index_bytes  # where the chunks start in a file
        # The v3 spec's two encodings: "default" (c/0/1, "/" unless set) and "v2" (0.1, "." unless set).
        enc = meta.get("chunk_key_encoding", {"name": "default"})
        sep = enc.get("configuration", {}).get("separator", "/" if enc["name"] == "default" else ".")
        self._prefix = ["c"] if enc["name"] == "default" else []
        self._sep = sep
        self.bytes_read = 0
        self._checked: set[tuple[int, ...]] = set()  # shards whose index was held against _index

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

    def _index(self, valid: tuple[int, ...]) -> np.ndarray:
        """The index ``(K..., 2)`` (offset, length) of a dense shard with ``valid`` in-bounds chunks:
        each ``chunk_bytes`` long, in C order; the chunks beyond the array's end are not stored."""
        index = np.full((*self.per_shard, 2), EMPTY, "<u8")
        box = tuple(slice(0, v) for v in valid)
        rank = np.arange(math.prod(valid), dtype=np.uint64).reshape(valid)  # each chunk's place in C order
        index[box + (0,)] = self._body + rank * np.uint64(self.chunk_bytes)
        index[box + (1,)] = self.chunk_bytes
        return index

    # -- writing ------------------------------------------------------------------------------

    def write(self, origin: tuple[int, ...], values: np.ndarray) -> None:
        """Write ``values`` at ``origin`` (array indices): whole shards, or up to the array's end."""
        end = tuple(o + n for o, n in zip(origin, values.shape))
        for o, e, s, n in zip(origin, end, self.shard, self.shape):  # a shard file is written whole, once
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
        # (V0, C0, V1, C1, ...) -> (V..., C...): the chunks one after another in C order, each C-ordered
        split = values.astype(self.dtype, copy=False).reshape([x for v, c in zip(valid, self.chunk) for x in (v, c)])
        body = np.ascontiguousarray(split.transpose([*range(0, 2 * nd, 2), *range(1, 2 * nd, 2)]))
        tail = self._index(valid).tobytes()
        if self.crc:  # the checksum of the index itself, little-endian after it
            tail += np.array([google_crc32c.value(tail)], "<u4").tobytes()
        path = self.key_path(key)
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(path, "wb") as f:
            if not self.index_at_end:
                f.write(tail)
            f.write(body.data.cast("B"))
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
        for combo in itertools.product(*runs):  # one strided copy per shard (and wrap piece) touched
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
            start %= grid  # a window origin may be given past the end (a longitude past 360°)
        elif start < 0 or start + n > grid:
            raise IndexError(f"{self.path}: chunks {start}..{start + n} outside 0..{grid} along dimension {dim}")
        runs, done = [], 0
        while done < n:
            c = (start + done) % grid
            s, o = divmod(c, k)
            length = min(k - o, n - done, grid - c)  # up to the shard's end, the request's, or the wrap
            runs.append((s, o, length, done))
            done += length
        return runs

    def _shard(self, key: tuple[int, ...]) -> np.ndarray:
        """Shard ``key`` as a memory-mapped array ``(V..., C...)``; its index is checked on first use."""
        view = _MAPS.get((self.path, key))
        if view is not None:
            _MAPS.move_to_end((self.path, key))
            return view
        valid = self._valid(key)
        with open(self.key_path(key), "rb") as f:
            if key not in self._checked:
                self._check(f, key)
            mm = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)  # keeps its own descriptor: `f` may close
        # chunks are dense and in C order (_check): the body is one (V..., C...) array
        view = np.frombuffer(mm, self.dtype, count=math.prod(valid) * math.prod(self.chunk), offset=self._body)
        view = view.reshape(*valid, *self.chunk)
        _MAPS[(self.path, key)] = view
        while len(_MAPS) > MAX_OPEN_SHARDS:  # bounded; an evicted map is unmapped once no view of it is left
            _MAPS.popitem(last=False)
        return view

    def _check(self, f, key: tuple[int, ...]) -> None:
        """The index must be :meth:`_index`: exactly the in-bounds chunks, each ``chunk_bytes`` long, in C order."""
        valid = self._valid(key)
        nbytes = math.prod(valid) * self.chunk_bytes + self.index_bytes
        size = os.fstat(f.fileno()).st_size
        if size != nbytes:  # the cheap test first: a stat, before reading the index
            raise NotDense(f"{f.name}: {size} bytes, a dense shard has {nbytes}")
        raw = os.pread(f.fileno(), self.index_bytes, size - self.index_bytes if self.index_at_end else 0)
        self.bytes_read += len(raw)
        n = 16 * math.prod(self.per_shard)
        if self.crc and np.frombuffer(raw[n:], "<u4")[0] != google_crc32c.value(raw[:n]):
            raise NotDense(f"{f.name}: shard index checksum mismatch")
        if not np.array_equal(np.frombuffer(raw[:n], "<u8").reshape(*self.per_shard, 2), self._index(valid)):
            raise NotDense(f"{f.name}: chunks missing or not in C order")
        self._checked.add(key)

    def check_all(self) -> int:
        """Check every shard file's index and size (see :meth:`_check`); returns the number of shards."""
        keys = self.shard_keys()
        for key in keys:
            with open(self.key_path(key), "rb") as f:
                self._check(f, key)
        return len(keys)


#: (array path, shard key) -> memory-mapped shard view, least recently used first (per process;
#: forked children inherit it)
_MAPS: OrderedDict[tuple[Path, tuple[int, ...]], np.ndarray] = OrderedDict()
