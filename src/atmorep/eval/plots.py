"""Figures: maps of truth, prediction, spread and error; scores against lead and against baselines;
rank histograms; attention of one token over the map. Inputs are the products (window layout,
score tables, attention datasets); nothing here computes a score.
"""

from __future__ import annotations

from pathlib import Path

import matplotlib

# Before pyplot is imported: figures are drawn in batch jobs without a display.
matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import xarray as xr  # noqa: E402

COLOURS = {"atmorep": "C0", "persistence": "C1", "climatology": "C2", "linear": "C3"}
LABELS = {"rmse": "RMSE", "acc": "ACC", "crps": "CRPS", "ssr": "spread / skill", "bias": "bias"}


def _continuous(lons: np.ndarray) -> np.ndarray:
    return np.rad2deg(np.unwrap(np.deg2rad(lons)))  # continuous across 0°/360°


def _coord(ds: xr.Dataset, name: str, sample: int) -> np.ndarray:
    c = ds[name]
    return (c.isel(sample=sample) if "sample" in c.dims else c).values


def forecast_map(
    ds: xr.Dataset, path: Path, sample: int = 0, lead: int = 1, level: int = 0, baseline: str | None = None
) -> Path:
    """Truth, ensemble mean, a baseline, error and ensemble spread of one sample at one lead."""
    s = ds.isel(sample=sample, level=level).sel(lead=lead)
    lats, lons = _coord(ds, "latitude", sample), _continuous(_coord(ds, "longitude", sample))
    baseline = baseline or next((v[9:] for v in map(str, ds.data_vars) if v.startswith("baseline_")), None)
    panels = [("truth", s["target"]), ("AtmoRep ensemble mean", s["prediction"])]
    if baseline:
        panels.append((baseline, s[f"baseline_{baseline}"]))
    panels += [
        ("error (mean - truth)", s["prediction"] - s["target"]),
        ("ensemble spread", s["ensemble"].std("member", ddof=1)),
    ]
    # The truth's range for every value panel: one colour means one value across them.
    vmin, vmax = float(s["target"].min()), float(s["target"].max())
    # Clamped: a thin strip of a window would otherwise give a figure of no height (or width).
    aspect = max(0.3, min(3.0, (lats.max() - lats.min() + 1) / (lons.max() - lons.min() + 1)))
    fig, axes = plt.subplots(
        1, len(panels), figsize=(3.6 * len(panels), 1.2 + 3.0 * aspect + 0.6), constrained_layout=True
    )
    for ax, (title, da) in zip(axes, panels):
        same = title in ("truth", "AtmoRep ensemble mean", baseline)
        m = ax.pcolormesh(
            lons,
            lats,
            da.values,
            shading="nearest",
            cmap="viridis" if same else "RdBu_r",
            **({"vmin": vmin, "vmax": vmax} if same else _symmetric(da.values)),
        )
        ax.set(title=title, xlabel="longitude [°E]", ylabel="latitude [°N]", aspect="equal")
        fig.colorbar(m, ax=ax, shrink=0.8, label=ds["target"].attrs.get("units", ""))
    when = str(s["time"].values)[:16]
    fig.suptitle(f"{ds.attrs.get('field', '')}: lead {lead} step(s), valid {when}, level {int(s['level'])}")
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return Path(path)


def _symmetric(values: np.ndarray) -> dict:
    # Diverging colours centred on 0 for signed values (errors); 0..max for non-negative ones (spread).
    finite = values[np.isfinite(values)]
    v = float(np.max(np.abs(finite))) if finite.size else 1.0
    v = v or 1.0  # an all-zero panel still needs vmin < vmax
    return {"vmin": -v, "vmax": v} if finite.size and finite.min() < 0 else {"vmin": 0, "vmax": v}


def scores_vs_lead(table: pd.DataFrame, field: str, path: Path, metrics=("rmse", "acc", "crps", "ssr")) -> Path:
    """Score against lead for AtmoRep and every baseline (first level)."""
    t = table[(table.field == field)]
    t = t[t.level == t.level.min()]
    metrics = [m for m in metrics if m in set(t.metric)]
    fig, axes = plt.subplots(1, len(metrics), figsize=(3.6 * len(metrics), 3.2), constrained_layout=True, squeeze=False)
    x = "lead_hours" if t["lead_hours"].notna().all() else "lead"
    for ax, m in zip(axes[0], metrics):
        for forecast, g in t[t.metric == m].groupby("forecast"):
            g = g.sort_values("lead")
            ax.plot(g[x], g["value"], marker="o", label=forecast, color=COLOURS.get(forecast))
        if m == "ssr":
            ax.axhline(1.0, color="k", lw=0.8, ls="--")
        ax.set(title=LABELS.get(m, m), xlabel="lead [h]" if x == "lead_hours" else "lead [steps]")
        ax.grid(alpha=0.3)
    axes[0][0].legend(fontsize=8)
    fig.suptitle(f"{field}: scores against lead ({int(t['samples'].max()) if len(t) else 0} samples)")
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return Path(path)


