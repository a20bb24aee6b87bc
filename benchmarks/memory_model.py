"""The fit planner's memory model against measured peak memory of real DeepSpeed training steps.

For each configuration (the demo multiformer, a mid-size field transformer; ZeRO 1/2/3, activation
checkpointing) it launches 2 CPU ranks with torchrun, runs a few real training steps (DeepSpeed
engine, BERT masking, the training loss) and measures each rank's peak of live torch tensor bytes:
every allocation and free of torch's CPU allocator, from before the model is built to after the
last optimizer step, as recorded by ``torch.profiler`` (``profile_memory``); the running sum's
maximum is the CPU counterpart of ``torch.cuda.max_memory_allocated``, the quantity the memory
model predicts. It prints predicted vs measured per configuration and, as its last line,

    memory_model_max_error=<max |predicted / measured - 1|>      (target <= 0.25)

    python benchmarks/memory_model.py [--quick] [--steps 2]

MEMORY_MODEL_DEBUG=1 also prints rank 0's (live, peak) MiB after model, engine, each forward and step.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

#: name -> (model overrides of the demo model, fields' geometry or None for the demo's, train settings)
MID = {
    "num_tokens": (3, 6, 12),
    "dim": 256,
    "heads": 8,
    "encoder_layers": 4,
    "decoder_layers": 4,
    "coupling": {},
    "field_dims": {},
    "ensemble": 8,
    "dropout": 0.05,
}
MID_FIELDS = {"velocity_u": {"levels": 2, "token_size": (3, 9, 9)}}
CONFIGS = {
    "demo zero2": ({}, None, {"zero_stage": 2, "batch_size": 8}),
    "demo zero3": ({}, None, {"zero_stage": 3, "batch_size": 8}),
    "mid zero1": (MID, MID_FIELDS, {"zero_stage": 1, "batch_size": 4}),
    "mid zero2": (MID, MID_FIELDS, {"zero_stage": 2, "batch_size": 4}),
    "mid zero3": (MID, MID_FIELDS, {"zero_stage": 3, "batch_size": 4}),
    "mid zero2 checkpointing": ({**MID, "checkpointing": True}, MID_FIELDS, {"zero_stage": 2, "batch_size": 4}),
    "mid zero3 bucket 1e6": (MID, MID_FIELDS, {"zero_stage": 3, "batch_size": 4}),
}
#: DeepSpeed's ZeRO-3 reduce bucket (5e8 elements, 1.9 GiB in fp32) hides the other parts of a small model's
#: memory; this configuration shrinks it (in the DeepSpeed config, and in the prediction) to test them
SMALL_BUCKET = {"mid zero3 bucket 1e6": 1_000_000}
QUICK = ("demo zero2",)


def model_and_geometry(name: str):
    from atmorep import architectures
    from atmorep.model.multiformer import FieldGeometry

    overrides, fields, _ = CONFIGS[name]
    spec = architectures.load_any(REPO / "config" / "config.yaml")
    cfg = dataclasses.replace(spec.model, **overrides)
    if fields is None:
        return cfg, spec.geometry()
    return cfg, {f: FieldGeometry(g["levels"], g["token_size"], cfg.num_tokens) for f, g in fields.items()}


def worker(name: str, steps: int, out: Path) -> None:
    """One rank: build, train ``steps`` steps, write this rank's peak live tensor bytes."""
    import torch
    from torch.profiler import ProfilerActivity, profile

    from atmorep.config import TrainConfig
    from atmorep.model import masking
    from atmorep.model.batch import Batch
    from atmorep.model.multiformer import Multiformer
    from atmorep.train import distributed
    from atmorep.train.ac import apply_ac
    from atmorep.train.engine import DeepSpeedEngine
    from atmorep.train.losses import Loss

    rank, world = distributed.init()
    if name in SMALL_BUCKET:
        from atmorep.train import engine as E

        plain = E.deepspeed_config

        def small_bucket(*a, **kw):
            out = plain(*a, **kw)
            out["zero_optimization"]["reduce_bucket_size"] = SMALL_BUCKET[name]
            return out

        E.deepspeed_config = small_bucket
    cfg, geo = model_and_geometry(name)
    tcfg = TrainConfig(**CONFIGS[name][2], tensorboard=False)
    import deepspeed  # noqa: F401  imported before profiling: its import allocates nothing we model

    strategy = masking.build(tcfg.masking, {f: g.token_size for f, g in geo.items()})
    loss_fn = Loss(tcfg.loss)
    g = torch.Generator().manual_seed(rank)
    marks = {}
    Path("/proc/self/clear_refs").write_text("5")  # VmHWM := VmRSS now: the RSS column's baseline
    rss0 = _status_kib("VmHWM")
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        torch.manual_seed(0)
        model = Multiformer(cfg, geo)
        if cfg.checkpointing:
            apply_ac(model)  # as the trainer does
        marks["model"] = time.time_ns()
        engine = DeepSpeedEngine(model, tcfg, world)
        marks["engine"] = time.time_ns()
        for i in range(steps):
            shape = {f: (tcfg.batch_size, gg.levels, *cfg.num_tokens) for f, gg in geo.items()}
            tokens = {f: torch.randn(*s, geo[f].values_per_token, generator=g) for f, s in shape.items()}
            batch = Batch(tokens, {f: torch.rand(*s, 8, generator=g) for f, s in shape.items()})
            masks = strategy(batch, g)
            source = masking.apply(batch, masks)
            ens = engine(source.tokens, source.info, masks)
            loss, _ = loss_fn(ens, {f: batch.tokens[f][masks[f]] for f in ens})
            marks[f"forward{i}"] = time.time_ns()
            engine.step(loss)
            del tokens, batch, masks, source, ens, loss
            marks[f"step{i}"] = time.time_ns()
    events = sorted((e.start_ns(), e.nbytes()) for e in prof.profiler.kineto_results.events() if e.name() == "[memory]")
    live = peak = 0
    at, pending = {}, sorted(marks.items(), key=lambda kv: kv[1])
    for t, nbytes in events:
        while pending and pending[0][1] < t:
            at[pending.pop(0)[0]] = (live, peak)
        live += nbytes
        peak = max(peak, live)
    rss = (_status_kib("VmHWM") - rss0) * 1024
    result = {"peak": peak, "rss": rss, "events": len(events), "marks": at}
    (out / f"rank{rank}.json").write_text(json.dumps(result))
    distributed.finish()


