"""Science acceptance: train the demo-sized model on real hourly ERA5 and score it on a held-out period.

    python benchmarks/skill.py --minutes 30            # the issue's budget (2 CPU cores)
    python benchmarks/skill.py --minutes 4 --rounds 4  # a short run

Data: ``../shared/data/era5-t2m-uk-hourly`` (2 m temperature, UK, 0.25°, 744 hourly steps of March
2019), through the library's normalize and shard stages. Periods: training 1-21 March, validation
22-24 March (the learning curve), held-out test 25-31 March (scored once, at the end; nothing is
chosen on it). Training runs in rounds of ``atmorep train`` (a longer run resumes the previous one)
with the plain-torch engine in one process on 2 threads; after each round the forecast and
interpolation ratios on the validation period are logged (``learning_curve.csv``).

Prints ``forecast_rmse_vs_persistence=<r> interp_rmse_vs_linear=<r> spread_skill=<r>
crps_vs_climatology=<r>`` (test period; targets <= 0.85, < 1.0, [0.7, 1.3], < 1.0). Ratios are means
over leads of AtmoRep's score over the baseline's (forecast mode for RMSE/SSR/CRPS, temporal
interpolation mode for the interpolation ratio).

Regional grids: ``atmorep.data.dataset.WindowDataset`` treats longitude as periodic and so cuts
windows that wrap from the region's east edge to its west edge. Until it supports regional grids,
this benchmark drops those windows (:class:`RegionalWindows`, patched into training in the worker).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import os
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared" / "data"
GRIB = SHARED / "era5-t2m-uk-hourly" / "era5-2mt-2019-03-uk.grib"
TRAIN = ("2019-03-01T00", "2019-03-21T23")
VALID = ("2019-03-22T00", "2019-03-24T23")
TEST = ("2019-03-25T00", "2019-03-31T23")

log = logging.getLogger("skill")

CONFIG = {
    "seed": 1,
    "data": {"fields": {"t2m": {"levels": [0]}}, "start": "2019-03-01T00", "end": "2019-03-31T23", "step_hours": 1},
    "normalize": {"method": "global"},
    # 33 x 49 points: 30 rows (the crop rule drops the edge rows) = 15 tokens of 2; 49 columns = 7 tokens of 7.
    # 42 values per token: the demo width (64, of which 48 carry values) can hold a token
    "shard": {"token_size": [3, 2, 7], "shard_tokens": [8, 5, 7]},
    # the demo model's size (config/config.yaml); a window is 12 h x 12 rows x the whole 49 columns
    "model": {"num_tokens": [4, 6, 7], "dim": 64, "heads": 4, "encoder_layers": 2, "decoder_layers": 2,
              "coupling_heads": 1, "ensemble": 8, "dropout": 0.0},
    "train": {"start": TRAIN[0], "end": TRAIN[1], "batch_size": 16, "lr_start": 1e-4, "lr": 1e-3,
              "lr_min": 2e-4, "warmup_epochs": 1, "epoch_steps": 50, "weight_decay": 0.025,
              "checkpoint_every": 1000000, "masking": {"strategy": "bert", "rate": 0.5},
              "loss": {"terms": ["mse_ensemble", "stats"]}, "engine": "torch", "ranks": 1, "tensorboard": False},
}


def regional_windows():
    """WindowDataset without the windows that wrap around a regional grid's longitudes."""
    from atmorep.data.dataset import WindowDataset, WindowGrid

    class RegionalWindows(WindowDataset):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            nlon = len(self.stores[self.fields[0]][0].lons)
            g = self.windows
            keep = g.x_origins[g.x_origins + self.extent[2] <= nlon]
            self.grid = self.windows = WindowGrid(g.t_origins, g.y_origins, keep, g.weights)

    return RegionalWindows


def prepare(out: Path) -> list[str]:
    """Normalized and sharded t2m of March 2019 (skipped when already there)."""
    from atmorep import config as C
    from atmorep.data import normalize, shards

    store = out / "shards" / "t2m" / "2019.zarr"
    if store.exists():
        return [str(store)]
    data = C.build(C.DataConfig, CONFIG["data"], "data")
    norm = C.build(C.NormalizeConfig, CONFIG["normalize"], "normalize")
    shard_cfg = C.build(C.ShardConfig, CONFIG["shard"], "shard")
    n = normalize.normalize(data, norm, "t2m", "2019-03", GRIB, out / "normalized" / "t2m" / "2019-03.zarr")
    return [str(shards.shard(data, shard_cfg, "t2m", "2019", [n], store))]


def train_round(out: Path, stores: list[str], steps: int) -> float:
    """Train (resuming) up to ``steps`` in a fresh process; returns its wall time."""
    params = {k: CONFIG[k] for k in ("seed", "data", "model")}
    params["train"] = {**CONFIG["train"], "steps": steps, "checkpoint_every": steps}
    env = {**os.environ, "OMP_NUM_THREADS": "2", "MKL_NUM_THREADS": "2"}
    t0 = time.perf_counter()
    subprocess.run([sys.executable, __file__, "--worker", json.dumps(params), "--out", str(out), "--stores", *stores],
                   check=True, env=env)
    return time.perf_counter() - t0


def worker(params: dict, out: Path, stores: list[str]) -> None:
    import torch

    from atmorep import config as C
    from atmorep.train import loop

    torch.set_num_threads(2)
    loop.WindowDataset = regional_windows()  # see the module docstring
    loop.train(params["seed"], C.section(params, "data"), C.section(params, "model"), C.section(params, "train"),
               {"t2m": stores}, out / "train")


