"""Inference: forecast the last time slab(s) of held-out windows, in physical units.

Returns an xarray Dataset per field with dims ``(sample, level, lead, y, x)`` (``member`` for the
ensemble) and coordinates ``latitude (sample, y)``, ``longitude (sample, x)``,
``valid_time (sample, lead)``: truth, ensemble mean, ensemble, and the persistence baseline.
Legend: B batch, L levels, T/Y/X tokens, P values per token, K masked tokens, E members.
"""

from __future__ import annotations

import numpy as np
import torch
import xarray as xr
from torch.utils.data import DataLoader, Subset
from tqdm import tqdm

from atmorep.data.dataset import WindowDataset, untokenize
from atmorep.model.multiformer import Multiformer
from atmorep.train import masking
from atmorep.train.batch import Batch


def choose(n: int, samples: int, seed: int) -> np.ndarray:
    """``samples`` distinct window indices (all of them if there are fewer), seeded, sorted."""
    rng = np.random.default_rng(seed)
    return np.sort(rng.choice(n, size=min(samples, n), replace=False))


@torch.no_grad()
def forecast(model: Multiformer, dataset: WindowDataset, indices: np.ndarray, slabs: int,
             batch_size: int) -> dict[str, xr.Dataset]:
    """Forecast the last ``slabs`` time-token slabs of each chosen window (other tokens are context)."""
    strategy = masking.ForecastMasking(slabs)
    parts: dict[str, list] = {f: [] for f in dataset.fields}
    loader = DataLoader(Subset(dataset, indices.tolist()), batch_size=batch_size, shuffle=False)
    for sample in tqdm(loader, desc="forecast", mininterval=2):
        batch = Batch.from_numpy(sample)
        masks = strategy(batch)
        ens = model(**_inputs(masking.apply(batch, masks), masks))
        for f in dataset.fields:
            parts[f].append(_fill(batch.tokens[f], masks[f], ens[f]))
    out = {}
    for f in dataset.fields:
        truth, mean, members = (np.concatenate(x) for x in zip(*parts[f]))
        out[f] = _dataset(dataset, f, indices, truth, mean, members, slabs)
    return out


def _inputs(batch: Batch, masks) -> dict:
    return {"tokens": batch.tokens, "info": batch.info, "mask": masks}


def _fill(tokens_BLTYXP: torch.Tensor, mask_BLTYX: torch.Tensor, ens_KEP: torch.Tensor):
    """Tokens with the masked ones replaced by the ensemble mean, and by each member."""
    mean = tokens_BLTYXP.clone()
    mean[mask_BLTYX] = ens_KEP.mean(1)
    E = ens_KEP.shape[1]
    members = tokens_BLTYXP[None].repeat(E, 1, 1, 1, 1, 1, 1)
    members[:, mask_BLTYX] = ens_KEP.transpose(0, 1)
    return tokens_BLTYXP.numpy(), mean.numpy(), members.transpose(0, 1).numpy()  # members: B E L T Y X P


def _dataset(dataset: WindowDataset, f: str, indices, truth, mean, members, slabs) -> xr.Dataset:
    """Untokenize, keep the forecast steps, denormalize, label with coordinates."""
    store = dataset.stores[f][0]
    tt = store.token_size[0]
    lead = slabs * tt
    fields = {"truth": [], "forecast": [], "persistence": [], "ensemble": []}
    lats, lons, times = [], [], []
    for b, i in enumerate(indices):
        t_idx, y_idx, x_idx = dataset.indices(int(i), f)
        s = dataset.stores[f][dataset.windows[int(i)].store]

        def phys(tokens_LTYXP):
            return s.denormalize(untokenize(tokens_LTYXP, s.token_size), t_idx, y_idx, x_idx)
        full_truth = phys(truth[b])
        fields["truth"].append(full_truth[:, -lead:])
        fields["forecast"].append(phys(mean[b])[:, -lead:])
        fields["persistence"].append(np.repeat(full_truth[:, -lead - 1:-lead], lead, axis=1))
        fields["ensemble"].append(np.stack([phys(m)[:, -lead:] for m in members[b]]))
        lats.append(s.lats[y_idx])
        lons.append(s.lons[x_idx])
        times.append(s.times[t_idx[-lead:]])
    dims = ("sample", "level", "lead", "y", "x")
    ds = xr.Dataset(
        {k: (("sample", "member", *dims[1:]) if k == "ensemble" else dims, np.stack(v).astype(np.float32))
         for k, v in fields.items()},
        coords={"sample": np.asarray(indices), "level": store.levels, "lead": np.arange(1, lead + 1),
                "latitude": (("sample", "y"), np.stack(lats)), "longitude": (("sample", "x"), np.stack(lons)),
                "valid_time": (("sample", "lead"), np.stack(times))},
        attrs={"field": f, "lead_units": "time steps of the store"},
    )
    return ds
