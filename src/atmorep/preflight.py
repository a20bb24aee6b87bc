"""What a run's configuration alone decides, checked before the first job runs.

:func:`check` is the one place: the Snakefile calls it at workflow start (``workflow/rules/common.smk``,
seconds, no job run, nothing written) and ``atmorep check`` / ``atmorep plan`` call it on a config
file. It collects every problem it can know without data and raises one :class:`ConfigError` naming
the keys and the numbers:

- a single-level field (levtype sfc) has levels [0]; fields named by model.coupling,
  model.field_dims, normalize.local/climatology/qc, shard.field_token_size, train.loss.field_weights
  and evaluate.attention exist in data.fields;
- train and evaluation periods lie in the campaign and are disjoint (no run scores its own training time),
  and so do the months of normalize.climatology;
- the source can deliver the configuration (its ``problems``: settings it does not use, fields it
  lacks, an area off its grid);
- each period holds one window of model.num_tokens[0] x shard.token_size[0] steps (when the source
  decides the steps: data.step_hours, or the embedded sample's own);
- the model builds (on the meta device, :func:`atmorep.architectures.problems`: its own checks of widths,
  heads, coupling, depths and the attention layers evaluation captures);
- the token sizes tile the neighbourhood, and the grid after crop (data.area; when the source decides
  it: data.grid, the cds default, the sample's) keeps whole tokens of every field (as the shard stage
  crops it) and holds one window;
- model.fields are data fields, and the model's coupling, widths and inputs-only fields are among them;
- finetune: every task's target has shards (a data field, or target_shards that exist, hold it and
  nest in the backbone's tokens when the grid is known), is not a field the backbone reads on the same
  grid, its inputs and layers exist (a backbone trained here), its loss fits its ensemble; the
  fine-tuning train and test periods lie in the campaign, are disjoint (the test period also from
  pretraining's) and hold a window; finetune.train sets no pretraining-only key.
- with both known, the training period holds one global batch of windows (train.batch_size x
  train.gradient_accumulation x train.ranks) and the evaluation period one window, counted as the
  loader counts them (:func:`atmorep.geometry.count_windows`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from atmorep import geometry
from atmorep.config import Config, ConfigError, model_fields, parse_time


def check(cfg: Config) -> None:
    """Raise :class:`ConfigError` listing every problem of ``cfg`` knowable before the first job."""
    if found := problems(cfg):
        raise ConfigError("; ".join(found))


def problems(cfg: Config) -> list[str]:
    unknown = _unknown_fields(cfg)
    found = list(unknown)
    found += _source(cfg).problems(cfg.data, cfg.acquire)  # what the source cannot deliver
    found += _periods(cfg)
    found += _climatology(cfg)
    # Every check runs and all problems are reported at once, except those needing a window size.
    try:
        geometry.tokens_per_field(cfg)
    except ConfigError as exc:
        found.append(str(exc))
        return found  # the window size below is undefined
    if not unknown:  # the model refuses unknown fields too: said once, above
        from atmorep import architectures

        found += architectures.problems(cfg)
    on_grid, kept = _window_on_grid(cfg)
    found += _windows_in_time(cfg, kept)  # with the grid: windows counted as the loader counts them
    found += on_grid
    found += _finetune(cfg)
    return found


def _unknown_fields(cfg: Config) -> list[str]:
    fields = set(cfg.data.fields)
    named = {
        "model.coupling": [*cfg.model.coupling, *(f for v in cfg.model.coupling.values() for f in v)],
        "model.field_dims": list(cfg.model.field_dims),
        "normalize.local": list(cfg.normalize.local),
        "normalize.climatology.fields": list(cfg.normalize.climatology.fields),
        "normalize.qc.ranges": list(cfg.normalize.qc.ranges),
        "shard.field_token_size": list(cfg.shard.field_token_size),
        "train.loss.field_weights": list(cfg.train.loss.field_weights),
        "evaluate.attention.fields": list(cfg.evaluate.attention.fields),
    }
    out = [
        f"data.fields.{f}.levtype sfc takes levels [0] (one single level), not {list(spec.levels)}: name "
        "the level type (e.g. heightAboveGround) to select by level value"
        for f, spec in cfg.data.fields.items()
        if spec.levtype == "sfc" and tuple(spec.levels) != (0,)
    ]
    for key, names in named.items():
        if unknown := sorted(set(names) - fields):
            out.append(f"{key} names {', '.join(unknown)}, not in data.fields ({', '.join(cfg.data.fields)})")
    try:
        read = set(model_fields(cfg.data, cfg.model))
    except ConfigError as exc:
        return [*out, str(exc)]
    model_named = {
        "model.coupling": [*cfg.model.coupling, *(f for v in cfg.model.coupling.values() for f in v)],
        "model.field_dims": list(cfg.model.field_dims),
        "model.inputs_only": list(cfg.model.inputs_only),
    }
    for key, names in model_named.items():
        if unknown := sorted((set(names) & fields) - read):
            out.append(f"{key} names {', '.join(unknown)}, not in model.fields ({', '.join(sorted(read))})")
    return out


def _period(cfg: Config, stage: str) -> tuple[np.datetime64, np.datetime64, str]:
    """(start, end, words) of the section at the dotted path ``stage`` (e.g. finetune.train)."""
    sec: Any = cfg
    for part in stage.split("."):
        sec = getattr(sec, part)
    start, end = parse_time(sec.start or cfg.data.start), parse_time(sec.end or cfg.data.end)
    keys = f"{stage}.start .. {stage}.end" + (" (default: the campaign)" if not (sec.start or sec.end) else "")
    return start, end, f"{keys} {_t(start)} .. {_t(end)}"


def _t(t: np.datetime64) -> str:
    return str(t)[:16]


def _periods(cfg: Config) -> list[str]:
    d0, d1 = cfg.data.period
    if d1 < d0:
        return [f"data.end {_t(d1)} is before data.start {_t(d0)}"]
    pairs = [("train", "evaluate")]
    if cfg.finetune.tasks:
        pairs.append(("finetune.train", "finetune.evaluate"))
        if cfg.finetune.backbone is None:  # trained here: the test period is held out from pretraining too
            pairs.append(("train", "finetune.evaluate"))
    out: list[str] = []
    for stage in dict.fromkeys(s for pair in pairs for s in pair):
        start, end, what = _period(cfg, stage)
        if end < start:
            out.append(f"{what}: the end is before the start")
        elif start > d1 or end < d0:
            out.append(f"{what} lies outside the campaign data.start .. data.end {_t(d0)} .. {_t(d1)}")
    for first, second in pairs:
        (a0, a1, train), (b0, b1, evaluate) = _period(cfg, first), _period(cfg, second)
        if max(a0, b0) <= min(a1, b1):  # inclusive ends: sharing one instant is an overlap
            out.append(
                f"{train} and {evaluate} overlap ({_t(max(a0, b0))} .. {_t(min(a1, b1))}): evaluation would "
                "score the training period; make them disjoint"
            )
    return out


def _climatology(cfg: Config) -> list[str]:
    if not cfg.normalize.climatology.fields:
        return []
    try:
        months = cfg.normalize.climatology.months()
    except ConfigError as exc:
        return [str(exc)]
    if outside := [m for m in months if m not in cfg.data.months()]:
        return [
            f"normalize.climatology months {outside[0]} .. {outside[-1]} lie outside the campaign "
            f"data.start .. data.end {cfg.data.start} .. {cfg.data.end}"
        ]
    return []


def _source(cfg: Config):
    from atmorep.data.acquire.sources import source

    return source(cfg.acquire)


def _valid_times(cfg: Config) -> tuple[list[np.ndarray], str] | None:
    """The campaign's valid times per year (one shard store each) when the source decides them, else None."""
    src = _source(cfg)
    by_month = {m: src.times(cfg.data, m) for m in cfg.data.months()}
    if any(t is None for t in by_month.values()):
        return None  # irregular steps of files: the data decide (the train stage checks)
    years = [np.concatenate([by_month[m] for m in by_month if m.startswith(y)]) for y in cfg.data.years()]
    what = (
        f"time steps of data.step_hours {cfg.data.step_hours}" if cfg.data.step_hours else f"of {src.name}'s time steps"
    )
    return [t.astype("datetime64[s]") for t in years], what