def _status_kib(key: str) -> int:
    line = next(x for x in Path("/proc/self/status").read_text().splitlines() if x.startswith(key + ":"))
    return int(line.split()[1])


def measure(name: str, steps: int) -> tuple[int, int]:
    """The larger of the two ranks' peaks of live tensor bytes, and of RSS high-water mark over the
    start (for comparison: RSS sees only the pages written, and the interpreter's own memory)."""
    with tempfile.TemporaryDirectory(prefix="memory_model_") as tmp:
        env = {
            **os.environ,
            "OMP_NUM_THREADS": "1",
            "PYTHONPATH": os.pathsep.join([str(REPO / "src"), os.environ.get("PYTHONPATH", "")]),
        }
        cmd = [
            "torchrun",
            "--standalone",
            "--nproc_per_node",
            "2",
            __file__,
            "--worker",
            name,
            "--steps",
            str(steps),
            "--out",
            tmp,
        ]
        r = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
        if r.returncode != 0:
            sys.exit(f"measurement of '{name}' failed:\n{r.stdout[-2000:]}{r.stderr[-4000:]}")
        ranks = [json.loads((Path(tmp) / f"rank{r}.json").read_text()) for r in range(2)]
        if os.environ.get("MEMORY_MODEL_DEBUG"):
            print({k: [round(x / 2**20, 2) for x in v] for k, v in ranks[0]["marks"].items()})
        return max(r["peak"] for r in ranks), max(r["rss"] for r in ranks)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help=f"only {', '.join(QUICK)} (seconds)")
    ap.add_argument(
        "--steps", type=int, default=2, help="training steps per run (the second has the optimizer states of the first)"
    )
    ap.add_argument("--worker", help=argparse.SUPPRESS)
    ap.add_argument("--out", type=Path, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        return worker(args.worker, args.steps, args.out)
    from atmorep.config import TrainConfig
    from atmorep.train import memory

    print(
        f"{'configuration (2 CPU ranks, fp32)':34s} {'predicted':>10s} {'measured':>10s} {'ratio':>6s} "
        f"{'RSS peak':>10s}"
    )
    errors = []
    for name in QUICK if args.quick else CONFIGS:
        cfg, geo = model_and_geometry(name)
        train = CONFIGS[name][2]
        setup = memory.Setup(
            zero_stage=train["zero_stage"], micro_batch=train["batch_size"], checkpointing=cfg.checkpointing
        )
        predicted = memory.estimate(
            cfg,
            geo,
            setup,
            world=2,
            gpu=False,
            masked_fraction=TrainConfig().masking.rate,
            reduce_bucket=SMALL_BUCKET.get(name, memory.REDUCE_BUCKET),
        ).peak
        measured, rss = measure(name, args.steps)
        errors.append(abs(predicted / measured - 1))
        print(
            f"{name:34s} {predicted / 2**20:7.1f} MiB {measured / 2**20:6.1f} MiB "
            f"{predicted / measured:6.3f} {rss / 2**20:6.1f} MiB",
            flush=True,
        )
    print(f"memory_model_max_error={max(errors):.3f}")


if __name__ == "__main__":
    main()
