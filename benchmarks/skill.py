"""Science acceptance: train the demo-sized model on real hourly ERA5 and score it on a held-out period.

    python benchmarks/skill.py --minutes 30            # the issue's budget (2 CPU cores)
    python benchmarks/skill.py --minutes 6 --rounds 2  # a short run
    python benchmarks/skill.py --quick                 # seconds of training: the script end to end

Data: ``../shared/data/era5-t2m-uk-hourly`` (2 m temperature, UK, 0.25°, 744 hourly steps of March
2019), through the library's normalize and shard stages (local normalization, as AtmoRep's
temperature). Periods: training 1-21 March, validation 22-24 March (the learning curve), held-out test
25-31 March (scored once, at the end; nothing is chosen on it).

Protocol (AtmoRep's): pre-train with BERT masking, then fine-tune a copy per task from the pre-trained
weights (``train.init_from``): forecast masking for forecasting, temporal-interpolation masking for
interpolation. The budget (wall clock, all training included) is split between the three phases
(``--split``); each phase trains in ``--rounds`` rounds of ``atmorep train`` (plain-torch engine, one
process on 2 threads; a later round resumes the earlier one) and the validation ratios are logged after
every round (``learning_curve.csv``, ``learning_curve.png``).

Prints ``forecast_rmse_vs_persistence=<r> [<low>, <high>] interp_rmse_vs_linear=<r> [...]
spread_skill=<r> [...] crps_vs_climatology=<r> [...]`` (test period; targets <= 0.85, < 1.0,
[0.7, 1.3], < 1.0; in brackets the 95 % interval from a circular block bootstrap over the test init
times): forecast ratios
from the forecast model, the interpolation ratio from the interpolation model. The forecast
ensemble's spread is calibrated as ensemble post-processing does (``evaluate.spread_inflation`` =
1 / the spread-skill ratio of the validation period; the mean is unchanged); the uncalibrated test
figures and the pre-trained model's own ratios are printed on the lines before. Ratios are means
over leads of AtmoRep's score over the baseline's.

The UK grid (-10..2°E) is regional: windows lie inside it and never wrap in longitude.
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

import numpy as np
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
    "normalize": {"method": "local"},
    # 33 x 49 points: 32 rows = 16 tokens of 2 (the odd row is cropped); 49 columns = 7 tokens of 7.
    # 42 values per token: the demo width (64, of which 48 carry values) can hold a token
    "shard": {"token_size": [3, 2, 7], "shard_tokens": [8, 5, 7]},
    # the demo model's size (config/config.yaml); a window is 12 h x 12 rows x the whole 49 columns
    "model": {
        "num_tokens": [4, 6, 7],
        "dim": 64,
        "heads": 4,
        "encoder_layers": 2,
        "decoder_layers": 2,
        "coupling_heads": 1,
        "ensemble": 8,
        "dropout": 0.0,
    },
    "train": {
        "start": TRAIN[0],
        "end": TRAIN[1],
        "batch_size": 16,
        "lr_start": 1e-4,
        "lr": 1e-3,
        "lr_min": 2e-4,
        "warmup_epochs": 1,
        "epoch_steps": 50,
        "weight_decay": 0.025,
        "checkpoint_every": 1000000,
        "masking": {"strategy": "bert", "rate": 0.5},
        "loss": {"terms": ["mse_ensemble", "stats"]},
        "engine": "torch",
        "ranks": 1,
        "tensorboard": False,
    },
}


def prepare(out: Path) -> list[str]:
    """Normalized and sharded t2m of March 2019 (skipped when already there)."""
    from atmorep import config as C
    from atmorep.data import normalize, shards

    method = CONFIG["normalize"]["method"]
    store = out / "shards" / method / "t2m" / "2019.zarr"
    if store.exists():
        return [str(store)]
    data = C.build(C.DataConfig, CONFIG["data"], "data")
    norm = C.build(C.NormalizeConfig, CONFIG["normalize"], "normalize")
    shard_cfg = C.build(C.ShardConfig, CONFIG["shard"], "shard")
    n = normalize.normalize(data, norm, "t2m", "2019-03", GRIB, out / "normalized" / method / "t2m" / "2019-03.zarr")
    return [str(shards.shard(data, shard_cfg, "t2m", "2019", [n], store))]


ATMOREP_LOSS = ["mse_ensemble", "stats"]
FORECAST_LOSS = ATMOREP_LOSS
PHASES = {  # phase -> (masking strategy, phase whose model it starts from, modes it is scored on, loss terms)
    "pretrain": ("bert", None, ("forecast", "temporal_interpolation"), ATMOREP_LOSS),
    "forecast": ("forecast", "pretrain", ("forecast",), FORECAST_LOSS),
    "interpolation": ("temporal_interpolation", "pretrain", ("temporal_interpolation",), ATMOREP_LOSS),
}


def train_round(out: Path, stores: list[str], phase: str, steps: int) -> float:
    """Train ``phase`` (resuming) up to ``steps`` in a fresh process; returns its wall time."""
    strategy, parent, _, loss = PHASES[phase]
    params = {k: CONFIG[k] for k in ("seed", "data", "model")}
    params["train"] = {
        **CONFIG["train"],
        "steps": steps,
        "checkpoint_every": steps,
        "masking": {**CONFIG["train"]["masking"], "strategy": strategy},
        "loss": {"terms": list(loss)},
        "init_from": str(out / parent / "model.safetensors") if parent else None,
    }
    env = {**os.environ, "OMP_NUM_THREADS": "2", "MKL_NUM_THREADS": "2"}
    t0 = time.perf_counter()
    subprocess.run(
        [sys.executable, __file__, "--worker", json.dumps(params), "--out", str(out / phase), "--stores", *stores],
        check=True,
        env=env,
    )
    return time.perf_counter() - t0


def worker(params: dict, out: Path, stores: list[str]) -> None:
    import torch

    from atmorep import config as C
    from atmorep.train import loop

    torch.set_num_threads(2)
    loop.train(
        params["seed"],
        C.section(params, "data"),
        C.section(params, "model"),
        C.section(params, "train"),
        {"t2m": stores},
        out,
    )


def score(
    model_path: Path, stores: list[str], period: tuple[str, str], samples: int, modes, tag: str, inflation: float = 1.0
) -> dict:
    """Scores of one model on ``period`` in the given modes, as ratios to the baselines."""
    from atmorep import config as C
    from atmorep.data.dataset import WindowDataset
    from atmorep.eval import evaluate as E
    from atmorep.eval import scores
    from atmorep.model.file import load_model

    model, _ = load_model(model_path)
    data = C.build(C.DataConfig, CONFIG["data"], "data")
    dataset = WindowDataset({"t2m": stores}, model.cfg.num_tokens, C.parse_time(period[0]), C.parse_time(period[1]))
    base = C.EvaluateConfig(
        start=period[0],
        end=period[1],
        samples=samples,
        batch_size=32,
        climatology_start=TRAIN[0],
        climatology_end=TRAIN[1],
        climatology_window_hours=1,
        spread_inflation=inflation,
    )
    clims = E.climatologies(dataset.stores, data, base)
    per = {}
    for mode in modes:
        results = E.run_mode(model, dataset, dataclasses.replace(base, mode=mode), 1, clims)
        per[mode] = scores.per_sample(results["t2m"], E.modes.get(mode).baselines)
        scores.table({"t2m": per[mode]}).to_csv(model_path.parent / f"scores_{tag}_{mode}.csv", index=False)
    return ratios(per)


RATIOS = {  # name -> (mode, metric, baseline)
    "forecast_rmse_vs_persistence": ("forecast", "rmse", "persistence"),
    "interp_rmse_vs_linear": ("temporal_interpolation", "rmse", "linear"),
    "spread_skill": ("forecast", "ssr", None),
    "crps_vs_climatology": ("forecast", "crps", "climatology"),
}


def ratios(per: dict) -> dict:
    """name -> (ratio, 95 % low, high): block bootstrap over the init times (atmorep.eval.scores.ratio)."""
    from atmorep.eval import scores

    return {
        k: scores.ratio(per[mode], metric, baseline) for k, (mode, metric, baseline) in RATIOS.items() if mode in per
    }


def shown(k: str, r: tuple[float, float, float]) -> str:
    return f"{k}={r[0]:.3f} [{r[1]:.3f}, {r[2]:.3f}]"


TARGETS = {
    "forecast_rmse_vs_persistence": 0.85,
    "interp_rmse_vs_linear": 1.0,
    "spread_skill": 1.0,
    "crps_vs_climatology": 1.0,
}
ORDER = tuple(TARGETS)  # the order of the last line


def plot_curve(out: Path, curve: pd.DataFrame) -> Path:
    """Training loss of every phase and the validation ratios after each round, against training minutes."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (a, b) = plt.subplots(1, 2, figsize=(12, 4), constrained_layout=True)
    for phase in PHASES:
        rows = curve[curve.phase == phase]
        if not len(rows) or not (out / phase / "metrics.csv").exists():
            continue
        m = pd.read_csv(out / phase / "metrics.csv")
        a.plot(
            m["step"],
            m["loss"].rolling(50, min_periods=1).mean(),
            label=f"{phase} ({PHASES[phase][0]} masking, {' + '.join(PHASES[phase][3])})",
        )
    a.set(
        xlabel="optimizer step of the phase",
        ylabel="training loss (running mean of 50)",
        title="training (1-21 March 2019)",
    )
    a.legend(fontsize=7)
    for k, target in TARGETS.items():
        line = None
        for phase, marker in zip(PHASES, "os^"):
            rows = curve[(curve.phase == phase) & curve[f"valid_{k}"].notna()]
            if len(rows):
                (line,) = b.plot(
                    rows["train_minutes"],
                    rows[f"valid_{k}"],
                    marker=marker,
                    ls="-",
                    color=None if line is None else line.get_color(),
                    label=k if line is None else None,
                )
        if line is not None:
            b.axhline(target, color=line.get_color(), ls=":", lw=0.8)
    b.set(
        xlabel="training minutes (all phases; o pretrain, s forecast, ^ interpolation)",
        ylabel="ratio (dotted: target)",
        title="validation (22-24 March 2019)",
        yscale="log",
    )
    b.legend(fontsize=7)
    fig.savefig(out / "learning_curve.png", dpi=100)
    plt.close(fig)
    return out / "learning_curve.png"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--minutes", type=float, default=30.0, help="training budget of all phases (wall clock)")
    ap.add_argument(
        "--split",
        default="0.4,0.3,0.3",
        help="shares of the budget for pretrain, forecast and interpolation fine-tuning",
    )
    ap.add_argument("--rounds", type=int, default=3, help="training rounds per phase (learning-curve points)")
    ap.add_argument("--out", type=Path, default=REPO / "benchmarks" / "out" / "skill")
    ap.add_argument("--fresh", action="store_true", help="delete earlier training in --out first")
    ap.add_argument("--samples", type=int, default=512, help="windows per scored period (all if fewer)")
    ap.add_argument(
        "--normalization",
        default=CONFIG["normalize"]["method"],
        choices=["global", "local"],
        help="statistics the data are normalized with (one store per method under --out)",
    )
    ap.add_argument(
        "--phases",
        default=",".join(PHASES),
        help="phases to (re)train, comma-separated; the others' models and learning-curve rows are "
        "kept from --out ('' only scores)",
    )
    ap.add_argument(
        "--steps",
        type=int,
        default=0,
        help="optimizer steps per round instead of the time budget's (0: from the budget)",
    )
    ap.add_argument(
        "--quick",
        action="store_true",
        help="smallest setting (seconds of training, 64 windows): checks the script end to end, "
        "its ratios mean nothing; implies --fresh --rounds 1 --steps 4 --samples 64 and "
        "--out benchmarks/out/skill-quick unless given",
    )
    ap.add_argument("--worker", help=argparse.SUPPRESS)
    ap.add_argument("--stores", nargs="*", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.quick:
        args.fresh, args.rounds, args.steps, args.samples = True, 1, args.steps or 4, min(args.samples, 64)
        if args.out == REPO / "benchmarks" / "out" / "skill":
            args.out = REPO / "benchmarks" / "out" / "skill-quick"
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    if args.worker:
        return worker(json.loads(args.worker), args.out, args.stores)
    if not GRIB.exists():
        sys.exit(f"{GRIB} is missing")
    run = [p for p in args.phases.split(",") if p]  # none: score the models already in --out
    unknown = set(run) - set(PHASES)
    if unknown:
        sys.exit(f"--phases: unknown {sorted(unknown)} (phases: {', '.join(PHASES)})")
    if args.fresh:
        import shutil

        for phase in run:
            shutil.rmtree(args.out / phase, ignore_errors=True)
    args.out.mkdir(parents=True, exist_ok=True)
    CONFIG["normalize"]["method"] = args.normalization
    shares = dict(zip(PHASES, map(float, args.split.split(","))))
    stores = prepare(args.out)
    old = args.out / "learning_curve.csv"
    earlier = pd.read_csv(old) if old.exists() and set(run) != set(PHASES) else pd.DataFrame()
    kept = [r for r in earlier.to_dict("records") if r["phase"] not in run]
    missing = [p for p in PHASES if p not in run and not any(r["phase"] == p for r in kept)]
    if missing:
        sys.exit(f"--phases {args.phases}: phases {missing} have not been trained in {args.out}")
    curve, per_step = [], None
    for phase, (_, _, modes, _) in PHASES.items():
        if phase not in run:
            curve += [r for r in kept if r["phase"] == phase]
            continue
        budget, used, steps = args.minutes * 60 * shares[phase], 0.0, 0
        for r in range(args.rounds):
            left = budget - used
            if left <= 5:
                break
            # the very first round measures the step time; later rounds split what is left evenly
            target = args.steps or (40 if per_step is None else max(1, int(left / (args.rounds - r) / per_step)))
            steps += target
            wall = train_round(args.out, stores, phase, steps)
            used += wall
            per_step = wall / target
            metrics = pd.read_csv(args.out / phase / "metrics.csv")
            valid = score(args.out / phase / "model.safetensors", stores, VALID, args.samples, modes, "valid")
            row = {
                "phase": phase,
                "round": r,
                "steps": steps,
                "phase_minutes": used / 60,
                "train_loss": metrics["loss"].tail(20).mean(),
                **{f"valid_{k}": v[0] for k, v in valid.items()},
            }
            curve.append(row)
            log.info(
                "%s round %d: %s", phase, r, {k: round(v, 4) if isinstance(v, float) else v for k, v in row.items()}
            )
            pd.DataFrame(curve).to_csv(args.out / "learning_curve.csv", index=False)
    curve = pd.DataFrame(curve)
    ends = curve.groupby("phase", sort=False)["phase_minutes"].max()
    curve["train_minutes"] = curve["phase_minutes"] + curve["phase"].map(ends.cumsum() - ends)
    curve.to_csv(args.out / "learning_curve.csv", index=False)
    spent = float(ends.sum()) * 60
    plot_curve(args.out, curve)
    print(curve.to_string(index=False))
    # spread calibration (evaluate.spread_inflation), fitted on the validation period only
    inflation = 1 / curve[curve.phase == "forecast"]["valid_spread_skill"].iloc[-1]
    pre = score(args.out / "pretrain" / "model.safetensors", stores, TEST, args.samples, PHASES["pretrain"][2], "test")
    raw = score(args.out / "forecast" / "model.safetensors", stores, TEST, args.samples, ("forecast",), "test_raw")
    test = {
        **score(
            args.out / "forecast" / "model.safetensors", stores, TEST, args.samples, ("forecast",), "test", inflation
        ),
        **score(
            args.out / "interpolation" / "model.safetensors",
            stores,
            TEST,
            args.samples,
            ("temporal_interpolation",),
            "test",
        ),
    }
    print(
        f"training: {spent / 60:.1f} min in all; pre-trained model only (test): "
        + " ".join(shown(k, pre[k]) for k in ORDER)
    )
    print(
        f"forecast model before spread calibration (test): {shown('spread_skill', raw['spread_skill'])} "
        f"{shown('crps_vs_climatology', raw['crps_vs_climatology'])}; spread_inflation={inflation:.3f} "
        "(1 / the validation spread-skill ratio)"
    )
    if any(not np.isfinite(v) for r in test.values() for v in r):
        sys.exit("a test ratio or its interval is not finite: " + " ".join(shown(k, test[k]) for k in ORDER))
    print(" ".join(shown(k, test[k]) for k in ORDER))


if __name__ == "__main__":
    main()