def score(out: Path, stores: list[str], period: tuple[str, str], samples: int, tag: str) -> dict:
    """Forecast and temporal-interpolation scores of the current model on ``period``."""
    from atmorep import config as C
    from atmorep.eval import evaluate as E
    from atmorep.eval import scores
    from atmorep.train.checkpoint import load_model

    model, _ = load_model(out / "train" / "model.pt")
    data = C.build(C.DataConfig, CONFIG["data"], "data")
    dataset = regional_windows()({"t2m": stores}, model.cfg.num_tokens, C.parse_time(period[0]),
                                 C.parse_time(period[1]))
    base = C.EvaluateConfig(start=period[0], end=period[1], samples=samples, batch_size=32,
                            climatology_start=TRAIN[0], climatology_end=TRAIN[1], climatology_window_hours=1)
    clims = E.climatologies(dataset, data, base)
    tables = {}
    for mode in ("forecast", "temporal_interpolation"):
        cfg = dataclasses.replace(base, mode=mode)
        results = E.run_mode(model, dataset, cfg, 1, clims)
        per = {f: scores.per_sample(ds, E.modes.get(mode).baselines) for f, ds in results.items()}
        tables[mode] = scores.table(per)
        tables[mode].to_csv(out / f"scores_{tag}_{mode}.csv", index=False)
    return ratios(tables)


def ratios(tables: dict[str, pd.DataFrame]) -> dict:
    def mean(t, forecast, metric):
        return t[(t.forecast == forecast) & (t.metric == metric)]["value"].mean()

    f, i = tables["forecast"], tables["temporal_interpolation"]
    return {"forecast_rmse_vs_persistence": mean(f, "atmorep", "rmse") / mean(f, "persistence", "rmse"),
            "interp_rmse_vs_linear": mean(i, "atmorep", "rmse") / mean(i, "linear", "rmse"),
            "spread_skill": mean(f, "atmorep", "ssr"),
            "crps_vs_climatology": mean(f, "atmorep", "crps") / mean(f, "climatology", "crps")}


TARGETS = {"forecast_rmse_vs_persistence": 0.85, "interp_rmse_vs_linear": 1.0, "spread_skill": 1.0,
           "crps_vs_climatology": 1.0}


def plot_curve(out: Path, curve: pd.DataFrame) -> Path:
    """Training loss per step and the validation ratios after each round, with the targets."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    metrics = pd.read_csv(out / "train" / "metrics.csv")
    fig, (a, b) = plt.subplots(1, 2, figsize=(11, 3.8), constrained_layout=True)
    a.plot(metrics["step"], metrics["loss"], lw=0.5, alpha=0.4, label="loss")
    a.plot(metrics["step"], metrics["loss"].rolling(50, min_periods=1).mean(), label="running mean (50)")
    a.set(xlabel="optimizer step", ylabel="training loss", title="training (1-21 March 2019)")
    a.legend()
    for k, target in TARGETS.items():
        line, = b.plot(curve["steps"], curve[f"valid_{k}"], marker="o", label=k)
        b.axhline(target, color=line.get_color(), ls=":", lw=0.8)
    b.set(xlabel="optimizer step", ylabel="ratio (dotted: target)", title="validation (22-24 March 2019)",
          yscale="log")
    b.legend(fontsize=7)
    fig.savefig(out / "learning_curve.png", dpi=100)
    plt.close(fig)
    return out / "learning_curve.png"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--minutes", type=float, default=30.0, help="training budget (wall clock)")
    ap.add_argument("--rounds", type=int, default=6, help="training rounds (learning-curve points)")
    ap.add_argument("--out", type=Path, default=REPO / "benchmarks" / "out" / "skill")
    ap.add_argument("--fresh", action="store_true", help="delete earlier training in --out first")
    ap.add_argument("--samples", type=int, default=512, help="windows per scored period (all if fewer)")
    ap.add_argument("--strategy", default="bert", choices=["bert", "forecast", "temporal_interpolation"],
                    help="training masking strategy (AtmoRep pretrains with bert)")
    ap.add_argument("--worker", help=argparse.SUPPRESS)
    ap.add_argument("--stores", nargs="*", help=argparse.SUPPRESS)
    args = ap.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    if args.worker:
        return worker(json.loads(args.worker), args.out, args.stores)
    if not GRIB.exists():
        sys.exit(f"{GRIB} is missing")
    if args.fresh:
        import shutil

        shutil.rmtree(args.out / "train", ignore_errors=True)
    args.out.mkdir(parents=True, exist_ok=True)
    CONFIG["train"]["masking"] = {**CONFIG["train"]["masking"], "strategy": args.strategy}
    stores = prepare(args.out)
    budget, spent, steps, curve = args.minutes * 60, 0.0, 0, []
    per_step = None
    for r in range(args.rounds):
        left = budget - spent
        if left <= 5:
            break
        # the first round measures the step time; later rounds split what is left evenly
        target = 40 if per_step is None else max(1, int(left / (args.rounds - r) / per_step))
        steps += target
        wall = train_round(args.out, stores, steps)
        spent += wall
        per_step = wall / target
        metrics = pd.read_csv(args.out / "train" / "metrics.csv")
        row = {"round": r, "steps": steps, "train_minutes": spent / 60,
               "train_loss": metrics["loss"].tail(20).mean(),
               **{f"valid_{k}": v for k, v in score(args.out, stores, VALID, args.samples, "valid").items()}}
        curve.append(row)
        log.info("round %d: %s", r, {k: round(v, 4) if isinstance(v, float) else v for k, v in row.items()})
        pd.DataFrame(curve).to_csv(args.out / "learning_curve.csv", index=False)
    test = score(args.out, stores, TEST, args.samples, "test")
    plot_curve(args.out, pd.DataFrame(curve))
    print(pd.DataFrame(curve).to_string(index=False))
    print(" ".join(f"{k}={v:.3f}" for k, v in test.items()))


if __name__ == "__main__":
    main()
