"""Pretraining: the loop that ties loader, masking, model, loss and engine together.

Everything a step needs is derived from ``(seed, step, rank)``: which windows it reads (a global
batch cut from the epoch's window order, the same whatever the world size), the masks and the
dropout draws. A checkpoint therefore needs only the engine state and the step, and a resumed run
repeats an uninterrupted one bit for bit (same world size), or continues it on another world size.

Products in the output directory (rank 0): ``model.pt`` (consolidated fp32 weights), ``metrics.csv``
(one row per step), ``loss.png``, ``tensorboard/`` and ``checkpoints/`` (DeepSpeed or torch state,
with the run's config and versions in every checkpoint).
"""

from __future__ import annotations

import csv
import dataclasses
import json
import logging
import signal
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
from torch.utils.data import DataLoader
from tqdm import tqdm

from atmorep.config import DataConfig, ModelConfig, TrainConfig, period
from atmorep.data.dataset import WindowDataset
from atmorep.data.sampler import StepBatches
from atmorep.data.tokens import TOKEN_INFO
from atmorep.errors import DataError
from atmorep.formats.atomic import DirectoryLock, Locked, space_for
from atmorep.model import masking
from atmorep.model.batch import Batch
from atmorep.model.file import load_weights, save_model, versions
from atmorep.model.multiformer import FieldGeometry, Multiformer
from atmorep.train import distributed, launch
from atmorep.train.launch import EXIT_REQUEUE  # 75: "run me again, I will resume"
from atmorep.train.losses import Loss
from atmorep.train.throughput import Throughput, training_dtype

log = logging.getLogger(__name__)


#: normalized values this many standard deviations from the mean are corrupt data, not weather
IMPLAUSIBLE = 1e4


class TooManyBadSteps(ValueError):
    """``max_bad_steps`` steps in a row had a non-finite loss (the message names bad data when found)."""


def geometry(dataset: WindowDataset) -> dict[str, FieldGeometry]:
    return {f: FieldGeometry(len(s[0].levels), s[0].token_size) for f, s in dataset.stores.items()}


class _Indexed:
    """The dataset's samples with their window index, so a bad one can be named."""

    def __init__(self, dataset: WindowDataset):
        self.dataset = dataset

    def __getitem__(self, i: int):
        return i, self.dataset[i]


class _Collate:
    def __init__(self, dataset: WindowDataset):
        self.dataset = dataset

    def __call__(self, items: list[tuple[int, dict]]) -> Batch:
        samples = [s for _, s in items]
        try:
            return Batch.collate(samples)
        except ValueError:  # Batch refuses non-finite tokens: say which store and window hold them
            tokens = {f: np.stack([s[f][0] for s in samples]) for f in samples[0]}
            bad = bad_data(self.dataset, [i for i, _ in items], tokens)
            if bad is None:
                raise
            raise DataError(bad) from None


def bad_data(dataset: WindowDataset, indices: list[int], tokens: dict) -> str | None:
    """The first field, store and sample of a batch holding non-finite or implausible values, or None."""
    for f, t in tokens.items():
        t = np.asarray(t)
        bad = ~np.isfinite(t) | (np.abs(np.nan_to_num(t)) > IMPLAUSIBLE)
        per_sample = bad.reshape(len(t), -1).sum(axis=1)
        if per_sample.any():
            k = int(np.flatnonzero(per_sample)[0])
            path, window = dataset.where(indices[k], f)
            return (
                f"{path}: field '{f}', {window}, holds {int(per_sample[k])} non-finite or implausible "
                f"values (|x| > {IMPLAUSIBLE:g} normalized); check the store with `atmorep verify {path}` "
                "and rebuild it"
            )
    return None


def _next(batches):
    """The next batch; bad data found by a loader worker is named in one line, not the worker's traceback."""
    try:
        return next(batches)
    except DataError as exc:
        lines = str(exc).strip().splitlines()  # "Caught DataError in DataLoader worker ... DataError: MESSAGE"
        raise DataError(lines[-1].partition(": ")[2] if len(lines) > 1 else lines[0]) from None


def loader(dataset: WindowDataset, plan: list[list[int]], workers: int):
    """Batches for a list of micro-steps, read ahead by ``workers`` background processes."""
    return DataLoader(
        _Indexed(dataset),
        batch_sampler=plan,
        collate_fn=_Collate(dataset),
        num_workers=workers,
        prefetch_factor=4 if workers else None,
        persistent_workers=False,
        pin_memory=torch.cuda.is_available(),
    )


