"""Model FLOPs utilisation of the multiformer on one GPU in bf16 (run it on the device machine).

By default it trains the per-field transformer of ``velocity_u`` from the 2024 six-field multiformer
``wc5e2i3t`` (config/models/wc5e2i3t.yaml: D 1024, 6+6 layers, 16 heads, 1080 tokens per sample):
embedding, encoder, decoder and ensemble tail, BERT-masked random batches, bf16 autocast with fp32
weights, fused AdamW. ``--fields all`` takes the whole six-field multiformer with its coupling.

FLOPs, peak and MFU come from the training loop's meter (``atmorep.train.throughput``): the model's
forward + backward matmul FLOPs (attention included, checkpoint recompute not counted) on the masked
tokens, over the bf16 dense datasheet peak of the detected GPU (``PEAK_BF16``; a measured matmul
peak for GPUs not in the table), or ``--peak-tflops``. The last line is ``mfu=<ratio>``.

    python benchmarks/gpu_mfu.py [--config config/models/wc5e2i3t.yaml] [--fields velocity_u]
                                 [--batch 16] [--steps 20] [--compile] [--checkpointing]
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import time

import torch
from _checks import require

from atmorep import architectures
from atmorep.config import LossConfig, MaskingConfig
from atmorep.model import masking, summary
from atmorep.model.batch import Batch
from atmorep.model.multiformer import Multiformer
from atmorep.train.ac import apply_ac
from atmorep.train.losses import Loss
from atmorep.train.throughput import Throughput


def select(spec: architectures.ModelFile, fields: str) -> architectures.ModelFile:
    """The model file restricted to ``fields`` (comma-separated, or 'all'), coupling pruned to them."""
    if fields == "all":
        return spec
    keep = fields.split(",")
    unknown = set(keep) - set(spec.fields)
    if unknown:
        sys.exit(f"fields {sorted(unknown)} are not in the model file (it has {', '.join(spec.fields)})")
    coupling = {f: tuple(g for g in gs if g in keep) for f, gs in spec.model.coupling.items() if f in keep}
    model = dataclasses.replace(
        spec.model, coupling=coupling, field_dims={f: d for f, d in spec.model.field_dims.items() if f in keep}
    )
    return dataclasses.replace(spec, model=model, fields={f: spec.fields[f] for f in keep})


def random_batch(spec: architectures.ModelFile, batch_size: int, device) -> Batch:
    tokens, info = {}, {}
    for f, g in spec.geometry().items():
        shape = (batch_size, g.levels, *(g.num_tokens or spec.model.num_tokens))
        tokens[f] = torch.randn(*shape, g.values_per_token, device=device)
        info[f] = torch.rand(*shape, 8, device=device)
    return Batch(tokens, info)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", default="config/models/wc5e2i3t.yaml")
    ap.add_argument("--fields", default="velocity_u", help="comma-separated fields, or 'all'")
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--warmup", type=int, default=5)
    ap.add_argument("--compile", action="store_true", help="torch.compile the model")
    ap.add_argument("--checkpointing", action="store_true", help="activation checkpointing (recompute not counted)")
    ap.add_argument("--peak-tflops", type=float, default=None)
    ap.add_argument(
        "--device", default="cuda", help="cpu: a smoke test of this script (tests/train/test_throughput.py)"
    )
    args = ap.parse_args()
    if args.device == "cuda" and not torch.cuda.is_available():
        sys.exit("gpu_mfu.py needs a CUDA GPU")
    device = torch.device(args.device)
    torch.backends.cuda.matmul.allow_tf32 = True
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)

    spec = select(architectures.load_any(args.config), args.fields)
    cfg = dataclasses.replace(spec.model, checkpointing=args.checkpointing, compat=False)
    geometry = spec.geometry()
    model = Multiformer(cfg, geometry).to(device).train()
    if cfg.checkpointing:
        apply_ac(model)
    step_model = torch.compile(model) if args.compile else model
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-5, fused=device.type == "cuda")
    loss_fn = Loss(LossConfig())
    gen = torch.Generator().manual_seed(0)
    batch = random_batch(spec, args.batch, device)
    masks = masking.build(MaskingConfig())(batch.to("cpu"), gen)
    masks = masking.Masks({f: m.to(device) for f, m in masks.items()})
    src = masking.apply(batch, masks)
    targets = {f: batch.tokens[f][masks[f]] for f in batch.tokens}

    def step():
        with torch.autocast(device.type, dtype=torch.bfloat16):
            loss, _ = loss_fn(step_model(src.tokens, src.info, masks), targets)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    for _ in range(args.warmup):
        step()
    sync()
    start = time.perf_counter()
    for _ in range(args.steps):
        step()
    sync()
    seconds = (time.perf_counter() - start) / args.steps

    n_tokens = summary.tokens(cfg, geometry)
    masked = sum(int(m.sum()) for m in masks.values()) / (args.batch * sum(n_tokens.values()))
    meter = Throughput(
        cfg, geometry, 1, device, torch.bfloat16, peak=args.peak_tflops * 1e12 if args.peak_tflops else None
    )
    meter.add(args.batch, masks)
    row = meter.step(seconds)
    name = torch.cuda.get_device_name() if device.type == "cuda" else "CPU"
    memory = torch.cuda.max_memory_allocated() if device.type == "cuda" else float("nan")
    params = sum(p.numel() for p in model.parameters())
    print(
        f"device: {name}, torch {torch.__version__}, bf16 autocast, compile {args.compile}, "
        f"checkpointing {args.checkpointing}"
    )
    print(
        f"model: {args.config} fields {','.join(geometry)}, {params:,} parameters, "
        f"{sum(n_tokens.values()):,} tokens per sample, batch {args.batch}, masked fraction {masked:.3f}"
    )
    print(
        f"step: {seconds * 1e3:.1f} ms, {row['samples_per_s']:.1f} samples/s, "
        f"{row['tokens_per_s']:,.0f} tokens/s, "
        f"{row['flop_per_s'] / 1e12:.3g} TFLOP/s of {meter.peak / 1e12:.3g} ({meter.peak_source}), "
        f"peak memory {memory / 2**30:.1f} GiB"
    )
    print(f"mfu={row['mfu']:.4f}")
    require(mfu=row["mfu"])


if __name__ == "__main__":
    main()
