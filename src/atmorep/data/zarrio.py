"""Zarr v3 helpers: the fast codec pipeline, atomic writes, checksums."""

from __future__ import annotations

import hashlib
import os
import shutil
import warnings
from pathlib import Path

import xarray as xr
import zarr

# zarr-python's default codec pipeline costs ~0.5 ms per chunk: token-sized chunks would read at a
# few MB/s. The Rust `zarrs` pipeline reads the same store 30-60x faster (../shared/ENVIRONMENT.md §7).
zarr.config.set({"codec_pipeline.path": "zarrs.ZarrsCodecPipeline"})


def sha256(path: str | Path, block: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(block):
            h.update(chunk)
    return h.hexdigest()


def atomic_dir(out: str | Path) -> Path:
    """A fresh temporary sibling of ``out`` to write into before :func:`commit`."""
    out = Path(out)
    tmp = out.with_name(f".{out.name}.part{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    out.parent.mkdir(parents=True, exist_ok=True)
    return tmp


def commit(tmp: Path, out: str | Path) -> None:
    """Move a finished temporary directory into place, replacing an older ``out``."""
    out = Path(out)
    if out.exists():
        shutil.rmtree(out)
    os.replace(tmp, out)


def write_dataset(ds: xr.Dataset, out: str | Path, encoding: dict | None = None) -> Path:
    """Write ``ds`` as a zarr v3 store, atomically."""
    tmp = atomic_dir(out)
    try:
        ds.to_zarr(tmp, zarr_format=3, consolidated=False, encoding=encoding or {}, mode="w")
        commit(tmp, out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return Path(out)


def open_dataset(path: str | Path) -> xr.Dataset:
    """Open a store for random access (no dask: one dask task per chunk would be very slow)."""
    with warnings.catch_warnings():  # Snakemake leaves a .snakemake_timestamp in directory outputs
        warnings.filterwarnings("ignore", message=".*not recognized as a component of a Zarr hierarchy")
        return xr.open_zarr(path, consolidated=False, chunks=None, zarr_format=3)
