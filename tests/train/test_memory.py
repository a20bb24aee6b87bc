"""The fit planner: its memory model's parts, its recommendations, the CLI lines, and the benchmark
that checks the model against real 2-rank DeepSpeed steps (quick setting)."""

from __future__ import annotations

import dataclasses
import os
import subprocess
import sys

import pytest
from conftest import REPO

from atmorep import architectures, cli
from atmorep.train import memory as M

BIG = REPO / "config" / "models" / "wc5e2i3t.yaml"  # 741 M parameters, 5,664 tokens per sample


@pytest.fixture(scope="module")
def big():
    spec = architectures.load_model_file(BIG)
    return spec.model, spec.geometry(), M.parameter_sizes(spec.model, spec.geometry())


def test_zero_partitions_model_states_over_ranks(big):
    cfg, geo, sizes = big
    P = sum(sizes)

    def est(world, **kw):
        return M.estimate(cfg, geo, M.Setup(**{"micro_batch": 1, **kw}), world, sizes=sizes)

    one, eight = est(1, zero_stage=1), est(8, zero_stage=1)
    assert one.optimizer == pytest.approx(12 * P) and eight.optimizer == pytest.approx(12 * P / 8)
    assert one.weights == eight.weights == 2 * P  # bf16 weights stay whole below stage 3
    z2, z3 = est(8, zero_stage=2), est(8, zero_stage=3)
    assert z2.gradients == pytest.approx(2 * P / 8) and z2.buffers == 2 * M.REDUCE_BUCKET
    assert z3.weights < z2.weights / 3
    assert est(8, zero_stage=3, offload_optimizer=True).optimizer == 0
    assert est(8, zero_stage=3, offload_params=True).weights < z3.weights
    with pytest.raises(ValueError, match="offload_params"):
        est(8, zero_stage=2, offload_params=True)
    plain, ckpt = est(8, zero_stage=2), est(8, zero_stage=2, checkpointing=True)
    assert ckpt.activations < plain.activations / 3
    assert est(8, zero_stage=2, micro_batch=4).activations == pytest.approx(4 * plain.activations)


def test_what_does_not_fit_at_stage_1_gets_stage_3_or_offload(big):
    cfg, geo, sizes = big
    device, world = 3 * 2**30, 8
    stage1 = M.estimate(cfg, geo, M.Setup(zero_stage=1, micro_batch=1), world, sizes=sizes)
    assert stage1.peak > M.HEADROOM * device
    fit = M.recommend(cfg, geo, device, world=world, batch_size=1)
    assert fit.setup.zero_stage == 3 or fit.setup.offload_optimizer
    assert fit.estimate.peak <= M.HEADROOM * device
    assert fit.setup.checkpointing  # tried before offload, and not enough alone
    # with room to spare the cheapest option is taken
    roomy = M.recommend(cfg, geo, 141e9, world=world, batch_size=1)
    assert roomy.setup == M.Setup(zero_stage=1, micro_batch=1) and roomy.gradient_accumulation == 1


def test_a_batch_that_does_not_fit_is_split_into_micro_batches(big):
    cfg, geo, sizes = big
    fit = M.recommend(cfg, geo, 80 * 2**30, world=8, batch_size=512)
    assert fit.setup.micro_batch < 512 and fit.gradient_accumulation * fit.setup.micro_batch >= 512
    assert "micro-batch 512 does not fit" in fit.reason


def test_nothing_fits_says_so_and_what_to_change(big):
    cfg, geo, _ = big
    fit = M.recommend(cfg, geo, 256 * 2**20, world=1, batch_size=8)
    assert fit.setup is None and "does not fit" in fit.text() and "more ranks" in fit.text()


def test_plan_and_dry_run_print_the_recommendation(capsys):
    argv = ["train", "--dry-run", "--config", str(BIG), "--device-memory", "3GiB", "--ranks", "8"]
    assert cli.main(argv) == 0
    out = capsys.readouterr().out
    line = out.strip().splitlines()[-1]
    assert line.startswith("fit on 8 GPU(s) of 3GiB: ZeRO-3")
    assert "offload" in line and "does not fit" in line
    assert (
        cli.main(
            ["plan", "--config", str(REPO / "config" / "campaigns" / "quickstart.yaml"), "--device-memory", "80GB"]
        )
        == 0
    )
    assert "\nfit on 4 GPU(s) of 80GB: ZeRO-" in capsys.readouterr().out
    assert cli.main(["train", "--dry-run", "--config", str(BIG), "--device-memory", "lots"]) == 1
    assert "--device-memory" in capsys.readouterr().err


@pytest.mark.slow
@pytest.mark.distributed
def test_memory_model_benchmark_quick():
    env = {**os.environ, "PATH": f"{os.path.dirname(sys.executable)}{os.pathsep}{os.environ['PATH']}"}
    r = subprocess.run(
        [sys.executable, str(REPO / "benchmarks" / "memory_model.py"), "--quick"],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert r.returncode == 0, r.stdout + r.stderr[-3000:]
    last = r.stdout.strip().splitlines()[-1]
    assert last.startswith("memory_model_max_error=") and float(last.split("=")[1]) <= 0.25


def test_an_inputs_only_field_keeps_no_decoder_or_tail_activations():
    """The memory model reads the FLOP count's block table: an inputs-only field has no decoder and no
    ensemble tail, so its activations are those of its encoder (and its input batch) only."""
    from atmorep.config import ModelConfig
    from atmorep.model import summary
    from atmorep.model.multiformer import FieldGeometry

    geo = {f: FieldGeometry(1, (2, 9, 9)) for f in ("t2m", "u10")}
    both = ModelConfig(
        num_tokens=(3, 3, 6), dim=64, heads=4, encoder_layers=2, decoder_layers=2, ensemble=8, dropout=0.0
    )
    one = dataclasses.replace(both, inputs_only=("u10",))
    plain_both, ckpt_both, _ = M.activation_bytes(both, geo, gpu=True, masked_fraction=0.5)
    plain_one, ckpt_one, _ = M.activation_bytes(one, geo, gpu=True, masked_fraction=0.5)
    N, D, P = 3 * 3 * 6, 64, 2 * 9 * 9
    # u10's decoder (2 layers x 16 D bf16 values per token) and its tail (2 D bf16 + 3 fp32 ensembles
    # of E x P per masked token) are gone; its encoder and its input batch stay
    decoder, tail = 2 * N * 16 * D * 2, 0.5 * N * (2 * D * 2 + 3 * 8 * P * 4)
    assert plain_both - plain_one == pytest.approx(decoder + tail)
    assert ckpt_both - ckpt_one == pytest.approx(2 * N * D * 2 + tail)  # checkpointing kept u10's decoder inputs
    # the FLOP count drops the same blocks
    assert summary.training_flops(one, geo, 0.5) < summary.training_flops(both, geo, 0.5)
    assert summary.blocks(one, geo)["u10"].decoder_layers == 0 and not summary.blocks(one, geo)["u10"].tail
