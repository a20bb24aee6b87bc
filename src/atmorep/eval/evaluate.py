"""Evaluate: forecast held-out windows, score them against persistence, draw maps and attention.

Writes into the output directory: ``scores.csv`` (tidy: field, level, lead, forecast, metric, value),
``forecast_<field>.png`` and ``attention_<field>.png``.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pandas as pd


from atmorep.config import DataConfig, EvaluateConfig
from atmorep.data.dataset import WindowDataset
from atmorep.eval import attention, inference, metrics, plots
from atmorep.train import masking
from atmorep.train.batch import Batch
from atmorep.train.checkpoint import load_model
from atmorep.train.loop import period

log = logging.getLogger(__name__)


def evaluate(seed: int, data: DataConfig, cfg: EvaluateConfig, model_path: str | Path,
             stores: dict[str, list[str]], out_dir: str | Path) -> Path:
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    model, _ = load_model(model_path)
    missing = set(model.fields) - set(stores)
    if missing:
        raise ValueError(f"{model_path}: the model needs fields {sorted(missing)} that were not given")
    dataset = WindowDataset({f: stores[f] for f in model.fields}, model.cfg.num_tokens, *period(cfg, data))
    indices = inference.choose(len(dataset), cfg.samples, seed)
    results = inference.forecast(model, dataset, indices, cfg.forecast_tokens, cfg.batch_size)
    table = scores(results)
    table.to_csv(out_dir / "scores.csv", index=False)
    for f, ds in results.items():
        plots.forecast_map(ds, 0, out_dir / f"forecast_{f}.png")
    field = next(iter(model.fields))
    attention_figure(model, dataset, int(indices[0]), field, cfg.forecast_tokens, out_dir / f"attention_{field}.png")
    log.info("evaluated %d windows: %s", len(indices), out_dir)
    return out_dir / "scores.csv"


def scores(results) -> pd.DataFrame:
    """RMSE and bias of the forecast and of persistence, spread of the ensemble, per field/level/lead."""
    rows = []
    for f, ds in results.items():
        w = metrics.latitude_weights(ds["latitude"])
        dims = ("sample", "y", "x")
        table = {
            ("atmorep", "rmse"): metrics.rmse(ds["forecast"], ds["truth"], w, dims),
            ("atmorep", "bias"): metrics.bias(ds["forecast"], ds["truth"], w, dims),
            ("atmorep", "spread"): metrics.spread(ds["ensemble"], w, dims),
            ("persistence", "rmse"): metrics.rmse(ds["persistence"], ds["truth"], w, dims),
            ("persistence", "bias"): metrics.bias(ds["persistence"], ds["truth"], w, dims),
        }
        for (name, metric), da in table.items():
            for level in da["level"].values:
                for lead in da["lead"].values:
                    rows.append({"field": f, "level": int(level), "lead": int(lead), "forecast": name,
                                 "metric": metric, "value": float(da.sel(level=level, lead=lead)),
                                 "samples": ds.sizes["sample"]})
    return pd.DataFrame(rows)


def attention_figure(model, dataset: WindowDataset, index: int, field: str, slabs: int, path: Path) -> Path:
    """Layer-0 self-attention of the central forecast token of one window, mean over heads."""
    batch = Batch.from_numpy({f: tuple(np.asarray(a)[None] for a in v) for f, v in dataset[index].items()})
    masks = masking.ForecastMasking(slabs)(batch)
    source = masking.apply(batch, masks)
    w = attention.encoder_self_attention(model, field, 0, source.tokens, source.info)  # 1 H N N
    L, T, Y, X = batch.tokens[field].shape[1:5]
    q = (0, T - 1, Y // 2, X // 2)
    flat = np.ravel_multi_index(q, (L, T, Y, X))
    weights = w[0, :, flat].mean(0).reshape(L, T, Y, X).numpy()
    store = dataset.stores[field][dataset.windows[index].store]
    _, y_idx, x_idx = dataset.indices(index, field)
    ty, tx = store.token_size[1:]
    lats = store.lats[y_idx].reshape(Y, ty).mean(1)
    lons = np.rad2deg(np.unwrap(np.deg2rad(store.lons[x_idx]))).reshape(X, tx).mean(1)
    title = (f"{field}: encoder layer 0 self-attention of the forecast token at "
             f"{lats[q[2]]:.1f}°N {lons[q[3]] % 360:.1f}°E (slab {q[1]})")
    return plots.attention_map(weights, q, lats, lons, title, path)
