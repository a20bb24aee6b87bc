"""The tropical-cyclone case study of ``atmorep embed`` (``embed.case_study``): AtmoRep's motivating
example on the embedded data.

1. Track: :mod:`atmorep.eval.cyclones` on msl and the 10 m wind of the embedded period (physical units,
   read back from the shard stores one time step at a time) -> ``cyclone_track.csv`` (every node of
   every tropical-cyclone track; ``tropical`` marks the fixes).
2. For the deepest cyclone, at its deepest fix: the token holding the centre, the window its latent came
   from (``source_window``), and that window's encoder self-attention of the centre token
   (:func:`atmorep.eval.attention.capture`, mean over heads, every written layer), keys at the centre's
   time slab and level.
3. Embedding similarity: the query is the mean latent (last written layer) of the 3 x 3 tokens around
   the centre; every other time and place within ``SEARCH`` degrees of the track gets the cosine
   similarity of its own 3 x 3 mean. Per time its most similar place (the nearest neighbour) is compared
   with the track's fix at that time, and so is the same search on the raw normalized inputs (the
   tokens' values), the baseline a representation has to beat -> ``cyclone_similarity.csv``.
4. ``cyclone.png``: the track over msl, the attention maps, similarity maps and the nearest neighbour's
   distance from the track, embedding against raw inputs.

Legend: T/Y/X tokens of the embedding store in time/lat/lon, D channels, P values per token.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import torch  # noqa: E402
import xarray as xr  # noqa: E402
from scipy import ndimage  # noqa: E402

from atmorep.data.tokens import tokenize  # noqa: E402
from atmorep.eval import attention, cyclones  # noqa: E402
from atmorep.model.batch import Batch  # noqa: E402

log = logging.getLogger(__name__)

NEEDS = ("msl", "u10", "v10")
SEARCH = 15.0  # degrees around the track searched for nearest neighbours (and drawn)
POOL = 3  # tokens (lat, lon) averaged around a place


def physical(plan, f: str) -> tuple[list[tuple[int, int]], Callable[[int, int], np.ndarray]]:
    """The embedded period's (store, step) pairs of field ``f`` and a reader of one step in physical units."""
    ds = plan.dataset
    pairs = []
    for s, axis in enumerate(plan.time[f]):
        for start in axis.start:
            pairs += [(s, int(start) + k) for k in range(axis.size)]

    def read(s: int, k: int) -> np.ndarray:
        store = ds.stores[f][s]
        values = store.read(k, 1, 0, len(store.lats), 0, len(store.lons))
        out = store.denormalize(values, np.array([k]), np.arange(len(store.lats)), np.arange(len(store.lons)))
        return out[0, 0]  # (Y, X) of the first level

    return pairs, read


def track(plan, criteria: cyclones.Criteria | None = None) -> pd.DataFrame:
    """Tropical cyclones over the embedded period (one time step in memory at a time)."""
    criteria = criteria or cyclones.Criteria()
    missing = [f for f in NEEDS if f not in plan.dataset.fields]
    if missing:
        raise ValueError(f"embed.case_study tracks cyclones in msl and the 10 m wind: the model has no {missing}")
    readers = {f: physical(plan, f) for f in NEEDS}
    pairs = readers["msl"][0]
    ref = plan.dataset.stores["msl"][0]
    found = []
    for s, k in pairs:
        msl, u, v = (readers[f][1](s, k) for f in NEEDS)
        coords = {"time": [plan.dataset.stores["msl"][s].times[k]], "latitude": ref.lats, "longitude": ref.lons}
        dims = ("time", "latitude", "longitude")
        found.append(
            cyclones.nodes(
                xr.DataArray(msl[None], coords, dims), xr.DataArray(np.hypot(u, v)[None], coords, dims), criteria
            )
        )
    return cyclones.classify(cyclones.stitch(pd.concat(found, ignore_index=True), criteria), criteria)


def _pooled(values_TYXD: np.ndarray, periodic: bool) -> np.ndarray:
    """Mean over POOL x POOL tokens around each token (longitude wraps on a global grid)."""
    mode = ("nearest", "nearest", "wrap" if periodic else "nearest", "nearest")
    return ndimage.uniform_filter(values_TYXD, size=(1, POOL, POOL, 1), mode=mode)


