"""The ``zarr`` source: an analysis-ready zarr store read lazily, only the chunks a unit needs.

``acquire.zarr.url`` is a local path or an ``https://``, ``gs://`` or ``s3://`` URL (anonymous; the
fsspec filesystems ``aiohttp``, ``gcsfs``, ``s3fs`` are optional extras), zarr v2 or v3. Layouts:

- xarray-readable stores, ARCO-ERA5 (CDS long names, ``hybrid`` model levels, 1×18×721×1440 chunks)
  and WeatherBench 2 (``level`` in hPa): read through :mod:`atmorep.data.acquire.gridded`;
- anemoi datasets (``data[time, variable, ensemble, cell]``, variable names such as ``t_850`` and
  ``variables_metadata`` in the attributes, ``latitudes``/``longitudes`` per cell): the cells are
  reshaped to their regular lat/lon grid (``field_shape``); an irregular grid is refused.

Every request goes through :mod:`atmorep.data.acquire.remote` (``acquire.zarr.concurrency`` in flight,
retried with back-off on 408/429/5xx, timeouts and resets, counted); the unit's time blocks are read
ahead of the GRIB writer within ``acquire.zarr.readahead_mb`` and committed to a journal beside the
output (:func:`parts_dir`), so a killed job resumes where it stopped. The log line and the provenance
(``OUTPUT.provenance.json``) give requests, retries, bytes read, bytes used (the selected values at
the store's dtype) and their ratio, the read amplification of the store's chunking for this unit.
"""

from __future__ import annotations

import logging
import warnings
from functools import partial
from pathlib import Path

import numpy as np

from atmorep import fields
from atmorep.config import AcquireConfig, DataConfig, ZarrSourceConfig
from atmorep.data.acquire import gridded, remote
from atmorep.data.acquire.crop import area_indices
from atmorep.data.acquire.inventory import Expectation
from atmorep.data.acquire.protocol import ConfiguredGrid
from atmorep.errors import DataError

log = logging.getLogger(__name__)

# Anonymous by default: the public stores (ARCO-ERA5, WeatherBench 2) need no credentials;
# acquire.zarr.storage_options overrides.
_ANON = {"gs": {"token": "anon"}, "gcs": {"token": "anon"}, "s3": {"anon": "true"}}
_EXTRA = {"http": "aiohttp", "https": "aiohttp", "gs": "gcsfs", "gcs": "gcsfs", "s3": "s3fs"}


def open_store(url: str, cfg: ZarrSourceConfig | None = None, link: remote.Link | None = None):
    """A read-only zarr store for a local path or URL whose requests go through ``link`` (counted,
    limited to ``cfg.concurrency`` in flight, retried: :mod:`atmorep.data.acquire.remote`)."""
    from zarr.abc.store import Store
    from zarr.storage import FsspecStore, LocalStore

    cfg = cfg or ZarrSourceConfig(url=url)
    link = link or remote.Link(url, cfg)
    if not url:
        raise DataError("acquire.source is 'zarr' but acquire.zarr.url is empty")
    scheme = url.split("://", 1)[0].lower() if "://" in url else "file"
    if scheme == "file":
        path = Path(url.removeprefix("file://")).expanduser()
        if not path.exists():
            raise DataError(f"acquire.zarr.url {url}: no such store")
        store: Store = LocalStore(path, read_only=True)
    else:
        opts: dict = {**_ANON.get(scheme, {}), **(cfg.storage_options or {})}
        # s3fs wants a bool: 'true' (as _ANON and string-valued options give it) becomes one.
        if opts.get("anon") == "true":
            opts["anon"] = True
        if scheme in ("http", "https"):
            import aiohttp

            # A stalled connection (no byte for timeout_s) fails, and is retried; a slow one does not.
            timeout = aiohttp.ClientTimeout(total=None, sock_connect=cfg.timeout_s, sock_read=cfg.timeout_s)
            opts.setdefault("client_kwargs", {"timeout": timeout})
        try:
            store = FsspecStore.from_url(url, read_only=True, storage_options=opts)
        except (ImportError, ValueError) as exc:
            pkg = _EXTRA.get(scheme, "an fsspec filesystem")
            raise DataError(f"acquire.zarr.url {url}: cannot open {scheme}:// ({exc}); install {pkg}") from None
    return remote.wrap(store, link)


