"""Attention maps on request, georeferenced to the tokens' footprints.

Training and plain inference keep the fused kernel. :func:`capture` hooks the (normalised) input of
the chosen encoder layers, stops the encoder once the last of them has been reached (nothing after it
runs: no later layer, no decoder, no tail), and recomputes ``softmax(q k^T / sqrt(dh))`` of the chosen
self heads of those layers only.

:func:`georeference` gives every token of a window its footprint: level, valid time of its last step
and the time bounds, latitude/longitude centre and cell bounds. :func:`to_dataset` writes maps as
``(sample, layer, head, query, key)`` with those coordinates on ``query`` and ``key``, so that
``ds.attention.isel(query=q)`` is "what token q looks at" with a (time, level, lat, lon) per key.
:func:`head_mean` and :func:`rollout` aggregate over heads and layers (pure xarray).

Legend: B batch, l captured layers, H heads, N tokens of the field (L*T*Y*X, C order), Q/K query/key
tokens.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
import xarray as xr

from atmorep.data.dataset import WindowDataset
from atmorep.model.multiformer import Multiformer


class _Enough(Exception):
    """Raised from a hook once every requested layer input is captured: the rest of the model is skipped."""


@torch.no_grad()
def capture(
    model: Multiformer, tokens: dict, info: dict, layers: dict[str, list[int]], heads: list[int] | None = None
) -> dict[str, torch.Tensor]:
    """Per field the self-attention weights ``(B, layers, heads, N, N)`` of the requested encoder layers.

    ``layers`` maps field -> encoder layer indices; ``heads`` selects self heads (None: all).
    """
    wanted = {(f, l) for f, ls in layers.items() for l in ls}
    attn = {key: model.encoder_attention(*key, heads or ()) for key in wanted}  # refuses what the model lacks
    inputs: dict[tuple[str, int], torch.Tensor] = {}
    handles = []

    def hook_for(key):
        def hook(module, args):
            inputs[key] = args[0]  # x, already normalised (MultiSourceAttention.forward's first argument)
            # An exception is the one way out of a forward from a hook: later layers never run.
            if len(inputs) == len(wanted):
                raise _Enough

        return hook

    for f, l in wanted:
        handles.append(attn[(f, l)].register_forward_pre_hook(hook_for((f, l))))
    try:
        model.encode(tokens, info)
    except _Enough:
        pass
    finally:
        # Removed on every path: a hook left behind would stop the next forward of this model.
        for h in handles:
            h.remove()
    out = {}
    for f, ls in layers.items():
        maps = []
        for l in ls:
            w = attn[(f, l)].self_attention_weights(inputs[(f, l)])  # B H N N
            maps.append(w[:, heads] if heads else w)
        out[f] = torch.stack(maps, dim=1)
    return out


def georeference(dataset: WindowDataset, index: int, field: str) -> xr.Dataset:
    """Footprint of every token ``(token)`` of window ``index``: level, time (+bounds), lat/lon (+bounds)."""
    t_idx, y_idx, x_idx = dataset.indices(index, field)
    store = dataset.stores[field][dataset.windows[index].store]
    tt, ty, tx = store.token_size
    L = len(store.levels)
    times = store.times[t_idx].reshape(-1, tt)
    lats = store.lats[y_idx].reshape(-1, ty)
    # Unwrapped so that a token astride 0°/360° has a continuous mean and bounds; wrapped back below.
    lons = np.rad2deg(np.unwrap(np.deg2rad(store.lons[x_idx]))).reshape(-1, tx)
    T, Y, X = len(times), len(lats), len(lons)
    half = store.resolution / 2  # cell bounds lie half a grid step beyond the outer points
    # C order over (L, T, Y, X): the model's token order (flatten of the token grid).
    l, t, y, x = (a.ravel() for a in np.meshgrid(np.arange(L), np.arange(T), np.arange(Y), np.arange(X), indexing="ij"))
    lat_b = np.stack([lats.min(1) - half, lats.max(1) + half], -1)
    lon_b = np.stack([lons.min(1) - half, lons.max(1) + half], -1)
    return xr.Dataset(
        coords={
            "token_level_index": ("token", l),
            "token_t": ("token", t),
            "token_y": ("token", y),
            "token_x": ("token", x),
            "level": ("token", store.levels[l]),
            "time": ("token", times[t, -1].astype("datetime64[ns]")),
            "time_bnds": (("token", "bnds"), times[t][:, [0, -1]].astype("datetime64[ns]")),
            "latitude": ("token", lats.mean(1)[y]),
            "latitude_bnds": (("token", "bnds"), np.clip(lat_b[y], -90, 90)),  # half a cell past a pole
            "longitude": ("token", lons.mean(1)[x] % 360.0),
            "longitude_bnds": (("token", "bnds"), lon_b[x] % 360.0),
        },
        attrs={"token_grid": [L, T, Y, X], "token_size": list(store.token_size)},
    )


def to_dataset(
    maps_BlHNN: np.ndarray, dataset: WindowDataset, indices: list[int], field: str, layers: list[int], heads: list[int]
) -> xr.Dataset:
    """Attention maps of one field with the footprint of each query and key token as coordinates."""
    geo = [georeference(dataset, i, field) for i in indices]
    coords: dict[str, Any] = {"sample": np.asarray(indices), "layer": np.asarray(layers), "head": np.asarray(heads)}
    bounds: dict[str, Any] = {}
    for side in ("query", "key"):
        for name in map(str, geo[0].coords):
            c = geo[0][name]
            # Token indices and levels are the same in every window of a field; times and places are not.
            per_sample = not name.startswith("token_") and name != "level"
            values = np.stack([g[name].values for g in geo]) if per_sample else c.values
            dims = (("sample",) if per_sample else ()) + tuple(side if d == "token" else d for d in c.dims)
            # Bounds go in as data variables, each named by its coordinate's ``bounds`` attribute (CF 7.1).
            (bounds if "bnds" in dims else coords)[f"{side}_{name}"] = (dims, values)
    da = xr.DataArray(
        maps_BlHNN.astype(np.float32),
        dims=("sample", "layer", "head", "query", "key"),
        coords=coords,
        attrs={
            "long_name": "self-attention weight softmax(q k^T / sqrt(dh)) of the query token on the key token",
            "units": "1",
            "field": field,
        },
    )
    for side in ("query", "key"):
        for coord in ("time", "latitude", "longitude"):
            da[f"{side}_{coord}"].attrs["bounds"] = f"{side}_{coord}_bnds"
    return xr.Dataset(
        {"attention": da, **bounds},
        attrs={**geo[0].attrs, "field": field, "description": "encoder self-attention, rows (query) sum to 1"},
    )


def head_mean(att: xr.DataArray) -> xr.DataArray:
    """Mean over heads: still a row-stochastic map per layer."""
    return att.mean("head")


def rollout(att: xr.DataArray) -> xr.DataArray:
    """Attention rollout over the captured layers (Abnar & Zuidema 2020): the product of the
    head-averaged maps with the residual path added, ``prod_l (A_l + I) / 2``, earliest layer first.

    Meaningful when the layers are consecutive from 0; returns ``(..., query, key)`` without ``layer``.
    """
    a = head_mean(att).sortby("layer").transpose(..., "layer", "query", "key")
    values = a.values
    eye = np.eye(values.shape[-1])
    out = np.broadcast_to(eye, values.shape[:-3] + eye.shape).copy()
    for k in range(values.shape[-3]):
        step = 0.5 * values[..., k, :, :] + 0.5 * eye
        # Rows renormalised as Abnar & Zuidema do (the float32 maps sum to 1 only up to rounding).
        step = step / step.sum(-1, keepdims=True)
        out = step @ out  # left-multiplied: the later layer acts on what the earlier ones mixed
    dims = tuple(d for d in a.dims if d != "layer")
    return xr.DataArray(out, dims=dims, coords={c: v for c, v in a.coords.items() if "layer" not in v.dims})
