"""Our converted model against the ORIGINAL AtmoRep code's own outputs (an oracle fixture folder).

A fixture folder (``../shared/reference/original-oracle/<case>/``, README there) holds the original's
``AtmoRep_id<case>.mod`` and ``model_id<case>.json`` and, per batch (``forecast.pt``, ``bert.pt``), the
original's masked inputs, raw token info, masked-token indices, every stage's activations, its
predictions and loss. This converts the model (``atmorep import-original``'s code), feeds it the
same masked inputs and masks, and prints per stage the max relative difference
``max|ours - theirs| / max|theirs|``; the masked tokens are compared after matching the original's
order (level, batch, its index order) to ours (``mask.nonzero()``).

Last line: ``oracle_max_rel_diff=<x> loss_rel_diff=<y>``; exits 1 when either exceeds ``--threshold``
(default 1e-5) or anything fails.

    python benchmarks/original_oracle.py --fixture ../shared/reference/original-oracle/multi_qk
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

from atmorep.config import LossConfig
from atmorep.data.tokens import TOKEN_INFO_OFFSET, TOKEN_INFO_SCALE
from atmorep.train.losses import Loss
from atmorep.train.original import convert


def rel(ours: torch.Tensor, theirs: torch.Tensor) -> float:
    return float((ours.double() - theirs.double()).abs().max() / theirs.double().abs().max().clamp(min=1e-30))


def fixture_files(folder: Path) -> tuple[Path, Path, list[Path]]:
    mods, jsons = sorted(folder.glob("AtmoRep_id*.mod")), sorted(folder.glob("model_id*.json"))
    batches = [p for p in (folder / "forecast.pt", folder / "bert.pt") if p.exists()]
    if len(mods) != 1 or len(jsons) != 1 or not batches:
        raise FileNotFoundError(f"{folder}: expected one AtmoRep_id*.mod, one model_id*.json and forecast.pt/bert.pt")
    return mods[0], jsons[0], batches


def compare(model, extra: dict, batch: dict) -> dict[str, float]:
    """Stage -> max relative difference for one recorded batch of the original."""
    fields = list(model.fields)
    tokens, info, masks, order = {}, {}, {}, {}
    for i, f in enumerate(fields):
        src = batch["sources"][i]
        B, L, T, Y, X = src.shape[:5]
        tokens[f] = src.reshape(B, L, T, Y, X, -1)
        raw = batch["token_infos"][i].double().reshape(B, L, T, Y, X, -1)
        info[f] = (raw * torch.as_tensor(TOKEN_INFO_SCALE) + torch.as_tensor(TOKEN_INFO_OFFSET)).float()
        m = torch.zeros(B, L, T * Y * X, dtype=torch.bool)
        rows = []  # the original's order of masked tokens: level, batch, its index order
        for lev, per_batch in enumerate(batch["tmidx"][i]):
            for b, idx in enumerate(per_batch):
                n = idx % (T * Y * X)  # the original's indices may carry the batch offset
                m[b, lev, n] = True
                rows += [(b * L + lev) * T * Y * X + int(k) for k in n]
        masks[f] = m.view(B, L, T, Y, X)
        flat = masks[f].flatten().nonzero()[:, 0]
        position = {int(k): r for r, k in enumerate(flat)}
        order[f] = torch.tensor([position[k] for k in rows], dtype=torch.long)
    diffs: dict[str, float] = {}
    with torch.no_grad():
        for i, f in enumerate(fields):
            ours = model.embed[f](tokens[f], info[f])
            diffs[f"embed/{f}"] = rel(ours, batch["stages"]["embed"][i].flatten(1, -2))
        enc = model.encode(tokens, info)
        for i, f in enumerate(fields):
            for layer, theirs in enumerate(batch["stages"]["encoder"][i]):
                diffs[f"encoder{layer}/{f}"] = rel(enc[f][layer], theirs.flatten(1, -2))
        ens, targets = {}, {}
        for j, f in enumerate(extra["predicted"]):
            i = fields.index(f)
            dec = model.decode(enc[f], f)
            diffs[f"decoder/{f}"] = rel(dec, batch["stages"]["decoder"][j].flatten(1, -2))
            members = model.tails[f](dec[masks[f].flatten(1)])[order[f]]
            mean, std, theirs = batch["preds"][j]
            diffs[f"tail_mean/{f}"] = rel(members.mean(1), mean)
            diffs[f"tail_std/{f}"] = rel(members.std(1), std)
            diffs[f"tail_members/{f}"] = rel(members, theirs)
            targets[f] = tokens_raw(batch, i)[masks[f]][order[f]]
            diffs[f"targets/{f}"] = rel(targets[f], batch["targets"][i])
            ens[f] = members
        loss, _ = Loss(LossConfig(tuple(extra["losses"]), extra["field_weights"]))(ens, targets)
    diffs["loss"] = rel(loss, torch.as_tensor(batch["loss"]))
    return diffs


def tokens_raw(batch: dict, i: int) -> torch.Tensor:
    raw = batch["raw"][i]
    return raw.reshape(*raw.shape[:5], -1)


def run(folder: Path) -> tuple[float, float, list[str]]:
    """(max stage difference, loss difference, report lines) over the batches of one fixture."""
    mod, cfg_json, batches = fixture_files(folder)
    model, extra = convert(mod, cfg_json)
    lines, worst, loss_worst = [], 0.0, 0.0
    for path in batches:
        batch = torch.load(path, map_location="cpu", weights_only=True)
        if "nparams" in batch:
            ours = sum(p.numel() for p in model.parameters())
            theirs = int(batch["nparams"])
            lines.append(f"{folder.name}/{path.stem}: parameters ours {ours:,} original {theirs:,}")
            if ours != int(batch["nparams"]):
                worst = float("inf")
        for stage, d in compare(model, extra, batch).items():
            lines.append(f"{folder.name}/{path.stem} {stage:<24} max_rel_diff={d:.3e}")
            if stage == "loss":
                loss_worst = max(loss_worst, d)
            else:
                worst = max(worst, d)
    return worst, loss_worst, lines


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument(
        "--fixture",
        required=True,
        action="append",
        type=Path,
        help="a fixture folder (repeatable), or a folder of them",
    )
    ap.add_argument("--threshold", type=float, default=1e-5)
    args = ap.parse_args(argv)
    folders = []
    for p in args.fixture:
        folders += [p] if list(p.glob("*.mod")) else sorted(q for q in p.iterdir() if list(q.glob("*.mod")))
    if not folders:
        print(f"no fixture folder with an AtmoRep_id*.mod in {args.fixture}", file=sys.stderr)
        return 1
    worst = loss_worst = 0.0
    for folder in folders:
        w, lw, lines = run(folder)
        print("\n".join(lines), flush=True)
        worst, loss_worst = max(worst, w), max(loss_worst, lw)
    print(f"oracle_max_rel_diff={worst:.3e} loss_rel_diff={loss_worst:.3e}")
    return 0 if worst <= args.threshold and loss_worst <= args.threshold else 1


if __name__ == "__main__":
    sys.exit(main())
