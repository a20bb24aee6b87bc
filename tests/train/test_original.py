"""Models of the original AtmoRep code: the converter against the original's own outputs (the oracle
fixtures in ../shared/reference/original-oracle), its refusals, V1 keys, and a converted model as a
first-class model (evaluate, train.init_from)."""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import torch

from atmorep import cli
from atmorep.train.original import OriginalFormatError, convert, read_config

REPO = Path(__file__).resolve().parents[2]
ORACLE = REPO.parent / "shared" / "reference" / "original-oracle"
sys.path.insert(0, str(REPO / "benchmarks"))

import original_oracle  # noqa: E402


def oracle_case(name: str) -> Path:
    folder = ORACLE / name
    if not folder.is_dir():
        pytest.skip(f"{folder} is not present")
    return folder


def original_layout(cf: dict, seed: int = 0) -> dict[str, torch.Tensor]:
    """A random state_dict in the original's V2 layout for the architecture ``cf`` (its JSON)."""
    gen = torch.Generator().manual_seed(seed)

    def t(*shape):
        return 0.1 * torch.randn(*shape, generator=gen)

    fields = {fi[0]: fi for fi in cf["fields"]}
    H, ti, tin = cf["encoder_num_heads"], cf["size_token_info"], cf["size_token_info_net"]
    sd = {"embed_token_info.weight": torch.zeros(tin, ti), "embed_token_info.bias": t(tin)}
    for i, fi in enumerate(cf["fields"]):
        D, P = fi[1][1], fi[4][0] * fi[4][1] * fi[4][2]
        sd[f"embeds_token_info.{i}.weight"], sd[f"embeds_token_info.{i}.bias"] = t(tin, ti), t(tin)
        sd[f"embeds.{i}.weight"], sd[f"embeds.{i}.bias"] = t(D - tin, P), t(D - tin)
        for p in ("weight", "bias"):
            sd[f"encoders.{i}.embed.{p}"] = sd[f"embeds.{i}.{p}"]  # one tensor in the original
        dh, coupled = D // H, fi[1][2]
        for layer in range(cf["encoder_num_layers"]):
            p = f"encoders.{i}.heads.{layer}"
            sd[f"{p}.proj_out.weight"] = t(D, dh * (H + len(coupled)))
            sd[f"{p}.proj_heads.weight"] = t(3 * H * dh, D)
            if coupled:
                sd[f"{p}.proj_heads_other.0.weight"] = t(len(coupled) * dh, D)
                for g, name in enumerate(coupled):
                    sd[f"{p}.proj_heads_other.{g + 1}.weight"] = t(2 * dh, fields[name][1][1])
            m = f"encoders.{i}.mlps.{layer}.blocks"
            sd.update(
                {
                    f"{m}.0.weight": t(2 * D, D),
                    f"{m}.0.bias": t(2 * D),
                    f"{m}.3.weight": t(D, 2 * D),
                    f"{m}.3.bias": t(D),
                }
            )
    for j, (name, _) in enumerate(cf["fields_prediction"]):
        fi = fields[name]
        D, P = fi[1][1], fi[4][0] * fi[4][1] * fi[4][2]
        dh, hc = D // H, H // 2
        for layer in range(cf["decoder_num_layers"]):
            p, m = f"decoders.{j}.blocks.{2 * layer}", f"decoders.{j}.blocks.{2 * layer + 1}.blocks"
            sd.update(
                {
                    f"{p}.proj_heads.weight": t(3 * (H - hc) * dh, D),
                    f"{p}.proj_heads_o_q.weight": t(hc * dh, D),
                    f"{p}.proj_heads_o_kv.weight": t(2 * hc * dh, D),
                    f"{p}.proj_out.weight": t(D, D),
                    f"{p}.ln_q.weight": 1 + t(dh),
                    f"{p}.ln_q.bias": t(dh),
                    f"{p}.ln_k.weight": 1 + t(dh),
                    f"{p}.ln_k.bias": t(dh),
                    f"{m}.0.weight": t(2 * D, D),
                    f"{m}.0.bias": t(2 * D),
                    f"{m}.3.weight": t(D, 2 * D),
                    f"{m}.3.bias": t(D),
                }
            )
        for e in range(cf["net_tail_num_nets"]):
            p = f"tails.{j}.tail_nets.{e}"
            sd.update({f"{p}.0.weight": 1 + t(D), f"{p}.0.bias": t(D), f"{p}.1.weight": t(P, D), f"{p}.1.bias": t(P)})
    return sd


