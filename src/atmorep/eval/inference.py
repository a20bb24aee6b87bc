"""Inference: run the model on chosen windows with a masking strategy; results in physical units.

For every field, :func:`run` returns one :class:`xarray.Dataset` in the *window layout*:

- dims ``sample`` (window), ``lead`` (target step, 1-based), ``level``, ``y``, ``x``, ``member``,
  ``window_step`` (every step of the window);
- ``target`` (truth), ``prediction`` (ensemble mean, NaN off the masked tokens), ``ensemble``
  (members, last dim), ``mask`` (which points were targets), ``source`` (the model input over the whole
  window, masked tokens at the climatological 0 -> the month's mean: what the baselines read);
  scoring adds ``climatology_mean``/``climatology_std`` and ``baseline_<name>`` for each baseline
  (:func:`atmorep.eval.climatology.add`, :func:`atmorep.eval.baselines.add`);
- coordinates ``time (sample, lead)`` valid time, ``init_time (sample)`` the last context step before
  the first target step, ``lead_time (sample, lead)``, ``latitude (sample, y)``, ``longitude (sample, x)``
  in [0, 360), ``window_time (sample, window_step)``, ``level``, ``member``.

``ds.isel(sample=i).swap_dims(lead="time", y="latitude", x="longitude")`` is one window with
(time, level, latitude, longitude[, member]) dimension coordinates.

Legend: B batch, L levels, T/Y/X tokens in time/lat/lon, P values per token, K masked tokens,
E members, S target steps, nt/ny/nx window points.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch
import xarray as xr
from tqdm import tqdm

from atmorep.data.dataset import WindowDataset
from atmorep.data.tokens import untokenize
from atmorep.model import masking
from atmorep.model.batch import Batch
from atmorep.model.multiformer import Multiformer


@torch.no_grad()
def run(
    model: Multiformer,
    dataset: WindowDataset,
    indices: np.ndarray,
    *,
    strategy: masking.Masking,
    target_slabs: Callable[[int], list[int]],
    batch_size: int,
    seed: int,
    inflation: float = 1.0,
) -> dict[str, xr.Dataset]:
    """Mask, predict and denormalize every window of ``indices``; see the module docstring.

    ``inflation`` scales every member's distance from the ensemble mean (spread calibration).
    """
    model.eval()
    parts: dict[str, list[dict]] = {f: [] for f in model.predicted}  # inputs-only fields have no output
    for b0 in tqdm(range(0, len(indices), batch_size), desc="inference", mininterval=2, disable=None):
        idx = [int(i) for i in indices[b0 : b0 + batch_size]]
        batch = Batch.collate([dataset[i] for i in idx])
        # One stream per (seed, first window of the batch), hashed: with seed + b0, runs with nearby
        # seeds would share masks.
        gen = torch.Generator().manual_seed(int(np.random.SeedSequence([seed, b0]).generate_state(1)[0]))
        masks = strategy(batch, gen)
        source = masking.apply(batch, masks)
        ens = model(source.tokens, source.info, masks)
        if inflation != 1.0:
            # Members move about their mean: the mean (and its RMSE) stays, the spread scales.
            means = {f: e.mean(1, keepdim=True) for f, e in ens.items()}
            ens = {f: means[f] + inflation * (e - means[f]) for f, e in ens.items()}
        for f in parts:
            tokens = _filled(batch.tokens[f], masks[f], ens[f], source.tokens[f])
            for b, i in enumerate(idx):
                parts[f].append(_window(dataset, f, i, {k: v[b] for k, v in tokens.items()}, target_slabs))
    return {f: _stack(dataset, f, indices, parts[f]) for f in parts}


def _filled(tokens_BLTYXP, mask_BLTYX, ens_KEP, source_BLTYXP) -> dict[str, np.ndarray]:
    """Per sample token arrays: truth, input, ensemble mean and members (members ``B E L T Y X P``)."""
    # NaN off the targets: no score can take an unmasked input for a prediction.
    mean = torch.full_like(tokens_BLTYXP, float("nan"))
    # The model returns its K tokens in mask.nonzero() (C) order, the order boolean indexing fills.
    mean[mask_BLTYX] = ens_KEP.mean(1)
    E = ens_KEP.shape[1]
    # Members first, so that one boolean index fills every member; back to B E ... below for slicing
    # per sample.
    members = torch.full((E, *tokens_BLTYXP.shape), float("nan"))
    members[:, mask_BLTYX] = ens_KEP.transpose(0, 1)
    # Per value, so that untokenize turns it into a mask per grid point.
    point_mask = mask_BLTYX[..., None].expand_as(tokens_BLTYXP)
    return {
        "truth": tokens_BLTYXP.numpy(),
        "source": source_BLTYXP.numpy(),
        "mean": mean.numpy(),
        "members": members.transpose(0, 1).numpy(),
        "mask": point_mask.numpy(),
    }


def _window(dataset: WindowDataset, f: str, i: int, tok: dict, target_slabs) -> dict:
    """One window of one field in physical units, cut to its target steps."""
    t_idx, y_idx, x_idx = dataset.indices(i, f)
    store = dataset.stores[f][dataset.windows[i].store]
    size = store.token_size

    def phys(tokens_LTYXP):
        return store.denormalize(untokenize(tokens_LTYXP, size), t_idx, y_idx, x_idx).astype(np.float32)

    T = tok["truth"].shape[1]
    # Token slab s holds time steps s*tt .. s*tt + tt - 1 of the window.
    steps = np.concatenate([np.arange(s * size[0], (s + 1) * size[0]) for s in sorted(target_slabs(T))])
    truth = phys(tok["truth"])
    times = store.times[t_idx]
    context_before = np.setdiff1d(np.arange(len(times)), steps)
    context_before = context_before[context_before < steps[0]]
    # No context step before the first target (BERT keeps every step): the window's start stands in.
    init = times[context_before[-1]] if len(context_before) else times[0]
    return {
        "target": truth[:, steps],
        "source": phys(tok["source"]),
        "prediction": phys(tok["mean"])[:, steps],
        "ensemble": np.stack([phys(m)[:, steps] for m in tok["members"]], axis=-1),
        "mask": untokenize(tok["mask"], size)[:, steps],
        "time": times[steps],
        "window_time": times,
        "init_time": init,
        "latitude": store.lats[y_idx],
        "longitude": store.lons[x_idx] % 360.0,
    }


def _stack(dataset: WindowDataset, f: str, indices, parts: list[dict]) -> xr.Dataset:
    levels = dataset.stores[f][0].levels
    arrays = {k: np.stack([p[k] for p in parts]) for k in parts[0]}
    grid = ("sample", "level", "lead", "y", "x")
    data: dict[str, tuple] = {k: (grid, arrays[k]) for k in ("target", "prediction", "mask")}
    data["ensemble"] = ((*grid, "member"), arrays["ensemble"])
    data["source"] = (("sample", "level", "window_step", "y", "x"), arrays["source"])
    init = arrays["init_time"].astype("datetime64[ns]")
    time = arrays["time"].astype("datetime64[ns]")
    ds = xr.Dataset(
        data,
        coords={
            # The dataset's window indices: each sample can be found and read again.
            "sample": np.asarray(indices, np.int64),
            "level": levels,
            "lead": np.arange(1, time.shape[1] + 1),
            "member": np.arange(arrays["ensemble"].shape[-1]),
            "time": (("sample", "lead"), time),
            "init_time": ("sample", init),
            "lead_time": (("sample", "lead"), time - init[:, None]),
            "window_time": (("sample", "window_step"), arrays["window_time"].astype("datetime64[ns]")),
            "latitude": (("sample", "y"), arrays["latitude"]),
            "longitude": (("sample", "x"), arrays["longitude"]),
        },
        attrs={"field": f},
    )
    return ds.transpose("sample", "lead", "window_step", "level", "y", "x", "member")
