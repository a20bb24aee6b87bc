"""Model FLOPs per training sample against torch's FLOP counter, the peak table, and the meter's
arithmetic (the 2-rank metrics.csv columns are checked in test_distributed.py)."""

from __future__ import annotations

import dataclasses

import pytest
import torch
from conftest import REPO
from torch.utils.flop_counter import FlopCounterMode

from atmorep import architectures
from atmorep.model import summary
from atmorep.model.multiformer import Multiformer
from atmorep.train import throughput as T


def _demo(**overrides):
    spec = architectures.load_any(REPO / "config" / "config.yaml")
    return dataclasses.replace(spec.model, **overrides), spec.geometry()


def _inputs(cfg, geo, B, rate, seed=0):
    g = torch.Generator().manual_seed(seed)
    tok, info, mask = {}, {}, {}
    for f, geom in geo.items():
        shape = (B, geom.levels, *cfg.num_tokens)
        tok[f] = torch.randn(*shape, geom.values_per_token, generator=g)
        info[f] = torch.rand(*shape, 8, generator=g)
        mask[f] = torch.rand(*shape, generator=g) < rate
    return tok, info, mask


@pytest.mark.parametrize("rate", [0.5, 1.0])
def test_training_flops_of_the_demo_match_torch_flop_counter(rate):
    # explicit attention: the counter has no formula for CPU's fused SDPA kernel
    cfg, geo = _demo(attention="explicit")
    B = 3
    model = Multiformer(cfg, geo)
    tok, info, mask = _inputs(cfg, geo, B, rate)
    with FlopCounterMode(display=False) as counter:
        out = model(tok, info, mask)
        sum(o.square().mean() for o in out.values()).backward()
    n = summary.tokens(cfg, geo)
    masked = sum(int(m.sum()) for m in mask.values()) / (B * sum(n.values()))
    predicted = summary.training_flops(cfg, geo, masked) * B
    # the tail folds its LayerNorm bias into an offset once per call, not per sample: 3 x 2 E P D per field
    fold = 3 * sum(2 * cfg.ensemble * g.values_per_token * cfg.dim for g in geo.values())
    assert predicted + fold == pytest.approx(counter.get_total_flops(), rel=1e-9)
    # the forward alone is a third of it only approximately: the embedding has no input gradient
    assert 2.9 < predicted / (summary.forward_flops(cfg, geo, masked) * B) < 3.0


def test_meter_counts_the_masked_tail_tokens_and_divides_by_the_peak():
    cfg, geo = _demo()
    meter = T.Throughput(cfg, geo, world=1, device=torch.device("cpu"), dtype=torch.float32)
    assert meter.peak > 1e8 and "measured" in meter.peak_source
    _, _, mask = _inputs(cfg, geo, 4, 0.5)
    meter.add(4, mask)
    meter.add(4, mask)
    row = meter.step(2.0)
    masked = sum(int(m.sum()) for m in mask.values()) / (4 * sum(summary.tokens(cfg, geo).values()))
    assert row["samples_per_s"] == 4
    assert row["tokens_per_s"] == 4 * 216
    assert row["flop_per_s"] == pytest.approx(8 * summary.training_flops(cfg, geo, masked) / 2.0)
    assert row["mfu"] == pytest.approx(row["flop_per_s"] / meter.peak)
    meter.add(4, mask)
    meter.step(1.0)
    assert meter.summary().startswith("4 samples/s, 864 tokens/s")  # the warm-up step left out


def test_peak_table_matches_device_names_most_specific_first():
    assert T.table_peak("NVIDIA H100 PCIe") == 756.5e12
    assert T.table_peak("NVIDIA H100 80GB HBM3") == 989.4e12
    assert T.table_peak("NVIDIA GH200 480GB") == T.table_peak("NVIDIA H200") == 989.4e12
    assert T.table_peak("NVIDIA A100-SXM4-80GB") == 312e12
    assert T.table_peak("AMD Instinct MI250X/MI250") == 191.5e12  # one GCD
    assert T.table_peak("AMD Instinct MI300X") == 1307.4e12
    assert T.table_peak("NVIDIA GeForce GTX 1080") is None


def test_cpu_peak_is_measured_in_the_training_dtype():
    peak, source = T.device_peak(torch.device("cpu"), torch.float32)
    assert source == "CPU float32 matmul measured at start"
    assert 1e8 < peak < 1e13
    assert T.training_dtype("torch") == torch.float32


@pytest.mark.slow
def test_gpu_mfu_benchmark_runs_its_meter_on_cpu():
    """benchmarks/gpu_mfu.sh's script, smoke-tested on CPU (no GPU here): it ends with mfu=."""
    import subprocess
    import sys

    cmd = [
        sys.executable,
        str(REPO / "benchmarks" / "gpu_mfu.py"),
        "--device",
        "cpu",
        "--config",
        str(REPO / "config" / "config.yaml"),
        "--fields",
        "t2m",
        "--batch",
        "2",
        "--steps",
        "1",
        "--warmup",
        "1",
    ]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    lines = r.stdout.strip().splitlines()
    assert "CPU bfloat16 matmul measured at start" in lines[-2]
    assert lines[-1].startswith("mfu=") and 0 < float(lines[-1][4:]) < 1
