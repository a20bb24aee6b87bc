"""Forward+backward throughput of the multiformer on CPU, fused attention vs explicit softmax.

Builds the model of a run configuration (default: the demo, config/config.yaml) or of a model file
(config/models/*.yaml) twice with the same weights, once with ``attention: sdpa``
(``scaled_dot_product_attention``) and once with ``attention: explicit`` (materialised softmax),
and times forward + backward of the training loss on the same BERT-masked random batch, alternating
the two in rounds and keeping each one's best round. The last line is ``sdpa_speedup=<ratio>``
(explicit time / fused time; above 1 means the fused path is faster).

    python benchmarks/model.py [--config config/config.yaml] [--batch 8] [--steps 10] [--rounds 5]
"""

from __future__ import annotations

import argparse
import dataclasses
import time

import torch
from _checks import require

from atmorep import architectures
from atmorep.config import LossConfig, MaskingConfig
from atmorep.model import masking, summary
from atmorep.model.batch import Batch
from atmorep.model.multiformer import Multiformer
from atmorep.train.losses import Loss


def random_batch(spec: architectures.ModelFile, batch_size: int, gen: torch.Generator) -> Batch:
    """Normal token values and uniform token info in each field's window shape."""
    tokens, info = {}, {}
    for f, g in spec.geometry().items():
        shape = (batch_size, g.levels, *(g.num_tokens or spec.model.num_tokens))
        tokens[f] = torch.randn(*shape, g.values_per_token, generator=gen)
        info[f] = torch.rand(*shape, 8, generator=gen)
    return Batch(tokens, info)


def time_steps(model: Multiformer, batch: Batch, masks, loss_fn: Loss, steps: int) -> float:
    """Seconds for ``steps`` forward+backward passes."""
    src = masking.apply(batch, masks)
    targets = {f: batch.tokens[f][masks[f]] for f in batch.tokens}
    start = time.perf_counter()
    for _ in range(steps):
        loss, _ = loss_fn(model(src.tokens, src.info, masks), targets)
        loss.backward()
    return time.perf_counter() - start


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", default="config/config.yaml", help="run configuration or config/models/*.yaml")
    ap.add_argument("--batch", type=int, default=8, help="samples per step")
    ap.add_argument("--steps", type=int, default=10, help="steps per round")
    ap.add_argument("--rounds", type=int, default=5, help="alternating rounds; the best round counts")
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    spec = architectures.load_any(args.config)
    cfg = dataclasses.replace(spec.model, dropout=0.0, checkpointing=False)
    geometry = spec.geometry()
    torch.manual_seed(0)
    models = {"sdpa": Multiformer(dataclasses.replace(cfg, attention="sdpa"), geometry).train()}
    models["explicit"] = Multiformer(dataclasses.replace(cfg, attention="explicit"), geometry).train()
    models["explicit"].load_state_dict(models["sdpa"].state_dict())

    gen = torch.Generator().manual_seed(0)
    batch = random_batch(spec, args.batch, gen)
    masks = masking.build(MaskingConfig())(batch, gen)
    loss_fn = Loss(LossConfig())
    per_sample = sum(summary.tokens(cfg, geometry).values())

    for model in models.values():  # warm-up
        time_steps(model, batch, masks, loss_fn, 2)
    best = {name: float("inf") for name in models}
    for _ in range(args.rounds):
        for name, model in models.items():
            best[name] = min(best[name], time_steps(model, batch, masks, loss_fn, args.steps))

    print(
        f"config: {args.config}, batch {args.batch}, {per_sample:,} tokens per sample, "
        f"{torch.get_num_threads()} threads, torch {torch.__version__}"
    )
    for name, seconds in best.items():
        print(
            f"{name}: {seconds / args.steps * 1e3:.1f} ms per forward+backward, "
            f"{args.batch * per_sample * args.steps / seconds:,.0f} tokens/s"
        )
    print(f"sdpa_speedup={best['explicit'] / best['sdpa']:.3f}")
    require(sdpa_speedup=best["explicit"] / best["sdpa"])


if __name__ == "__main__":
    main()
