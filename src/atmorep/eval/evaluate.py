"""Evaluate: run one inference mode on the held-out period, score it against baselines, write the
products and figures, and (opt-in) attention maps.

Writes into the output directory:

- ``scores.csv`` and ``scores.parquet`` (tidy: field, level, lead, lead_hours, forecast, metric, value,
  ci_low, ci_high, samples), ``comparisons.csv``/``.parquet`` (AtmoRep against each baseline: skill score,
  difference with its interval, p-value), ``rank_histogram.csv``, ``spectra.csv``,
  ``sample_scores.zarr`` (per-sample scores, one group per field);
- ``windows.zarr`` (sources, targets, predictions, ensemble, baselines in physical units, CF) and,
  for ``global_forecast``, ``wb2_forecast.zarr``/``wb2_ensemble.zarr``/``wb2_truth.zarr``;
- ``climatology.zarr`` (the training-period climatology used for ACC and the climatology baseline);
- ``attention.zarr`` when attention capture is on;
- figures: ``forecast_<field>.png``, ``scores_<field>.png``, ``rank_histogram_<field>.png``,
  ``skill.png``, ``scorecard.png``, ``spectra.png``, ``attention_<field>.png``.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pandas as pd
import torch
import xarray as xr

from atmorep.config import DataConfig, EvaluateConfig, parse_time, period
from atmorep.data.dataset import WindowDataset
from atmorep.data.tokens import untokenize
from atmorep.eval import attention, climatology, inference, modes, outputs, plots, scores, spectra
from atmorep.formats.atomic import Replacement
from atmorep.model import masking
from atmorep.model.batch import Batch
from atmorep.model.file import load_model

log = logging.getLogger(__name__)


def evaluate(
    seed: int,
    data: DataConfig,
    cfg: EvaluateConfig,
    model_path: str | Path,
    stores: dict[str, list[str]],
    out_dir: str | Path,
) -> Path:
    """Run ``cfg.mode`` on the held-out windows and write every product; returns ``scores.csv``.

    The products are written into a temporary sibling of ``out_dir`` that replaces it once complete:
    a run that fails or is killed half-way leaves an earlier run's products as they were.
    """
    out_dir = Path(out_dir)
    with Replacement(out_dir) as tmp:
        tmp.mkdir(parents=True)
        _evaluate(seed, data, cfg, model_path, stores, tmp)
    log.info("evaluate products in %s", out_dir)
    return out_dir / "scores.csv"


def _evaluate(
    seed: int,
    data: DataConfig,
    cfg: EvaluateConfig,
    model_path: str | Path,
    stores: dict[str, list[str]],
    out_dir: Path,
) -> None:
    model, _ = load_model(model_path)
    missing = set(model.fields) - set(stores)
    if missing:
        raise ValueError(f"{model_path}: the model needs fields {sorted(missing)} that were not given")
    # In the model's field order (the dataset yields fields in this order), extra stores left out.
    stores = {f: stores[f] for f in model.fields}
    dataset = WindowDataset(stores, model.cfg.num_tokens, *period(cfg, data))
    clims = climatologies(dataset, data, cfg)
    # As climatology() made them, with their own attrs: annotate() knows the window layout's variables.
    outputs.write_groups(clims, out_dir / "climatology.zarr", annotate_cf=False)
    results = run_mode(model, dataset, cfg, seed, clims)
    write_products(results, cfg, out_dir)
    per_sample = {f: scores.per_sample(ds, modes.get(cfg.mode).baselines) for f, ds in results.items()}
    outputs.write_groups(per_sample, out_dir / "sample_scores.zarr", annotate_cf=False)
    table = scores.table(per_sample, cfg.bootstrap_iterations, seed)
    table.to_csv(out_dir / "scores.csv", index=False)
    table.to_parquet(out_dir / "scores.parquet", index=False)
    compared = scores.comparisons(per_sample, cfg.bootstrap_iterations, seed)
    compared.to_csv(out_dir / "comparisons.csv", index=False)
    compared.to_parquet(out_dir / "comparisons.parquet", index=False)
    hist = scores.rank_histograms(results, seed)
    hist.to_csv(out_dir / "rank_histogram.csv", index=False)
    spec = pd.concat([spectra.spectra(ds, f) for f, ds in results.items()], ignore_index=True)
    spec.to_csv(out_dir / "spectra.csv", index=False)
    figures(results, table, hist, out_dir)
    plots.scorecard(compared, out_dir / "scorecard.png")
    plots.spectra(spec, out_dir / "spectra.png")
    attention_products(model, dataset, cfg, seed, out_dir)
    log.info("evaluated %s on %d sample(s)", cfg.mode, next(iter(results.values())).sizes["sample"])


def run_mode(
    model, dataset: WindowDataset, cfg: EvaluateConfig, seed: int, clims: dict[str, xr.Dataset] | None = None
) -> dict[str, xr.Dataset]:
    """Windows of the mode, inference, baselines, post-processing (stitching): the window layout per field."""
    mode = modes.get(cfg.mode)
    selection = mode.select(dataset, cfg, seed)
    results = inference.run(
        model,
        dataset,
        selection.indices,
        mode.masking(cfg, dataset.token_sizes),
        target_slabs=mode.target_slabs(cfg),
        batch_size=cfg.batch_size,
        seed=seed,
        baselines=mode.baselines,
        climatologies=clims,
        inflation=cfg.spread_inflation,
    )
    return mode.finish(dataset, selection, results, cfg)


def climatology_period(data: DataConfig, cfg: EvaluateConfig) -> tuple[np.datetime64, np.datetime64]:
    """``climatology_start``..``climatology_end``; by default the campaign up to the held-out period."""
    start = parse_time(cfg.climatology_start or data.start)
    if cfg.climatology_end:
        return start, parse_time(cfg.climatology_end)
    eval_start = parse_time(cfg.start or data.start)
    # Ends are inclusive: stop one second short so that no evaluated time enters its own climatology.
    return start, eval_start - np.timedelta64(1, "s")


def climatologies(dataset: WindowDataset, data: DataConfig, cfg: EvaluateConfig) -> dict[str, xr.Dataset]:
    start, end = climatology_period(data, cfg)
    if end < start:
        log.warning(
            "no climatology: the period %s .. %s is empty (evaluate.start is the campaign start); "
            "ACC and the climatology baseline are left out",
            start,
            end,
        )
        return {}
    return {
        f: climatology.climatology(dataset.stores[f], start, end, window_hours=cfg.climatology_window_hours)
        for f in dataset.fields
    }


def write_products(results: dict[str, xr.Dataset], cfg: EvaluateConfig, out_dir: Path) -> None:
    # The ensemble is E times the prediction's size: opt-in. The scores were computed from it already.
    keep = {f: ds if cfg.write_ensemble else ds.drop_vars("ensemble") for f, ds in results.items()}
    outputs.write_groups(keep, out_dir / "windows.zarr")
    if cfg.mode == "global_forecast":
        outputs.write_wb2(results, out_dir)


def figures(results: dict[str, xr.Dataset], table, hist, out_dir: Path) -> None:
    for f, ds in results.items():
        plots.forecast_map(ds, out_dir / f"forecast_{f}.png")
        plots.scores_vs_lead(table, f, out_dir / f"scores_{f}.png")
        plots.rank_histogram(hist, f, out_dir / f"rank_histogram_{f}.png")
    plots.skill(table, out_dir / "skill.png")


def attention_products(model, dataset: WindowDataset, cfg: EvaluateConfig, seed: int, out_dir: Path) -> None:
    """``attention.zarr`` and ``attention_<field>.png`` for the configured fields, layers, heads, samples."""
    a = cfg.attention
    fields = list(a.fields) or [dataset.fields[0]]
    if not a.layers or not a.samples:
        return
    unknown = set(fields) - set(dataset.fields)
    if unknown:
        raise ValueError(f"evaluate.attention.fields: {sorted(unknown)} are not fields of the model")
    mode = modes.get(cfg.mode)
    # The mode's own windows and masks: the maps show what the model attends to when doing that task.
    indices = [int(i) for i in mode.select(dataset, cfg, seed).indices[: a.samples]]
    batch = Batch.collate([dataset[i] for i in indices])
    masks = mode.masking(cfg, dataset.token_sizes)(batch, torch.Generator().manual_seed(seed))
    source = masking.apply(batch, masks)
    heads = list(a.heads) or list(range(model.cfg.heads))
    maps = attention.capture(model, source.tokens, source.info, {f: list(a.layers) for f in fields}, heads)
    sets = {f: attention.to_dataset(maps[f].numpy(), dataset, indices, f, list(a.layers), heads) for f in fields}
    if sorted(a.layers) == list(range(len(a.layers))):  # rollout composes layers 0..n-1, so only from layer 0 on
        for f, ds in sets.items():
            roll = attention.rollout(ds["attention"]).astype(np.float32)
            sets[f] = ds.assign(rollout=roll.assign_attrs(long_name="attention rollout over the captured layers"))
    outputs.write_groups(sets, out_dir / "attention.zarr", annotate_cf=False)
    for f, ds in sets.items():
        attention_figure(
            ds, dataset, indices[0], f, batch.tokens[f][0].numpy(), masks[f][0].numpy(), out_dir / f"attention_{f}.png"
        )


def attention_figure(
    ds: xr.Dataset,
    dataset: WindowDataset,
    index: int,
    field: str,
    tokens_LTYXP: np.ndarray,
    mask_LTYX: np.ndarray,
    path: Path,
) -> Path:
    """Head-mean attention of the first layer of one target token near the window centre, on the map."""
    one = ds.isel(sample=0, layer=0)
    att = one.assign(attention=attention.head_mean(one["attention"]))
    L, T, Y, X = mask_LTYX.shape
    targets = np.argwhere(mask_LTYX)
    # Nearest target (in token steps) to the first level, last slab, window centre: a forecast target
    # with the most context around it; that point itself when nothing is masked.
    centre = np.array([0, T - 1, Y // 2, X // 2])
    q = tuple(targets[np.argmin(np.abs(targets - centre).sum(1))]) if len(targets) else (0, T - 1, Y // 2, X // 2)
    flat = int(np.ravel_multi_index(q, (L, T, Y, X)))
    t_idx, y_idx, x_idx = dataset.indices(index, field)
    store = dataset.stores[field][dataset.windows[index].store]
    truth = store.denormalize(untokenize(tokens_LTYXP, store.token_size), t_idx, y_idx, x_idx)[q[0]]
    tt = store.token_size[0]
    # One map per slab, at its last step: the valid time a token carries (data/dataset.py's token info).
    truth_TYX = truth.reshape(T, tt, *truth.shape[1:])[:, -1]
    layer = int(ds["layer"][0])
    title = (
        f"{field}: encoder layer {layer} self-attention (mean over {ds.sizes['head']} heads) of the token at "
        f"{float(att['query_latitude'][flat]):.1f}°N {float(att['query_longitude'][flat]):.1f}°E, slab {q[1]}"
    )
    return plots.attention_map(att, flat, truth_TYX, store.lats[y_idx], store.lons[x_idx], title, path)
