"""Evaluate in two stages: :func:`infer` (the model: stored forecasts, the GPU part) and :func:`score`
(CPU: climatology, baselines, scores, intervals, comparisons, rank histograms, spectra, figures, from
stored forecasts only). :func:`evaluate` runs both into one directory (``atmorep evaluate``).

:func:`infer` writes into its output directory:

- ``windows.zarr`` (sources, targets, predictions, ensemble, masks in physical units, CF): the stored
  forecast in the window layout (:mod:`atmorep.eval.inference`), with what the baselines need (the
  model input over the whole window, its valid times);
- for ``global_forecast``, ``wb2_forecast.zarr``/``wb2_ensemble.zarr``/``wb2_truth.zarr``;
- ``attention.zarr`` when attention capture is on (the maps, and the windows' truth and masks for
  their figure).

:func:`score` takes any forecast in the ``windows.zarr`` schema (a fine-tuned head's too; without an
``ensemble`` it is scored as one member, CRPS = MAE) and writes:

- ``scores.csv`` and ``scores.parquet`` (tidy: field, level, lead, lead_hours, forecast, metric, value,
  ci_low, ci_high, samples), ``comparisons.csv``/``.parquet`` (AtmoRep against each baseline: skill score,
  difference with its interval, p-value), ``rank_histogram.csv``, ``spectra.csv``,
  ``sample_scores.zarr`` (per-sample scores, one group per field);
- ``climatology.zarr`` (the training-period climatology used for ACC and the climatology baseline),
  ``baselines.zarr`` (the baselines' forecasts and the climatology at the targets, window layout);
- figures: ``forecast_<field>.png``, ``scores_<field>.png``, ``rank_histogram_<field>.png``,
  ``skill.png``, ``scorecard.png``, ``spectra.png``, ``attention_<field>.png``.

Which evaluate keys only :func:`score` reads is declared once: :data:`atmorep.config.SCORING_KEYS`
(the infer rule's params leave them out, so changing one reruns ``score`` and nothing upstream).
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pandas as pd
import torch
import xarray as xr

from atmorep.config import DataConfig, EvaluateConfig, parse_time, period
from atmorep.data.dataset import FieldStore, WindowDataset
from atmorep.data.tokens import untokenize
from atmorep.eval import attention, baselines, climatology, inference, modes, outputs, plots, scores, spectra
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
    """:func:`infer` then :func:`score`, every product in ``out_dir``; returns ``scores.csv``.

    The products are written into a temporary sibling of ``out_dir`` that replaces it once complete:
    a run that fails or is killed half-way leaves an earlier run's products as they were.
    """
    out_dir = Path(out_dir)
    with Replacement(out_dir) as tmp:
        tmp.mkdir(parents=True)
        _infer(seed, data, cfg, model_path, stores, tmp)
        attention_path = tmp / "attention.zarr"
        _score(seed, data, cfg, tmp / "windows.zarr", stores, tmp, attention_path if attention_path.exists() else None)
    log.info("evaluate products in %s", out_dir)
    return out_dir / "scores.csv"


def infer(
    seed: int,
    data: DataConfig,
    cfg: EvaluateConfig,
    model_path: str | Path,
    stores: dict[str, list[str]],
    out_dir: str | Path,
) -> Path:
    """Run ``cfg.mode`` on the held-out windows and store the forecasts (and attention) in ``out_dir``,
    atomically as :func:`evaluate`; returns ``windows.zarr``."""
    out_dir = Path(out_dir)
    with Replacement(out_dir) as tmp:
        tmp.mkdir(parents=True)
        _infer(seed, data, cfg, model_path, stores, tmp)
    log.info("forecasts in %s", out_dir)
    return out_dir / "windows.zarr"


def score(
    seed: int,
    data: DataConfig,
    cfg: EvaluateConfig,
    windows: str | Path,
    stores: dict[str, list[str]],
    out_dir: str | Path,
    attention_path: str | Path | None = None,
) -> Path:
    """Score the stored forecasts ``windows`` (a ``windows.zarr``) against the baselines of
    ``cfg.mode``, with the climatology of the shard ``stores``; tables and figures into ``out_dir``,
    atomically as :func:`evaluate`; returns ``scores.csv``."""
    out_dir = Path(out_dir)
    with Replacement(out_dir) as tmp:
        tmp.mkdir(parents=True)
        _score(seed, data, cfg, Path(windows), stores, tmp, Path(attention_path) if attention_path else None)
    log.info("scores in %s", out_dir)
    return out_dir / "scores.csv"


def _infer(
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
    results = forecasts(model, dataset, cfg, seed)
    outputs.write_groups({f: ds.assign_attrs(mode=cfg.mode) for f, ds in results.items()}, out_dir / "windows.zarr")
    if cfg.mode == "global_forecast":
        outputs.write_wb2(results, out_dir)
    attention_products(model, dataset, cfg, seed, out_dir)
    log.info("%s forecasts of %d sample(s)", cfg.mode, next(iter(results.values())).sizes["sample"])


def _score(
    seed: int,
    data: DataConfig,
    cfg: EvaluateConfig,
    windows: Path,
    stores: dict[str, list[str]],
    out_dir: Path,
    attention_path: Path | None,
) -> None:
    stored = outputs.read_groups(windows)
    for f, ds in stored.items():
        if ds.attrs.get("mode", cfg.mode) != cfg.mode:
            raise ValueError(f"{windows}: group '{f}' holds {ds.attrs['mode']} forecasts; evaluate.mode is {cfg.mode}")
    if missing := set(stored) - set(stores):
        raise ValueError(f"{windows}: fields {sorted(missing)} have no shard store for their climatology")
    field_stores = {f: [FieldStore(p) for p in sorted(map(str, stores[f]))] for f in stored}
    clims = climatologies(field_stores, data, cfg)
    # As climatology() made them, with their own attrs: annotate() knows the window layout's variables.
    outputs.write_groups(clims, out_dir / "climatology.zarr", annotate_cf=False)
    results = references(stored, cfg, clims)
    outputs.write_groups({f: _references_of(ds) for f, ds in results.items()}, out_dir / "baselines.zarr")
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
    if attention_path is not None:
        for f, ds in outputs.read_groups(attention_path).items():
            attention_figure(ds, f, out_dir / f"attention_{f}.png")
    log.info("scored %s on %d sample(s)", cfg.mode, next(iter(results.values())).sizes["sample"])


def forecasts(model, dataset: WindowDataset, cfg: EvaluateConfig, seed: int) -> dict[str, xr.Dataset]:
    """Windows of the mode, inference, post-processing (stitching): the window layout per field."""
    mode = modes.get(cfg.mode)
    selection = mode.select(dataset, cfg, seed)
    results = inference.run(
        model,
        dataset,
        selection.indices,
        strategy=mode.masking(cfg, dataset.token_sizes),
        target_slabs=mode.target_slabs(cfg),
        batch_size=cfg.batch_size,
        seed=seed,
        inflation=cfg.spread_inflation,
    )
    return mode.finish(dataset, selection, results, cfg)


def references(
    results: dict[str, xr.Dataset], cfg: EvaluateConfig, clims: dict[str, xr.Dataset] | None = None
) -> dict[str, xr.Dataset]:
    """The forecasts with what they are scored against: the climatology at their points and times
    (NaN without one) and the mode's baselines (:func:`atmorep.eval.baselines.add`)."""
    names = modes.get(cfg.mode).baselines
    out = {}
    for f, ds in results.items():
        if "ensemble" not in ds:  # a deterministic forecast: one member (CRPS = MAE, spread 0)
            ds = ds.assign(ensemble=ds["prediction"].expand_dims(member=[0], axis=-1))
        out[f] = baselines.add(climatology.add(ds, (clims or {}).get(f)), names)
    return out


