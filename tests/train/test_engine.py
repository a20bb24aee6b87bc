import pytest

from atmorep.config import TrainConfig
from atmorep.train.engine import deepspeed_config, schedule


@pytest.mark.parametrize("stage, world, gpu, accum", [(1, 2, False, 1), (2, 4, True, 3), (3, 1, False, 2)])
def test_deepspeed_config_is_derived_from_ours(stage, world, gpu, accum):
    cfg = TrainConfig(batch_size=6, zero_stage=stage, gradient_accumulation=accum)
    ds = deepspeed_config(cfg, world, gpu)
    assert ds["train_batch_size"] == 6 * accum * world
    assert ds["train_micro_batch_size_per_gpu"] == 6 and ds["gradient_accumulation_steps"] == accum
    zero = ds["zero_optimization"]
    assert zero["stage"] == stage
    # on CPU (gloo), stages 1-2 all-reduce gradients like DDP instead of emulating reduce-scatter
    assert zero.get("reduce_scatter", True) is (gpu or stage == 3)
    assert ds["bf16"]["enabled"] is gpu
    assert "gradient_clipping" not in ds


def test_deepspeed_config_offload_and_clipping():
    ds = deepspeed_config(
        TrainConfig(zero_stage=3, offload_optimizer=True, offload_params=True, gradient_clipping=1.0), 2, False
    )
    assert ds["zero_optimization"]["offload_optimizer"]["device"] == "cpu"
    assert ds["zero_optimization"]["offload_param"]["device"] == "cpu"
    assert ds["gradient_clipping"] == 1.0
    with pytest.raises(ValueError, match="zero_stage 3"):
        deepspeed_config(TrainConfig(zero_stage=2, offload_params=True), 2, False)


def test_schedule_is_atmoreps():
    cfg = TrainConfig(lr_start=1e-5, lr=2e-5, lr_min=1.5e-5, lr_decay=1.025, warmup_epochs=3, epoch_steps=10)
    lr = [cfg.lr * schedule(cfg)(s) for s in range(200)]
    assert lr[0] == pytest.approx(1e-5)
    assert lr[15] == pytest.approx(1.5e-5)  # halfway through the 30 warm-up steps
    assert lr[30] == pytest.approx(2e-5 / 1.025)  # first epoch after warm-up: one division
    assert lr[39] == lr[30] and lr[40] == pytest.approx(2e-5 / 1.025**2)  # constant within an epoch
    assert min(lr[30:]) == pytest.approx(1.5e-5) and lr[-1] == pytest.approx(1.5e-5)  # the floor


def test_non_finite_step_is_skipped_and_leaves_weights_alone():
    import torch

    from atmorep.train.engine import TorchEngine

    model = torch.nn.Linear(3, 2)
    engine = TorchEngine(model, TrainConfig(lr=0.1, lr_start=0.1, lr_min=0.1, warmup_epochs=0), world=1)
    before = [p.detach().clone() for p in model.parameters()]
    x = torch.ones(4, 3)
    assert engine.step(engine(x).sum() * float("nan")) is False
    assert all(torch.equal(a, b) for a, b in zip(before, model.parameters()))
    assert engine.step(engine(x).sum()) is True
    assert not all(torch.equal(a, b) for a, b in zip(before, model.parameters()))


def test_torch_engine_accumulates_micro_steps_like_one_big_batch():
    import torch

    from atmorep.train.engine import TorchEngine

    cfg = TrainConfig(lr=0.1, lr_start=0.1, lr_min=0.1, warmup_epochs=0, gradient_accumulation=2)
    x, y = torch.randn(4, 3, generator=torch.Generator().manual_seed(0)), torch.zeros(4, 2)
    torch.manual_seed(1)
    a = torch.nn.Linear(3, 2)
    b = torch.nn.Linear(3, 2)
    b.load_state_dict(a.state_dict())
    acc = TorchEngine(a, cfg, world=1)
    before = [p.detach().clone() for p in a.parameters()]
    acc.step(((acc(x[:2]) - y[:2]) ** 2).mean())
    assert all(torch.equal(p, q) for p, q in zip(before, a.parameters()))  # no update mid-accumulation
    acc.step(((acc(x[2:]) - y[2:]) ** 2).mean())
    one = TorchEngine(b, TrainConfig(lr=0.1, lr_start=0.1, lr_min=0.1, warmup_epochs=0), world=1)
    one.step(((one(x) - y) ** 2).mean())
    for p, q in zip(a.parameters(), b.parameters()):
        torch.testing.assert_close(p, q)


def test_a_single_process_run_leaves_no_launcher_variables_behind():
    """In-process training (the label-efficiency benchmark, a notebook) sets RANK, MASTER_PORT, ... for
    itself; they used to stay in os.environ, so a second run or a subprocess took them for a launcher's
    (a benchmark started after test_finetune failed with EADDRINUSE). finish() removes what init() set."""
    import json
    import os
    import subprocess
    import sys

    code = (
        "import json, os\n"
        "from atmorep.train import distributed\n"
        "before = dict(os.environ)\n"
        "for _ in range(2):\n"
        "    assert distributed.init() == (0, 1)\n"
        "    inside = os.environ['MASTER_PORT']\n"
        "    distributed.finish()\n"
        "print(json.dumps({'same': dict(os.environ) == before, 'port': inside}))\n"
    )
    launcher = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")
    env = {k: v for k, v in os.environ.items() if k not in launcher and not k.startswith(("PMI_", "SLURM_"))}
    r = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout.strip().splitlines()[-1])
    assert out["same"] and out["port"].isdigit()
