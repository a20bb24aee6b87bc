"""Models of the original AtmoRep code (clessig/atmorep @ 055f858) as our model files.

The original saves a model as ``AtmoRep_id<id>.mod`` (``torch.save`` of its ``AtmoRep`` state_dict)
and describes it in ``model_id<id>.json``. :func:`convert` builds the ``compat`` multiformer the
JSON describes and maps every tensor of the state_dict into it:

- ``embeds.i`` (the same tensor as ``encoders.i.embed``) -> ``embed.<f>.values``;
- ``embeds_token_info.i`` -> ``embed.<f>.info`` with our token-info scaling folded in (the original
  feeds raw token info, ours is ``raw * s + c``: ``W' = W diag(1/s)``, ``b' = b - W' c``); when
  ``embeds_token_info.0`` is all zero or absent the original's ``AtmoRep.load`` falls back to the
  shared ``embed_token_info`` for every field, and so does this;
- ``encoders.i.heads.l``: ``proj_heads`` rows are per head ``[q, k, v]``, ours all q, all k, all v;
  ``proj_heads_other.0`` is the coupling query of all coupled fields (field-major), split per field;
  ``proj_heads_other.g+1`` rows are per head ``[k, v]``; ``mlps.l.blocks.0/3`` are the MLP Linears;
- ``decoders.j.blocks.2l`` (cross-attention, its q/k LayerNorm shared by self and cross heads) and
  ``.2l+1`` (MLP), ``j`` in ``fields_prediction`` order; ``tails.j.tail_nets.e.0/1`` stacked per member;
- fields outside ``fields_prediction`` have no decoder and no tail: ``model.inputs_only``.

V1-era files with per-head keys (``...heads_self.<h>.proj_qs``, decoder ``heads.<h>`` /
``heads_other.<h>``, as the original's ``translate_weights`` reads them) are supported for fields
without encoder coupling; their decoder q/k LayerNorms do not exist and get weight 1, bias 1, what
the original's loader sets. Anything else (another attention type, a key the architecture does not
have, a missing key, a shape that does not match the JSON) is refused with the key named.
"""

from __future__ import annotations

import json
import pickle
import re
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
import torch

from atmorep.config import ModelConfig
from atmorep.data.tokens import TOKEN_INFO_OFFSET, TOKEN_INFO_SCALE
from atmorep.model.embedding import TOKEN_INFO_DIM
from atmorep.model.file import unpickling_refused
from atmorep.model.multiformer import FieldGeometry, Multiformer

#: the original's field names -> ours (cfgrib names, ``data.fields``); others are kept
FIELD_NAMES = {
    "velocity_u": "u",
    "velocity_v": "v",
    "velocity_z": "w",
    "temperature": "t",
    "specific_humidity": "q",
    "total_precip": "tp",
    "vorticity": "vo",
    "divergence": "d",
    "geopotential": "z",
    "t2m": "t2m",
}


class OriginalFormatError(ValueError):
    """An original model this converter cannot reproduce; the message names the key."""


def read_config(path: str | Path) -> dict:
    try:
        cf = json.loads(Path(path).read_text())
    except FileNotFoundError:
        raise OriginalFormatError(f"{path} does not exist") from None
    except json.JSONDecodeError as exc:
        raise OriginalFormatError(f"{path}: not a JSON model_id file: {exc}") from None
    if not isinstance(cf, dict) or "fields" not in cf:
        raise OriginalFormatError(f"{path}: no 'fields' key: not the original's model_id<id>.json")
    return cf