def skill(table: pd.DataFrame, path: Path, metrics=("rmse", "crps")) -> Path:
    """AtmoRep's score divided by each baseline's (mean over levels and leads): below 1 beats it."""
    rows = []
    for (f, m), g in table[table.metric.isin(metrics)].groupby(["field", "metric"]):
        ours = g[g.forecast == "atmorep"]["value"].mean()
        for b, gb in g[g.forecast != "atmorep"].groupby("forecast"):
            rows.append({"field": f, "metric": m, "baseline": b, "ratio": ours / gb["value"].mean()})
    r = pd.DataFrame(rows)
    fig, axes = plt.subplots(1, len(metrics), figsize=(4.5 * len(metrics), 3.4), constrained_layout=True, squeeze=False)
    for ax, m in zip(axes[0], metrics):
        sub = r[r.metric == m] if len(r) else r
        if len(sub):
            piv = sub.pivot(index="field", columns="baseline", values="ratio")
            piv.plot.bar(ax=ax, color=[COLOURS.get(c, None) for c in piv.columns], rot=0)
        ax.axhline(1.0, color="k", lw=0.8)
        ax.set(title=f"{LABELS.get(m, m)}: AtmoRep / baseline", ylabel="ratio (< 1: AtmoRep better)")
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return Path(path)


def rank_histogram(hist: pd.DataFrame, field: str, path: Path) -> Path:
    """Frequency of the truth's rank among the members (pooled over leads; first level)."""
    h = hist[hist.field == field]
    h = h[h.level == h.level.min()].groupby("rank")["count"].sum()
    freq = h / max(h.sum(), 1)
    fig, ax = plt.subplots(figsize=(5, 3.2), constrained_layout=True)
    ax.bar(freq.index, freq.values, color="C0")
    ax.axhline(1 / len(freq), color="k", ls="--", lw=0.8, label="calibrated")
    ax.set(title=f"{field}: rank histogram", xlabel="rank of the truth among the members", ylabel="frequency")
    ax.legend(fontsize=8)
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return Path(path)


def attention_map(
    att: xr.Dataset,
    query: int,
    truth_TYX: np.ndarray | None,
    lats_Y: np.ndarray,
    lons_X: np.ndarray,
    title: str,
    path: Path,
) -> Path:
    """Where one query token looks: its weights over the key tokens (boxes at their footprints), one
    panel per key time slab, over contours of the truth at that slab; the query's box in cyan.

    ``att`` holds ``attention (query, key)`` of one sample (heads/layers aggregated) and the footprints
    of :func:`atmorep.eval.attention.to_dataset`; ``truth_TYX`` is the window's truth per slab.
    """
    row = att.isel(query=query)
    # Keys at the query's level only: a panel is one map, and levels would overlap on it.
    level0 = row["key_token_level_index"].values == int(row["query_token_level_index"])
    keys = row.isel(key=np.flatnonzero(level0))
    T = int(keys["key_token_t"].max()) + 1
    vmax = float(keys["attention"].max())
    fig, axes = plt.subplots(1, T, figsize=(3.8 * T, 3.4), constrained_layout=True, squeeze=False)
    # One grid step west of the window's first column: every box (bounds are in [0, 360)) is shifted
    # into the window's continuous longitudes, also across 0°/360°.
    lon_ref = float(_continuous(lons_X)[0]) - abs(float(lons_X[1] - lons_X[0]))
    for t, ax in enumerate(axes[0]):
        sel = keys.isel(key=np.flatnonzero(keys["key_token_t"].values == t))
        for w, lb, ob in zip(
            sel["attention"].values, sel["key_latitude_bnds"].values, sel["key_longitude_bnds"].values
        ):
            x0 = _near(ob[0], lon_ref)
            ax.add_patch(
                plt.Rectangle(
                    (x0, lb[0]),
                    (ob[1] - ob[0]) % 360 or 360,  # % 360: a box astride 0°; "or 360": a whole circle
                    lb[1] - lb[0],
                    color=plt.cm.magma(w / vmax if vmax else 0),
                    alpha=0.85,
                    lw=0,
                )
            )
        if truth_TYX is not None:
            cs = ax.contour(_continuous(lons_X), lats_Y, truth_TYX[t], levels=8, colors="w", linewidths=0.7)
            ax.clabel(cs, fontsize=6)
        if t == int(row["query_token_t"]):
            lb, ob = row["query_latitude_bnds"].values, row["query_longitude_bnds"].values
            ax.add_patch(
                plt.Rectangle(
                    (_near(ob[0], lon_ref), lb[0]), (ob[1] - ob[0]) % 360, lb[1] - lb[0], fill=False, ec="cyan", lw=2
                )
            )
        ax.autoscale_view()
        ax.set(
            title=f"key slab {t} (valid {str(sel['key_time'].values[0])[:13]})",
            xlabel="longitude [°E]",
            ylabel="latitude [°N]",
            aspect="equal",
        )
    sm = plt.cm.ScalarMappable(cmap="magma", norm=plt.Normalize(0, vmax))
    fig.colorbar(sm, ax=axes[0].tolist(), shrink=0.8, label="attention weight")
    fig.suptitle(title)
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return Path(path)