def _is_anemoi(group) -> bool:
    arrays = set(group.array_keys())
    return "variables" in group.attrs and {"data", "latitudes", "longitudes", "dates"} <= arrays


def open_layout(store, where: str):
    """('anemoi', zarr group) or ('xarray', Dataset) for a store, and the zarr group; one line when it
    is neither."""
    import xarray as xr
    import zarr

    with warnings.catch_warnings():  # consolidated-metadata fallbacks, foreign files in stores
        warnings.simplefilter("ignore")
        try:
            group = zarr.open_group(store, mode="r")
        except DataError:
            raise
        except Exception as exc:
            missing = list(dict.fromkeys(getattr(store, "link", remote.Link(where)).missing))
            if missing:  # nothing at the URL: name what was asked for
                raise DataError(
                    f"{where}: not a zarr store: {', '.join(missing[:4])} not found (HTTP 404 or no such "
                    "file); check acquire.zarr.url"
                ) from None
            raise DataError(f"{where}: not a zarr store ({type(exc).__name__}: {exc})") from None
        # Anemoi first: its one 'data' array has no dimension names xarray could place.
        if _is_anemoi(group):
            return "anemoi", group, group
        try:
            # consolidated=None: the consolidated metadata when the store has it (one read), else a listing.
            return "xarray", xr.open_zarr(store, consolidated=None, chunks=None), group
        except DataError:
            raise
        except Exception as exc:
            raise DataError(f"{where}: cannot open with xarray ({type(exc).__name__}: {exc})") from None


