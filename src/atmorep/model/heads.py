"""Heads for new targets on a pretrained backbone, and the task model that joins them (plain torch.nn).

A *task model* reads, per token position of a window, the latents of chosen encoder layers of the
backbone's fields (:meth:`Multiformer.encode`), concatenated over fields, levels and layers, and a
*head* maps them to the target's tokens at that position: ``ensemble`` members of ``L_t * P_t`` values
(``P_t`` = the target token's points: the backbone token's on the same grid, ``r^2`` times more on a
grid ``r`` times finer that covers the same footprint, as AtmoRep's downscaling application).

Heads (:data:`HEADS`): ``linear`` (a linear probe per token), ``mlp``, and ``perceiver`` (learned
latent queries cross-attend to every token of the window, then each token's query cross-attends to
the latents: Perceiver IO, as AtmoRep's precipitation branch attaches its head to the latents).

Backbone modes (:data:`BACKBONE_MODES`): ``frozen`` (no gradient, eval mode: dropout off; its weights
stay bit-identical), ``last_k`` (the last k encoder blocks of every field train), ``lora`` (low-rank
adapters, :class:`LoRALinear`, on the attention projections of those blocks, the rest frozen),
``full`` (the whole encoder trains), ``scratch`` (the architecture from random weights, all trained)
and ``raw`` (no backbone: the head reads the normalized input tokens; the "same head on the raw
inputs" baseline). A task model never holds the backbone's decoders and ensemble tails: the head
replaces them.

LoRA: peft (Hugging Face) 0.21 injects adapters into any ``nn.Module`` (``inject_adapter_in_model``
with a regex of module names) and worked on the multiformer, but it requires transformers 5,
accelerate and huggingface_hub (with tokenizers, hf_xet and an HTTP stack: ~180 MB installed, ~3 s to
import here) for what is, on plain ``nn.Linear`` layers, one small module; :class:`LoRALinear` keeps
the adapters ordinary parameters that DeepSpeed ZeRO 1-3 partitions like any other.

Legend: B batch, L levels, T/Y/X tokens in time/lat/lon, Q = T*Y*X token positions, N = L*Q tokens
of a field, D width of a field, F features per position, H head width, M latent queries, E members,
O = L_t * P_t target values per position, P values per token.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
from collections.abc import Callable, Sequence
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from atmorep import config as C
from atmorep.formats.atomic import Replacement
from atmorep.model.multiformer import Multiformer


class LinearHead(nn.Module):
    """A linear probe per token: ``Linear(F -> E*O)``."""

    def __init__(self, features: int, out: int, members: int, **unused: object):
        super().__init__()
        self.out, self.members = out, members
        self.proj = nn.Linear(features, members * out)

    def forward(self, x_BQF: torch.Tensor) -> torch.Tensor:
        B, Q, _ = x_BQF.shape
        return self.proj(x_BQF).view(B, Q, self.members, self.out)


class MLPHead(nn.Module):
    """``LayerNorm(F)``, ``depth`` hidden layers ``Linear -> GELU -> Dropout`` of width ``hidden``, then
    ``Linear(hidden -> E*O)``, per token."""

    def __init__(
        self,
        features: int,
        out: int,
        members: int,
        hidden: int = 128,
        depth: int = 2,
        dropout: float = 0.0,
        **unused: object,
    ):
        super().__init__()
        self.out, self.members = out, members
        layers: list[nn.Module] = [nn.LayerNorm(features)]
        width = features
        for _ in range(depth):
            layers += [nn.Linear(width, hidden), nn.GELU(), nn.Dropout(dropout)]
            width = hidden
        self.body = nn.Sequential(*layers)
        self.proj = nn.Linear(width, members * out)

    def forward(self, x_BQF: torch.Tensor) -> torch.Tensor:
        B, Q, _ = x_BQF.shape
        return self.proj(self.body(x_BQF)).view(B, Q, self.members, self.out)


class _CrossBlock(nn.Module):
    """``x + Attn(LN(x), LN(ctx))``, then ``+ MLP(LN(.))`` (pre-LayerNorm, width H)."""

    def __init__(self, width: int, heads: int, dropout: float):
        super().__init__()
        self.ln_q, self.ln_kv, self.ln_mlp = nn.LayerNorm(width), nn.LayerNorm(width), nn.LayerNorm(width)
        self.attn = nn.MultiheadAttention(width, heads, dropout=dropout, batch_first=True)
        self.mlp = nn.Sequential(nn.Linear(width, 2 * width), nn.GELU(), nn.Linear(2 * width, width))

    def forward(self, x_BSH: torch.Tensor, ctx_BMH: torch.Tensor) -> torch.Tensor:
        kv = self.ln_kv(ctx_BMH)
        x_BSH = x_BSH + self.attn(self.ln_q(x_BSH), kv, kv, need_weights=False)[0]
        return x_BSH + self.mlp(self.ln_mlp(x_BSH))


class PerceiverHead(nn.Module):
    """Perceiver IO on the window's tokens: ``latents`` learned queries read every token (cross-attention),
    ``depth - 1`` self-attention blocks among them, then each token's own query (its features) reads the
    latents, ``Linear(H -> E*O)``. Cost grows with Q*M, not Q^2."""

    def __init__(
        self,
        features: int,
        out: int,
        members: int,
        hidden: int = 128,
        depth: int = 2,
        latents: int = 16,
        heads: int = 4,
        dropout: float = 0.0,
        **unused: object,
    ):
        super().__init__()
        if hidden % heads:
            raise ValueError(f"the perceiver head's width {hidden} is not divisible by its {heads} heads")
        self.out, self.members = out, members
        self.embed = nn.Sequential(nn.LayerNorm(features), nn.Linear(features, hidden))
        self.latents = nn.Parameter(torch.randn(latents, hidden) * 0.02)
        self.read = _CrossBlock(hidden, heads, dropout)
        self.process = nn.ModuleList(_CrossBlock(hidden, heads, dropout) for _ in range(depth - 1))
        self.write = _CrossBlock(hidden, heads, dropout)
        self.proj = nn.Sequential(nn.LayerNorm(hidden), nn.Linear(hidden, members * out))

    def forward(self, x_BQF: torch.Tensor) -> torch.Tensor:
        B, Q, _ = x_BQF.shape
        tokens_BQH = self.embed(x_BQF)
        z_BMH = self.read(self.latents.expand(B, -1, -1), tokens_BQH)
        for block in self.process:
            z_BMH = block(z_BMH, z_BMH)
        return self.proj(self.write(tokens_BQH, z_BMH)).view(B, Q, self.members, self.out)


#: head name -> class ``(features, out, members, **settings)``
HEADS: dict[str, Callable[..., nn.Module]] = {"linear": LinearHead, "mlp": MLPHead, "perceiver": PerceiverHead}

BACKBONE_MODES = ("frozen", "last_k", "lora", "full", "scratch", "raw")


class LoRALinear(nn.Module):
    """``base(x) + (alpha / rank) * B A x`` with the base ``nn.Linear`` frozen; ``B`` starts at zero, so
    the wrapped layer starts as the base (Hu et al. 2021)."""

    def __init__(self, base: nn.Linear, rank: int, alpha: float):
        super().__init__()
        self.base = base.requires_grad_(False)
        self.lora_a = nn.Parameter(torch.empty(rank, base.in_features))
        nn.init.kaiming_uniform_(self.lora_a, a=math.sqrt(5))  # nn.Linear's own initialisation
        self.lora_b = nn.Parameter(torch.zeros(base.out_features, rank))
        self.scale = alpha / rank

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.base(x) + F.linear(F.linear(x, self.lora_a), self.lora_b) * self.scale


#: the Linear layers of an encoder block's attention that ``lora`` adapts (self and coupling heads)
LORA_TARGETS = ("qkv", "q_src", "kv_src", "proj_out")


def add_lora(block: nn.Module, rank: int, alpha: float) -> None:
    """Wrap the attention projections of an encoder block in :class:`LoRALinear` (in place)."""
    attn = block.attn
    for name in LORA_TARGETS:
        layer = getattr(attn, name)
        if isinstance(layer, nn.ModuleList):
            for i, sub in enumerate(layer):
                assert isinstance(sub, nn.Linear)
                layer[i] = LoRALinear(sub, rank, alpha)
        else:
            setattr(attn, name, LoRALinear(layer, rank, alpha))


class TaskModel(nn.Module):
    """A backbone's encoder (or none: ``raw``) and a head; ``forward(tokens, info)`` -> ``(B, Q, E, O)``.

    ``inputs`` are the backbone fields whose latents (or, for ``raw``, normalized tokens) feed the head;
    they share one token grid (T, Y, X). ``layers`` are encoder layer indices (negative from the last).
    """

    def __init__(
        self,
        backbone: Multiformer | None,
        head: nn.Module,
        inputs: Sequence[str],
        layers: Sequence[int],
        mode: str,
    ):
        super().__init__()
        if mode not in BACKBONE_MODES:
            raise ValueError(f"backbone mode '{mode}' is not one of {', '.join(BACKBONE_MODES)}")
        self.mode, self.inputs = mode, list(inputs)
        if backbone is not None:
            n = backbone.cfg.encoder_layers
            self.layers = sorted({layer % n for layer in layers})
        else:
            self.layers = []
        self.backbone = backbone
        self.head = head

    @property
    def frozen(self) -> bool:
        return self.mode == "frozen"

    def train(self, mode: bool = True) -> TaskModel:
        super().train(mode)
        if self.backbone is not None and self.frozen:
            self.backbone.eval()  # frozen features: no dropout, the same latents at every step
        return self

    def features(self, tokens: dict[str, torch.Tensor], info: dict[str, torch.Tensor]) -> torch.Tensor:
        """Per token position the head's input ``(B, Q, F)``: fields (in ``inputs`` order), levels, layers."""
        if self.backbone is None:  # raw: the normalized tokens themselves
            return raw_features(tokens, self.inputs)
        with torch.set_grad_enabled(torch.is_grad_enabled() and not self.frozen):
            enc = self.backbone.encode(tokens, info)
        parts = []
        for f in self.inputs:
            B, L = tokens[f].shape[:2]
            for layer in self.layers:
                z_BND = enc[f][layer]
                # tokens are flattened (L, T, Y, X) row-major: (B, L, Q, D) -> (B, Q, L*D)
                parts.append(z_BND.view(B, L, -1, z_BND.shape[-1]).transpose(1, 2).flatten(2))
        return torch.cat(parts, dim=-1)

    def forward(self, tokens: dict[str, torch.Tensor], info: dict[str, torch.Tensor]) -> torch.Tensor:
        return self.head(self.features(tokens, info))


