"""The model file: what training writes and evaluation, embedding and fine-tuning read (no DeepSpeed
needed to read it, and reading it runs no code).

One `safetensors <https://huggingface.co/docs/safetensors>`_ file (``model.safetensors``): 8 bytes of
header length, a JSON header (every tensor's name, dtype, shape and byte range, and ``__metadata__``),
then the raw fp32 tensors. ``__metadata__`` holds three strings:

- ``format``: :data:`FORMAT`; any other value is refused;
- ``card``: the model card as JSON: architecture (``model``, ``fields``) and package ``versions``
  (written here), and what the writer adds (training: :mod:`atmorep.train.card`; an imported original:
  :mod:`atmorep.train.original`);
- ``sha256``: the SHA-256 of the whole file with these 64 hex digits read as ``0``s. Every loader
  checks it, so a truncated, altered or re-labelled file is refused before a tensor is used.

Why safetensors and not ``torch.load(weights_only=True)``: a torch file is a pickle, and reading one
runs an unpickler that can call code; ``weights_only`` restricts which, but it is an allowlist inside
the unpickler (CVE-2025-32434 was a way around it in torch < 2.6, and this package supports older
torch). A safetensors header is JSON and its data raw bytes: there is nothing to call. Its tensors
load by memory-mapping, several times faster than unpickling; with the digest check over the whole
file our load is on par with ``torch.load`` (``benchmarks/model_file.py`` measures both; README
"Sharing a model").

:func:`load_model`, :func:`load_weights` and :func:`load_state` are the only ways the package reads a
model file; :func:`read_card` reads and verifies the card alone; :func:`describe` is ``atmorep
inspect``'s text.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from pathlib import Path
from typing import Any

import torch

from atmorep import config as C
from atmorep.formats.atomic import Replacement
from atmorep.model.multiformer import FieldGeometry, Multiformer

#: Bumped when a key of the card changes meaning; readers refuse any other value.
FORMAT = "atmorep-model/2"
#: The model file of a training run's output directory.
NAME = "model.safetensors"
_DIGEST_KEY = "sha256"
_PLACEHOLDER = "0" * 64
_BLOCK = 16 << 20  # bytes hashed at a time
_MAX_HEADER = 100_000_000  # safetensors' own limit

#: the next step for a pickle (an atmorep model file of before FORMAT 2, a .mod, anything torch.save wrote)
_PICKLE_ADVICE = (
    "a pickle (torch.save) file: loading one can run code, so atmorep reads model files only as "
    "safetensors. An atmorep model.pt of an earlier version: rerun `atmorep train` on its run (it resumes "
    "its finished checkpoint and writes model.safetensors, training nothing); an original AtmoRep .mod: "
    "`atmorep import-original`"
)


class ModelFileError(ValueError):
    """A file that is not an intact atmorep model file; the message names the file and what to do."""


def unpickling_refused(exc: BaseException) -> str:
    """What a refused ``weights_only`` load would have called, from torch's message (whose first lines
    advise loading the file unsafely: not repeated)."""
    lines = [line.strip() for line in str(exc).splitlines()]
    found = [line for line in lines if "GLOBAL" in line or "Unsupported" in line or "WeightsUnpickler" in line]
    return (found or [line for line in lines if line] or [type(exc).__name__])[0]


def versions() -> dict[str, str]:
    """Versions of the packages that shape a trained model, saved with every checkpoint."""
    from importlib.metadata import PackageNotFoundError, version

    out = {}
    for pkg in ("atmorep", "torch", "deepspeed", "numpy", "zarr", "xarray", "safetensors"):
        try:
            out[pkg] = version(pkg)
        except PackageNotFoundError:
            pass
    return out


def code() -> dict[str, Any]:
    """The code that wrote a model: Python, and atmorep's git commit when it runs from a checkout."""
    import platform
    import subprocess

    src = Path(__file__).resolve().parents[1]
    out: dict[str, Any] = {"python": platform.python_version(), "commit": None, "modified": None}
    try:
        git = ["git", "-C", str(src)]
        out["commit"] = subprocess.run(
            [*git, "rev-parse", "HEAD"], capture_output=True, text=True, check=True
        ).stdout.strip()
        status = subprocess.run(
            [*git, "status", "--porcelain", "--untracked-files=no", "--", "."], capture_output=True, text=True
        )
        out["modified"] = bool(status.stdout.strip())
    except (OSError, subprocess.CalledProcessError):
        pass  # an installed package, or no git: the versions say what they can
    return out