def _windows_in_time(cfg: Config, grid: _Kept | None) -> list[str]:
    if (known := _valid_times(cfg)) is None:
        return []
    times, what_steps = known
    window = geometry.config_window(cfg)
    nt, size = window.extent[0], window.finest[0]
    out = []
    stages = ("train", "evaluate") + (("finetune.train", "finetune.evaluate") if cfg.finetune.tasks else ())
    for stage in stages:
        start, end, what = _period(cfg, stage)
        n = int(sum(((t >= start) & (t <= end)).sum() for t in times))
        if n < nt:
            out.append(
                f"{what} holds {n} {what_steps}; one window needs "
                f"model.num_tokens[0] x shard.token_size[0] = {cfg.model.num_tokens[0]} x {size} = {nt}"
            )
            continue
        if grid is None:
            continue  # the grid comes with the data: windows are counted by the stage
        windows = geometry.count_windows(times, window, grid.shape, grid.periodic, start, end)
        need = 1
        if stage == "train":
            t = cfg.train
            need = geometry.global_batch(t.batch_size, t.gradient_accumulation, t.ranks)
        if windows < need:
            out.append(
                f"{what} holds {windows} complete window(s) of {'x'.join(map(str, window.extent))} points "
                f"({what_steps}, origins every {window.step[0]} steps, windows never span two years; "
                f"{grid.positions(window)} position(s) on the grid); "
                + (
                    "training needs one global batch of train.batch_size x train.gradient_accumulation x "
                    f"train.ranks = {t.batch_size} x {t.gradient_accumulation} x {t.ranks} = {need}"
                    if stage == "train"
                    else "evaluation needs one"
                )
            )
    return out


