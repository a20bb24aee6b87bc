"""Attention-map extraction against plain inference (issue target: one layer <= 1.3x the time).

    python benchmarks/attention.py                 # demo model (config/config.yaml) and an AtmoRep-shaped one
    python benchmarks/attention.py --repeats 20
    python benchmarks/attention.py --models demo --repeats 1 --threads 1   # the smallest setting (seconds)

Plain inference is ``model(tokens, info, mask)`` with forecast masking (fused attention kernel, whole
encoder, decoder and ensemble tail). Extraction is :func:`atmorep.eval.attention.capture` for one
encoder layer of one field: the encoder runs up to that layer, then softmax(q k^T) of all its self
heads is recomputed. The worst case is the last encoder layer; the ratio printed is that one.
Prints one line per model and ``attention_extraction_vs_inference=<worst ratio>`` last.
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np
import torch
from _checks import require

from atmorep.config import ModelConfig
from atmorep.eval.attention import capture
from atmorep.model import masking
from atmorep.model.batch import Batch
from atmorep.model.multiformer import FieldGeometry, Multiformer

MODELS = {
    # config/config.yaml's demo model: 4 coupled surface fields, 54 tokens each, batch 16
    "demo": (
        ModelConfig(
            num_tokens=(3, 3, 6),
            dim=64,
            heads=4,
            encoder_layers=2,
            decoder_layers=2,
            coupling_heads=1,
            coupling={"t2m": ("u10", "v10"), "u10": ("v10", "msl"), "v10": ("u10", "msl"), "msl": ("u10", "v10")},
            ensemble=8,
            dropout=0.0,
        ),
        {f: FieldGeometry(1, (2, 9, 9)) for f in ("t2m", "u10", "v10", "msl")},
        16,
    ),
    # AtmoRep's token grid (12 x 6 x 12 tokens of 3 x 9 x 9) for one field, narrower and shallower
    "atmorep_grid": (
        ModelConfig(
            num_tokens=(12, 6, 12), dim=256, heads=8, encoder_layers=4, decoder_layers=4, ensemble=8, dropout=0.0
        ),
        {"t": FieldGeometry(1, (3, 9, 9))},
        2,
    ),
}


def batch(model: Multiformer, B: int) -> Batch:
    g = torch.Generator().manual_seed(0)
    T, Y, X = model.cfg.num_tokens
    tokens = {
        f: torch.randn(B, geo.levels, T, Y, X, geo.values_per_token, generator=g) for f, geo in model.fields.items()
    }
    info = {f: torch.rand(B, geo.levels, T, Y, X, 8, generator=g) for f, geo in model.fields.items()}
    return Batch(tokens, info)


def timed(fn, repeats: int) -> float:
    fn()  # warm-up
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def run(name: str, repeats: int) -> float:
    cfg, fields, B = MODELS[name]
    torch.manual_seed(0)
    model = Multiformer(cfg, fields).eval()
    b = batch(model, B)
    masks = masking.ForecastMasking(1)(b)
    source = masking.apply(b, masks)
    field = next(iter(fields))
    with torch.no_grad():
        plain = timed(lambda: model(source.tokens, source.info, masks), repeats)
    ratios = []
    for layer in range(cfg.encoder_layers):
        t = timed(lambda layer=layer: capture(model, source.tokens, source.info, {field: [layer]}), repeats)
        ratios.append(t / plain)
    N = int(np.prod(cfg.num_tokens))
    print(
        f"{name}: batch {B}, {len(fields)} field(s), {N} tokens/field, {cfg.encoder_layers} encoder layers: "
        f"inference {plain * 1e3:.1f} ms; extraction/inference per layer "
        + " ".join(f"L{k}={r:.2f}" for k, r in enumerate(ratios))
    )
    return max(ratios)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--repeats", type=int, default=10)
    ap.add_argument("--models", nargs="+", default=list(MODELS), choices=list(MODELS))
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    worst = max(run(m, args.repeats) for m in args.models)
    print(f"attention_extraction_vs_inference={worst:.2f}")
    require(attention_extraction_vs_inference=worst)


if __name__ == "__main__":
    main()