def save_model(path: str | Path, model: Multiformer, state_dict: dict | None = None, card: dict | None = None) -> str:
    """Write fp32 weights and the card to ``path`` atomically; returns the file's sha256.

    ``state_dict`` is the consolidated state (e.g. gathered from ZeRO-3 partitions); by default the
    module's own. ``card`` holds the writer's sections; the architecture and versions are added here.
    """
    from safetensors.torch import save_file

    state = state_dict if state_dict is not None else model.state_dict()
    # fp32 on CPU whatever the training dtype and device: the file loads anywhere, bit for bit.
    tensors = {k: v.detach().float().cpu().contiguous() for k, v in state.items()}
    # the writer's sections first: they cannot shadow the format, architecture or versions.
    full = {**(card or {}), "format": FORMAT, **architecture(model), "versions": versions(), "code": code()}
    metadata = {"format": FORMAT, "card": json.dumps(full, default=_plain), _DIGEST_KEY: _PLACEHOLDER}
    with Replacement(path) as tmp:
        save_file(tensors, str(tmp), metadata=metadata)
        return _seal(tmp)


def architecture(model: Multiformer) -> dict:
    """What a model file says of the model besides its weights: config and field geometry."""
    return {
        "model": dataclasses.asdict(model.cfg),
        "fields": {f: {"levels": g.levels, "token_size": list(g.token_size)} for f, g in model.fields.items()},
    }


def _plain(value: Any) -> Any:
    """JSON for what the card may hold besides plain types: numpy scalars and arrays, paths."""
    if hasattr(value, "tolist"):
        return value.tolist()
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"model card: {type(value).__name__} is not JSON")


# -- the digest -----------------------------------------------------------------------------------


def _header(path: Path) -> tuple[dict, int]:
    """The parsed safetensors header and its length; refuses what is not an atmorep model file."""
    if path.is_dir():
        raise ModelFileError(f"{path}: a directory, not a model file (e.g. {path / NAME})")
    if not path.is_file():
        raise FileNotFoundError(f"{path} does not exist")
    size = path.stat().st_size
    with open(path, "rb") as f:
        head = f.read(8)
        n = int.from_bytes(head, "little") if len(head) == 8 else -1
        raw = f.read(n) if 0 < n <= min(size - 8, _MAX_HEADER) else b""
    if raw[:1] != b"{":
        if head[:4] == b"PK\x03\x04" or (head[:1] == b"\x80" and head[1:2] in (b"\x02", b"\x03", b"\x04", b"\x05")):
            raise ModelFileError(f"{path}: refused: {_PICKLE_ADVICE}")  # torch's zip, or a bare pickle
        if 0 < n <= _MAX_HEADER and n > size - 8:
            raise ModelFileError(f"{path}: truncated: {size} bytes, fewer than its header's {n}: copy it again")
        raise ModelFileError(f"{path}: not an atmorep model file (not safetensors: {size} bytes, no JSON header)")
    try:
        header = json.loads(raw)
    except ValueError:
        raise ModelFileError(
            f"{path}: not an atmorep model file, or a damaged one (its header is not JSON): copy it again"
        ) from None
    meta = header.get("__metadata__") if isinstance(header, dict) else None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        got = meta.get("format") if isinstance(meta, dict) else None
        raise ModelFileError(f"{path}: a safetensors file but not an atmorep model file (format {got!r}, not {FORMAT})")
    try:
        end = max([t["data_offsets"][1] for k, t in header.items() if k != "__metadata__"], default=0)
    except (TypeError, KeyError, IndexError):
        raise ModelFileError(f"{path}: a damaged model file (its tensor table is malformed): copy it again") from None
    if 8 + n + end != size:
        what = "truncated" if size < 8 + n + end else "longer than it should be"
        raise ModelFileError(f"{path}: {what}: {size} bytes where its header describes {8 + n + end}: copy it again")
    return header, n