class Anemoi:
    """An anemoi dataset: variables ``<name>`` (surface) and ``<name>_<level>``, cells on a regular grid."""

    def __init__(self, group, where: str):
        self.group, self.where = group, where
        self.names = list(group.attrs["variables"])
        self.meta = group.attrs.get("variables_metadata", {}) or {}
        self.data = group["data"]
        if self.data.ndim != 4:
            raise DataError(
                f"{where}: anemoi 'data' has shape {self.data.shape}; expected (time, variable, ensemble, cell)"
            )
        dates = np.asarray(group["dates"][:])
        if not np.issubdtype(dates.dtype, np.datetime64):
            raise DataError(f"{where}: anemoi 'dates' holds {dates.dtype}, not dates (missing time)")
        self.dates = dates.astype("datetime64[s]")

    def grid(self) -> tuple[np.ndarray, np.ndarray]:
        """The regular grid's latitudes and longitudes (cells in row-major order), or one line why not."""
        lat = np.asarray(self.group["latitudes"][:], float)
        lon = np.asarray(self.group["longitudes"][:], float)
        shape = self.group.attrs.get("field_shape")
        # Without field_shape, a regular grid has as many rows as distinct latitudes.
        ny = int(shape[0]) if shape and len(shape) == 2 else len(np.unique(lat))
        nx = len(lat) // ny if ny else 0
        bad = f"{self.where}: the anemoi grid ({len(lat)} cells, field_shape {shape}) is not a regular lat/lon grid"
        if ny * nx != len(lat) or ny < 2 or nx < 2:
            raise DataError(bad + "; regrid it to one first")
        lat2, lon2 = lat.reshape(ny, nx), lon.reshape(ny, nx)
        lats, lons = lat2[:, 0], lon2[0]
        if not (np.allclose(lat2, lats[:, None]) and np.allclose(lon2, lons[None, :])):
            raise DataError(
                bad + " (cells do not form rows of one latitude and columns of one longitude); regrid it to one first"
            )
        for c in (lats, lons):
            step = np.diff(c)
            if not np.allclose(step, step[0], atol=1e-6):
                raise DataError(bad + " (unevenly spaced); regrid it to one first")
        return lats, lons

    def probe(self, name: str, field: str | None = None) -> tuple[str, str, int, float]:
        """(field, kind, level, factor) of variable ``name``, or the line saying why it is unusable."""
        # anemoi names a level variable <base>_<level> (t_850); a name without a numeric tail is single-level.
        head, _, tail = name.rpartition("_")
        base, lev = (head, tail) if head and tail.isdigit() else (name, "")
        meta = self.meta.get(name, {})
        wanted, factor = gridded.catalogued(
            name, base, field, meta.get("units"), "units in variables_metadata", self.where
        )
        levtype = (meta.get("mars") or {}).get("levtype") or ("sfc" if not lev else "pl")
        if levtype not in ("sfc", "pl", "ml"):
            raise DataError(f"{self.where}: variable '{name}' is on level type '{levtype}'")
        if self.data.shape[2] > 1:
            raise DataError(
                f"{self.where}: anemoi 'data' has {self.data.shape[2]} ensemble members; select "
                "one member before ingest"
            )
        return wanted, levtype, int(lev or 0), factor

    def describe(self, variables: dict[str, str] | None = None) -> dict[str, str]:
        by_base = {v: f for f, v in (variables or {}).items()}
        out = {}
        for name in self.names:
            try:
                self.grid()
                f, kind, lev, _ = self.probe(name, by_base.get(name.rsplit("_", 1)[0]) or by_base.get(name))
                out[name] = f"usable as field '{f}' ({'surface' if kind == 'sfc' else f'{kind} [{lev}]'})"
            except DataError as exc:
                out[name] = f"not usable: {str(exc).removeprefix(self.where + ': ')}"
        return out

    def blocks(self, exp: Expectation, cfg: AcquireConfig) -> tuple[list[remote.Block], int]:
        """The unit's time blocks and the bytes used (the selected values at the store's dtype)."""
        field, month = exp.field, str(exp.first)[:7]
        bases = [cfg.variables[field]] if field in cfg.variables else list(fields.candidates(field))
        want = [b if exp.kind == "sfc" else f"{b}_{lev}" for lev in exp.levels for b in bases]
        found = [n for n in want if n in self.names]
        if not found:
            shown = f"{want[:6]}{' ...' if len(want) > 6 else ''}"
            raise DataError(
                f"{self.where}: no variable for field '{field}' on levels {list(exp.levels)} "
                f"(looked for {shown}); it holds {self.names}"
            )
        vidx = []
        for lev in exp.levels:
            hits = [n for n in found if n in (b if exp.kind == "sfc" else f"{b}_{lev}" for b in bases)]
            if not hits:
                raise DataError(f"{self.where}: field '{field}' has no level {lev} (variables {found})")
            if len(hits) > 1:
                raise DataError(
                    f"{self.where}: variables {hits} all name field '{field}'; choose one with acquire.variables"
                )
            _, kind, _, factor = self.probe(hits[0], field)
            if kind != exp.kind:
                raise DataError(
                    f"{self.where}: variable '{hits[0]}' is on {gridded._KIND[kind]}; the config "
                    f"expects {gridded._KIND[exp.kind]}"
                )
            vidx.append(self.names.index(hits[0]))
        lats, lons = self.grid()
        tidx = np.flatnonzero((self.dates >= exp.first) & (self.dates <= exp.last))
        if not len(tidx):
            span = f"{str(self.dates[0])[:16]} .. {str(self.dates[-1])[:16]}"
            raise DataError(
                f"{self.where}: field '{field}' has no time step in {month} ∩ the campaign "
                f"({exp.window}); it covers {span}"
            )
        gridded.check_complete(self.dates[tidx], exp, self.where)
        missing = np.array(self.group.attrs.get("missing_dates") or [], "datetime64[s]")
        if len(gone := np.intersect1d(self.dates[tidx], missing)):
            raise DataError(
                f"{self.where}: the dataset marks {len(gone)} dates of {month} as missing "
                f"(missing_dates: {str(gone[0])[:16]} ...)"
            )
        rows, cols = area_indices(lats, lons, exp.area)
        out_lons = lons[cols][0] + abs(lons[1] - lons[0]) * np.arange(len(cols))
        if out_lons[-1] >= 360.0:
            out_lons -= 360.0
        ny, nx = len(lats), len(lons)
        # Whole grids: a chunk of 'data' holds every cell, so the area is cut after reading.
        per_step = len(vidx) * ny * nx * self.data.dtype.itemsize
        step = max(1, min(len(tidx), gridded.BLOCK_BYTES // per_step))
        order = np.argsort(vidx)  # zarr's orthogonal selection wants increasing indices
        sorted_v = np.asarray(vidx)[order]
        cells = np.arange(ny * nx)
        itemsize = self.data.dtype.itemsize

        def read(tsel: np.ndarray) -> np.ndarray:
            raw = self.data.get_orthogonal_selection((tsel, sorted_v, 0, slice(None)))  # T V cells
            values = np.empty_like(raw)
            values[:, order] = raw  # back to the config's level order
            values = values.reshape(len(tsel), len(vidx), ny, nx)[:, :, rows][:, :, :, cols]
            return gridded.in_units(values, factor)

        out = []
        for b in range(0, len(tidx), step):
            tsel = tidx[b : b + step]
            nbytes, n = remote.touched(self.data.chunks, itemsize, [tsel, sorted_v, [0], cells])
            held = 3 * len(tsel) * len(vidx) * ny * nx * 8  # raw, reordered and converted, float64 at most
            out.append(remote.Block(self.dates[tsel], partial(read, tsel), lats[rows], out_lons, held, nbytes, n))
        return out, len(tidx) * len(vidx) * len(rows) * len(cols) * itemsize


def describe_store(path: str, variables: dict[str, str] | None = None) -> dict[str, str] | None:
    """For inspect: per variable 'usable as field …' or why not; None when not an anemoi dataset."""
    layout, obj, _ = open_layout(open_store(path), path)
    if layout != "anemoi":
        return None
    return Anemoi(obj, path).describe(variables)


def parts_dir(out: Path, field: str, month: str) -> Path:
    """Where the blocks of a (field, month) grow until it is complete (:class:`remote.Journal`): beside
    the output, under a name that no writer's temporary has (so cleaning those never removes it)."""
    return out.parent / f".{field}-{month}.zarr-parts"


def _metadata(group, name: str) -> dict:
    try:
        return group[name].metadata.to_dict()
    except Exception:  # an xarray-readable store whose variable zarr cannot open alone: its attributes
        return {}


class ZarrSource(ConfiguredGrid):
    # the store's grid without data.grid; values written as GRIB2 with 32-bit IEEE floats
    name = "the zarr store"
    honours = ConfiguredGrid.honours | {"acquire.variables"}
    bits_per_value = 32

    def problems(self, data: DataConfig, cfg: AcquireConfig) -> list[str]:
        empty = [] if cfg.zarr.url else ["acquire.source is 'zarr' but acquire.zarr.url is empty"]
        return super().problems(data, cfg) + empty

    def fetch(self, data: DataConfig, cfg: AcquireConfig, field: str, month: str, out: Path) -> dict:
        import atmorep

        url = cfg.zarr.url
        link = remote.Link(url, cfg.zarr)
        store = open_store(url, cfg.zarr, link)
        where = f"zarr store {url}"
        layout, obj, group = open_layout(store, where)
        exp = Expectation.for_month(data, field, month)
        if layout == "anemoi":
            blocks, used = Anemoi(obj, where).blocks(exp, cfg)
            variables = ["data"]
        else:
            exp, cuts, holders = gridded.cut([(where, obj)], data, cfg, field, month, where)
            blocks, used, variables = gridded.blocks(cuts), sum(map(gridded.used_bytes, cuts)), list(holders.values())
        # Everything that makes the bytes: a journal of another unit (or store, or writer) is not resumed.
        key = {
            "url": url,
            "layout": layout,
            "field": field,
            "exp": [exp.kind, list(exp.levels), exp.area, str(exp.first), str(exp.last)],
            "metadata": {v: _metadata(group, v) for v in variables},
            "blocks": [[str(b.times[0]), len(b.times)] for b in blocks],
            "grid": [blocks[0].lats.tolist(), blocks[0].lons.tolist()] if blocks else [],
            "writer": atmorep.__version__,
        }
        journal = remote.Journal(parts_dir(out, field, month), key)

        def write(path: Path, block: remote.Block, values: np.ndarray) -> None:
            gridded.write_block(path, field, exp, block, values, append=True)

        stats = remote.transfer(blocks, write, out, journal, link, f"{field} {month}")
        read = stats["bytes_read"]
        # Compressed bytes read over raw bytes used: below 1 when compression beats the waste.
        ratio = read / used if used else float("nan")
        log.info(
            "zarr: %s %s from %s (%s layout): read %.1f MB for %.1f MB used (read amplification %.2f) in %.1f s "
            "(%.1f MB/s), %d requests, %d retries, %d of %d blocks resumed",
            field,
            month,
            url,
            layout,
            read / 1e6,
            used / 1e6,
            ratio,
            stats["seconds"],
            read / 1e6 / max(stats["seconds"], 1e-9),
            stats["requests"],
            stats["retries"],
            stats["blocks_resumed"],
            stats["blocks"],
        )
        return {
            "source": "zarr",
            "url": url,
            "layout": layout,
            "variables": variables,
            "bytes_used": used,
            "read_amplification": ratio,
            **stats,
        }