class StopSignal:
    """Remembers SIGTERM/SIGUSR1 (SLURM's warning before the time limit) until the step boundary."""

    def __init__(self):
        self.received = 0
        for sig in (signal.SIGTERM, signal.SIGUSR1):
            signal.signal(sig, self._handle)
        launch.register()  # from now on `atmorep launch` may forward its signals to this rank

    def _handle(self, signum, frame):
        self.received = signum

    def agreed(self) -> bool:
        flag = torch.tensor([1.0 if self.received else 0.0])
        dist.all_reduce(flag, op=dist.ReduceOp.MAX)
        return bool(flag.item())


def train(
    seed: int,
    data: DataConfig,
    model_cfg: ModelConfig,
    cfg: TrainConfig,
    stores: dict[str, list[str]],
    out_dir: str | Path,
    fresh: bool = False,
) -> Path:
    """Train on the launched ranks; resume from ``out_dir/checkpoints`` unless ``fresh``.

    ``out_dir`` is locked while the run lasts (rank 0 holds ``out_dir/.lock``): a second training into
    it is refused on every rank, naming the holder; the lock of a killed run is taken over."""
    rank, world = distributed.init()
    lock = DirectoryLock(out_dir, "atmorep train")
    refused = None
    if rank == 0:
        try:
            lock.acquire()
        except Locked as exc:
            refused = str(exc)
    verdict = [refused]
    dist.broadcast_object_list(verdict, src=0)
    if verdict[0] is not None:
        raise Locked(verdict[0])
    try:
        return _train(rank, world, seed, data, model_cfg, cfg, stores, out_dir, fresh)
    finally:
        lock.release()


