"""Loader benchmark: token-aligned dense shards vs one chunk per time step, at the real 0.25° grid.

Builds (or reuses) under ``--out`` (default ``benchmarks/out/loader``, git-ignored):

- ``normalized/``: synthetic normalized months (smooth fields plus noise) of two fields on the full
  0.25° grid (721 x 1440; ``--grid`` degrees), 5 levels, ``--steps`` hourly steps: ``u`` with AtmoRep's
  [3, 9, 9] tokens
  and ``t`` with [3, 18, 18] over the same neighbourhood; 2.2 GB at the default 54 steps;
- ``token/``: the production stores (``atmorep.data.shards.shard``, default ``shard`` config);
- ``per_step/``: the same values with one zarr chunk per (field, time step), zarr's default zstd: the
  mainstream (anemoi-style) layout.

Then measures, in one run, random samples in the paper's geometry (36 h x 54 x 108 points, 5 levels;
[12, 6, 12] tokens of u and [12, 3, 6] tokens of t), drawn by the training sampler:

- token layout through the loader's reader (``WindowDataset``, one process, one thread), warm and
  with the store's pages evicted from the page cache first ("cold");
- the same windows through zarr (zarrs pipeline, every core) from the per-step layout, and from the
  token layout for reference;
- bytes read per byte used: the direct reader counts what it takes from the files (chunks and shard
  indices); zarr's reads are counted by ``/proc/self/io`` rchar; "cold" also reports read_bytes, the
  bytes the kernel fetched from the disk (page granularity and read-around included);
- on the demo config (``config/config.yaml``, the embedded ERA5 sample): loader samples/s through
  ``atmorep.train.batches.loader`` with the configured number of workers (``train.workers``) and with
  2 workers, and training-step samples/s of the demo model on this machine's CPU (AdamW, no
  DeepSpeed), both with ``--threads`` torch threads in this process, alternating in rounds; the
  memory the loader adds (PSS of the main process and its workers: anonymous pages, and the shard
  files' pages it maps).

The per-step baseline reads ``--per-step-samples`` windows (100: its rate at fewer moved the speedup
2.5x between runs). ``--sweep`` also times other ``shard_tokens`` choices for u. The last line
(machine-readable; the script exits 1 when one of its figures could not be measured):

    read_amplification=<bytes read/bytes used> speedup_vs_per_timestep=<ratio> headroom=<loader ÷ training samples/s>

Targets: read_amplification <= 1.2, speedup_vs_per_timestep >= 10, headroom >= 3.

    python benchmarks/loader.py [--out DIR] [--steps 54] [--grid 0.25] [--seconds 12] [--rounds 3]
                                [--per-step-samples 100] [--threads 1] [--sweep] [--clean]
    python benchmarks/loader.py --quick   # seconds: a 2° grid, a few samples (checks, no figures)
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import shutil
import time
from pathlib import Path

import numpy as np
import psutil
import xarray as xr
import zarr
from _checks import require

from atmorep.config import DataConfig, FieldSpec, ShardConfig, load, parse_time, period
from atmorep.data import shards
from atmorep.data.dataset import WindowDataset
from atmorep.data.sampler import SphereSampler
from atmorep.data.tokens import tokenize
from atmorep.formats import zarrv3

REPO = Path(__file__).resolve().parents[1]
FIELDS = {"u": (3, 9, 9), "t": (3, 18, 18)}  # AtmoRep's two token sizes over one neighbourhood
LEVELS = (96, 105, 114, 123, 137)
NUM_TOKENS = (12, 6, 12)  # of the finest tokens: 36 h x 54 x 108 points
MONTH = "2026-01"


# -- building ---------------------------------------------------------------------------------------


def synthetic_month(path: Path, field: str, steps: int, seed: int, grid: float = 0.25) -> Path:
    """A normalized month like `atmorep normalize` writes: smooth waves plus noise, float32."""
    ny, nx = round(180 / grid) + 1, round(360 / grid)
    lats, lons = np.linspace(90, -90, ny), np.arange(nx) * grid
    lat, lon = np.deg2rad(lats)[:, None], np.deg2rad(lons)[None, :]
    rng = np.random.default_rng(seed)
    data = np.empty((steps, len(LEVELS), ny, nx), np.float32)
    for t in range(steps):
        for k in range(len(LEVELS)):
            wave = np.cos(3 * lat) * np.sin(2 * lon + 0.05 * t + k) + 0.5 * np.sin(5 * lat + 0.02 * t) * np.cos(7 * lon)
            data[t, k] = wave + 0.1 * rng.standard_normal((ny, nx), dtype=np.float32)
    times = np.datetime64(f"{MONTH}-01T00", "h") + np.arange(steps)
    ds = xr.Dataset(
        {
            "data": (("time", "level", "latitude", "longitude"), data),
            "mean": ("level", np.zeros(len(LEVELS), np.float32)),
            "std": ("level", np.ones(len(LEVELS), np.float32)),
        },
        coords={"time": times.astype("datetime64[ns]"), "level": list(LEVELS), "latitude": lats, "longitude": lons},
        attrs={
            "field": field,
            "month": MONTH,
            "normalization": "global",
            "source": "synthetic",
            "source_sha256": f"{seed:064d}",
        },
    )
    return zarrv3.write_dataset(ds, path, encoding={"data": {"chunks": (6, 1, ny, nx)}})


def build(out: Path, steps: int, grid: float = 0.25) -> tuple[DataConfig, ShardConfig, dict, dict]:
    """Normalized months, token stores and per-step stores, reused when present."""
    data = DataConfig(fields={f: FieldSpec(LEVELS) for f in FIELDS}, start=f"{MONTH}-01T00", end=f"{MONTH}-28T00")
    cfg = ShardConfig(token_size=FIELDS["u"], field_token_size={"t": FIELDS["t"]})
    token, per_step = {}, {}
    stamp = out / "built.json"
    want = json.dumps({"steps": steps, "grid": grid, "shard": dataclasses.asdict(cfg)}, sort_keys=True)
    reuse = stamp.exists() and stamp.read_text() == want
    if not reuse:  # another configuration, or an interrupted build
        for sub in ("normalized", "token", "per_step", "sweep"):
            shutil.rmtree(out / sub, ignore_errors=True)
    for k, f in enumerate(FIELDS):
        norm, token[f], per_step[f] = (
            out / "normalized" / f"{f}.zarr",
            out / "token" / f"{f}.zarr",
            out / "per_step" / f"{f}.zarr",
        )
        if reuse:
            continue
        t0 = time.perf_counter()
        synthetic_month(norm, f, steps, k, grid)
        t1 = time.perf_counter()
        shards.shard(data, cfg, f, MONTH[:4], [norm], token[f])
        t2 = time.perf_counter()
        src = zarrv3.open_array(token[f] / "data")
        shutil.copytree(token[f], per_step[f], ignore=shutil.ignore_patterns("data"))
        with zarrv3.pipeline(None):
            dst = zarr.create_array(
                per_step[f] / "data",
                shape=src.shape,
                dtype="float32",
                chunks=(1, *src.shape[1:]),
                dimension_names=src.metadata.dimension_names,
                fill_value=np.nan,
            )  # zstd: zarr's default
        for s in range(0, src.shape[0], 6):
            dst[s : s + 6] = src[s : s + 6]
        print(
            f"built {f}: normalized {t1 - t0:.0f} s, token store {t2 - t1:.0f} s, per-step store "
            f"{time.perf_counter() - t2:.0f} s",
            flush=True,
        )
    stamp.write_text(want)
    return data, cfg, token, per_step


def files(path: Path) -> tuple[int, int]:
    """(files, bytes) under ``path``."""
    n = size = 0
    for d, _, fs in os.walk(path):
        n += len(fs)
        size += sum(os.path.getsize(os.path.join(d, x)) for x in fs)
    return n, size


# -- measuring ----------------------------------------------------------------------------------------


def proc_io() -> dict[str, int]:
    return {k: int(v) for k, v in (line.split(": ") for line in Path("/proc/self/io").read_text().splitlines())}


def memory(pids) -> tuple[int, int]:
    """(anonymous, file-backed) proportional set size summed over processes: pages shared by forked
    workers or mapped by several processes are counted once."""
    anon = file_ = 0
    for pid in pids:
        try:
            rollup = Path(f"/proc/{pid}/smaps_rollup").read_text()
        except OSError:
            continue
        fields = dict(line.split(":", 1) for line in rollup.splitlines()[1:] if ":" in line)
        anon += int(fields.get("Pss_Anon", "0 kB").split()[0]) * 1024
        file_ += int(fields.get("Pss_File", "0 kB").split()[0]) * 1024
    return anon, file_


def evict(path: Path) -> None:
    """Drop the page-cache pages of every file under ``path`` (our files only; no root needed)."""
    for d, _, fs in os.walk(path):
        for name in fs:
            fd = os.open(os.path.join(d, name), os.O_RDONLY)
            os.fdatasync(fd)  # dirty pages of a fresh store cannot be dropped
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
            os.close(fd)


def direct(stores: dict, indices, seconds: float, limit: int | None = None) -> dict:
    """Samples through WindowDataset (fresh stores: every shard index is read and counted)."""
    zarrv3._MAPS.clear()
    ds = WindowDataset(
        {f: [p] for f, p in stores.items()}, NUM_TOKENS, parse_time(f"{MONTH}-01T00"), parse_time(f"{MONTH}-28T00")
    )
    io0, used, n, paused = proc_io(), 0, 0, 0.0
    base = memory([os.getpid()])
    peak = base
    start = time.perf_counter()
    for i in indices:
        sample = ds[i]
        used += sum(tokens.nbytes for tokens, _ in sample.values())
        n += 1
        if n % 100 == 0:  # reading smaps costs milliseconds: left out of the rate
            t = time.perf_counter()
            peak = max(peak, memory([os.getpid()]))
            paused += time.perf_counter() - t
        if time.perf_counter() - start - paused > seconds or n == limit:
            break
    dt = time.perf_counter() - start - paused
    io1 = proc_io()
    return {
        "samples_per_s": n / dt,
        "samples": n,
        "used": used,
        "read": ds.bytes_read,
        "disk": io1["read_bytes"] - io0["read_bytes"],
        "mem": (peak[0] - base[0], peak[1] - base[1]),
        "dataset": ds,
    }


def through_zarr(stores: dict, dataset: WindowDataset, indices, seconds: float, min_samples: int) -> dict:
    """The same windows read with zarr (zarrs pipeline, every core) and tokenized."""
    with zarrv3.pipeline(None):
        arrays = {f: zarr.open_array(p / "data", mode="r") for f, p in stores.items()}
    nt, ny, nx = dataset.extent
    io0, used, n = proc_io(), 0, 0
    start = time.perf_counter()
    for i in indices:
        w = dataset.windows[int(i)]
        for f, a in arrays.items():
            x = (w.x0 + np.arange(nx)) % a.shape[3]
            split = int(np.argmax(np.diff(x) < 0)) + 1 if x[-1] < x[0] else nx
            parts = [a[w.t0 : w.t0 + nt, :, w.y0 : w.y0 + ny, x[0] : x[split - 1] + 1]]
            if split < nx:
                parts.append(a[w.t0 : w.t0 + nt, :, w.y0 : w.y0 + ny, : x[-1] + 1])
            values = np.concatenate(parts, axis=-1).transpose(1, 0, 2, 3)
            used += tokenize(values, dataset.token_sizes[f]).nbytes
        n += 1
        if time.perf_counter() - start > seconds and n >= min_samples:
            break
    dt = time.perf_counter() - start
    return {"samples_per_s": n / dt, "samples": n, "used": used, "read": proc_io()["rchar"] - io0["rchar"]}


def through_loader(ds: WindowDataset, indices, workers: int, batch_size: int, seconds: float) -> dict:
    from atmorep.train import batches

    """Samples/s through the training loop's DataLoader, and the memory it adds (PSS, main + workers)."""

    plan = [indices[k : k + batch_size].tolist() for k in range(0, len(indices) - batch_size + 1, batch_size)]
    me = psutil.Process()
    base = memory([me.pid])
    it = iter(batches.loader(ds, plan, workers))
    next(it)  # workers started
    n, peak, start = 0, base, time.perf_counter()
    probe = start
    for batch in it:
        n += batch.size
        now = time.perf_counter()
        if now - probe > 0.5:  # reading smaps costs milliseconds: sample it, not every batch
            peak = max(peak, memory([me.pid] + [c.pid for c in me.children(recursive=True)]))
            probe = time.perf_counter()
            start += probe - now  # and leave it out of the rate
        if now - start > seconds:
            break
    rate = n / (time.perf_counter() - start)
    del it
    return {"samples_per_s": rate, "mem": (peak[0] - base[0], peak[1] - base[1])}