def _digest(path: Path, n: int, at: int) -> str:
    """SHA-256 of the file with the 64 characters at byte ``at`` of the header read as zeros."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        head = bytearray(f.read(8 + n))
        head[8 + at : 8 + at + 64] = _PLACEHOLDER.encode()
        h.update(head)
        while block := f.read(_BLOCK):
            h.update(block)
    return h.hexdigest()


def _digest_at(path: Path, n: int, value: str) -> int:
    """Where ``value`` (the recorded digest) sits in the header: exactly once, as a JSON string."""
    with open(path, "rb") as f:
        raw = f.read(8 + n)[8:]
    needle = f'"{value}"'.encode()
    if raw.count(needle) != 1:
        raise ModelFileError(f"{path}: a damaged model file (its sha256 is not where it belongs): copy it again")
    return raw.index(needle) + 1


def _seal(path: Path) -> str:
    """Write the file's own digest in place of the placeholder (same length: nothing moves)."""
    _, n = _header(path)
    at = _digest_at(path, n, _PLACEHOLDER)
    digest = _digest(path, n, at)
    with open(path, "r+b") as f:
        f.seek(8 + at)
        f.write(digest.encode())
    return digest


def read_card(path: str | Path, verify: bool = True) -> dict:
    """The card of the model file at ``path``, with its ``sha256``; ``verify`` (default) checks the
    digest over the whole file first. Raises :class:`ModelFileError` (one line) for anything else."""
    path = Path(path)
    header, n = _header(path)
    meta = header["__metadata__"]
    recorded = meta.get(_DIGEST_KEY, "")
    if len(recorded) != 64 or not all(c in "0123456789abcdef" for c in recorded):
        raise ModelFileError(f"{path}: a damaged model file (no sha256 in its header): copy it again")
    if verify:
        got = _digest(path, n, _digest_at(path, n, recorded))
        if got != recorded:
            raise ModelFileError(
                f"{path}: damaged or altered: its content hashes to sha256 {got[:16]}…, its header records "
                f"{recorded[:16]}…: copy or download it again"
            )
    try:
        card = json.loads(meta["card"])
    except (KeyError, TypeError, ValueError):
        raise ModelFileError(f"{path}: a damaged model file (its card is not JSON)") from None
    return {**card, "sha256": recorded}


# -- loading --------------------------------------------------------------------------------------