def raw_features(tokens: dict[str, torch.Tensor], inputs: Sequence[str]) -> torch.Tensor:
    """The input tokens per position ``(B, Q, F)``, ``F = sum_f L_f P_f`` (fields in ``inputs`` order,
    then levels, then values): what ``raw`` heads and the linear baseline read."""
    # (B, L, T, Y, X, P) -> (B, L, Q, P) -> (B, Q, L, P) -> (B, Q, L*P)
    return torch.cat([tokens[f].flatten(2, 4).transpose(1, 2).flatten(2) for f in inputs], dim=-1)


def target_tokens(out_BQEO: torch.Tensor, levels: int) -> torch.Tensor:
    """A head's output ``(B, Q, E, L*P)`` as target tokens ``(B, L, Q, E, P)`` (the target's token order)."""
    B, Q, E, O = out_BQEO.shape
    return out_BQEO.view(B, Q, E, levels, O // levels).permute(0, 3, 1, 2, 4)


def feature_width(backbone: Multiformer | None, inputs: Sequence[str], layers: Sequence[int], values: dict) -> int:
    """F: the head's input width per position (``values``: field -> (levels, values per token))."""
    if backbone is None:
        return sum(values[f][0] * values[f][1] for f in inputs)
    return sum(values[f][0] * backbone.dims[f] for f in inputs) * len(
        {layer % backbone.cfg.encoder_layers for layer in layers}
    )


def prepare_backbone(backbone: Multiformer, mode: str, trainable_layers: int, rank: int, alpha: float) -> Multiformer:
    """The backbone's encoder set up for ``mode`` (in place): decoders and tails dropped, gradients
    switched off but for what the mode trains, LoRA adapters added."""
    backbone.decoders, backbone.tails = nn.ModuleDict(), nn.ModuleDict()  # the head replaces them
    backbone.requires_grad_(mode in ("full", "scratch"))
    if getattr(backbone, "legacy_token_info", None) is not None:
        backbone.legacy_token_info.requires_grad_(False)  # compat layout only: never used
    n = backbone.cfg.encoder_layers
    if mode in ("last_k", "lora") and not 1 <= trainable_layers <= n:
        raise ValueError(f"trainable_layers {trainable_layers}: the backbone has {n} encoder layers")
    for blocks in backbone.encoders.values():
        assert isinstance(blocks, nn.ModuleList)
        for block in list(blocks)[n - trainable_layers :] if mode in ("last_k", "lora") else []:
            if mode == "last_k":
                block.requires_grad_(True)
            else:
                add_lora(block, rank, alpha)
    return backbone


def backbone_state(model: TaskModel) -> dict[str, torch.Tensor]:
    """The backbone's own weights under the names its model file uses (LoRA's base weights unwrapped,
    adapters left out): what stays bit-identical under ``frozen`` and ``lora``."""
    if model.backbone is None:
        return {}
    return {
        k.replace(".base.", "."): v
        for k, v in model.backbone.state_dict().items()
        if ".lora_a" not in k and ".lora_b" not in k
    }


def trainable_names(model: nn.Module) -> list[str]:
    """Names of the parameters that train (what a head file stores)."""
    return [n for n, p in model.named_parameters() if p.requires_grad]


# --- the head file (safetensors): the trainable weights and a card, beside (never inside) the backbone's ----

#: bumped when the head file changes meaning; :func:`load_head` refuses any other value
HEAD_FORMAT = "atmorep-head/1"


def state_digest(state: dict[str, torch.Tensor]) -> str:
    """sha256 of a state dict's names and fp32 values (bit-identity of weights, wherever they were held)."""
    h = hashlib.sha256()
    for k in sorted(state):
        h.update(k.encode())
        h.update(state[k].detach().float().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()


def backbone_weights(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The backbone's weights in a task model's state dict, under the backbone file's names."""
    return {
        k.removeprefix("backbone.").replace(".base.", "."): v
        for k, v in state.items()
        if k.startswith("backbone.") and ".lora_a" not in k and ".lora_b" not in k
    }


def build(
    backbone: Multiformer | None,
    task: C.FinetuneTaskConfig,
    inputs: Sequence[str],
    values: dict[str, tuple[int, int]],
    out: int,
    seed: int,
) -> TaskModel:
    """The task model of ``task`` on ``backbone`` (its weights as loaded; ``scratch`` re-initialises the
    architecture), a head of ``out`` values per position, initialised from ``seed``.

    ``values``: input field -> (levels, values per token)."""
    torch.manual_seed(seed)  # the same head (and scratch backbone) on every rank and in every rerun
    mode = task.backbone
    if mode == "raw":
        backbone = None
    elif mode == "scratch":
        assert backbone is not None
        backbone = Multiformer(backbone.cfg, backbone.fields)
    if backbone is not None:
        prepare_backbone(backbone, mode, task.trainable_layers, task.lora.rank, task.lora.alpha)
    width = feature_width(backbone, inputs, task.layers, values)
    settings = dict(hidden=task.hidden, depth=task.depth, latents=task.latents, heads=task.heads, dropout=task.dropout)
    head = HEADS[task.head](width, out, task.ensemble, **settings)
    return TaskModel(backbone, head, inputs, task.layers, mode)


def save_head(path: str | Path, model: TaskModel, state: dict[str, torch.Tensor], card: dict) -> None:
    """Write the trainable weights of ``model`` (from its consolidated ``state``) and ``card`` atomically,
    as the model file is written: safetensors, the card as JSON in its metadata (nothing to unpickle)."""
    from safetensors.torch import save_file

    tensors = {k: state[k].detach().float().cpu().contiguous() for k in trainable_names(model)}
    with Replacement(path) as tmp:
        save_file(tensors, str(tmp), metadata={"format": HEAD_FORMAT, "card": json.dumps(card)})


def read_head(path: str | Path) -> dict:
    """The head file's ``{"card": ..., "state_dict": ...}`` (format checked)."""
    from safetensors import SafetensorError, safe_open
    from safetensors.torch import load_file

    if not Path(path).is_file():
        raise FileNotFoundError(f"{path} does not exist")
    try:
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
        state = load_file(str(path))
    except (SafetensorError, OSError) as exc:
        raise ValueError(f"{path}: not a head file atmorep can read ({exc})") from None
    if meta.get("format") != HEAD_FORMAT:
        raise ValueError(f"{path}: not an atmorep head file (format {meta.get('format')!r})")
    return {"card": json.loads(meta["card"]), "state_dict": state}


def load_head(path: str | Path, backbone: Multiformer | None) -> tuple[TaskModel, dict]:
    """The task model of a head file in eval mode, on ``backbone`` (loaded by the caller from the file the
    card names; None for a ``raw`` head), and the card."""
    record = read_head(path)
    card = record["card"]
    task = C.build(C.FinetuneTaskConfig, card["task"], "task")
    values = {f: (int(v[0]), int(v[1])) for f, v in card["values"].items()}
    model = build(backbone, task, card["inputs"], values, int(card["out"]), int(card["seed"]))
    expected = set(trainable_names(model))
    if set(record["state_dict"]) != expected:
        differ = sorted(set(record["state_dict"]) ^ expected)[:5]
        raise ValueError(f"{path}: its weights do not fit the task it describes (e.g. {differ})")
    model.load_state_dict(record["state_dict"], strict=False)
    return model.eval(), card


def describe(task: C.FinetuneTaskConfig) -> dict:
    """The task's settings as the card records them (JSON types)."""
    return json.loads(json.dumps(dataclasses.asdict(task)))  # tuples -> lists, as the file stores them
