"""Embed: the encoder's latents of a model over a period and area, one vector per token, written slab by
slab into a CF zarr store (``embeddings.zarr``, one group per field) that ``xarray.open_zarr`` reads.

**Tiling.** Windows tile the period and area as evaluate's ``global_forecast`` tiles the globe
(:func:`atmorep.eval.windows.cover`): along each axis the origins step by the window minus
``embed.token_overlap`` tokens, the last window is pulled back to end at the area's edge (time,
latitude, a regional longitude) or runs on across 0°/360° around a whole periodic longitude, and a
window may read context outside the period and area, never outside the stores. The inputs are not
masked: the latent of a token is the encoder's output with every token seen.

**Which window.** Each token's latent comes from exactly one window: the one in which it is most
central, i.e. along each axis the window whose nearer edge is farthest from the token (the first such
window on a tie). Every vector written is therefore one window's encoder output, bit for bit, never a
mean of windows that saw different contexts; ``window`` names it (an index of
:class:`~atmorep.data.dataset.WindowDataset` over the stores' whole period, which ``atmorep embed``
builds). With no overlap a token lies in one window only, except where a last window was pulled back.

**Layout** of group ``{field}`` (dims time, layer, level, latitude, longitude, channel: token indices):

- ``latent (time, layer, level, latitude, longitude, channel)`` float32, chunks of one token row;
- ``source_window (time, latitude, longitude)`` int64, the window each token's latent comes from;
- coordinates at the token centres: ``time`` (mean of the token's steps' valid times, ``time_bnds`` the
  first and last step), ``latitude`` (mean of its rows, ``latitude_bnds`` half a grid step beyond),
  ``longitude`` (mean of its columns taken periodically, in [0, 360), ``longitude_bnds``), ``level``,
  ``layer`` (encoder layer, 0 = first), ``channel``;
- with ``pooling: [window]``: ``pooled_window (window, layer, level, channel)``, the mean over every token
  of each window that ran, with its centre ``window_time``, ``window_latitude``, ``window_longitude``;
- with ``pooling: [area]``: ``pooled_area (time, layer, level, channel)``, the cos(latitude)-weighted
  mean over the area's tokens.

Attributes name the model file, its sha256, the layers, token size, window and overlap.

**Memory.** Windows run one time origin at a time; the slab of latents they own (their time tokens
over the whole area) is written into the store, whole chunks in one write, before the next starts.
The working set beyond the loaded model is :func:`working_set` (slab, pooled vectors, one batch and
its activations) plus the reader's memory maps of at most
:data:`atmorep.formats.zarrv3.MAX_OPEN_SHARDS` shard files, whatever the period's length
(``benchmarks/embed.py`` measures it on a global month).

Legend: B batch, L levels, T/Y/X tokens in time/lat/lon, N = L*T*Y*X tokens per window and field,
D width, l chosen layers, Ta owned time tokens of a slab, Ya/Xa the area's token rows and columns.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import xarray as xr
from tqdm import tqdm

from atmorep.config import DataConfig, EmbedConfig, period
from atmorep.data.dataset import WindowDataset
from atmorep.eval import windows as W
from atmorep.eval.outputs import CONVENTIONS
from atmorep.formats.atomic import Replacement
from atmorep.model.batch import Batch
from atmorep.model.file import load_model
from atmorep.model.multiformer import Multiformer

log = logging.getLogger(__name__)

STORE = "embeddings.zarr"
CHUNK_BYTES = 16 << 20  # the latent array's chunks: one time token, up to this many bytes of rows
POOLING = ("window", "area")
ASSIGNMENT = "each token's latent is the encoder output of the window in which it is most central (first on a tie)"


def resolve_layers(layers: tuple[int, ...], model: Multiformer, model_path: str | Path) -> list[int]:
    """``embed.layers`` as layer indices 0..n-1 (negative counts from the last); a missing layer is refused."""
    n = model.cfg.encoder_layers
    bad = [k for k in layers if not -n <= k < n]
    if bad:
        raise ValueError(
            f"embed.layers {list(layers)}: {model_path} has {n} encoder layers (0..{n - 1}, or -{n}..-1); "
            f"it has no layer {', '.join(map(str, bad))}"
        )
    out = sorted({k % n for k in layers})
    return out


# --- the plan: which tokens, which windows, which window owns which token ------------------------------


@dataclass(frozen=True)
class Axis:
    """One axis of one field: the tokens to embed and the window that owns each.

    ``start`` are the tokens' first points (store indices; on a periodic longitude unwrapped, so that an
    area across 0° is one increasing run), ``owner`` the index into the window ``origins`` (points,
    unwrapped likewise) of the window each token's latent comes from, ``local`` the token's first point
    inside that window.
    """

    start: np.ndarray
    size: int
    origins: list[int]
    owner: np.ndarray
    local: np.ndarray

    @classmethod
    def of(cls, start: np.ndarray, size: int, origins: list[int], extent: int, period: int | None = None) -> Axis:
        owner, local = owners(start, size, origins, extent, period)
        return cls(np.asarray(start), size, list(origins), owner, local)

    def owned(self, k: int) -> np.ndarray:
        """Indices of the tokens that window origin ``k`` owns (a contiguous, increasing run)."""
        return np.flatnonzero(self.owner == k)


def owners(
    start: np.ndarray, size: int, origins: list[int], extent: int, period: int | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """For tokens at ``start`` (``size`` points), the window (index into ``origins``; windows of
    ``extent`` points) in which each is most central, its nearer edge farthest from the token (the first
    on a tie), and the token's offset in it. ``period``: the axis is periodic with that many points (a
    window past the end holds the first tokens again)."""
    if not len(start):
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    o = np.asarray(origins, np.int64)[None, :]
    best = np.full(len(start), -np.inf)
    owner = np.zeros(len(start), np.int64)
    local = np.zeros(len(start), np.int64)
    for shift in (0, period) if period else (0,):
        s = np.asarray(start, np.int64)[:, None] + shift
        margin = np.minimum(s - o, o + extent - (s + size)).astype(np.float64)  # points to the nearer edge
        margin[margin < 0] = -np.inf  # windows that do not hold the token
        k = np.argmax(margin, axis=1)  # argmax: the first of equal margins
        m = margin[np.arange(len(start)), k]
        better = m > best
        best[better], owner[better] = m[better], k[better]
        local[better] = (s[:, 0] - o[0, k])[better]
    if np.isinf(best).any():
        raise AssertionError("a token lies in no window of the cover")  # cover() covers every token
    return owner, local


def coverable(start: np.ndarray, size: int, length: int, extent: int, step: int) -> np.ndarray:
    """The tokens of a bounded axis that a window inside it can hold (origins every ``step`` points)."""
    last = (length - extent) // step * step
    return start[(start >= 0) & (start + size <= last + extent)] if last >= 0 else start[:0]


def _selected(centres: np.ndarray, lo, hi) -> np.ndarray:
    return np.flatnonzero((centres >= lo) & (centres <= hi))


def _lon_inside(centres: np.ndarray, west: float, east: float) -> np.ndarray:
    """Tokens whose centre lies in west..east going east (across 0° when west > east)."""
    return np.flatnonzero((centres - west) % 360.0 <= (east - west) % 360.0 + 1e-9)


@dataclass(frozen=True)
class TimeSlab:
    """The windows of one time origin: which store (year), its first step, and the tokens it owns."""

    store: int
    t0: int  # first step of the windows (store index)
    position: int  # the dataset's time position of t0
    k: int  # index of the origin in the plan's t_origins[store]


class Plan:
    """Tokens and windows of an embedding: per field and axis an :class:`Axis`; window origins shared.

    Time is planned per store (windows never span two years): ``time[f][s]`` is field ``f``'s time
    :class:`Axis` in store ``s`` (tokens whose centre time lies in the period). Latitude (``lat[f]``)
    and longitude (``lon[f]``) hold the tokens whose centre lies in the area.
    """

    def __init__(self, dataset: WindowDataset, fields: list[str], cfg: EmbedConfig, data: DataConfig):
        self.dataset, self.fields = dataset, fields
        nt, ny, nx = dataset.extent
        st, sy, sx = dataset.step
        ref = dataset.stores[dataset.fields[0]][0]
        self.nlat, self.nlon, self.periodic = len(ref.lats), len(ref.lons), ref.periodic
        self.start, self.end = period(cfg, data)
        ot, oy, ox = (o * s for o, s in zip(cfg.token_overlap, dataset.token_sizes[dataset.fields[0]]))
        strides = (nt - ot, ny - oy, nx - ox)
        if min(strides) <= 0:
            raise ValueError(f"embed.token_overlap {list(cfg.token_overlap)} leaves no step between windows")
        north, west, south, east = cfg.area if cfg.area is not None else (90.0, 0.0, -90.0, 360.0)
        whole = cfg.area is None or (east != west and (east - west) % 360.0 == 0.0)

        rows = {f: self._rows(f, north, south) for f in fields}
        self.y_origins = self._cover(rows, 1, ny, strides[1], sy, self.nlat, False, "latitude")
        self.lat = {f: Axis.of(rows[f], self._size(f, 1), self.y_origins, ny) for f in fields}

        cols = {f: self._columns(f, west, east, whole) for f in fields}
        self.x_origins = self._cover(cols, 2, nx, strides[2], sx, self.nlon, self.periodic, "longitude")
        wrap = self.nlon if self.periodic and whole else None
        self.lon = {f: Axis.of(cols[f], self._size(f, 2), self.x_origins, nx, wrap) for f in fields}

        self.time: dict[str, list[Axis]] = {f: [] for f in fields}
        self.t_origins: list[list[int]] = []
        self._offsets = np.cumsum([0] + [len(t) for t in dataset.grid.t_origins])
        for s, store in enumerate(ref_stores := dataset.stores[dataset.fields[0]]):
            steps = {f: self._steps(f, s) for f in fields}
            what = f"time in {store.path}"
            origins = (
                self._cover(steps, 0, nt, strides[0], st, len(store.times), False, what)
                if any(len(v) for v in steps.values())
                else []
            )
            self.t_origins.append(origins)
            for f in fields:
                self.time[f].append(Axis.of(steps[f], self._size(f, 0), origins, nt))
        if not any(len(a.start) for f in fields for a in self.time[f]):
            first, last = ref_stores[0].times[0], ref_stores[-1].times[-1]
            raise ValueError(
                f"embed: no token of a complete window has its centre inside {_h(self.start)} .. {_h(self.end)} "
                f"(the stores cover {_h(first)} .. {_h(last)})"
            )

    # -- token selection (first points of the tokens, store indices) ---------------------------------

    def _size(self, f: str, axis: int) -> int:
        return self.dataset.token_sizes[f][axis]

    def _rows(self, f: str, north: float, south: float) -> np.ndarray:
        store, ty = self.dataset.stores[f][0], self._size(f, 1)
        centres = store.lats[: len(store.lats) // ty * ty].reshape(-1, ty).mean(1)
        rows = _selected(centres, min(north, south), max(north, south)) * ty
        rows = coverable(rows, ty, self.nlat, self.dataset.extent[1], self.dataset.step[1])
        if not len(rows):
            raise ValueError(f"embed.area: no token row of field '{f}' has its centre between {south}° and {north}°N")
        return rows

    def _columns(self, f: str, west: float, east: float, whole: bool) -> np.ndarray:
        store, tx = self.dataset.stores[f][0], self._size(f, 2)
        K = len(store.lons) // tx
        centres = lon_centres(store.lons[: K * tx].reshape(K, tx))
        cols = np.arange(K) if whole else _lon_inside(centres, west, east)
        if self.periodic and 0 < len(cols) < K:
            # An arc through column 0 (an area across the grid's seam): from its western end, unwrapped.
            gap = np.flatnonzero(np.diff(cols) > 1)
            if len(gap):
                cols = np.concatenate([cols[gap[0] + 1 :], cols[: gap[0] + 1] + K])
        cols = cols * tx
        if not self.periodic:
            cols = coverable(cols, tx, self.nlon, self.dataset.extent[2], self.dataset.step[2])
        if not len(cols):
            raise ValueError(f"embed.area: no token column of field '{f}' has its centre between {west}° and {east}°E")
        return cols

    def _steps(self, f: str, s: int) -> np.ndarray:
        store, tt = self.dataset.stores[f][s], self._size(f, 0)
        centres = time_centres(store.times[: len(store.times) // tt * tt].reshape(-1, tt)).astype("datetime64[s]")
        steps = _selected(centres, self.start, self.end) * tt
        return coverable(steps, tt, len(store.times), self.dataset.extent[0], self.dataset.step[0])

    def _cover(self, tokens: dict[str, np.ndarray], axis, size, stride, step, length, periodic, what) -> list[int]:
        lo = min(int(t.min()) for t in tokens.values() if len(t))
        hi = max(int(t.max()) + self._size(f, axis) for f, t in tokens.items() if len(t))
        try:
            return W.cover(lo, hi, size, stride, step, length, periodic)
        except ValueError as exc:
            raise ValueError(f"embed ({what}): {exc}; choose embed.start/end or embed.area inside the data") from None

    # -- windows -------------------------------------------------------------------------------------

    def used(self, axis: str, s: int = 0) -> list[int]:
        """Indices of the origins along ``axis`` ('time' of store s, 'lat', 'lon') that own a token of some field."""
        axes = {"time": lambda f: self.time[f][s], "lat": lambda f: self.lat[f], "lon": lambda f: self.lon[f]}[axis]
        return sorted({int(k) for f in self.fields for k in axes(f).owner})

    def slabs(self) -> list[TimeSlab]:
        """Every time origin that owns tokens, in time order."""
        st = self.dataset.step[0]
        return [
            TimeSlab(s, self.t_origins[s][k], int(self._offsets[s]) + self.t_origins[s][k] // st, k)
            for s in range(len(self.t_origins))
            for k in self.used("time", s)
        ]

    def window(self, slab: TimeSlab, y0: int, x0: int) -> int:
        """The dataset's index of the window at (slab, y0, x0); x0 may lie past the last column or before 0."""
        return W.window_index(self.dataset, slab.position, y0, x0)

    @property
    def windows(self) -> int:
        """Windows that run (those owning a token)."""
        return len(self.slabs()) * len(self.used("lat")) * len(self.used("lon"))