def cosine(query_D: np.ndarray, values_TYXD: np.ndarray) -> np.ndarray:
    num = values_TYXD @ query_D
    den = np.linalg.norm(values_TYXD, axis=-1) * np.linalg.norm(query_D)
    return num / np.where(den > 0, den, np.nan)


def raw_tokens(plan, f: str) -> np.ndarray:
    """The normalized input values of every embedded token of ``f`` at its first level: ``(T, Y, X, P)``."""
    ds = plan.dataset
    tt, ty, tx = ds.token_sizes[f]
    out = []
    for s, axis in enumerate(plan.time[f]):
        store = ds.stores[f][s]
        for start in axis.start:
            block = store.read(int(start), tt, 0, len(store.lats), 0, len(store.lons))[:1]  # (1, tt, Y, X)
            rows = plan.lat[f].start[:, None] + np.arange(ty)
            cols = (plan.lon[f].start[:, None] + np.arange(tx)) % len(store.lons)
            sub = block[:, :, rows.ravel()][:, :, :, cols.ravel()]
            out.append(tokenize(sub, (tt, ty, tx))[0, 0])  # (Y, X, P)
    return np.stack(out)


def similarity(store: xr.Dataset, raw_TYXP: np.ndarray, tracks: pd.DataFrame, centre: dict, periodic: bool):
    """Cosine-similarity maps of the centre's pooled latent, and per time the nearest neighbour of the
    latents and of the raw inputs, with the track's fix at that time (NaN where none)."""
    lat, lon = store["latitude"].values, store["longitude"].values % 360.0
    near = (
        cyclones.great_circle(
            lat[:, None], lon[None, :], tracks["lat"].values[:, None, None], tracks["lon"].values[:, None, None]
        ).min(0)
        <= SEARCH
    )  # (Y, X): within SEARCH of any node of the track
    latent = store["latent"].isel(layer=-1, level=0).values.astype(np.float64)  # T Y X D
    sims = {}
    for name, values in (("latent", latent), ("raw", raw_TYXP.astype(np.float64))):
        pooled = _pooled(values, periodic)
        sims[name] = cosine(pooled[centre["t"], centre["y"], centre["x"]], pooled)
    times = store["time"].values
    rows = []
    fixes = tracks[tracks["tropical"]]
    for t in range(len(times)):
        lo, hi = store["time_bnds"].values[t]
        fix = fixes[(fixes["time"] >= lo) & (fixes["time"] <= hi)]
        row = {"time": times[t], "centre_time": t == centre["t"]}
        if len(fix):
            row |= {
                "track_lat": fix["lat"].mean(),
                "track_lon": fix["lon"].mean(),
                "track_msl_hpa": fix["msl_hpa"].min(),
            }
        for name, sim in sims.items():
            s = np.where(near, sim[t], -np.inf)
            y, x = np.unravel_index(np.argmax(s), s.shape)
            row |= {f"{name}_lat": lat[y], f"{name}_lon": lon[x], f"{name}_similarity": sim[t, y, x]}
            if len(fix):
                row[f"{name}_distance_deg"] = float(
                    cyclones.great_circle(lat[y], lon[x], row["track_lat"], row["track_lon"])
                )
        rows.append(row)
    return sims, near, pd.DataFrame(rows)