def _train(
    rank: int,
    world: int,
    seed: int,
    data: DataConfig,
    model_cfg: ModelConfig,
    cfg: TrainConfig,
    stores: dict[str, list[str]],
    out_dir: str | Path,
    fresh: bool,
) -> Path:
    out_dir = Path(out_dir)
    ckpt_dir = out_dir / "checkpoints"
    stop = StopSignal()  # after the process group: MPI's start-up may install its own handlers
    dataset = WindowDataset(stores, model_cfg.num_tokens, *period(cfg, data))
    global_batch = cfg.batch_size * cfg.gradient_accumulation * world
    plan = StepBatches(dataset, seed, global_batch, cfg.epoch_steps)
    torch.manual_seed(seed)
    model = Multiformer(model_cfg, geometry(dataset), info_dim=len(TOKEN_INFO))
    from atmorep.train.engine import ENGINES  # the only deepspeed import happens in there

    meta = {
        "train": dataclasses.asdict(cfg),
        "model": dataclasses.asdict(model_cfg),
        "data": dataclasses.asdict(data),
        "seed": seed,
        "versions": versions(),
        "inputs": inputs(stores, cfg),
    }
    tag, universal = _latest(ckpt_dir, world, meta, cfg.steps) if not fresh else (None, False)
    engine_cls = ENGINES[cfg.engine]
    if tag is not None and universal:  # saved on another world size: DeepSpeed's universal format
        if rank == 0:
            engine_cls.convert_to_universal(ckpt_dir, tag)
        dist.barrier()
        tag = engine_cls.universal_tag(tag)
    if tag is None and cfg.init_from:
        try:
            load_weights(model, cfg.init_from)
        except (OSError, ValueError) as exc:
            raise type(exc)(f"train.init_from: {exc}") from None
        if rank == 0:
            log.info("fine-tuning: weights from %s", cfg.init_from)
    engine = engine_cls(model, cfg, world, universal=universal)
    start, rows = 0, []
    if tag is not None:
        client = engine.load(ckpt_dir, tag)
        start, rows = client["step"], client["metrics"]
        if rank == 0 and start == cfg.steps:
            log.info(
                "%s already reached train.steps=%d on the same inputs: no step to train, model.pt "
                "written from it (`atmorep train --fresh` trains again)",
                ckpt_dir / tag,
                start,
            )
        elif rank == 0:
            log.info(
                "resumed from %s at step %d of %d (saved on %d ranks, now %d)",
                tag,
                start,
                cfg.steps,
                client["world"],
                world,
            )
    strategy = masking.build(cfg.masking, {f: g.token_size for f, g in model.fields.items()}, model.predicted)
    loss_fn = Loss(cfg.loss)
    writer = _tensorboard(out_dir, cfg) if rank == 0 else None
    meter = Throughput(model_cfg, model.fields, world, distributed.device(), training_dtype(cfg.engine))
    micro_plan = [m for s in range(start, cfg.steps) for m in plan.indices(s, rank, world, cfg.gradient_accumulation)]
    batches = iter(loader(dataset, micro_plan, cfg.workers))
    bad, suspect, t_loop = 0, None, time.perf_counter()
    bar = tqdm(
        range(start, cfg.steps),
        desc="train",
        disable=rank != 0,
        mininterval=5,
        file=sys.stderr,
        initial=start,
        total=cfg.steps,
    )
    for step in bar:
        t0 = time.perf_counter()
        wait, losses, diags, seen = 0.0, [], {}, []
        for micro in range(cfg.gradient_accumulation):
            tw = time.perf_counter()
            batch = _next(batches)
            seen.append((micro_plan[(step - start) * cfg.gradient_accumulation + micro], batch))
            wait += time.perf_counter() - tw
            micro_seed = _seed(seed, step, micro, rank, world)
            gen = torch.Generator().manual_seed(micro_seed)
            torch.manual_seed(micro_seed + 1)  # dropout
            masks = strategy(batch, gen)
            meter.add(batch.size, masks)
            source = masking.apply(batch, masks)
            ens = engine(source.tokens, source.info, masks)
            loss, diags = loss_fn(ens, {f: batch.tokens[f][masks[f]] for f in ens})
            applied = engine.step(loss)
            losses.append(loss.detach())
        if not applied:
            bad += 1
            found = next(filter(None, (bad_data(dataset, ix, b.tokens) for ix, b in seen)), None)
            if found:
                log.warning("step %d: non-finite loss from bad data: %s", step, found)
            suspect = found or suspect
            if bad >= cfg.max_bad_steps:
                named = [None] * world
                dist.all_gather_object(named, suspect)  # every rank skipped this step: name what any one saw
                why = next(filter(None, named), None) or (
                    "the inputs were finite and plausible, so the run "
                    "diverged: lower train.lr or raise train.max_bad_steps"
                )
                raise TooManyBadSteps(f"{bad} steps in a row had a non-finite loss (last at step {step}); {why}")
        else:
            bad = 0
        value = torch.stack(losses).mean()
        dist.all_reduce(value)
        dt = time.perf_counter() - t0
        rows.append(
            {
                "step": step,
                "loss": float(value) / world,
                "lr": engine.lr,
                "skipped": int(not applied),
                **meter.step(dt),
                "loader_wait": wait / dt,
                **diags,
            }
        )
        if writer:
            for k, v in rows[-1].items():
                if k != "step":
                    writer.add_scalar(k, v, step)
        bar.set_postfix(loss=f"{rows[-1]['loss']:.4f}", refresh=False)  # the bar redraws every mininterval
        done = step + 1
        if stop.agreed():
            _checkpoint(engine, ckpt_dir, done, rows, world, meta)
            if rank == 0:
                log.warning(
                    "signal %d: checkpoint at step %d saved; exiting %d to be requeued",
                    stop.received,
                    done,
                    EXIT_REQUEUE,
                )
            distributed.finish()
            launch.report(
                EXIT_REQUEUE, f"{signal.Signals(stop.received).name}: checkpoint at step {done} saved in {ckpt_dir}"
            )
            sys.exit(EXIT_REQUEUE)
        if done % cfg.checkpoint_every == 0 or done == cfg.steps:
            _checkpoint(engine, ckpt_dir, done, rows, world, meta)
    state = engine.consolidated_state_dict()
    if rank == 0:
        out_dir.mkdir(parents=True, exist_ok=True)
        with space_for(out_dir / "model.pt", _model_bytes(engine.module)):
            write_metrics(rows, out_dir / "metrics.csv")
            plot_loss(rows, out_dir / "loss.png")
            save_model(out_dir / "model.pt", engine.module, state, meta)
        if writer:
            writer.close()
        if cfg.steps > start:
            log.info(
                "trained %d steps (%d -> %d) on %d ranks in %.0f s: loss %.4f -> %.4f",
                cfg.steps - start,
                start,
                cfg.steps,
                world,
                time.perf_counter() - t_loop,
                rows[start]["loss"],
                rows[-1]["loss"],
            )
            log.info("throughput: %s", meter.summary())
    distributed.finish()
    return out_dir / "model.pt"


def _seed(seed: int, step: int, micro: int, rank: int, world: int) -> int:
    """A distinct, reproducible seed per (run, step, micro-step, rank)."""
    return int(np.random.SeedSequence([seed, step, micro, rank, world]).generate_state(1)[0])


#: keys that may change between a checkpoint and its resumption (``steps`` is the target: a checkpoint
#: before it continues, one at it is the finished run, one past it is refused)
_RESUMABLE_CHANGES = {"steps", "checkpoint_every", "tensorboard", "ranks", "batch_size", "gradient_accumulation"}