def load_state(path: str | Path) -> tuple[dict[str, torch.Tensor], dict]:
    """The verified weights (name -> fp32 tensor) and the card of a model file."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    card = read_card(path)
    try:
        state = load_file(str(path))
    except (SafetensorError, OSError) as exc:  # verified just before: only a file changed meanwhile gets here
        raise ModelFileError(f"{path}: cannot read its tensors ({exc}): copy it again") from None
    return state, card


#: model settings that say how to train or compute, not what the weights are; ``fields`` selects the
#: data fields a run trains on, which the file's field geometry (compared whole) already says
_NOT_ARCHITECTURE = {"dropout", "checkpointing", "attention", "fields"}


def load_weights(model: Multiformer, path: str | Path) -> dict:
    """Load a model file's weights into ``model`` (fine-tuning); architecture and fields must match.
    Returns the card."""
    state, card = load_state(path)

    def comparable(arch: dict) -> dict:
        model_cfg = {k: v for k, v in arch["model"].items() if k not in _NOT_ARCHITECTURE}
        # Through JSON so that tuples (a live config) and lists (a saved one) compare equal.
        return json.loads(json.dumps({"model": model_cfg, "fields": arch["fields"]}))

    ours, theirs = comparable(architecture(model)), comparable(card)
    diff = sorted(
        k
        for part in ("model", "fields")
        for k in set(ours[part]) | set(theirs[part])
        if ours[part].get(k) != theirs[part].get(k)
    )
    if diff:
        raise ValueError(f"{path} has another architecture or fields; differs in {diff}")
    model.load_state_dict(state)
    return card


def load_model(path: str | Path) -> tuple[Multiformer, dict]:
    """The model in eval mode, and its card."""
    state, card = load_state(path)
    try:
        cfg = C.build(C.ModelConfig, card["model"], "model")
        fields = {f: FieldGeometry(g["levels"], tuple(g["token_size"])) for f, g in card["fields"].items()}
    except (KeyError, TypeError, C.ConfigError) as exc:
        raise ModelFileError(f"{path}: its card does not describe a model ({exc})") from None
    model = Multiformer(cfg, fields)
    model.load_state_dict(state)
    return model.eval(), card


# -- atmorep inspect ------------------------------------------------------------------------------


def is_model_file(path: str | Path) -> bool:
    """Whether ``path`` looks like a model file (safetensors, or a pickle that :func:`read_card` refuses
    with its reason) rather than GRIB, NetCDF or zarr: by its first bytes, nothing is unpickled."""
    path = Path(path)
    if not path.is_file():
        return False
    with open(path, "rb") as f:
        head = f.read(9)
    return head[:4] == b"PK\x03\x04" or head[:1] == b"\x80" or (len(head) == 9 and head[8:9] == b"{")


def describe(path: str | Path) -> str:
    """What ``atmorep inspect MODEL`` prints: the verified file's summary, then its whole card (JSON)."""
    card = read_card(path)
    model, fields = card["model"], card["fields"]
    lines = [
        f"{path}: atmorep model file ({card['format']}), sha256 {card['sha256']} (verified), "
        f"{Path(path).stat().st_size:,} bytes",
        f"  architecture: {parameters(card):,} parameters, dim {model['dim']}, heads {model['heads']}, "
        f"{model['encoder_layers']} encoder + {model['decoder_layers']} decoder layers, ensemble {model['ensemble']}"
        + (", compat layout" if model.get("compat") else ""),
    ]
    for f, g in fields.items():
        levels = card.get("data", {}).get("fields", {}).get(f, {}).get("levels")
        lines.append(
            f"  field {f}: {g['levels']} level(s)"
            + (f" {list(levels)}" if levels else "")
            + f", tokens {g['token_size']}"
            + (", input only" if f in model.get("inputs_only", ()) else "")
        )
    if periods := card.get("periods"):
        lines.append("  periods: " + ", ".join(f"{k} {_span(v)}" for k, v in periods.items()))
    if training := card.get("training"):
        final = training.get("final") or {}
        loss = f", final loss {final['loss']:.4g}" if isinstance(final.get("loss"), float) else ""
        steps = training.get("steps")
        lines.append(f"  trained: {steps if steps is not None else 'unrecorded'} steps{loss}")
    for f, norm in (card.get("normalization") or {}).items():
        stores = norm.get("stores") or {}
        pinned = ", ".join(f"{y} statistics sha256 {s.get('statistics_sha256', '?')[:16]}…" for y, s in stores.items())
        lines.append(f"  normalization {f}: {norm.get('method')}" + (f"; {pinned}" if pinned else " (not recorded)"))
    code = card.get("code") or {}
    v = card.get("versions", {})
    lines.append(
        f"  written by atmorep {v.get('atmorep')} (commit {code.get('commit')}"
        + (", modified" if code.get("modified") else "")
        + f"), torch {v.get('torch')}, python {code.get('python')}"
    )
    import yaml

    return "\n".join(lines) + "\ncard:\n" + yaml.safe_dump(card, sort_keys=False, default_flow_style=None, width=120)


def _span(value: Any) -> str:
    if isinstance(value, (list, tuple)) and len(value) == 2:
        return f"{value[0]} .. {value[1]}"
    return "none" if value is None else str(value)


def parameters(card: dict) -> int:
    """Parameters of the model a card describes (built on the meta device)."""
    from atmorep.model.summary import parameter_count

    cfg = C.build(C.ModelConfig, card["model"], "model")
    fields = {f: FieldGeometry(g["levels"], tuple(g["token_size"])) for f, g in card["fields"].items()}
    return parameter_count(cfg, fields)