@dataclass(frozen=True)
class _Kept:
    """The grid a shard store keeps (after data.area and the crop to whole tokens)."""

    shape: tuple[int, int]
    periodic: bool

    def positions(self, window: geometry.WindowShape) -> int:
        y, x = geometry.space_origins(self.shape, window.extent[1:], window.step[1:], self.periodic)
        return len(y) * len(x)


def _grid(cfg: Config) -> tuple[np.ndarray, np.ndarray, str] | None:
    """(lats, lons, whose grid) of the campaign after data.area when the source decides it, else None."""
    from atmorep.errors import DataError

    src = _source(cfg)
    try:
        grid = src.grid(cfg.data)
    except DataError:
        return None  # an area the source cannot cut: its problems() named it
    if grid is None:
        return None  # the grid comes with the files
    return (*grid, "data.grid" if cfg.data.grid else src.name)


def _window_on_grid(cfg: Config) -> tuple[list[str], _Kept | None]:
    if (grid := _grid(cfg)) is None:
        return [], None
    from atmorep.data import shards
    from atmorep.errors import DataError
    from atmorep.formats.grib import periodic

    lats, lons, whose = grid
    dlat, dlon = abs(float(lats[1] - lats[0])), abs(float(lons[1] - lons[0]))
    area = "[" + ", ".join(f"{v:g}" for v in cfg.data.area) + "]" if cfg.data.area else "null (global)"
    where = f"the grid of data.area {area} at {dlat:g}°x{dlon:g}° ({whose}) ({len(lats)} x {len(lons)} points)"
    try:
        # The shard stage's own crop, so that the check and the stage cannot disagree.
        rows, cols = shards.crop(cfg.data, cfg.shard, next(iter(cfg.data.fields)), lats, lons)
    except DataError as exc:
        return [f"{where}: {exc}"], None
    window = geometry.config_window(cfg)
    (_, ny, nx), sizes = window.extent, window.finest
    kept_y, kept_x = rows.stop - rows.start, cols.stop - cols.start
    wraps = periodic(lons[cols])
    # A global grid wraps, so a window may be wider than what is kept, but not than the whole circle.
    if kept_y < ny or (kept_x < nx and not wraps) or nx > len(lons):
        return [
            f"{where} keeps {kept_y} x {kept_x} points as whole tokens; one window needs "
            f"model.num_tokens[1:] x shard.token_size[1:] = {cfg.model.num_tokens[1]} x {sizes[1]} by "
            f"{cfg.model.num_tokens[2]} x {sizes[2]} = {ny} x {nx} points"
        ], None
    if wraps and kept_x % window.step[2]:
        return [], None  # the loader refuses it naming the lcm of the lon token sizes
    return [], _Kept((kept_y, kept_x), wraps)