def demo(out: Path, seconds: float, rounds: int) -> dict:
    """Loader and training-step samples/s on the demo config (best of ``rounds`` alternating rounds),
    and the memory the loader adds."""
    import torch

    from atmorep.data import normalize
    from atmorep.data.acquire import sources
    from atmorep.data.tokens import TOKEN_INFO
    from atmorep.model import masking
    from atmorep.train import batches, loop
    from atmorep.train.losses import Loss

    cfg = load(REPO / "config" / "config.yaml")
    stores = {}
    for f in cfg.data.fields:
        s = out / "demo" / "shards" / f"{f}.zarr"
        if not s.exists():
            g = sources.acquire(cfg.data, cfg.acquire, f, "2026-03", out / "demo" / "grib" / f"{f}.grib")
            n = normalize.normalize(cfg.data, cfg.normalize, f, "2026-03", g, out / "demo" / "norm" / f"{f}.zarr")
            shards.shard(cfg.data, cfg.shard, f, "2026", [n], s)
        stores[f] = [str(s)]
    ds = WindowDataset(stores, cfg.model.num_tokens, *period(cfg.train, cfg.data))
    B = cfg.train.batch_size
    default_workers = cfg.train.workers
    model = loop.Multiformer(cfg.model, loop.geometry(ds), info_dim=len(TOKEN_INFO)).train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    strategy, loss_fn = masking.build(cfg.train.masking, ds.token_sizes), Loss(cfg.train.loss)
    batch = next(iter(batches.loader(ds, [list(range(B))], 0)))
    gen = torch.Generator().manual_seed(0)

    def step():
        masks = strategy(batch, gen)
        src = masking.apply(batch, masks)
        loss, _ = loss_fn(model(src.tokens, src.info, masks), {f: batch.tokens[f][masks[f]] for f in batch.tokens})
        opt.zero_grad()
        loss.backward()
        opt.step()

    def train_rate() -> float:
        n, start = 0, time.perf_counter()
        while time.perf_counter() - start < seconds or n < 2 * B:
            step()
            n += B
        return n / (time.perf_counter() - start)

    step()
    idx = SphereSampler(ds.grid, min(len(ds.grid), 4096), seed=0).order(0)
    # the machine is shared: alternate the measurements in rounds and keep each one's best round
    result = {
        "default_workers": default_workers,
        "loader": {},
        "train_samples_per_s": 0.0,
        "threads": torch.get_num_threads(),
    }
    for _ in range(rounds):
        for workers in sorted({default_workers, 2}):
            r = through_loader(ds, idx, workers, B, seconds)
            if r["samples_per_s"] > result["loader"].get(workers, {"samples_per_s": 0})["samples_per_s"]:
                result["loader"][workers] = r
        result["train_samples_per_s"] = max(result["train_samples_per_s"], train_rate())
    return result