def write(model, plan, layers: list[int], store_path: Path, out_dir: Path) -> None:
    """``cyclone_track.csv``, ``cyclone_similarity.csv`` and ``cyclone.png`` in ``out_dir``."""
    tracks = track(plan)
    tracks.to_csv(out_dir / "cyclone_track.csv", index=False)
    f = "msl" if "msl" in plan.fields else plan.fields[0]
    if not len(tracks):
        log.warning("embed.case_study: no tropical cyclone in the embedded period and area")
        pd.DataFrame().to_csv(out_dir / "cyclone_similarity.csv", index=False)
        _empty_figure(out_dir / "cyclone.png")
        return
    tc = tracks[tracks["track"] == 0]
    peak = tc[tc["tropical"]].sort_values("msl_hpa").iloc[0]
    store = xr.open_zarr(store_path, group=f)
    bnds = store["time_bnds"].values
    t = int(np.flatnonzero((bnds[:, 0] <= peak["time"]) & (bnds[:, 1] >= peak["time"]))[0])
    lat, lon = store["latitude"].values, store["longitude"].values % 360.0
    y = int(np.argmin(np.abs(lat - peak["lat"])))
    x = int(np.argmin(cyclones.great_circle(peak["lat"], lon, peak["lat"], peak["lon"])))
    centre = {"t": t, "y": y, "x": x}
    sims, near, table = similarity(store, raw_tokens(plan, f), tc, centre, plan.periodic)
    table.to_csv(out_dir / "cyclone_similarity.csv", index=False)
    window = int(store["source_window"].values[t, y, x])
    maps, query, geo = centre_attention(model, plan, f, layers, window, centre)
    pairs, read = physical(plan, "msl")
    s, k = next(p for p in pairs if plan.dataset.stores["msl"][p[0]].times[p[1]] == peak["time"])
    msl_YX = read(s, k) / 100.0
    ref = plan.dataset.stores["msl"][0]
    figure(
        store,
        tc,
        peak,
        centre,
        maps,
        query,
        geo,
        sims,
        near,
        table,
        layers,
        (ref.lats, ref.lons, msl_YX),
        out_dir / "cyclone.png",
    )
    log.info(
        "cyclone: %d fixes, deepest %.1f hPa at %s %.0f°N %.0f°E; window %d",
        int(tc["tropical"].sum()),
        peak["msl_hpa"],
        str(peak["time"])[:13],
        peak["lat"],
        peak["lon"],
        window,
    )


def centre_attention(model, plan, f: str, layers: list[int], window: int, centre: dict):
    """Head-mean self-attention of the centre token in its window, per layer: ``(l, N)``, the query's
    token index and the window's token footprints."""
    ds = plan.dataset
    w = ds.windows[window]
    tt, ty, tx = ds.token_sizes[f]
    s = w.store
    t_start = plan.time[f][s].start[centre["t"] - sum(len(a.start) for a in plan.time[f][:s])]
    lt = (int(t_start) - w.t0) // tt
    ly = (int(plan.lat[f].start[centre["y"]]) - w.y0) // ty
    lx = ((int(plan.lon[f].start[centre["x"]]) - w.x0) % plan.nlon) // tx
    T, Y, X = ds.tokens[f]
    query = int(np.ravel_multi_index((0, lt, ly, lx), (ds.stores[f][0].levels.size, T, Y, X)))
    batch = Batch.collate([ds[window]])
    with torch.no_grad():
        maps = attention.capture(model, batch.tokens, batch.info, {f: layers})[f][0]  # (l, H, N, N)
    return maps.mean(1)[:, query].numpy(), query, attention.georeference(ds, window, f)


def _empty_figure(path: Path) -> None:
    fig, ax = plt.subplots(figsize=(6, 2))
    ax.text(0.5, 0.5, "no tropical cyclone in the embedded period and area", ha="center", va="center")
    ax.set_axis_off()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def _box(tc: pd.DataFrame, pad: float = SEARCH):
    lat0, lat1 = tc["lat"].min() - pad, tc["lat"].max() + pad
    return max(lat0, -90), min(lat1, 90), tc["lon"].min() - pad, tc["lon"].max() + pad


