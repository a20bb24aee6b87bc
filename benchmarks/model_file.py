"""The model file: atmorep's safetensors file (card + sha256 verified on load) against a torch pickle
read with ``torch.load(weights_only=True)``, the other way to load without running code.

    python benchmarks/model_file.py [--model config/models/velocity_u_2024.yaml] [--repeats 3]
    python benchmarks/model_file.py --quick   # seconds: the demo's model (config/config.yaml)

The same fp32 weights of the model (random, on the CPU), written and read back alternately
``--repeats`` times, page cache warm, the median of each compared; every load ends with the weights
in a model (``load_state_dict``), so each reads every byte:

- ours: :func:`atmorep.model.file.save_model` (safetensors, then the digest sealed in) and
  :func:`~atmorep.model.file.load_state` (the whole file hashed, then the tensors memory-mapped);
- ``safetensors_only``: the same file's tensors without the digest check (what the check costs);
- torch: ``torch.save({"state_dict": ..., "card": ...})`` and ``torch.load(weights_only=True)``.

Both loads are checked bit for bit against the weights. Last line: ``load_torch_vs_ours=<torch load
seconds / ours>`` ``save_torch_vs_ours=<...>`` ``verify_share=<hashing share of our load>``
(exits 1 when a load differs or a time could not be measured).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch
from _checks import require
from safetensors.torch import load_file

from atmorep import architectures
from atmorep.model import file as F
from atmorep.model.multiformer import Multiformer

REPO = Path(__file__).resolve().parents[1]


def timed(fn) -> tuple[float, object]:
    t0 = time.perf_counter()
    out = fn()
    return time.perf_counter() - t0, out


def same(a: dict, b: dict) -> bool:
    return set(a) == set(b) and all(torch.equal(a[k], b[k]) for k in a)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", type=Path, default=REPO / "config" / "models" / "velocity_u_2024.yaml")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--quick", action="store_true", help="the demo's small model, one repeat")
    args = ap.parse_args(argv)
    path, repeats = (REPO / "config" / "config.yaml", 1) if args.quick else (args.model, args.repeats)
    spec = architectures.load_any(path)
    torch.manual_seed(0)
    model = Multiformer(spec.model, spec.geometry())
    state = {k: v.detach().float().contiguous() for k, v in model.state_dict().items()}
    params = sum(v.numel() for v in state.values())
    card = {"note": "benchmark"}
    target = Multiformer(spec.model, spec.geometry())

    def into(weights: dict) -> tuple[dict, None]:
        target.load_state_dict(weights)
        return weights, None

    times: dict[str, list[float]] = {k: [] for k in ("save", "load", "safetensors_only", "torch_save", "torch_load")}
    with tempfile.TemporaryDirectory() as tmp:
        ours, theirs = Path(tmp) / "model.safetensors", Path(tmp) / "model.pt"
        for _ in range(repeats):
            times["save"].append(timed(lambda: F.save_model(ours, model, state, card))[0])
            t, (got, _) = timed(lambda: into(F.load_state(ours)[0]))
            times["load"].append(t)
            ok = same(state, got)
            t, (raw, _) = timed(lambda: into(load_file(str(ours))))
            times["safetensors_only"].append(t)
            t, _ = timed(lambda: torch.save({"state_dict": state, "card": card}, theirs))
            times["torch_save"].append(t)
            t, (rec, _) = timed(lambda: into(torch.load(theirs, map_location="cpu", weights_only=True)["state_dict"]))
            times["torch_load"].append(t)
            if not (ok and same(state, rec) and same(state, raw)):
                print("a load differs from the weights written", file=sys.stderr)
                return 1
        size, size_pt = ours.stat().st_size, theirs.stat().st_size
    med = {k: statistics.median(v) for k, v in times.items()}
    print(
        f"model {spec.description or path}: {params:,} parameters, {size / 1e6:.1f} MB "
        f"(torch file {size_pt / 1e6:.1f} MB)"
    )
    for k, v in med.items():
        print(f"  {k}: {v:.3f} s (median of {repeats}; {size / 1e6 / v:.0f} MB/s)")
    load_ratio = med["torch_load"] / med["load"]
    save_ratio = med["torch_save"] / med["save"]
    share = max(med["load"] - med["safetensors_only"], 1e-9) / med["load"]
    print(f"load_torch_vs_ours={load_ratio:.2f} save_torch_vs_ours={save_ratio:.2f} verify_share={share:.2f}")
    require(load_torch_vs_ours=load_ratio, save_torch_vs_ours=save_ratio, verify_share=share)
    return 0


if __name__ == "__main__":
    sys.exit(main())
