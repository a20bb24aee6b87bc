"""Scores of a fine-tuned head on the held-out period, in evaluate's window layout and with its scores.

For every test window: the head's prediction (ensemble mean) and members, the truth, and two
baselines on the target grid: ``climatology`` (the target's mean and std per hour of day over
``finetune.train``'s period, a Gaussian forecast as in evaluate) and ``raw_linear``, least squares from
the normalized input tokens of the head's input fields at a token to the target's token (a bias
included), fit on the windows the head trained on (:func:`fit_linear`). Written in the same schema as
evaluate's ``windows.zarr`` (:mod:`atmorep.eval.inference`: every step of a window is a lead, every
point a target; ``source`` is the target field's input on the target grid when the backbone reads it,
each coarse point over its cell, else NaN) and scored by the same functions (:func:`scores.per_sample`,
:func:`scores.table`, :func:`scores.comparisons`): ``atmorep`` in the tables is the head.

Products in the task's directory: ``windows.zarr``, ``sample_scores.zarr``, ``scores.csv``/``.parquet``,
``comparisons.csv``/``.parquet``, ``forecast.png`` (truth, head, linear baseline, error), ``scorecard.png``.

Legend: B batch, L levels, T/Y/X tokens, Q = T*Y*X positions, E members, P values per target token,
F features per position, O = L*P; nt/ny/nx window points of the target.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import torch
import xarray as xr
from tqdm import tqdm

from atmorep.config import DataConfig, FinetuneConfig, period
from atmorep.data.targets import TARGET, TaskDataset
from atmorep.data.tokens import untokenize
from atmorep.eval import climatology as clim_
from atmorep.eval import outputs, plots, scores
from atmorep.formats.atomic import Replacement
from atmorep.model import heads
from atmorep.model import task as T
from atmorep.model.batch import Batch
from atmorep.model.file import load_model

log = logging.getLogger(__name__)

BASELINES = ("climatology", "raw_linear")


def fit_linear(dataset: TaskDataset, windows, inputs: list[str], batch: int = 64) -> np.ndarray:
    """Least squares ``W (F + 1, O)`` from the normalized input tokens at a position (and 1) to the
    target's tokens there, over ``windows`` (normal equations in float64; the minimum-norm solution
    where they are singular)."""
    if not len(windows):
        raise ValueError("the linear baseline needs at least one training window")
    xtx: torch.Tensor | float = 0.0
    xty: torch.Tensor | float = 0.0
    for b0 in range(0, len(windows), batch):
        b = Batch.collate([dataset[int(i)] for i in windows[b0 : b0 + batch]])
        x, y = _design(b, inputs), _target_rows(b)
        xtx, xty = xtx + x.T @ x, xty + x.T @ y
    assert isinstance(xtx, torch.Tensor) and isinstance(xty, torch.Tensor)
    return np.linalg.lstsq(xtx.numpy(), xty.numpy(), rcond=None)[0]


def _design(b: Batch, inputs: list[str]) -> torch.Tensor:
    x = heads.raw_features(b.tokens, inputs).double().flatten(0, 1)  # (B*Q, F)
    return torch.cat([x, torch.ones(len(x), 1, dtype=x.dtype)], dim=1)


def _target_rows(b: Batch) -> torch.Tensor:
    """Target tokens ``(B, L, T, Y, X, P)`` as rows ``(B*Q, L*P)``, as the head's output is laid out."""
    t = b.tokens[TARGET].double()
    return t.flatten(2, 4).permute(0, 2, 1, 3).flatten(2).flatten(0, 1)


def select(dataset: TaskDataset, samples: int, seed: int) -> np.ndarray:
    """``samples`` distinct usable windows (all when fewer), seeded, sorted."""
    usable = dataset.usable
    rng = np.random.default_rng(seed)
    return np.sort(rng.choice(usable, size=min(samples, len(usable)), replace=False))