def figure(store, tc, peak, centre, maps, query, geo, sims, near, table, layers, msl, path: Path) -> Path:
    """The case study's panels (module docstring, step 4); ``msl`` is (lats, lons, hPa) at the deepest fix."""
    lat, lon = store["latitude"].values, store["longitude"].values % 360.0
    lat0, lat1, lon0, lon1 = _box(tc)
    ncol = max(3, len(layers) + 1)
    fig, axes = plt.subplots(2, ncol, figsize=(4.6 * ncol, 8.2), constrained_layout=True, squeeze=False)

    def frame(ax, title):
        ax.set(xlim=(lon0, lon1), ylim=(lat0, lat1), xlabel="longitude [°E]", ylabel="latitude [°N]")
        ax.set_title(title, fontsize=9)
        ax.set_aspect("equal")

    def path_of(ax):
        trop = tc[tc["tropical"]]
        ax.plot(tc["lon"], tc["lat"], "--", color="0.4", lw=1)
        ax.plot(trop["lon"], trop["lat"], "o-", color="crimson", ms=3, lw=1.5)

    # (a) the track over msl at the deepest fix
    ax = axes[0, 0]
    mlat, mlon, m = msl
    order = np.argsort(mlon % 360.0)
    cs = ax.contourf(
        mlon[order] % 360.0, mlat, m[:, order], levels=np.arange(960, 1032, 4), cmap="Blues_r", extend="both"
    )
    fig.colorbar(cs, ax=ax, shrink=0.7, label=f"msl [hPa], {str(peak['time'])[:13]}")
    path_of(ax)
    for _, r in tc[tc["tropical"]].iloc[[0, -1]].iterrows():
        ax.annotate(str(r["time"])[5:13], (r["lon"], r["lat"]), fontsize=7, xytext=(4, 4), textcoords="offset points")
    frame(ax, f"track: {int(tc['tropical'].sum())} tropical fixes (red), deepest {peak['msl_hpa']:.1f} hPa")
    # (b..) attention of the centre token, keys at its time slab and level
    T = int(geo["token_t"].max()) + 1
    qt = int(geo["token_t"].values[query])
    keys = (geo["token_t"].values == qt) & (geo["token_level_index"].values == 0)
    klat, klon = geo["latitude"].values[keys], geo["longitude"].values[keys]
    for k, layer in enumerate(layers):
        ax = axes[0, 1 + k]
        sc = ax.scatter(klon, klat, c=maps[k][keys], cmap="magma", marker="s", s=120, vmin=0)
        path_of(ax)
        ax.plot(
            geo["longitude"].values[query], geo["latitude"].values[query], "s", mfc="none", mec="cyan", ms=12, mew=2
        )
        fig.colorbar(sc, ax=ax, shrink=0.7, label="attention weight")
        frame(ax, f"layer {layer} attention of the centre token (cyan)\nkeys of time slab {qt + 1}/{T}, mean of heads")
    for ax in axes[0, 1 + len(layers) :]:
        ax.set_axis_off()
    # (row 2) similarity maps at the centre's time and at another time of the track, and distances
    fixes = table.dropna(subset=["track_lat"])
    other = fixes[~fixes["centre_time"]]
    others = [int(np.flatnonzero(table["time"].values == other["time"].values[0])[0])] if len(other) else []
    for k, t in enumerate([centre["t"], *others][: ncol - 1]):
        ax = axes[1, k]
        sim = np.where(near, sims["latent"][t], np.nan)
        order = np.argsort(lon)
        low = float(np.nanpercentile(np.where(near, sims["latent"], np.nan), 2))
        im = ax.pcolormesh(lon[order], lat, sim[:, order], cmap="viridis", vmin=low, vmax=1, shading="nearest")
        path_of(ax)
        row = table.iloc[t]
        ax.plot(row["latent_lon"], row["latent_lat"], "*", color="w", ms=14, mec="k")
        fig.colorbar(im, ax=ax, shrink=0.7, label="cosine similarity")
        frame(
            ax, f"cosine similarity to the centre's embedding\n{str(table['time'].values[t])[:13]} (star: most similar)"
        )
    ax = axes[1, ncol - 1]
    for name, style in (("latent", "o-"), ("raw", "s--")):
        if f"{name}_distance_deg" in fixes:
            ax.plot(
                fixes["time"],
                fixes[f"{name}_distance_deg"],
                style,
                label=f"{name} (median {fixes[f'{name}_distance_deg'].median():.1f}°)",
            )
    ax.set(ylabel="most similar place to the track fix [°]")
    ax.set_title("nearest neighbour per time: embedding vs raw inputs", fontsize=9)
    ax.legend(fontsize=8)
    ax.tick_params(axis="x", rotation=45, labelsize=7)
    for ax in axes[1, len(others) + 1 : ncol - 1]:
        ax.set_axis_off()
    trop = tc[tc["tropical"]]
    span = f"{str(trop['time'].min())[:10]} .. {str(trop['time'].max())[:10]}"
    fig.suptitle(f"Tropical cyclone {span}: track, encoder attention, embedding similarity")
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return Path(path)
