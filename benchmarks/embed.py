"""Embedding against a forecast of the same windows, and the peak memory of embedding a global month.

    python benchmarks/embed.py                 # a synthetic global month: 1°, hourly, 2 fields
    python benchmarks/embed.py --quick         # two days (seconds): what tests/test_benchmarks.py runs

The month is written by the pipeline's own writers (``zarrv3.write_dataset`` as normalize writes, then
``shards.shard``) into a temporary directory, 744 x 181 x 360 float32 per field (194 MB). The model has
the demo's shape (config/config.yaml: width 64, 4 heads, 2 encoder and 2 decoder layers, 3 x 3 x 6
tokens of 3 x 9 x 9, the two fields coupled).

- ``embed_vs_inference``: the seconds of :func:`atmorep.eval.embed.embed` (read, encoder, stitch,
  write the store) over a period, against evaluate's inference (:func:`atmorep.eval.inference.run`:
  read, forecast masking, encoder + decoder + ensemble tail, physical units) of exactly the windows the
  embedding ran; best of ``--repeats``, in a child process, after a warm-up. Goal <= 1.
- ``peak_rss_mb``: ru_maxrss of a fresh process that embeds the whole month (every layer, pooling by
  window and area); ``rss_bound_mb`` is the bound stated in README "Using the representation": the
  process's RSS after embedding the first window time (model, stores, libraries and kernels loaded),
  plus :func:`atmorep.eval.embed.working_set` (slab, batch, activations, pooled windows), plus the
  reader's memory maps (at most ``zarrv3.MAX_OPEN_SHARDS`` shard files). Exits 1 when the peak
  exceeds the bound.

Last line: ``embed_vs_inference=<ratio> peak_rss_mb=<MB> rss_bound_mb=<MB> windows=<n>``.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from _checks import require

FIELDS = ("t2m", "msl")


def build(root: Path, hours: int) -> dict[str, list[str]]:
    """Normalized months and shard stores of a smooth, moving global field plus noise."""
    import xarray as xr

    from atmorep.config import DataConfig, FieldSpec, ShardConfig
    from atmorep.data import shards
    from atmorep.formats import zarrv3

    lats, lons = np.linspace(90, -90, 181), np.arange(360.0)
    times = np.datetime64("2021-03-01T00", "ns") + np.arange(hours) * np.timedelta64(1, "h")
    end = str(times[-1].astype("datetime64[h]"))
    data = DataConfig(fields={f: FieldSpec() for f in FIELDS}, start="2021-03-01T00", end=end, step_hours=1)
    cfg = ShardConfig(token_size=(3, 9, 9), shard_tokens=(24, 5, 10))
    rng = np.random.default_rng(0)
    out = {}
    for k, f in enumerate(FIELDS):
        values = np.empty((hours, 1, 181, 360), np.float32)
        la, lo = np.deg2rad(lats)[:, None], np.deg2rad(lons)[None]
        for t in range(hours):
            values[t, 0] = np.cos(3 * la) * np.sin(2 * lo + 0.05 * t + k) + 0.1 * rng.standard_normal((181, 360))
        month = xr.Dataset(
            {
                "data": (("time", "level", "latitude", "longitude"), values),
                "mean": ("level", np.array([280.0], np.float32)),
                "std": ("level", np.array([10.0], np.float32)),
            },
            coords={"time": times, "level": [0], "latitude": lats, "longitude": lons},
            attrs={
                "field": f,
                "month": "2021-03",
                "normalization": "global",
                "source": f"{f}.grib",
                "source_sha256": "0" * 64,
            },
        )
        norm = zarrv3.write_dataset(month, root / "normalized" / f"{f}.zarr")
        del values, month
        out[f] = [str(shards.shard(data, cfg, f, "2021", [norm], root / "shards" / f"{f}.zarr"))]
    return out


def model_file(path: Path) -> Path:
    import torch

    from atmorep.config import ModelConfig
    from atmorep.model.file import save_model
    from atmorep.model.multiformer import FieldGeometry, Multiformer

    torch.manual_seed(0)
    cfg = ModelConfig(
        num_tokens=(3, 3, 6),
        dim=64,
        heads=4,
        encoder_layers=2,
        decoder_layers=2,
        coupling_heads=1,
        coupling={"t2m": ("msl",), "msl": ("t2m",)},
        ensemble=8,
        dropout=0.0,
    )
    save_model(path, Multiformer(cfg, {f: FieldGeometry(1, (3, 9, 9)) for f in FIELDS}).eval())
    return path


def _data(stores):
    from atmorep.config import DataConfig, FieldSpec
    from atmorep.data.dataset import FieldStore

    times = FieldStore(stores[FIELDS[0]][0]).times
    start, end = (str(t.astype("datetime64[h]")) for t in (times[0], times[-1]))
    return DataConfig(fields={f: FieldSpec() for f in FIELDS}, start=start, end=end, step_hours=1)


def _rss_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def child_memory(work: Path) -> dict:
    """Embed the whole month in this (fresh) process: peak RSS against the stated bound."""
    from atmorep.config import EmbedConfig
    from atmorep.eval import embed
    from atmorep.formats import zarrv3
    from atmorep.model.file import load_model

    stores = json.loads((work / "stores.json").read_text())
    data = _data(stores)
    cfg = EmbedConfig(layers=(0, 1), pooling=("window", "area"), batch_size=16)
    model, _ = load_model(work / "model.safetensors")
    dataset = embed.open_dataset(stores, model, work / "model.safetensors")
    plan = embed.Plan(dataset, list(model.fields), cfg, data)
    # The baseline: this process after embedding the first window time (model loaded, stores and their
    # readers open, every library and kernel the embedding touches initialised); the month must not
    # need more than that plus the working set and the maps.
    nt = dataset.extent[0]
    first = EmbedConfig(
        **{**cfg.__dict__, "start": data.start, "end": str(np.datetime64(data.start) + np.timedelta64(nt - 1, "h"))}
    )
    embed.embed(data, first, work / "model.safetensors", stores, work / "out-warm")
    shard_files = [p for f in stores for s in stores[f] for p in Path(s, "data", "c").rglob("*") if p.is_file()]
    maps = min(len(shard_files), zarrv3.MAX_OPEN_SHARDS) * max(p.stat().st_size for p in shard_files)
    before = _rss_mb()
    ws = embed.working_set(plan, model, [0, 1], cfg.batch_size)
    embed.embed(data, cfg, work / "model.safetensors", stores, work / "out-memory")
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return {
        "peak_rss_mb": peak,
        "rss_bound_mb": before + (ws + maps) / 2**20,
        "windows": plan.windows,
        "before_mb": before,
        "working_set_mb": ws / 2**20,
        "maps_mb": maps / 2**20,
    }


def child_time(work: Path, hours: int, repeats: int) -> dict:
    """Seconds of embed() over the first ``hours`` and of inference.run() on the same windows."""
    import torch

    from atmorep.config import EmbedConfig
    from atmorep.eval import embed, inference
    from atmorep.model import masking
    from atmorep.model.file import load_model

    torch.set_num_threads(1)
    stores = json.loads((work / "stores.json").read_text())
    data = _data(stores)
    start = np.datetime64(data.start)
    cfg = EmbedConfig(start=data.start, end=str(start + np.timedelta64(hours - 1, "h")), layers=(1,), batch_size=16)
    model, _ = load_model(work / "model.safetensors")
    dataset = embed.open_dataset(stores, model, work / "model.safetensors")
    plan = embed.Plan(dataset, list(model.fields), cfg, data)
    indices = np.array(
        [
            plan.window(s, plan.y_origins[y], plan.x_origins[x])
            for s in plan.slabs()
            for y in plan.used("lat")
            for x in plan.used("lon")
        ]
    )
    forecast = masking.ForecastMasking(1)

    def run_embed():
        embed.embed(data, cfg, work / "model.safetensors", stores, work / "out-time")

    def run_inference():
        inference.run(model, dataset, indices, strategy=forecast, target_slabs=lambda T: [T - 1], batch_size=16, seed=0)

    times = {}
    for name, fn in (("embed", run_embed), ("inference", run_inference)):
        fn()  # warm-up: page cache, kernels
        best = np.inf
        for _ in range(repeats):
            t0 = time.perf_counter()
            fn()
            best = min(best, time.perf_counter() - t0)
        times[name] = best
    return {"embed_s": times["embed"], "inference_s": times["inference"], "windows": len(indices)}


def _child(mode: str, work: Path, *extra: str) -> dict:
    r = subprocess.run(
        [sys.executable, __file__, "--child", mode, "--work", str(work), *extra], capture_output=True, text=True
    )
    if r.returncode:
        sys.exit(f"benchmark failed: the {mode} child exited {r.returncode}:\n{r.stderr[-3000:]}")
    return json.loads(r.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="two days instead of a month (seconds)")
    ap.add_argument("--hours", type=int, help="hours of the synthetic period (default 744, --quick 48)")
    ap.add_argument("--time-hours", type=int, default=72, help="hours embedded for the time ratio (default 72)")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--child", choices=("memory", "time"), help=argparse.SUPPRESS)
    ap.add_argument("--work", type=Path, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        logging_off()
        out = (
            child_memory(args.work) if args.child == "memory" else child_time(args.work, args.time_hours, args.repeats)
        )
        print(json.dumps(out))
        return
    hours = args.hours or (48 if args.quick else 744)
    time_hours = min(args.time_hours, hours) if not args.quick else 18
    repeats = 1 if args.quick else args.repeats
    with tempfile.TemporaryDirectory(prefix="atmorep-embed-bench-") as tmp:
        work = Path(tmp)
        t0 = time.perf_counter()
        stores = build(work, hours)
        (work / "stores.json").write_text(json.dumps(stores))
        model_file(work / "model.safetensors")
        print(f"built {hours} h x 181 x 360 of {len(FIELDS)} fields in {time.perf_counter() - t0:.1f} s", flush=True)
        timing = _child("time", work, "--time-hours", str(time_hours), "--repeats", str(repeats))
        print(
            f"{timing['windows']} windows ({time_hours} h): embed {timing['embed_s']:.2f} s, "
            f"inference (forecast) {timing['inference_s']:.2f} s",
            flush=True,
        )
        memory = _child("memory", work)
        print(
            f"embedding {hours} h ({memory['windows']} windows): peak RSS {memory['peak_rss_mb']:.0f} MB; bound "
            f"{memory['rss_bound_mb']:.0f} MB = {memory['before_mb']:.0f} MB (after embedding one window time) + "
            f"{memory['working_set_mb']:.0f} MB working set + {memory['maps_mb']:.0f} MB shard maps",
            flush=True,
        )
    ratio = timing["embed_s"] / timing["inference_s"]
    print(
        f"embed_vs_inference={ratio:.3f} peak_rss_mb={memory['peak_rss_mb']:.0f} "
        f"rss_bound_mb={memory['rss_bound_mb']:.0f} windows={memory['windows']}"
    )
    require(embed_vs_inference=ratio, peak_rss_mb=memory["peak_rss_mb"], rss_bound_mb=memory["rss_bound_mb"])
    if memory["peak_rss_mb"] > memory["rss_bound_mb"]:
        sys.exit(f"benchmark failed: peak RSS {memory['peak_rss_mb']:.0f} MB exceeds the stated bound")


def logging_off() -> None:
    import logging
    import os

    os.environ["TQDM_DISABLE"] = "1"
    logging.disable(logging.INFO)


if __name__ == "__main__":
    main()
