"""Activation checkpointing applied from train/ (``apply_ac``): the same loss and gradients as the plain
model, blocks really recomputed, and weights that move between runs with and without it.

Legend: B batch, L levels, T/Y/X tokens, P values per token.
"""

from __future__ import annotations

import pytest
import torch
import torch.distributed as dist

from atmorep.config import MaskingConfig, ModelConfig, TrainConfig
from atmorep.model import masking
from atmorep.model.batch import Batch
from atmorep.model.file import load_model, load_weights, save_model
from atmorep.model.multiformer import FieldGeometry, Multiformer
from atmorep.train.ac import apply_ac, blocks

FIELDS = ("t2m", "u10", "v10")
PURE_MASK = MaskingConfig(strategy="bert", rate=0.5, p_mask=1.0, p_noise=0.0, p_coarsen=0.0)


def tiny(dropout: float = 0.1, checkpointing: bool = False) -> ModelConfig:
    """2+2 layers, 32 wide, coupled encoders (list inputs to the blocks), dropout (RNG in the recompute)."""
    return ModelConfig(
        num_tokens=(3, 3, 6),
        dim=32,
        heads=4,
        encoder_layers=2,
        decoder_layers=2,
        coupling={"t2m": ("u10", "v10"), "u10": ("v10",)},
        ensemble=4,
        dropout=dropout,
        checkpointing=checkpointing,
    )


def model(ac: bool, seed: int = 0, **cfg) -> Multiformer:
    torch.manual_seed(seed)
    m = Multiformer(tiny(**cfg), {f: FieldGeometry(1, (2, 9, 9)) for f in FIELDS}).train()
    return apply_ac(m) if ac else m


def batch(seed: int = 0) -> Batch:
    g = torch.Generator().manual_seed(seed)
    shape = (2, 1, 3, 3, 6)
    return Batch(
        {f: torch.randn(*shape, 162, generator=g) for f in FIELDS},
        {f: torch.rand(*shape, 8, generator=g) for f in FIELDS},
    )


def loss_and_grads(m: Multiformer, b: Batch) -> tuple[torch.Tensor, dict]:
    masks = masking.build(PURE_MASK)(b, torch.Generator().manual_seed(6))
    source = masking.apply(b, masks)
    torch.manual_seed(1)  # dropout, as the trainer seeds it per micro-step
    out = m(source.tokens, source.info, masks)
    loss = sum((o - b.tokens[f][masks[f]][:, None]).square().mean() for f, o in out.items())
    loss.backward()
    return loss.detach(), {n: p.grad.clone() for n, p in m.named_parameters() if p.grad is not None}


@pytest.mark.parametrize("dropout", [0.0, 0.1])
def test_checkpointing_gives_the_same_gradients(dropout):
    """Bit for bit, dropout included: the recompute restores the RNG state of the forward."""
    (loss0, g0), (loss1, g1) = (loss_and_grads(model(ac, dropout=dropout), batch()) for ac in (False, True))
    assert torch.equal(loss0, loss1)
    assert g0.keys() == g1.keys() and len(g0) > 0
    for n in g0:
        assert torch.equal(g0[n], g1[n]), n


def test_every_block_is_recomputed_in_backward():
    m = model(ac=True)
    calls = []
    for block in blocks(m):
        block.register_forward_pre_hook(lambda mod, args: calls.append(mod))
    n = len(blocks(m))
    assert n == 3 * 2 + 3 * 2  # every field's encoder and decoder layers
    loss_and_grads(m, batch())
    assert len(calls) == 2 * n  # forward, then once more in backward
    with torch.no_grad():  # nothing kept, nothing recomputed
        m(*_inputs(batch()))
    assert len(calls) == 3 * n


def _inputs(b: Batch):
    masks = masking.build(PURE_MASK)(b, torch.Generator().manual_seed(2))
    source = masking.apply(b, masks)
    return source.tokens, source.info, masks


def test_names_and_model_files_are_those_of_the_plain_model(tmp_path):
    plain, ac = model(ac=False), model(ac=True, checkpointing=True)
    assert list(plain.state_dict()) == list(ac.state_dict())
    assert [n for n, _ in plain.named_parameters()] == [n for n, _ in ac.named_parameters()]
    save_model(tmp_path / "ac.safetensors", ac)  # from a checkpointed run ...
    loaded, record = load_model(tmp_path / "ac.safetensors")  # ... into the plain model of evaluation
    assert record["model"]["checkpointing"] is True
    for k, v in ac.state_dict().items():
        assert torch.equal(loaded.state_dict()[k], v), k
    save_model(tmp_path / "plain.safetensors", model(ac=False, seed=3))  # and a plain model into a checkpointed run
    load_weights(ac, tmp_path / "plain.safetensors")  # (fine-tuning: init_from)
    for k, v in model(ac=False, seed=3).state_dict().items():
        assert torch.equal(ac.state_dict()[k], v), k


@pytest.fixture(scope="module")
def one_rank(tmp_path_factory):
    """A process group of this process alone, as the engines need one; one for the module, as
    DeepSpeed keeps the first group it sees. A file rendezvous: no port to collide on."""
    store = tmp_path_factory.mktemp("rendezvous") / "store"
    with pytest.MonkeyPatch.context() as env:
        for k, v in dict(RANK="0", WORLD_SIZE="1", LOCAL_RANK="0").items():
            env.setenv(k, v)
        dist.init_process_group("gloo", init_method=f"file://{store}", rank=0, world_size=1)
        yield
        dist.destroy_process_group()


def step(engine, seed: int) -> torch.Tensor:
    """One training step of ``engine`` on the test batch, dropout seeded; its loss."""
    b = batch()
    tokens, info, masks = _inputs(b)
    torch.manual_seed(seed)
    loss = sum((o - b.tokens[f][masks[f]][:, None]).square().mean() for f, o in engine(tokens, info, masks).items())
    engine.step(loss)
    return loss.detach()


@pytest.mark.parametrize(
    "engine, stage",
    [
        ("torch", 0),
        pytest.param("deepspeed", 2, marks=pytest.mark.slow),
        pytest.param("deepspeed", 3, marks=pytest.mark.slow),
    ],
)
def test_engine_checkpoints_load_both_ways(tmp_path, one_rank, engine, stage):
    """A checkpoint of a checkpointed model resumes into a plain one and the reverse: the same weights,
    and the same next step (optimizer and schedule state included)."""
    from atmorep.train.engine import ENGINES

    cfg = TrainConfig(engine=engine, zero_stage=max(stage, 1), batch_size=2, lr_start=1e-4, lr=1e-3, warmup_epochs=1)
    for save_ac in (True, False):
        src = ENGINES[engine](model(ac=save_ac), cfg, world=1)
        step(src, seed=1)
        src.save(tmp_path / str(save_ac), "t", {"step": 1})
        dst = ENGINES[engine](model(ac=not save_ac, seed=5), cfg, world=1)
        assert dst.load(tmp_path / str(save_ac), "t")["step"] == 1
        assert torch.equal(step(src, seed=2), step(dst, seed=2))
        a, b = src.consolidated_state_dict(), dst.consolidated_state_dict()
        assert list(a) == list(b)
        for k in a:
            assert torch.equal(a[k], b[k]), k