def sample_config() -> dict:
    """The original's JSON for a model on the embedded sample (t2m, u10; tokens 2x9x9): u10 is an
    input only (not in fields_prediction)."""
    base = {
        "size_token_info": 8,
        "size_token_info_net": 16,
        "encoder_att_type": "dense",
        "decoder_att_type": "dense",
        "coupling_num_heads_per_field": 1,
        "with_layernorm": True,
        "dropout_rate": 0.0,
        "with_qk_lnorm": True,
        "encoder_num_mlp_layers": 2,
        "decoder_num_mlp_layers": 2,
        "decoder_self_att": False,
        "decoder_cross_att_ratio": 0.5,
        "decoder_cross_att_rate": 1.0,
        "net_tail_num_layers": 0,
        "losses": ["mse_ensemble", "stats"],
        "forecast_num_tokens": 1,
    }
    return {
        **base,
        "encoder_num_layers": 1,
        "encoder_num_heads": 4,
        "decoder_num_layers": 1,
        "decoder_num_heads": 4,
        "net_tail_num_nets": 4,
        "wandb_id": "sample",
        "fields": [
            ["t2m", [1, 32, ["u10"], 0], [0], [3, 3, 6], [2, 9, 9], [0.5, 0.9, 0.2, 0.05]],
            ["u10", [1, 32, [], 0], [0], [3, 3, 6], [2, 9, 9], [0.3, 0.9, 0.2, 0.05]],
        ],
        "fields_prediction": [["t2m", 1.0]],
    }


def write_original(folder: Path, cf: dict, sd: dict) -> tuple[Path, Path]:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / f"model_id{cf['wandb_id']}.json").write_text(json.dumps(cf))
    torch.save(sd, folder / f"AtmoRep_id{cf['wandb_id']}.mod")
    return folder / f"AtmoRep_id{cf['wandb_id']}.mod", folder / f"model_id{cf['wandb_id']}.json"


@pytest.mark.parametrize("case", ["single", "multi_qk"])
def test_converted_model_computes_what_the_original_computes(case):
    worst, loss, lines = original_oracle.run(oracle_case(case))
    assert worst <= 1e-5 and loss <= 1e-5, "\n".join(lines)
    assert any("tail_members" in line for line in lines) and any("encoder1" in line for line in lines)


def test_coupling_queries_without_qk_norm_are_what_makes_multi_qk_match():
    """Normalizing the coupling queries too (our default) is off by far more than rounding."""
    folder = oracle_case("multi_qk")
    model, extra = convert(folder / "AtmoRep_idmulti_qk.mod", folder / "model_idmulti_qk.json")
    batch = torch.load(folder / "bert.pt", weights_only=True)
    for blocks in model.encoders.values():
        for block in blocks:
            block.attn.source_q_norm = True
    diffs = original_oracle.compare(model, extra, batch)
    assert diffs["embed/fa"] < 1e-6 and max(diffs[k] for k in diffs if k.startswith("tail_mean")) > 1e-3


def test_our_layout_helper_is_the_originals(tmp_path):
    for case in ("single", "multi_qk"):
        folder = oracle_case(case)
        theirs = torch.load(folder / f"AtmoRep_id{case}.mod", weights_only=True)
        ours = original_layout(read_config(folder / f"model_id{case}.json"))
        assert {k: tuple(v.shape) for k, v in ours.items()} == {k: tuple(v.shape) for k, v in theirs.items()}