@torch.no_grad()
def predict(
    model: heads.TaskModel,
    dataset: TaskDataset,
    indices: np.ndarray,
    batch_size: int,
    linear: np.ndarray,
    clim: xr.Dataset | None,
    source_field: str | None,
) -> xr.Dataset:
    """The window layout of the target (see the module docstring) for the windows ``indices``."""
    model.eval()
    levels = len(dataset.targets[0].levels)
    parts = []
    for b0 in tqdm(range(0, len(indices), batch_size), desc="finetune inference", mininterval=2, disable=None):
        idx = [int(i) for i in indices[b0 : b0 + batch_size]]
        b = Batch.collate([dataset[i] for i in idx])
        fields = {f: t for f, t in b.tokens.items() if f != TARGET}
        out = model(fields, {f: t for f, t in b.info.items() if f != TARGET})
        members = heads.target_tokens(out, levels)  # (B, L, Q, E, P)
        lin = (_design(b, model.inputs) @ torch.from_numpy(linear)).float()  # (B*Q, L*P)
        lin = heads.target_tokens(lin.view(len(idx), -1, 1, lin.shape[-1]), levels)[..., 0, :]  # (B, L, Q, P)
        for k, i in enumerate(idx):
            parts.append(_window(dataset, i, b.tokens[TARGET][k], members[k], lin[k], clim, source_field))
    return _stack(dataset, indices, parts)


def _window(dataset: TaskDataset, i: int, truth_LTYXP, members_LQEP, linear_LQP, clim, source_field) -> dict:
    store = dataset.target_store(i)
    t_idx, y_idx, x_idx = dataset.target_indices(i)
    size = dataset.target_token_size
    L, T, Y, X, P = truth_LTYXP.shape

    def phys(tokens_LQP: torch.Tensor) -> np.ndarray:
        tokens = tokens_LQP.reshape(L, T, Y, X, P).numpy()
        return store.denormalize(untokenize(tokens, size), t_idx, y_idx, x_idx).astype(np.float32)

    truth = phys(truth_LTYXP)
    ens = np.stack([phys(members_LQEP[:, :, e]) for e in range(members_LQEP.shape[2])], axis=-1)
    times = store.times[t_idx]
    if clim is not None:
        c_mean, c_std = clim_.at(clim, times, y_idx, x_idx)
    else:
        c_mean = c_std = np.full(truth.shape, np.nan, np.float32)
    return {
        "target": truth,
        "prediction": ens.mean(-1),
        "ensemble": ens,
        "mask": np.ones(truth.shape, bool),
        "source": _source(dataset, i, source_field, truth.shape),
        "climatology_mean": c_mean.astype(np.float32),
        "climatology_std": c_std.astype(np.float32),
        "baseline_climatology": c_mean.astype(np.float32),
        "baseline_raw_linear": phys(linear_LQP),
        "time": times,
        "latitude": store.lats[y_idx],
        "longitude": store.lons[x_idx] % 360.0,
    }


def _source(dataset: TaskDataset, i: int, field: str | None, shape) -> np.ndarray:
    """The target field's input (physical) on the target grid, each coarse point over its cell; NaN
    when the backbone does not read it."""
    if field is None:
        return np.full(shape, np.nan, np.float32)
    store = dataset.stores[field][dataset.windows[i].store]
    t, y, x = dataset.indices(i, field)
    w = dataset.windows[i]
    T, Y, X = dataset.tokens[field]
    coarse = untokenize(store.read_tokens(w.t0, w.y0, w.x0, T, Y, X), store.token_size)
    coarse = store.denormalize(coarse, t, y, x)
    ry, rx = dataset.nest.ratio
    return np.repeat(np.repeat(coarse, ry, axis=2), rx, axis=3).astype(np.float32)


def _stack(dataset: TaskDataset, indices, parts: list[dict]) -> xr.Dataset:
    arrays = {k: np.stack([p[k] for p in parts]) for k in parts[0]}
    grid = ("sample", "level", "lead", "y", "x")
    names = ["target", "prediction", "mask", "climatology_mean", "climatology_std"]
    data: dict[str, tuple[tuple[str, ...], np.ndarray]] = {
        k: (grid, arrays[k]) for k in names + [f"baseline_{b}" for b in BASELINES]
    }
    data["ensemble"] = ((*grid, "member"), arrays["ensemble"])
    data["source"] = (("sample", "level", "window_step", "y", "x"), arrays["source"])
    time = arrays["time"].astype("datetime64[ns]")
    init = time[:, 0]  # no context step before the first target: the window's start stands in (as bert)
    ds = xr.Dataset(
        data,
        coords={
            "sample": np.asarray(indices, np.int64),
            "level": dataset.targets[0].levels,
            "lead": np.arange(1, time.shape[1] + 1),
            "member": np.arange(arrays["ensemble"].shape[-1]),
            "time": (("sample", "lead"), time),
            "init_time": ("sample", init),
            "lead_time": (("sample", "lead"), time - init[:, None]),
            "window_time": (("sample", "window_step"), time),
            "latitude": (("sample", "y"), arrays["latitude"]),
            "longitude": (("sample", "x"), arrays["longitude"]),
        },
        attrs={"field": dataset.target_field},
    )
    return ds.transpose("sample", "lead", "window_step", "level", "y", "x", "member")