def read_weights(path: str | Path) -> dict[str, torch.Tensor]:
    """The state_dict, read without executing pickled code (a downloaded file is untrusted)."""
    try:
        sd = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise OriginalFormatError(f"{path} does not exist") from None
    except pickle.UnpicklingError as exc:
        raise OriginalFormatError(
            f"{path}: refused: reading it needs more than tensors and plain containers (it would run "
            f"pickled code: {unpickling_refused(exc)}). Re-save its state_dict with "
            "torch.save(model.state_dict()) in a trusted environment"
        ) from None
    except Exception as exc:  # a truncated or foreign file
        raise OriginalFormatError(f"{path}: not a torch state_dict ({type(exc).__name__}: {exc})") from None
    if not isinstance(sd, dict) or not all(isinstance(v, torch.Tensor) for v in sd.values()):
        raise OriginalFormatError(f"{path}: not a state_dict (a mapping of names to tensors)")
    return dict(sd)


def _need(cf: dict, key: str, ok, what: str):
    if key not in cf:
        raise OriginalFormatError(f"model_id json: missing key '{key}'")
    if not ok(cf[key]):
        raise OriginalFormatError(f"model_id json: '{key}' = {cf[key]!r} is not supported ({what})")
    return cf[key]


def architecture(cf: dict, rename: dict[str, str] | None = None) -> tuple[ModelConfig, dict, dict]:
    """Our ``ModelConfig``, field geometry and what else the JSON says (training settings, per field)."""
    names = {**FIELD_NAMES, **(rename or {})}
    _need(cf, "encoder_att_type", lambda v: v == "dense", "only dense attention")
    _need(cf, "decoder_att_type", lambda v: v == "dense", "only dense attention")
    _need(cf, "decoder_self_att", lambda v: not v, "decoder self-attention blocks")
    _need(cf, "decoder_cross_att_rate", lambda v: v == 1.0, "each decoder layer pairs with one encoder layer")
    _need(cf, "with_layernorm", lambda v: v, "blocks without LayerNorm")
    _need(
        cf,
        "coupling_num_heads_per_field",
        lambda v: v == 1,
        "the original's own coupling code indexes its Linears per field, which works for 1 head only",
    )
    _need(cf, "encoder_num_mlp_layers", lambda v: v == 2, "MLPs of 2 Linear layers")
    _need(cf, "decoder_num_mlp_layers", lambda v: v == 2, "MLPs of 2 Linear layers")
    _need(cf, "net_tail_num_layers", lambda v: v == 0, "tails of LayerNorm + Linear")
    _need(cf, "size_token_info", lambda v: v == 8, "8 token-info values")
    _need(cf, "size_token_info_net", lambda v: v == TOKEN_INFO_DIM, f"{TOKEN_INFO_DIM} token-info dims")
    heads = _need(cf, "encoder_num_heads", lambda v: isinstance(v, int) and v > 0, "a positive integer")
    _need(cf, "decoder_num_heads", lambda v: v == heads, "as many decoder as encoder heads")
    _need(cf, "decoder_cross_att_ratio", lambda v: int(heads * v) == heads // 2, "half the heads cross-attend")
    if cf.get("with_cls"):
        raise OriginalFormatError("model_id json: 'with_cls' = true is not supported (class token)")
    fields: dict[str, FieldGeometry] = {}
    dims: dict[str, int] = {}
    coupling: dict[str, tuple[str, ...]] = {}
    extra: dict[str, Any] = {"levels": {}, "masking": {}, "static": [], "names": {}}
    extents: dict[str, tuple[int, ...]] = {}
    for i, fi in enumerate(cf["fields"]):
        try:
            name, (dynamic, dim, coupled, *_), levels, num_tokens, token_size, rates = fi[:6]
        except (TypeError, ValueError):
            raise OriginalFormatError(
                f"model_id json: fields[{i}] is not [name, [dynamic, dim, coupled, "
                f"device, ...], levels, num_tokens, token_size, masking]"
            ) from None
        f = names.get(name, name)
        extra["names"][f] = name
        fields[f] = FieldGeometry(len(levels), tuple(token_size), tuple(num_tokens))
        dims[f], extra["levels"][f] = dim, list(levels)
        coupling[f] = tuple(names.get(g, g) for g in coupled)
        extra["masking"][f] = [float(r) for r in rates]
        if not dynamic:
            extra["static"].append(f)
        if len(fi) > 6 and fi[6] != "global":  # the original's per-field normalization: 'local'
            extra.setdefault("local", []).append(f)
        extents[f] = tuple(int(n) * int(s) for n, s in zip(num_tokens, token_size))
    # Our loader cuts one neighbourhood for every field: fields covering different ones cannot be reproduced.
    if len(set(extents.values())) != 1:
        raise OriginalFormatError(
            f"model_id json: 'fields' cover different neighbourhoods (num_tokens x token_size): {extents}"
        )
    # model.num_tokens counts the finest tokens; coarser fields keep their own (FieldGeometry.num_tokens)
    finest = np.min([g.token_size for g in fields.values()], axis=0)
    num_tokens = tuple(int(e) for e in np.asarray(next(iter(extents.values()))) // finest)
    predicted = [names.get(p[0], p[0]) for p in cf.get("fields_prediction", [])]
    unknown = sorted(set(predicted) - set(fields))
    if unknown or not predicted:
        raise OriginalFormatError(f"model_id json: 'fields_prediction' names {unknown or 'no'} field(s) of 'fields'")
    extra["predicted"] = predicted
    extra["field_weights"] = {names.get(p[0], p[0]): float(p[1]) for p in cf["fields_prediction"]}
    extra["losses"] = list(cf.get("losses", ["mse_ensemble", "stats"]))
    extra["forecast_tokens"] = int(cf.get("forecast_num_tokens", 1))
    extra["wandb_id"] = cf.get("wandb_id")
    common = Counter(dims.values()).most_common(1)[0][0]  # model.dim; the others become field_dims
    mcfg = ModelConfig(
        num_tokens=num_tokens,
        dim=common,
        field_dims={f: d for f, d in dims.items() if d != common},
        heads=heads,
        encoder_layers=int(cf["encoder_num_layers"]),
        decoder_layers=int(cf["decoder_num_layers"]),
        coupling_heads=1,
        coupling={f: g for f, g in coupling.items() if g},
        encoder_qk_norm="plain" if cf.get("with_qk_lnorm") else "none",
        decoder_qk_norm="affine",  # the original's decoder blocks always have ln_q/ln_k, weight and bias
        ensemble=int(cf["net_tail_num_nets"]),
        dropout=float(cf.get("dropout_rate", 0.0)),
        checkpointing=bool(cf.get("grad_checkpointing", False)),
        compat=True,
        inputs_only=tuple(f for f in fields if f not in predicted),
    )
    return mcfg, fields, extra


_V1_SELF = re.compile(r"^encoders\.(\d+)\.heads\.(\d+)\.heads_self\.(\d+)\.proj_(qs|ks|vs)\.weight$")
_V1_DEC = re.compile(r"^decoders\.(\d+)\.blocks\.(\d+)\.(heads|heads_other)\.(\d+)\.proj_(qs|ks|vs)\.weight$")


def _from_v1(sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """V1-era per-head keys as the fused V2 layout (what the original's ``translate_weights`` does)."""
    if not any(_V1_SELF.match(k) or _V1_DEC.match(k) for k in sd):
        return sd
    other = sorted(k for k in sd if re.match(r"^encoders\.\d+\.heads\.\d+\.heads_other\.", k))
    if other:
        raise OriginalFormatError(
            f"V1 per-head coupling key '{other[0]}': V1 files with encoder coupling "
            "are not supported (the original's own translation of them is broken)"
        )
    out = dict(sd)
    groups: dict[tuple, dict] = {}
    for k in sd:
        if m := _V1_SELF.match(k):
            groups.setdefault(("enc", m[1], m[2], "self"), {})[(int(m[3]), m[4])] = out.pop(k)
        elif m := _V1_DEC.match(k):
            groups.setdefault(("dec", m[1], m[2], m[3]), {})[(int(m[4]), m[5])] = out.pop(k)
    for (kind, i, b, part), t in groups.items():
        heads = sorted({h for h, _ in t})

        def cat(kinds, t=t, heads=heads, where=f"{kind}oders.{i}.{b}"):
            try:
                return torch.cat([t[(h, k)] for h in heads for k in kinds])
            except KeyError as exc:
                raise OriginalFormatError(f"V1 key for head/projection {exc.args[0]} of {where} is missing") from None

        if kind == "enc":
            out[f"encoders.{i}.heads.{b}.proj_heads.weight"] = cat(("qs", "ks", "vs"))
        elif part == "heads":
            out[f"decoders.{i}.blocks.{b}.proj_heads.weight"] = cat(("qs", "ks", "vs"))
        else:
            out[f"decoders.{i}.blocks.{b}.proj_heads_o_q.weight"] = cat(("qs",))
            out[f"decoders.{i}.blocks.{b}.proj_heads_o_kv.weight"] = cat(("ks", "vs"))
            dh = t[(heads[0], "qs")].shape[0]
            for n in ("ln_q", "ln_k"):  # absent in V1; the original's loader sets weight and bias to 1
                for p in ("weight", "bias"):
                    out.setdefault(f"decoders.{i}.blocks.{b}.{n}.{p}", torch.ones(dh))
    return out


def _per_head(w: torch.Tensor, heads: int, parts: int) -> list[torch.Tensor]:
    """Rows laid out per head ``[p_0, .., p_{parts-1}]`` -> one ``(heads*dh, in)`` block per part."""
    w = w.reshape(heads, parts, -1, w.shape[-1])
    return [w[:, p].reshape(-1, w.shape[-1]) for p in range(parts)]


def convert_state(sd: dict[str, torch.Tensor], model: Multiformer, extra: dict) -> dict[str, torch.Tensor]:
    """Our state_dict for ``model`` from the original's ``sd``; every key of ``sd`` must be used."""
    sd = _from_v1(sd)
    used: set[str] = set()

    def take(key: str) -> torch.Tensor:
        if key not in sd:
            raise OriginalFormatError(f"the weights have no '{key}', which the model_id json implies")
        used.add(key)
        return sd[key].float()

    cfg, fields = model.cfg, list(model.fields)
    out: dict[str, torch.Tensor] = {}
    # The fold W / s, b - W' c in float64, rounded to float32 once: the converted embedding then
    # matches the original's to float32 round-off.
    scale = torch.as_tensor(TOKEN_INFO_SCALE, dtype=torch.float64)
    offset = torch.as_tensor(TOKEN_INFO_OFFSET, dtype=torch.float64)
    legacy = [take(f"embed_token_info.{p}") for p in ("weight", "bias")]
    per_field = "embeds_token_info.0.weight" in sd and bool(sd["embeds_token_info.0.weight"].abs().max() > 0)
    for i, f in enumerate(fields):
        for p in ("weight", "bias"):
            out[f"embed.{f}.values.{p}"] = take(f"embeds.{i}.{p}")
            key = f"encoders.{i}.embed.{p}"
            if key in sd and not torch.equal(take(key), out[f"embed.{f}.values.{p}"]):
                raise OriginalFormatError(f"'{key}' differs from 'embeds.{i}.{p}' (one tensor in the original)")
        if per_field:
            w, b = (take(f"embeds_token_info.{i}.{p}") for p in ("weight", "bias"))
        else:
            w, b = legacy
            # all zero: ignored, as the original's loader ignores them
            used.update(k for k in sd if k.startswith("embeds_token_info."))
        w2 = w.double() / scale
        out[f"embed.{f}.info.weight"] = w2.float()
        out[f"embed.{f}.info.bias"] = (b.double() - w2 @ offset).float()
        dh = model.dims[f] // cfg.heads
        for layer in range(cfg.encoder_layers):
            src, dst = f"encoders.{i}.heads.{layer}", f"encoders.{f}.{layer}.attn"
            out[f"{dst}.qkv.weight"] = torch.cat(_per_head(take(f"{src}.proj_heads.weight"), cfg.heads, 3))
            out[f"{dst}.proj_out.weight"] = take(f"{src}.proj_out.weight")
            coupled = model.coupling[f]
            if coupled:
                q = take(f"{src}.proj_heads_other.0.weight")
                if q.shape[0] != len(coupled) * dh:
                    raise OriginalFormatError(
                        f"'{src}.proj_heads_other.0.weight' has {q.shape[0]} rows, the json's coupling of "
                        f"'{extra['names'][f]}' implies {len(coupled) * dh}"
                    )
                for g in range(len(coupled)):
                    out[f"{dst}.q_src.{g}.weight"] = q[g * dh : (g + 1) * dh]
                    kv = take(f"{src}.proj_heads_other.{g + 1}.weight")
                    out[f"{dst}.kv_src.{g}.weight"] = torch.cat(_per_head(kv, 1, 2))  # one coupling head (checked)
            # the original's MLP is Sequential(Linear, GELU, Dropout, Linear, GELU): Linears at 0 and 3
            for ours, theirs in (("fc1", 0), ("fc2", 3)):
                for p in ("weight", "bias"):
                    mlp = f"encoders.{i}.mlps.{layer}.blocks.{theirs}.{p}"
                    out[f"encoders.{f}.{layer}.mlp.{ours}.{p}"] = take(mlp)
    for j, f in enumerate(extra["predicted"]):
        dh = model.dims[f] // cfg.heads
        self_heads, cross = cfg.heads - cfg.heads // 2, cfg.heads // 2  # as DecoderBlock splits them
        for layer in range(cfg.decoder_layers):
            src, dst = f"decoders.{j}.blocks.{2 * layer}", f"decoders.{f}.{layer}"
            out[f"{dst}.attn.qkv.weight"] = torch.cat(_per_head(take(f"{src}.proj_heads.weight"), self_heads, 3))
            # cross-attention queries alone in their Linear: no per-head interleaving to undo
            out[f"{dst}.attn.q_src.0.weight"] = take(f"{src}.proj_heads_o_q.weight")
            kv = take(f"{src}.proj_heads_o_kv.weight")
            out[f"{dst}.attn.kv_src.0.weight"] = torch.cat(_per_head(kv, cross, 2))
            out[f"{dst}.attn.proj_out.weight"] = take(f"{src}.proj_out.weight")
            for n, m in (("q_norm", "ln_q"), ("k_norm", "ln_k")):
                for p in ("weight", "bias"):
                    out[f"{dst}.attn.{n}.{p}"] = take(f"{src}.{m}.{p}")
            for ours, theirs in (("fc1", 0), ("fc2", 3)):
                for p in ("weight", "bias"):
                    mlp = f"decoders.{j}.blocks.{2 * layer + 1}.blocks.{theirs}.{p}"
                    out[f"{dst}.mlp.{ours}.{p}"] = take(mlp)
        members = range(cfg.ensemble)
        out[f"tails.{f}.ln_weight"] = torch.stack([take(f"tails.{j}.tail_nets.{e}.0.weight") for e in members])
        out[f"tails.{f}.ln_bias"] = torch.stack([take(f"tails.{j}.tail_nets.{e}.0.bias") for e in members])
        out[f"tails.{f}.weight"] = torch.stack([take(f"tails.{j}.tail_nets.{e}.1.weight") for e in members])
        out[f"tails.{f}.bias"] = torch.stack([take(f"tails.{j}.tail_nets.{e}.1.bias") for e in members])
    # Kept in the compat layout (frozen, unused): the parameter count then matches the original's log.
    out["legacy_token_info.weight"], out["legacy_token_info.bias"] = legacy
    left = sorted(set(sd) - used)
    if left:
        raise OriginalFormatError(
            f"the weights have '{left[0]}' ({len(left)} key(s) in all) that the "
            "model_id json's architecture does not: config and weights do not match"
        )
    # Checked here rather than left to load_state_dict: the message can say it is the JSON's fault.
    expected = model.state_dict()
    for k, v in out.items():
        if k not in expected:
            raise OriginalFormatError(f"internal: no parameter '{k}' in the converted model")
        if tuple(v.shape) != tuple(expected[k].shape):
            raise OriginalFormatError(
                f"shape {tuple(v.shape)} of the original's tensor for '{k}' does not "
                f"match {tuple(expected[k].shape)} that the model_id json implies: config "
                "and weights do not match"
            )
    return out


def convert(weights: str | Path, config: str | Path, rename: dict[str, str] | None = None) -> tuple[Multiformer, dict]:
    """The converted model (eval mode) and what to record with it (``original`` section of the file)."""
    cf = read_config(config)
    mcfg, fields, extra = architecture(cf, rename)
    model = Multiformer(mcfg, fields)
    state = convert_state(read_weights(weights), model, extra)
    model.load_state_dict(state)
    return model.eval(), extra


def suggested_config(model: Multiformer, extra: dict) -> dict:
    """The ``model``/``train`` keys that reproduce the original's training of this model."""
    rates = dict(extra["masking"])
    for f in extra["static"]:
        rates[f] = [0.0, *rates[f][1:]]  # the original never masks static fields
    out = {
        "data": {"fields": {f: {"levels": extra["levels"][f]} for f in model.fields}},
        "shard": {"field_token_size": {f: list(g.token_size) for f, g in model.fields.items()}},
        "model": {
            k: (list(v) if isinstance(v, tuple) else v) for k, v in json.loads(json.dumps(model.cfg.__dict__)).items()
        },
        "train": {
            "masking": {"field_rates": rates, "forecast_tokens": extra["forecast_tokens"]},
            "loss": {"terms": extra["losses"], "field_weights": extra["field_weights"]},
        },
    }
    if extra.get("local"):
        out["normalize"] = {"local": extra["local"]}
    return out


def original_card(weights: str | Path, config: str | Path, extra: dict) -> dict:
    """The card of an imported model, from the original's JSON: where it came from (both files'
    sha256), its training and validation years, its normalization (the original keeps its statistics
    beside its data, ``file_path``: named, not pinned by a digest) and its training settings."""
    import hashlib

    cf = read_config(config)

    def sha256(path: str | Path) -> str:
        with open(path, "rb") as f:
            return hashlib.file_digest(f, "sha256").hexdigest()

    def years(key: str) -> list[str] | None:
        ys = [int(y) for y in cf.get(key) or []]
        return [f"{min(ys)}-01-01T00", f"{max(ys)}-12-31T23"] if ys else None

    local = set(extra.get("local", []))
    return {
        "original": {
            "weights": str(weights),
            "weights_sha256": sha256(weights),
            "config": str(config),
            "config_sha256": sha256(config),
            **extra,
            "json": cf,
        },
        "periods": {"train": years("years_train"), "validation": years("years_val")},
        "normalization": {
            f: {"method": "local" if f in local else "global", "stores": {}, "source": cf.get("file_path")}
            for f in extra["levels"]
        },
        "training": {
            "steps": None,  # the original logs epochs of samples, not optimizer steps
            **{k: cf.get(k) for k in ("num_epochs", "num_samples_per_epoch", "batch_size", "lr_max", "rng_seed")},
            "final": {},
        },
    }


def import_original(
    weights: str | Path,
    config: str | Path,
    output: str | Path,
    rename: dict[str, str] | None = None,
    config_out: str | Path | None = None,
) -> str:
    """Convert and write our model file; returns the config keys to use with it (YAML text)."""
    import yaml

    from atmorep.model.file import save_model

    model, extra = convert(weights, config, rename)
    save_model(output, model, card=original_card(weights, config, extra))
    text = yaml.safe_dump(suggested_config(model, extra), sort_keys=False, default_flow_style=None)
    if config_out:
        Path(config_out).write_text(text)
    params = sum(p.numel() for p in model.parameters())
    return (
        f"# {output}: {len(model.fields)} field(s) {list(model.fields)}, {params:,} parameters "
        f"(original id {extra['wandb_id']}); config keys that reproduce its training:\n{text}"
    )