def inputs(stores: dict[str, list[str]], cfg: TrainConfig) -> dict:
    """The identity of what a run trains on: every shard store's (see :func:`shards.identity`) and
    the starting model's (size and modification time)."""
    from atmorep.data.shards import identity

    out = {}
    for paths in stores.values():
        for p in paths:
            i = identity(p)
            out[f"{i['field']} {i['year']}"] = {"provenance": i["provenance"], "files": i["files"]}
    if cfg.init_from and Path(cfg.init_from).is_file():  # a missing one is named when it is loaded
        st = Path(cfg.init_from).stat()
        out["init_from"] = [st.st_size, st.st_mtime_ns]
    return out


def _comparable(meta: dict) -> dict:
    train = {k: v for k, v in meta["train"].items() if k not in _RESUMABLE_CHANGES}
    return json.loads(json.dumps({**meta, "train": train, "versions": None, "inputs": None}))


def _changed(saved: dict | None, now: dict) -> list[str]:
    """What differs between a checkpoint's inputs and this run's, in words."""
    if saved is None:
        return ["the checkpoint does not record them"]
    out = [
        f"{k}: {'not in the checkpoint' if k not in saved else 'not given now'}" for k in sorted(set(saved) ^ set(now))
    ]
    for k in sorted(set(saved) & set(now)):
        if k == "init_from" and saved[k] != now[k]:
            out.append("init_from: another file")
        elif k != "init_from" and saved[k] != now[k]:
            out.append(
                f"{k}: "
                + ("another provenance" if saved[k]["provenance"] != now[k]["provenance"] else "store rewritten since")
            )
    return out


def _latest(ckpt_dir: Path, world: int, meta: dict, steps: int) -> tuple[str | None, bool]:
    """The newest checkpoint made with this configuration and these inputs, and whether it was saved
    on another world size. A checkpoint of another configuration or other inputs is not resumed; one
    past ``steps`` is refused (it belongs to a longer run)."""
    latest = ckpt_dir / "latest"
    if not latest.exists():
        return None, False
    tag = latest.read_text().strip()
    try:
        info = json.loads((ckpt_dir / tag / "atmorep.json").read_text())
    except (OSError, ValueError):
        log.warning("%s has no readable atmorep.json (killed while saving?): starting afresh", ckpt_dir / tag)
        return None, False
    if _comparable(info) != _comparable({**meta, "step": info["step"], "world": info["world"]}):
        log.warning("%s was made with another configuration: starting afresh", ckpt_dir / tag)
        return None, False
    if changed := _changed(info.get("inputs"), meta["inputs"]):
        log.warning("%s was trained on other inputs (%s): starting afresh", ckpt_dir / tag, "; ".join(changed))
        return None, False
    if info["step"] > steps:
        raise ValueError(
            f"{ckpt_dir / tag} is at step {info['step']}, past train.steps={steps}: it belongs "
            f"to a longer run of these inputs. Raise train.steps to continue it, or start "
            f"afresh with `atmorep train --fresh` (or remove {ckpt_dir})"
        )
    return tag, info["world"] != world


def _model_bytes(model) -> int:
    return sum(getattr(p, "ds_numel", p.numel()) * 4 for p in model.parameters())  # ZeRO-3: whole sizes


def _checkpoint(engine, ckpt_dir: Path, step: int, rows: list, world: int, meta: dict) -> None:
    tag = f"step{step:08d}"
    with space_for(ckpt_dir / tag, 3 * _model_bytes(engine.module)):  # weights and two Adam moments
        engine.save(ckpt_dir, tag, {"step": step, "metrics": rows, "world": world, **meta})
    if dist.get_rank() == 0:
        (ckpt_dir / tag / "atmorep.json").write_text(json.dumps({"step": step, "world": world, **meta}, indent=1))
    dist.barrier()


def _tensorboard(out_dir: Path, cfg: TrainConfig):
    if not cfg.tensorboard:
        return None
    from torch.utils.tensorboard import SummaryWriter

    return SummaryWriter(str(out_dir / "tensorboard"))


def write_metrics(rows: list[dict], path: Path) -> None:
    fields = list(dict.fromkeys(k for r in rows for k in r))
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=fields)
        w.writeheader()
        w.writerows(rows)


def plot_loss(rows: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    steps = np.array([r["step"] for r in rows])
    loss = np.array([r["loss"] for r in rows])
    k = max(1, len(loss) // 20)
    fig, ax = plt.subplots(figsize=(6, 3.5))
    ax.plot(steps, loss, lw=0.6, alpha=0.5, label="loss (mean over ranks)")
    if len(loss) > k:
        ax.plot(steps[k - 1 :], np.convolve(loss, np.ones(k) / k, mode="valid"), lw=1.5, label=f"running mean ({k})")
    ax.set(xlabel="optimizer step", ylabel="loss", title="pretraining loss")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