def test_a_config_that_does_not_match_its_weights_is_refused(tmp_path, capsys):
    single, multi = oracle_case("single"), oracle_case("multi_qk")
    out = tmp_path / "model.safetensors"
    rc = cli.main(
        [
            "import-original",
            "--weights",
            str(single / "AtmoRep_idsingle.mod"),
            "--config",
            str(multi / "model_idmulti_qk.json"),
            "--output",
            str(out),
        ]
    )
    err = capsys.readouterr().err
    assert rc == 1 and "encoders.0.heads.0.proj_heads_other.0.weight" in err and not out.exists()
    cf = read_config(single / "model_idsingle.json")
    cf["fields"][0][1][1] = 48  # another width than the weights have
    (tmp_path / "wide.json").write_text(json.dumps(cf))
    rc = cli.main(
        [
            "import-original",
            "--weights",
            str(single / "AtmoRep_idsingle.mod"),
            "--config",
            str(tmp_path / "wide.json"),
            "--output",
            str(out),
        ]
    )
    err = capsys.readouterr().err
    assert rc == 1 and "does not match" in err and "embed.fa.values.weight" in err and not out.exists()
    cf = read_config(single / "model_idsingle.json")
    cf["net_tail_num_nets"] = 2  # fewer members than the file: keys left over
    (tmp_path / "two.json").write_text(json.dumps(cf))
    with pytest.raises(OriginalFormatError, match=r"'tails\.0\.tail_nets\.2\.0\.bias'.*do not match"):
        convert(single / "AtmoRep_idsingle.mod", tmp_path / "two.json")
    cf["decoder_cross_att_rate"] = 0.5
    (tmp_path / "rate.json").write_text(json.dumps(cf))
    with pytest.raises(OriginalFormatError, match="decoder_cross_att_rate"):
        convert(single / "AtmoRep_idsingle.mod", tmp_path / "rate.json")


def test_a_file_that_would_run_pickled_code_is_refused(tmp_path):
    cf = sample_config()
    mod, js = write_original(tmp_path, cf, {**original_layout(cf), "cfg": argparse.Namespace(lr=1.0)})
    with pytest.raises(OriginalFormatError, match="refused.*pickled code"):
        convert(mod, js)
    torch.save([torch.zeros(2)], mod)
    with pytest.raises(OriginalFormatError, match="not a state_dict"):
        convert(mod, js)


def test_a_mod_file_with_a_payload_leaves_no_trace(tmp_path):
    from tests_helpers import write_payload

    cf = sample_config()
    mod, js = write_original(tmp_path, cf, original_layout(cf))
    write_payload(mod, tmp_path / "marker")
    with pytest.raises(OriginalFormatError, match="refused.*pickled code") as err:
        convert(mod, js)
    assert "\n" not in str(err.value) and str(mod) in str(err.value) and not (tmp_path / "marker").exists()


@pytest.mark.parametrize("case", ["single", "multi_qk"])
def test_an_imported_model_loads_unchanged_with_a_card_from_the_json(case, tmp_path):
    from atmorep.model.file import load_model, read_card

    folder = oracle_case(case)
    mod, js = folder / f"AtmoRep_id{case}.mod", folder / f"model_id{case}.json"
    converted, _ = convert(mod, js)
    out = tmp_path / "model.safetensors"
    assert cli.main(["import-original", "--weights", str(mod), "--config", str(js), "--output", str(out)]) == 0
    loaded, card = load_model(out)
    ours, theirs = converted.state_dict(), loaded.state_dict()
    assert list(ours) == list(theirs) and all(torch.equal(ours[k], theirs[k]) for k in ours)
    assert card == read_card(out) and card["original"]["json"] == read_config(js)
    assert card["original"]["weights_sha256"] == hashlib.sha256(mod.read_bytes()).hexdigest()
    assert set(card["normalization"]) == set(loaded.fields) and card["periods"] == {"train": None, "validation": None}
    cf = read_config(REPO.parent / "shared" / "reference" / "original-oracle" / "model_idwc5e2i3t.json")
    js2 = tmp_path / "with_years.json"
    js2.write_text(json.dumps({**read_config(js), **{k: cf[k] for k in ("years_train", "years_val", "file_path")}}))
    assert cli.main(["import-original", "--weights", str(mod), "--config", str(js2), "--output", str(out)]) == 0
    card = read_card(out)
    assert card["periods"] == {
        "train": ["1979-01-01T00", "2020-12-31T23"],
        "validation": ["2021-01-01T00", "2021-12-31T23"],
    }
    assert next(iter(card["normalization"].values()))["source"] == cf["file_path"]