def _h(t) -> str:
    return np.datetime_as_string(np.datetime64(t, "s"), "h")


def time_centres(times_KT: np.ndarray) -> np.ndarray:
    """Mean valid time of each row of steps (datetime64, irregular steps included)."""
    t = times_KT.astype("datetime64[ns]")
    return t[:, 0] + (t - t[:, :1]).astype(np.int64).mean(axis=1).astype("timedelta64[ns]")


def lon_centres(lons_KX: np.ndarray) -> np.ndarray:
    """Mean longitude of each row of columns taken periodically (a token astride 0°/360° too), in [0, 360)."""
    unwrapped = np.rad2deg(np.unwrap(np.deg2rad(lons_KX), axis=-1))
    return unwrapped.mean(axis=-1) % 360.0


def monotonic(lons: np.ndarray) -> np.ndarray:
    """Longitudes in [0, 360), or in [-180, 180) where that makes them increase (a run across 0°)."""
    east = np.asarray(lons) % 360.0
    if len(east) < 2 or np.all(np.diff(east) > 0):
        return east
    return (east + 180.0) % 360.0 - 180.0


# --- the store --------------------------------------------------------------------------------------


def coordinates(dataset: WindowDataset, f: str, plan: Plan) -> xr.Dataset:
    """The token-centre coordinates (and bounds) of field ``f``'s embedded tokens."""
    store = dataset.stores[f][0]
    tt, ty, tx = store.token_size
    half = store.resolution / 2
    steps = np.concatenate(
        [dataset.stores[f][s].times[a.start[:, None] + np.arange(tt)] for s, a in enumerate(plan.time[f])]
    )
    rows = store.lats[plan.lat[f].start[:, None] + np.arange(ty)]
    cols = store.lons[(plan.lon[f].start[:, None] + np.arange(tx)) % len(store.lons)]
    lon_c = monotonic(lon_centres(cols))
    width = (tx - 1) * abs(float(store.lons[1] - store.lons[0])) / 2 + half
    return xr.Dataset(
        coords={
            "time": ("time", time_centres(steps)),
            "time_bnds": (("time", "bnds"), steps[:, [0, -1]].astype("datetime64[ns]")),
            "level": ("level", store.levels),
            "latitude": ("latitude", rows.mean(1)),
            "latitude_bnds": (
                ("latitude", "bnds"),
                np.clip(np.sort(np.stack([rows.min(1) - half, rows.max(1) + half], -1)), -90, 90),
            ),
            "longitude": ("longitude", lon_c),
            "longitude_bnds": (("longitude", "bnds"), np.stack([lon_c - width, lon_c + width], -1)),
        }
    )