def sweep(out: Path, data: DataConfig, norm: Path, indices, seconds: float) -> None:
    """Other shard shapes for u: files, size, warm and cold samples/s, bytes read per byte used."""
    print("\nshard_tokens sweep (field u alone, 5 levels, 0.25°):")
    for tokens in [(6, 6, 12), (12, 6, 12), (24, 16, 32), (24, 79, 160)]:
        cfg = ShardConfig(token_size=FIELDS["u"], field_token_size={"t": FIELDS["t"]}, shard_tokens=tokens)
        path = out / "sweep" / ("_".join(map(str, tokens))) / "u.zarr"
        if not path.exists():
            shards.shard(data, cfg, "u", MONTH[:4], [norm], path)
        nfiles, size = files(path / "data")
        evict(path)
        cold = direct({"u": path}, indices, seconds, limit=100)
        warm = direct({"u": path}, indices, seconds)
        print(
            f"  shard_tokens={list(tokens)}: {nfiles} files of {size / nfiles / 1e6:.1f} MB; cold "
            f"{cold['samples_per_s']:.0f} samples/s (disk read/used {cold['disk'] / cold['used']:.2f}), warm "
            f"{warm['samples_per_s']:.0f} samples/s, read/used {warm['read'] / warm['used']:.3f}",
            flush=True,
        )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, default=REPO / "benchmarks" / "out" / "loader", help="store directory (reused)")
    ap.add_argument("--steps", type=int, default=54, help="hourly time steps (54: 2.2 GB per layout)")
    ap.add_argument("--grid", type=float, default=0.25, help="grid spacing in degrees (0.25: ERA5's)")
    ap.add_argument("--per-step-samples", type=int, default=100, help="windows read from the per-step layout")
    ap.add_argument("--seconds", type=float, default=12.0, help="time per measurement")
    ap.add_argument("--rounds", type=int, default=3, help="alternating rounds of the demo loader/training timings")
    ap.add_argument(
        "--threads",
        type=int,
        default=1,
        help="torch threads of this process (0: torch's default); "
        "with 2 OpenMP threads on a shared 2-core machine a demo step varies 1-8 s, with 1 it is stable",
    )
    ap.add_argument("--sweep", action="store_true", help="also time other shard_tokens choices")
    ap.add_argument("--clean", action="store_true", help="delete the stores afterwards")
    ap.add_argument(
        "--quick",
        action="store_true",
        help="the smallest setting (seconds; for tests): "
        "--grid 2 --steps 40 --seconds 1 --rounds 1 --per-step-samples 5 --clean, "
        "into a temporary --out",
    )
    args = ap.parse_args()
    if args.quick:
        import tempfile

        args.grid, args.steps, args.seconds, args.rounds, args.per_step_samples = 2.0, 40, 1.0, 1, 5
        args.out, args.clean = Path(tempfile.mkdtemp(prefix="loader-quick-")), True
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)

    data, cfg, token, per_step = build(args.out, args.steps, args.grid)
    for name, stores in (("token", token), ("per_step", per_step)):
        nf, size = map(sum, zip(*(files(p / "data") for p in stores.values())))
        print(f"{name} layout: {size / 1e9:.2f} GB in {nf} files", flush=True)
    grid = WindowDataset(
        {f: [p] for f, p in token.items()}, NUM_TOKENS, parse_time(f"{MONTH}-01T00"), parse_time(f"{MONTH}-28T00")
    ).grid
    sampler = SphereSampler(grid, min(len(grid), 4000), seed=1)
    order = sampler.order(0)

    for p in token.values():
        evict(p)
    cold = direct(token, order[:200], args.seconds, limit=200)
    warm = direct(token, order, args.seconds)
    ds = warm.pop("dataset")
    print(f"paper geometry: {warm['used'] / warm['samples'] / 1e6:.2f} MB of tokens per sample (2 fields x 5 levels)")
    print(
        f"token layout, direct reader, cold: {cold['samples_per_s']:.1f} samples/s; read/used "
        f"{cold['read'] / cold['used']:.3f} (incl. shard indices), disk read_bytes/used "
        f"{cold['disk'] / cold['used']:.2f}"
    )
    print(
        f"token layout, direct reader, warm: {warm['samples_per_s']:.1f} samples/s "
        f"({warm['used'] / warm['samples'] * warm['samples_per_s'] / 1e9:.2f} GB/s of tokens); read/used "
        f"{warm['read'] / warm['used']:.3f}; memory growth (PSS) anon {warm['mem'][0] / 1e6:.0f} MB, "
        "mapped file pages "
        f"{warm['mem'][1] / 1e6:.0f} MB"
    )
    paper = through_loader(ds, order, 2, 8, args.seconds)
    print(
        f"token layout through the training DataLoader (2 workers, batch 8): {paper['samples_per_s']:.0f} samples/s; "
        f"memory added (PSS, main + workers) anon {paper['mem'][0] / 1e6:.0f} MB, mapped file pages "
        f"{paper['mem'][1] / 1e6:.0f} MB",
        flush=True,
    )
    via_zarr = through_zarr(token, ds, order, args.seconds / 2, 5)
    print(
        f"token layout through zarr (zarrs): {via_zarr['samples_per_s']:.1f} samples/s; rchar/used "
        f"{via_zarr['read'] / via_zarr['used']:.3f}"
    )
    naive = through_zarr(per_step, ds, order, 0.0, args.per_step_samples)
    print(
        f"per-step layout through zarr (zarrs, zstd): {naive['samples_per_s']:.2f} samples/s; rchar/used "
        f"{naive['read'] / naive['used']:.1f} ({naive['samples']} samples)",
        flush=True,
    )

    if args.sweep:
        sweep(args.out, data, args.out / "normalized" / "u.zarr", order, args.seconds / 2)

    del ds
    zarrv3._MAPS.clear()  # unmap the paper-geometry shards
    try:
        d = demo(args.out, args.seconds / 3, args.rounds)
    except Exception as exc:  # the model is edited in parallel; report, do not hide the loader numbers
        print(f"demo training step failed: {exc!r}")
        d = None
    if d:
        for workers, r in d["loader"].items():
            print(
                f"demo loader, {workers} workers{' (default)' if workers == d['default_workers'] else ''}: "
                f"{r['samples_per_s']:.0f} samples/s; peak memory added by the loader (PSS, main + workers) "
                f"anon {r['mem'][0] / 1e6:.0f} MB, mapped file pages {r['mem'][1] / 1e6:.0f} MB"
            )
        print(
            f"demo training step (CPU, {d['threads']} threads, AdamW): {d['train_samples_per_s']:.1f} samples/s "
            f"(best of {args.rounds} rounds, as the loader figures)"
        )
        headroom = d["loader"][d["default_workers"]]["samples_per_s"] / d["train_samples_per_s"]
    else:
        headroom = float("nan")
    if args.clean:
        shutil.rmtree(args.out)
    figures = {
        "read_amplification": warm["read"] / warm["used"],
        "speedup_vs_per_timestep": warm["samples_per_s"] / naive["samples_per_s"],
        "headroom": headroom,
    }
    print(
        f"read_amplification={figures['read_amplification']:.3f} "
        f"speedup_vs_per_timestep={figures['speedup_vs_per_timestep']:.1f} headroom={headroom:.1f}"
    )
    require(**figures)


if __name__ == "__main__":
    main()