def _near(lon: float, ref: float) -> float:
    """``lon`` shifted by multiples of 360 to lie within [ref, ref + 360)."""
    return ref + (lon - ref) % 360.0


def scorecard(comparisons: pd.DataFrame, path: Path, metrics=("rmse", "crps"), alpha: float = 0.05) -> Path:
    """Fields (and levels) x leads, coloured by AtmoRep's relative difference to each baseline (blue:
    AtmoRep better), hatched where the paired test does not reject equal skill at ``alpha`` (or has too
    few init times to test)."""
    c = comparisons[comparisons.metric.isin(metrics)]
    panels = [(m, b) for m in metrics for b in sorted(set(c[c.metric == m].baseline))] or [(metrics[0], "")]
    fig, axes = plt.subplots(
        1,
        len(panels),
        figsize=(1.2 + 2.8 * len(panels), 1.6 + 0.45 * max(1, len(c.groupby(["field", "level"])))),
        constrained_layout=True,
        squeeze=False,
    )
    vmax = float(np.nanmax(np.abs(c.relative_difference))) * 100 if len(c) else 1.0
    vmax = min(max(vmax, 1.0), 100.0)  # one colour scale for all panels, between 1 % and 100 %
    norm = plt.Normalize(-vmax, vmax)
    for ax, (m, b) in zip(axes[0], panels):
        sub = c[(c.metric == m) & (c.baseline == b)]
        rows = sorted({(f, lv) for f, lv in zip(sub.field, sub.level)})
        leads = sorted(set(sub.lead))
        hours = sub.groupby("lead")["lead_hours"].first()
        for i, (f, lv) in enumerate(rows):
            for j, lead in enumerate(leads):
                cell = sub[(sub.field == f) & (sub.level == lv) & (sub.lead == lead)]
                if not len(cell):
                    continue
                r = float(cell.relative_difference.iloc[0]) * 100
                p = float(cell.p_value.iloc[0])
                ax.add_patch(plt.Rectangle((j, i), 1, 1, color=plt.cm.RdBu_r(norm(r)), lw=0))
                if not p < alpha:  # "not <" so that a NaN p-value (too few init times) is hatched too
                    ax.add_patch(plt.Rectangle((j, i), 1, 1, fill=False, hatch="///", ec="0.35", lw=0))
                ax.text(j + 0.5, i + 0.5, f"{r:+.0f}%", ha="center", va="center", fontsize=7)
        ax.set_xlim(0, max(len(leads), 1))
        ax.set_ylim(max(len(rows), 1), 0)
        ax.set_xticks(
            np.arange(len(leads)) + 0.5,
            [f"{hours[lead]:g} h" if np.isfinite(hours[lead]) else str(lead) for lead in leads],
        )
        ax.set_yticks(np.arange(len(rows)) + 0.5, [f if lv == 0 else f"{f} {lv}" for f, lv in rows])
        ax.set(title=f"{LABELS.get(m, m)} vs {b}" if b else "no baseline", xlabel="lead")
    sm = plt.cm.ScalarMappable(cmap="RdBu_r", norm=norm)
    fig.colorbar(sm, ax=axes[0].tolist(), shrink=0.9, label="relative difference [%]")
    fig.suptitle(
        "Scorecard: (AtmoRep - baseline) / baseline; blue: AtmoRep better; "
        f"hatched: not significant (paired test p >= {alpha:g} or too few init times)"
    )
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return Path(path)


def spectra(spec: pd.DataFrame, path: Path) -> Path:
    """Power against wavelength of truth, ensemble mean and a single member (first level, last lead)."""
    fields = list(dict.fromkeys(spec.field)) or [""]
    fig, axes = plt.subplots(1, len(fields), figsize=(4.6 * len(fields), 3.6), constrained_layout=True, squeeze=False)
    for ax, f in zip(axes[0], fields):
        s = spec[spec.field == f]
        if not len(s):
            ax.text(
                0.5,
                0.5,
                "no complete target fields\n(e.g. BERT windows)",
                ha="center",
                va="center",
                transform=ax.transAxes,
            )
            continue
        s = s[s.level == s.level.min()]
        s = s[s.lead == s.lead.max()].sort_values("wavelength_km")
        for name, style in (("truth", "k-"), ("ensemble_mean", "C0-"), ("member", "C1--")):
            ax.loglog(s.wavelength_km, s[name], style, label=name.replace("_", " "))
        ax.invert_xaxis()  # large scales on the left, as spectra against wavenumber are read
        kind = s.kind.iloc[0]
        ax.set(
            title=f"{f}: {kind} spectrum, lead {int(s.lead.iloc[0])} ({int(s.samples.iloc[0])} samples)",
            xlabel="wavelength [km]" + (" (at the equator)" if kind == "zonal" else ""),
            ylabel="power [(field units)²]",
        )
        ax.grid(alpha=0.3, which="both")
        ax.legend(fontsize=8)
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return Path(path)