def _references_of(ds: xr.Dataset) -> xr.Dataset:
    """The baselines' forecasts and the climatology at the targets, without the forecast itself."""
    keep = [v for v in ds.data_vars if str(v).startswith(("baseline_", "climatology_"))]
    return ds[keep].assign_attrs(ds.attrs)  # the coordinates of the target points only


def run_mode(
    model, dataset: WindowDataset, cfg: EvaluateConfig, seed: int, clims: dict[str, xr.Dataset] | None = None
) -> dict[str, xr.Dataset]:
    """:func:`forecasts` with their :func:`references`, in memory: what infer stores and score adds."""
    return references(forecasts(model, dataset, cfg, seed), cfg, clims)


def climatology_period(data: DataConfig, cfg: EvaluateConfig) -> tuple[np.datetime64, np.datetime64]:
    """``climatology_start``..``climatology_end``; by default the campaign up to the held-out period."""
    start = parse_time(cfg.climatology_start or data.start)
    if cfg.climatology_end:
        return start, parse_time(cfg.climatology_end)
    eval_start = parse_time(cfg.start or data.start)
    # Ends are inclusive: stop one second short so that no evaluated time enters its own climatology.
    return start, eval_start - np.timedelta64(1, "s")


def climatologies(stores: dict[str, list[FieldStore]], data: DataConfig, cfg: EvaluateConfig) -> dict[str, xr.Dataset]:
    """Per field the climatology of its shard stores over :func:`climatology_period` ({} when empty)."""
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
        f: climatology.climatology(s, start, end, window_hours=cfg.climatology_window_hours) for f, s in stores.items()
    }