def test_v1_per_head_keys_convert_to_the_same_model(tmp_path):
    folder = oracle_case("single")
    cf = read_config(folder / "model_idsingle.json")
    v2 = torch.load(folder / "AtmoRep_idsingle.mod", weights_only=True)
    v1, H = dict(v2), cf["encoder_num_heads"]
    for k in [
        k for k in v2 if k.endswith("proj_heads.weight") or "proj_heads_o_" in k or ".ln_q." in k or ".ln_k." in k
    ]:
        w = v1.pop(k)
        if k.startswith("encoders"):  # rows per head [q, k, v]
            for h, rows in enumerate(w.chunk(H)):
                for name, part in zip(("qs", "ks", "vs"), rows.chunk(3)):
                    v1[k.replace("proj_heads.weight", f"heads_self.{h}.proj_{name}.weight")] = part
        elif k.endswith("proj_heads.weight"):
            for h, rows in enumerate(w.chunk(H // 2)):
                for name, part in zip(("qs", "ks", "vs"), rows.chunk(3)):
                    v1[k.replace("proj_heads.weight", f"heads.{h}.proj_{name}.weight")] = part
        elif k.endswith("proj_heads_o_q.weight"):
            for h, rows in enumerate(w.chunk(H // 2)):
                v1[k.replace("proj_heads_o_q.weight", f"heads_other.{h}.proj_qs.weight")] = rows
        elif k.endswith("proj_heads_o_kv.weight"):
            for h, rows in enumerate(w.chunk(H // 2)):
                for name, part in zip(("ks", "vs"), rows.chunk(2)):
                    v1[k.replace("proj_heads_o_kv.weight", f"heads_other.{h}.proj_{name}.weight")] = part
    assert not any(k.endswith("proj_heads.weight") for k in v1)
    mod, js = write_original(tmp_path, cf, v1)
    old, _ = convert(mod, js)
    new, _ = convert(folder / "AtmoRep_idsingle.mod", folder / "model_idsingle.json")
    for k, v in new.state_dict().items():
        if "_norm." in k:  # V1 had no decoder q/k norm: weight and bias 1, as the original's loader sets
            assert torch.equal(old.state_dict()[k], torch.ones_like(v)), k
        else:
            assert torch.equal(old.state_dict()[k], v), k
    coupled = {**v1, "encoders.0.heads.0.heads_other.0.proj_qs.weight": torch.zeros(16, 64)}
    torch.save(coupled, mod)
    with pytest.raises(OriginalFormatError, match=r"heads_other\.0\.proj_qs"):
        convert(mod, js)


def test_import_original_cli_writes_a_model_file_and_its_config(tmp_path, capsys):
    from atmorep.model.file import load_model

    cf = sample_config()
    cf["fields"][0][0], cf["fields"][1][0] = "temperature_2m", "u10"
    cf["fields"][0][1][2] = ["u10"]
    cf["fields_prediction"] = [["temperature_2m", 1.0]]
    mod, js = write_original(tmp_path / "orig", cf, original_layout(cf))
    out = tmp_path / "model.safetensors"
    rc = cli.main(
        [
            "import-original",
            "--weights",
            str(mod),
            "--config",
            str(js),
            "--output",
            str(out),
            "--rename",
            "temperature_2m=t2m",
            "--config-out",
            str(tmp_path / "keys.yaml"),
        ]
    )
    printed = capsys.readouterr().out
    assert rc == 0 and "field_rates" in printed and (tmp_path / "keys.yaml").read_text() in printed
    model, record = load_model(out)
    assert list(model.fields) == ["t2m", "u10"] and model.predicted == ["t2m"] and model.cfg.compat
    assert model.cfg.inputs_only == ("u10",) and set(model.tails) == {"t2m"}
    assert record["original"]["masking"]["u10"] == [0.3, 0.9, 0.2, 0.05]
    assert (
        cli.main(
            ["import-original", "--weights", str(mod), "--config", str(js), "--output", str(out), "--rename", "oops"]
        )
        == 1
    )


@pytest.fixture(scope="module")
def converted(tmp_path_factory):
    """The sample model in the original's files, imported; and the config keys import-original suggests."""
    import yaml

    root = tmp_path_factory.mktemp("original")
    cf = sample_config()
    mod, js = write_original(root / "orig", cf, original_layout(cf, seed=3))
    assert (
        cli.main(
            [
                "import-original",
                "--weights",
                str(mod),
                "--config",
                str(js),
                "--output",
                str(root / "model.safetensors"),
                "--config-out",
                str(root / "keys.yaml"),
            ]
        )
        == 0
    )
    return root / "model.safetensors", yaml.safe_load((root / "keys.yaml").read_text())


@pytest.mark.slow
def test_evaluate_reads_a_converted_model(converted, sample_products, tmp_path):
    from atmorep.config import DataConfig, EvaluateConfig, FieldSpec
    from atmorep.eval.evaluate import evaluate

    data = DataConfig(fields={"t2m": FieldSpec(), "u10": FieldSpec()}, start="2026-03-25T00", end="2026-03-31T23")
    cfg = EvaluateConfig(start="2026-03-30T06", end="2026-03-31T23", samples=2, batch_size=2, mode="forecast")
    stores = {f: [str(p)] for f, p in sample_products["shards"].items()}
    scores = pd.read_csv(evaluate(1, data, cfg, converted[0], stores, tmp_path))
    assert set(scores.field) == {"t2m"}  # u10 is an input only: no decoder, no tail, no scores
    assert scores.loc[scores.forecast == "atmorep", "value"].notna().all()


@pytest.mark.slow
def test_train_init_from_fine_tunes_a_converted_model(converted, sample_products, tmp_path):
    from atmorep.model.file import load_model

    path, keys = converted
    data = sample_products["data"]
    params = {
        "seed": 5,
        "data": {"fields": {f: {"levels": [0]} for f in data.fields}, "start": data.start, "end": data.end},
        "model": keys["model"],
        "train": {
            **keys["train"],
            "start": "2026-03-25T00",
            "end": "2026-03-30T05",
            "steps": 1,
            "batch_size": 2,
            "lr_start": 1e-12,
            "lr": 1e-12,
            "lr_min": 1e-12,
            "warmup_epochs": 1,
            "epoch_steps": 2,
            "tensorboard": False,
            "engine": "torch",
            "init_from": str(path),
        },
    }
    params["train"]["masking"]["strategy"] = "bert"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    for k in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(k, None)
    cmd = [
        str(Path(sys.executable).parent / "torchrun"),
        "--standalone",
        "--nproc_per_node",
        "1",
        "-m",
        "atmorep",
        "train",
        "--params",
        json.dumps(params),
        "--shards",
        *map(str, sample_products["shards"].values()),
        "--output-dir",
        str(tmp_path),
    ]
    r = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-4000:]
    metrics = pd.read_csv(tmp_path / "metrics.csv")
    assert metrics["loss"].notna().all() and not any(c.startswith("u10/") for c in metrics.columns)
    base, _ = load_model(path)
    tuned, _ = load_model(tmp_path / "model.safetensors")
    for (name, b), t in zip(base.state_dict().items(), tuned.state_dict().values()):
        torch.testing.assert_close(t, b, atol=1e-6, rtol=0, msg=name)


@pytest.mark.slow
def test_oracle_benchmark_prints_its_figures_and_fails_above_the_threshold():
    folder = oracle_case("single")
    script = REPO / "benchmarks" / "original_oracle.py"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    r = subprocess.run(
        [sys.executable, str(script), "--fixture", str(folder)], env=env, capture_output=True, text=True, timeout=300
    )
    assert r.returncode == 0, r.stderr[-3000:]
    last = r.stdout.strip().splitlines()[-1]
    assert last.startswith("oracle_max_rel_diff=") and " loss_rel_diff=" in last
    assert "tail_std/fa" in r.stdout and "decoder/fa" in r.stdout
    r = subprocess.run(
        [sys.executable, str(script), "--fixture", str(folder), "--threshold", "1e-12"],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert r.returncode == 1