def score(
    seed: int,
    data: DataConfig,
    cfg: FinetuneConfig,
    name: str,
    head: str | Path,
    stores: dict[str, list[str]],
    out_dir: str | Path,
    backbone: str | Path | None = None,
) -> Path:
    """Predict the held-out windows of task ``name`` with its ``head.safetensors``, score it and both baselines;
    write the products into ``out_dir`` (each atomically); returns ``scores.csv``.

    ``backbone``: the backbone's file (default the one the head's card names; its sha256 must match)."""
    ds = predictions(seed, data, cfg, name, head, stores, backbone)
    return write(ds, cfg.tasks[name].target, cfg, seed, Path(out_dir))


def predictions(
    seed: int,
    data: DataConfig,
    cfg: FinetuneConfig,
    name: str,
    head: str | Path,
    stores: dict[str, list[str]],
    backbone: str | Path | None = None,
) -> xr.Dataset:
    """The window layout (module docstring) of ``cfg.evaluate.samples`` windows of ``finetune.evaluate``'s
    period (drawn by :func:`select` from ``seed``: the same windows for every head of the task), predicted
    by the head ``head`` and both baselines, in physical units; nothing written.

    :func:`atmorep.eval.scores.per_sample` of it (``BASELINES``) gives the per-window scores that
    :func:`score` writes, and that two heads' paired comparisons start from."""
    record = heads.read_head(head)
    card = record["card"]
    task = cfg.tasks[name]
    path = Path(backbone or card["backbone"]["path"])
    model_bb, backbone_card = load_model(path)  # verified: its sha256 is the file's own
    if backbone_card["sha256"] != card["backbone"]["sha256"]:
        raise ValueError(
            f"{head} was trained on a backbone with sha256 {card['backbone']['sha256'][:12]}…; {path} is another "
            "file now: fine-tune again (atmorep finetune --fresh)"
        )
    target = T.target_stores(task, stores)
    train_ds = T.task_dataset(model_bb, path, task, name, stores, target, *period(cfg.train, data))
    test_ds = T.task_dataset(model_bb, path, task, name, stores, target, *period(cfg.evaluate, data))
    model, _ = heads.load_head(head, None if task.backbone == "raw" else model_bb)
    linear = fit_linear(train_ds, np.asarray(card["windows"], np.int64), model.inputs)
    start, end = period(cfg.train, data)
    clim = clim_.climatology(test_ds.targets, start, end, window_hours=cfg.evaluate.climatology_window_hours)
    indices = select(test_ds, cfg.evaluate.samples, seed)
    source = task.target if task.target in model_bb.fields else None
    return predict(model, test_ds, indices, cfg.evaluate.batch_size, linear, clim, source)


def write(ds: xr.Dataset, field: str, cfg: FinetuneConfig, seed: int, out_dir: Path) -> Path:
    """The window layout, per-sample scores, the score table and comparisons, two figures."""
    with Replacement(out_dir / "windows.zarr") as tmp:
        outputs.write_groups({field: ds}, tmp)
    per_sample = {field: scores.per_sample(ds, BASELINES)}
    with Replacement(out_dir / "sample_scores.zarr") as tmp:
        outputs.write_groups(per_sample, tmp, annotate_cf=False)
    iterations = cfg.evaluate.bootstrap_iterations
    table = scores.table(per_sample, iterations, seed)
    compared = scores.comparisons(per_sample, iterations, seed)
    plots.forecast_map(ds, out_dir / "forecast.png", baseline="raw_linear")
    plots.scorecard(compared, out_dir / "scorecard.png")
    # scores.csv last: once it is there, every product of the scoring is
    for frame, stem in ((compared, "comparisons"), (table, "scores")):
        with Replacement(out_dir / f"{stem}.parquet") as tmp:
            frame.to_parquet(tmp, index=False)
        with Replacement(out_dir / f"{stem}.csv") as tmp:
            frame.to_csv(tmp, index=False)
    rmse = table[(table.metric == "rmse")].groupby("forecast")["value"].mean()
    log.info("finetune %s on %d test window(s): RMSE %s", field, ds.sizes["sample"], rmse.round(5).to_dict())
    return out_dir / "scores.csv"