def figures(results: dict[str, xr.Dataset], table, hist, out_dir: Path) -> None:
    for f, ds in results.items():
        plots.forecast_map(ds, out_dir / f"forecast_{f}.png")
        plots.scores_vs_lead(table, f, out_dir / f"scores_{f}.png")
        plots.rank_histogram(hist, f, out_dir / f"rank_histogram_{f}.png")
    plots.skill(table, out_dir / "skill.png")


def attention_products(model, dataset: WindowDataset, cfg: EvaluateConfig, seed: int, out_dir: Path) -> None:
    """``attention.zarr`` for the configured fields, layers, heads, samples, with each window's truth
    and target tokens (what :func:`attention_figure` draws)."""
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
    for f in fields:
        sets[f] = sets[f].assign(_windows(dataset, indices, f, batch.tokens[f].numpy(), masks[f].numpy()))
    outputs.write_groups(sets, out_dir / "attention.zarr", annotate_cf=False)


def _windows(dataset: WindowDataset, indices: list[int], field: str, tokens_BLTYXP, mask_BLTYX) -> dict:
    """The attention windows' truth in physical units and target tokens, for the figure."""
    truth, lats, lons = [], [], []
    for b, i in enumerate(indices):
        t_idx, y_idx, x_idx = dataset.indices(i, field)
        store = dataset.stores[field][dataset.windows[i].store]
        truth.append(store.denormalize(untokenize(tokens_BLTYXP[b], store.token_size), t_idx, y_idx, x_idx))
        lats.append(store.lats[y_idx])
        lons.append(store.lons[x_idx] % 360.0)
    return {
        "window_truth": (("sample", "window_level", "window_step", "y", "x"), np.stack(truth).astype(np.float32)),
        "window_target": (("sample", "window_level", "slab", "row", "column"), mask_BLTYX.astype(np.int8)),
        "window_latitude": (("sample", "y"), np.stack(lats)),
        "window_longitude": (("sample", "x"), np.stack(lons)),
    }


def attention_figure(ds: xr.Dataset, field: str, path: Path) -> Path:
    """Head-mean attention of the first layer of one target token near the window centre, on the map
    (from ``attention.zarr``: the maps and the first window's truth and target tokens)."""
    one = ds.isel(sample=0, layer=0)
    att = one.assign(attention=attention.head_mean(one["attention"]))
    mask_LTYX = one["window_target"].values.astype(bool)
    L, T, Y, X = mask_LTYX.shape
    targets = np.argwhere(mask_LTYX)
    # Nearest target (in token steps) to the first level, last slab, window centre: a forecast target
    # with the most context around it; that point itself when nothing is masked.
    centre = np.array([0, T - 1, Y // 2, X // 2])
    q = tuple(targets[np.argmin(np.abs(targets - centre).sum(1))]) if len(targets) else (0, T - 1, Y // 2, X // 2)
    flat = int(np.ravel_multi_index(q, (L, T, Y, X)))
    truth = one["window_truth"].values[q[0]]  # nt ny nx
    tt = truth.shape[0] // T
    # One map per slab, at its last step: the valid time a token carries (data/dataset.py's token info).
    truth_TYX = truth.reshape(T, tt, *truth.shape[1:])[:, -1]
    layer = int(ds["layer"][0])
    title = (
        f"{field}: encoder layer {layer} self-attention (mean over {ds.sizes['head']} heads) of the token at "
        f"{float(att['query_latitude'][flat]):.1f}°N {float(att['query_longitude'][flat]):.1f}°E, slab {q[1]}"
    )
    lats, lons = one["window_latitude"].values, one["window_longitude"].values
    return plots.attention_map(att, flat, truth_TYX, lats, lons, title, path)