def _cf(ds: xr.Dataset) -> xr.Dataset:
    ds["time"].attrs = {
        "standard_name": "time",
        "long_name": "valid time of the token centre (mean of its steps)",
        "bounds": "time_bnds",
    }
    ds["latitude"].attrs = {
        "standard_name": "latitude",
        "long_name": "latitude of the token centre",
        "units": "degrees_north",
        "axis": "Y",
        "bounds": "latitude_bnds",
    }
    ds["longitude"].attrs = {
        "standard_name": "longitude",
        "long_name": "longitude of the token centre (periodic mean of its columns; [-180, 180) across 0°)",
        "units": "degrees_east",
        "axis": "X",
        "bounds": "longitude_bnds",
    }
    ds["level"].attrs = {
        "long_name": "vertical level (0: surface; model level number or hPa)",
        "positive": "down",
        "axis": "Z",
    }
    for c in ("time", "time_bnds"):
        ds[c].encoding = {
            "units": "hours since 1970-01-01T00:00:00",
            "calendar": "proleptic_gregorian",
            "dtype": "float64",
        }
    return ds


class Writer:
    """``embeddings.zarr`` (zarr v2, consolidated at the end): coordinates first, then latents slab by slab."""

    def __init__(self, path: Path, plan: Plan, model: Multiformer, layers: list[int], attrs: dict, pooling):
        import zarr

        self.path, self.layers, self.pooling = Path(path), layers, tuple(pooling)
        zarr.open_group(str(self.path), mode="w", zarr_format=2)
        self.arrays: dict[str, dict] = {}
        self.attrs: dict[str, dict] = {}
        self.latitudes: dict[str, np.ndarray] = {}
        for f in plan.fields:
            coords = _cf(coordinates(plan.dataset, f, plan))
            coords = coords.assign_coords(
                layer=("layer", np.asarray(layers)), channel=("channel", np.arange(model.dims[f]))
            )
            coords["layer"].attrs = {"long_name": "encoder layer (0 = first)"}
            coords["channel"].attrs = {"long_name": "latent channel"}
            field_attrs = {
                **CONVENTIONS,
                "source": "atmorep embed",
                **attrs,
                "field": f,
                "token_size": list(plan.dataset.token_sizes[f]),
            }
            self.attrs[f] = field_attrs
            coords.to_zarr(self.path, group=f, mode="w", zarr_format=2, consolidated=False)
            g = zarr.open_group(str(self.path / f), mode="a", zarr_format=2)
            T, L, Y, X = (coords.sizes[d] for d in ("time", "level", "latitude", "longitude"))
            D = model.dims[f]
            # one chunk: a time token, every layer and level, as many rows as fit in CHUNK_BYTES, every column
            rows = max(1, min(Y, CHUNK_BYTES // max(1, len(layers) * L * X * D * 4)))
            latent = g.create_array(
                "latent",
                shape=(T, len(layers), L, Y, X, D),
                chunks=(1, len(layers), L, rows, X, D),
                dtype="float32",
                fill_value=np.nan,
                compressors=None,  # latents hardly compress; a compressor would cost more than the encoder
            )
            latent.attrs.update(
                {
                    "_ARRAY_DIMENSIONS": ["time", "layer", "level", "latitude", "longitude", "channel"],
                    "long_name": f"encoder output of field {f} per token (unmasked inputs)",
                    "units": "1",
                    "coordinates": "time_bnds latitude_bnds longitude_bnds",
                }
            )
            window = g.create_array(
                "source_window", shape=(T, Y, X), chunks=(1, Y, X), dtype="int64", fill_value=None, compressors=None
            )
            window.attrs.update(
                {"_ARRAY_DIMENSIONS": ["time", "latitude", "longitude"], "long_name": ASSIGNMENT, "units": "1"}
            )
            self.arrays[f] = {"latent": latent, "window": window}
            self.latitudes[f] = coords["latitude"].values
            if "area" in self.pooling:
                area = g.create_array(
                    "pooled_area",
                    shape=(T, len(layers), L, D),
                    chunks=(1, len(layers), L, D),
                    dtype="float32",
                    fill_value=np.nan,
                )
                area.attrs.update(
                    {
                        "_ARRAY_DIMENSIONS": ["time", "layer", "level", "channel"],
                        "long_name": "cos(latitude)-weighted mean of the latents over the area",
                        "units": "1",
                    }
                )
                self.arrays[f]["pooled_area"] = area

    def slab(self, f: str, t: slice, latent_TlLYXD: np.ndarray, window_TYX: np.ndarray) -> None:
        """The latents of time tokens ``t`` over the whole area: whole chunks, one write."""
        self.arrays[f]["latent"][t] = latent_TlLYXD
        self.arrays[f]["window"][t] = window_TYX

    def area(self, f: str, t: slice, pooled_TlLD: np.ndarray) -> None:
        self.arrays[f]["pooled_area"][t] = pooled_TlLD.astype(np.float32)

    def windows(self, f: str, pooled: xr.Dataset) -> None:
        pooled.to_zarr(self.path, group=f, mode="a", zarr_format=2, consolidated=False)

    def close(self) -> None:
        import zarr

        for f, attrs in self.attrs.items():  # last: xarray's appends (pooled windows) rewrite a group's attributes
            zarr.open_group(str(self.path / f), mode="a", zarr_format=2).attrs.update(attrs)
        zarr.consolidate_metadata(str(self.path), zarr_format=2)


# --- the run ----------------------------------------------------------------------------------------


def working_set(plan: Plan, model: Multiformer, layers: list[int], batch_size: int) -> int:
    """Bytes the embedding holds beyond the loaded model and the reader's memory maps: the largest slab
    of latents (and window indices), one batch of inputs, its encoder activations (an upper estimate:
    twelve widths per token and field for attention and MLP temporaries), and the pooled windows
    (the one part that grows with the period: a vector per window, layer and level)."""
    ds = plan.dataset
    total = 0
    for f in plan.fields:
        L = ds.stores[f][0].levels.size
        D = model.dims[f]
        N = L * math.prod(ds.tokens[f])
        T = max((int(np.bincount(a.owner).max()) for a in plan.time[f] if len(a.owner)), default=0)
        Y = int(np.bincount(plan.lat[f].owner).max())  # the most token rows one origin owns
        X = len(plan.lon[f].start)
        total += T * Y * X * (len(layers) * L * D * 4 + 8)  # slab
        P = math.prod(ds.token_sizes[f])
        total += batch_size * N * (P + 8) * 4 * 2  # numpy batch and its tensor
        total += batch_size * N * D * 4 * (len(layers) + 12)  # kept outputs + temporaries
        # pooled windows: the vectors, their stacked copy and xarray's encoded copy while they are written
        total += 3 * plan.windows * len(layers) * L * D * 4
    return total


@torch.inference_mode()
def run(model: Multiformer, plan: Plan, layers: list[int], batch_size: int, writer: Writer) -> dict[str, dict]:
    """Every window of ``plan`` through the encoder; each slab's latents go to ``writer`` as it completes.

    Returns per field the pooled window vectors (window index -> ``(l, L, D)``) when pooling by window.
    """
    ds = plan.dataset
    depth = max(layers) + 1  # later layers never run
    pooled: dict[str, dict[int, np.ndarray]] = {f: {} for f in plan.fields}
    keep_pooled = "window" in writer.pooling
    bar = tqdm(total=plan.windows, desc="embed", unit="window", mininterval=2, disable=None)
    t_done = {f: 0 for f in plan.fields}  # time tokens written so far: the store's time axis
    lon_used = plan.used("lon")
    for slab in plan.slabs():
        own_t = {f: plan.time[f][slab.store].owned(slab.k) for f in plan.fields}
        buf, win = {}, {}
        for f in plan.fields:  # the slab: the time tokens this origin owns, over the whole area
            L, D = ds.stores[f][0].levels.size, model.dims[f]
            Ta, Ya, Xa = len(own_t[f]), len(plan.lat[f].start), len(plan.lon[f].start)
            buf[f] = np.full((Ta, len(layers), L, Ya, Xa, D), np.nan, np.float32)
            win[f] = np.full((Ta, Ya, Xa), -1, np.int64)
        for yi in plan.used("lat"):
            y0 = plan.y_origins[yi]
            own_y = {f: plan.lat[f].owned(yi) for f in plan.fields}
            for b0 in range(0, len(lon_used), batch_size):
                part = lon_used[b0 : b0 + batch_size]
                idx = [plan.window(slab, y0, plan.x_origins[xi]) for xi in part]
                batch = Batch.collate([ds[i] for i in idx])
                enc = model.encode(batch.tokens, batch.info, depth=depth)
                for f in plan.fields:
                    L, (T, Y, X) = ds.stores[f][0].levels.size, ds.tokens[f]
                    tt, ty, tx = ds.token_sizes[f]
                    # (B, N, D) per layer -> (B, l, L, T, Y, X, D): N in (level, time, lat, lon) order
                    out = (
                        torch.stack([enc[f][k] for k in layers], 1)
                        .reshape(len(idx), len(layers), L, T, Y, X, -1)
                        .numpy()
                    )
                    lt = plan.time[f][slab.store].local[own_t[f]] // tt
                    ly = plan.lat[f].local[own_y[f]] // ty
                    for b, (xi, i) in enumerate(zip(part, idx)):
                        cols = plan.lon[f].owned(xi)
                        lx = plan.lon[f].local[cols] // tx
                        # (l, L, T, Y, X, D) at the owned tokens -> (Ta, l, L, Ya, Xc, D)
                        block = out[b][:, :, lt][:, :, :, ly][:, :, :, :, lx].transpose(2, 0, 1, 3, 4, 5)
                        # adjacent index arrays keep their place: the target is (Ta, l, L, Ya, Xc, D) too
                        buf[f][:, :, :, own_y[f][:, None], cols[None, :]] = block
                        win[f][:, own_y[f][:, None], cols[None, :]] = i
                        if keep_pooled:
                            pooled[f][i] = out[b].mean(axis=(2, 3, 4))  # (l, L, D) over the window's tokens
                bar.update(len(idx))
        for f in plan.fields:
            if not len(own_t[f]):
                continue
            t_sl = slice(t_done[f], t_done[f] + len(own_t[f]))
            writer.slab(f, t_sl, buf[f], win[f])
            if "area" in writer.pooling:
                w = np.cos(np.deg2rad(writer.latitudes[f]))
                area = np.einsum("tlLyxd,y->tlLd", buf[f], w, dtype=np.float64) / (w.sum() * buf[f].shape[4])
                writer.area(f, t_sl, area)
            t_done[f] += len(own_t[f])
    bar.close()
    return pooled


def pooled_windows(plan: Plan, f: str, vectors: dict[int, np.ndarray], layers: list[int]) -> xr.Dataset:
    """``pooled_window (window, layer, level, channel)`` with each window's centre as coordinates."""
    ds = plan.dataset
    idx = np.array(sorted(vectors), np.int64)
    centres = []
    for i in idx:
        t_idx, y_idx, x_idx = ds.indices(int(i), f)
        store = ds.stores[f][ds.windows[int(i)].store]
        centres.append(
            (
                time_centres(store.times[t_idx][None])[0],
                store.lats[y_idx].mean(),
                lon_centres(store.lons[x_idx][None])[0],
            )
        )
    t, la, lo = (np.array(c) for c in zip(*centres))
    out = xr.Dataset(
        {
            "pooled_window": (
                ("window", "layer", "level", "channel"),
                np.stack([vectors[int(i)] for i in idx]).astype(np.float32),
            )
        },
        coords={
            "window": idx,
            "window_time": ("window", t.astype("datetime64[ns]")),
            "window_latitude": ("window", la),
            "window_longitude": ("window", lo),
        },
    )
    out["pooled_window"].attrs = {"long_name": "mean of the latents over every token of the window", "units": "1"}
    out["window_time"].attrs = {"long_name": "valid time of the window centre"}
    out["window_time"].encoding = {
        "units": "hours since 1970-01-01T00:00:00",
        "calendar": "proleptic_gregorian",
        "dtype": "float64",
    }
    out["window_latitude"].attrs = {"long_name": "latitude of the window centre", "units": "degrees_north"}
    out["window_longitude"].attrs = {"long_name": "longitude of the window centre", "units": "degrees_east"}
    return out


def open_dataset(stores: dict[str, list[str]], model: Multiformer, model_path: str | Path) -> WindowDataset:
    """The windows of the stores' whole period (windows may read context outside the embedded period)."""
    missing = sorted(set(model.fields) - set(stores))
    if missing:
        raise ValueError(f"{model_path}: the model needs fields {missing} whose shard stores were not given")
    ordered: dict[str, list[str | Path]] = {f: list(stores[f]) for f in model.fields}
    from atmorep.data.dataset import FieldStore

    times = [FieldStore(p).times for p in ordered[next(iter(ordered))]]
    return WindowDataset(ordered, model.cfg.num_tokens, min(t[0] for t in times), max(t[-1] for t in times))


def embed(
    data: DataConfig, cfg: EmbedConfig, model_path: str | Path, stores: dict[str, list[str]], out_dir: str | Path
) -> Path:
    """Write ``out_dir/embeddings.zarr`` (and, with ``cfg.case_study``, the cyclone case study); the
    directory is replaced atomically once complete. Returns the store's path."""
    out_dir = Path(out_dir)
    model, card = load_model(model_path)  # verified: card['sha256'] is the file's own digest
    layers = resolve_layers(cfg.layers, model, model_path)
    fields = list(cfg.fields) or list(model.fields)
    unknown = sorted(set(fields) - set(model.fields))
    if unknown:
        raise ValueError(f"embed.fields {unknown} are not fields of {model_path} (it has {', '.join(model.fields)})")
    bad = sorted(set(cfg.pooling) - set(POOLING))
    if bad:
        raise ValueError(f"embed.pooling {bad}: known are {', '.join(POOLING)}")
    dataset = open_dataset(stores, model, model_path)
    plan = Plan(dataset, fields, cfg, data)
    log.info(
        "embed: %d windows (%d time origins x %d x %d), layers %s of %s; working set %.0f MB",
        plan.windows,
        sum(len(o) for o in plan.t_origins),
        len(plan.y_origins),
        len(plan.x_origins),
        layers,
        fields,
        working_set(plan, model, layers, cfg.batch_size) / 1e6,
    )
    attrs = {
        "model": str(model_path),
        "model_sha256": card["sha256"],  # as `atmorep inspect` prints it
        "layers": layers,
        "encoder_layers": model.cfg.encoder_layers,
        "window_tokens": list(model.cfg.num_tokens),
        "token_overlap": list(cfg.token_overlap),
        "assignment": ASSIGNMENT,
        "inputs": "unmasked",
        "period": [str(t) for t in period(cfg, data)],
        "area": list(cfg.area) if cfg.area is not None else "the whole grid",
    }
    with Replacement(out_dir) as tmp:
        tmp.mkdir(parents=True)
        writer = Writer(tmp / STORE, plan, model, layers, attrs, cfg.pooling)
        pooled = run(model, plan, layers, cfg.batch_size, writer)
        if "window" in cfg.pooling:
            for f in fields:
                writer.windows(f, pooled_windows(plan, f, pooled[f], layers))
        writer.close()
        if cfg.case_study:
            from atmorep.eval import case_study

            case_study.write(model, plan, layers, tmp / STORE, tmp)
    log.info("embeddings in %s", out_dir / STORE)
    return out_dir / STORE