def _finetune(cfg: Config) -> list[str]:
    """The finetune tasks' targets, inputs, layers and losses, as far as the configuration decides them."""
    if not cfg.finetune.tasks:
        return []
    out = []
    try:
        cfg.finetune.check_train()
    except ConfigError as exc:
        out.append(str(exc))
    here = cfg.finetune.backbone is None  # the backbone is this run's: its fields and layers are known
    read = model_fields(cfg.data, cfg.model) if not set(cfg.model.fields) - set(cfg.data.fields) else ()
    for name, task in cfg.finetune.tasks.items():
        where = f"finetune.tasks.{name}"
        try:
            task.check(name)
        except ConfigError as exc:
            out.append(str(exc))
        if task.target_shards:
            out += _target_shards(cfg, name, task)
        elif task.target not in cfg.data.fields:
            out.append(
                f"{where}.target '{task.target}' is not in data.fields ({', '.join(cfg.data.fields)}): it would have "
                f"no shards; add it to data.fields (and keep it out of model.fields) or name {where}.target_shards"
            )
        elif here and task.target in read:
            out.append(
                f"{where}.target '{task.target}' is a field the backbone reads (model.fields) on the same grid: the "
                "head would see its own target; leave it out of model.fields, or use a finer grid (target_shards)"
            )
        if not here:
            continue
        if unknown := sorted(set(task.inputs) - set(read)):
            out.append(f"{where}.inputs names {', '.join(unknown)}, not in model.fields ({', '.join(read)})")
        n = cfg.model.encoder_layers
        if bad := [layer for layer in task.layers if not -n <= layer < n]:
            out.append(f"{where}.layers {bad}: model.encoder_layers is {n} (layers 0..{n - 1}, or -{n}..-1)")
    return out


def _target_shards(cfg: Config, name: str, task) -> list[str]:
    """Target stores on another grid: present, of the target field, nesting in the backbone's tokens."""
    from atmorep.data import shards
    from atmorep.data.targets import nesting
    from atmorep.errors import DataError
    from atmorep.formats import zarrv3

    where = f"finetune.tasks.{name}.target_shards"
    out = []
    for p in task.target_shards:
        try:
            ds = zarrv3.open_dataset(p)
        except (OSError, ValueError, KeyError):
            out.append(f"{where}: {p} is not a shard store (missing or unreadable); build it first (atmorep shard)")
            continue
        if ds.attrs.get("field") != task.target:
            out.append(f"{where}: {p} holds field '{ds.attrs.get('field')}', not the target '{task.target}'")
            continue
        grid = _grid(cfg)
        if grid is None:
            continue  # the backbone's grid comes with its files: the finetune stage checks the nesting
        lats, lons, _ = grid
        field = next(iter(model_fields(cfg.data, cfg.model)))
        try:
            rows, cols = shards.crop(cfg.data, cfg.shard, field, lats, lons)
            nesting(lats[rows], lons[cols], ds["latitude"].values, ds["longitude"].values, str(p))
        except DataError as exc:
            out.append(f"{where}: {exc}")
    return out
