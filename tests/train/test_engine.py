import pytest

from atmorep.config import TrainConfig
from atmorep.train.engine import deepspeed_config, schedule


@pytest.mark.parametrize("stage, world, gpu", [(1, 2, False), (2, 4, True), (3, 1, False)])
def test_deepspeed_config_is_derived_from_ours(stage, world, gpu):
    cfg = TrainConfig(batch_size=6, zero_stage=stage)
    ds = deepspeed_config(cfg, world, gpu)
    assert ds["train_batch_size"] == ds["train_micro_batch_size_per_gpu"] * ds["gradient_accumulation_steps"] * world
    assert ds["train_micro_batch_size_per_gpu"] == 6
    assert ds["zero_optimization"]["stage"] == stage
    assert ds["bf16"]["enabled"] is gpu


def test_schedule_warms_up_then_decays():
    f = schedule(TrainConfig(steps=100, warmup_steps=10))
    assert f(0) == pytest.approx(0.1) and f(9) == pytest.approx(1.0)
    assert f(10) == pytest.approx(1.0) and f(99) == pytest.approx(0.1, abs=0.01)
    assert all(f(i) >= f(i + 1) for i in range(10, 99))
