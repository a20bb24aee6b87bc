"""Issue 14.3/14.4: stores are checked as they are on disk; non-finite data is refused and named;
a full disk is one line naming the path and the bytes needed."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest
import zarr

from atmorep import cli

SHARD = {
    "data": {"fields": {"t2m": {}, "u10": {}}, "start": "2026-03-25T00", "end": "2026-03-31T23"},
    "shard": {"token_size": [2, 9, 9], "shard_tokens": [4, 5, 10]},
}


def run_cli(capsys, *argv) -> tuple[int, list[str], str]:
    rc = cli.main(list(map(str, argv)))
    cap = capsys.readouterr()
    return rc, cap.err.strip().splitlines(), cap.out


def test_verify_checks_a_shard_store_against_its_recorded_sources(sample_products, capsys):
    rc, err, out = run_cli(capsys, "verify", sample_products["shards"]["u10"], sample_products["normalized"]["u10"])
    assert rc == 0, err
    shard, norm = (json.loads(line)["verified"] for line in out.splitlines())
    steps = steps_of(sample_products)
    assert shard["values"] == steps * 1 * 171 * 360 and shard["months"] == 1
    assert norm["field"] == "u10" and norm["values"] == steps * 181 * 360


def steps_of(sample_products) -> int:
    import xarray as xr

    return xr.open_zarr(sample_products["normalized"]["u10"], consolidated=False).sizes["time"]


def test_flipped_bytes_in_a_shard_file_are_found_and_not_overwritten(sample_products, tmp_path, capsys):
    store = tmp_path / "u10.zarr"
    shutil.copytree(sample_products["shards"]["u10"], store)
    shard_file = store / "data" / "c" / "0" / "0" / "1" / "2"
    raw = bytearray(shard_file.read_bytes())
    for k in range(16):  # 16 bytes in the chunk data (the index at the end is untouched)
        raw[1000 + 97 * k] ^= 0x5A
    shard_file.write_bytes(bytes(raw))
    rc, err, _ = run_cli(capsys, "verify", store)
    assert rc == 1 and len(err) == 1 and "differs from the normalized source" in err[0] and str(store) in err[0]
    # shard --verify used to re-shard first, which wrote the corruption away and then "verified" it
    rc, err, _ = run_cli(
        capsys,
        "shard",
        "--params",
        json.dumps(SHARD),
        "--field",
        "u10",
        "--year",
        "2026",
        "--inputs",
        sample_products["normalized"]["u10"],
        "--output",
        store,
        "--verify",
    )
    assert rc == 1 and len(err) == 1 and "differs from the normalized source" in err[0]
    assert shard_file.read_bytes() == bytes(raw)


def test_a_broken_shard_index_checksum_is_found(sample_products, tmp_path, capsys):
    store = tmp_path / "u10.zarr"
    shutil.copytree(sample_products["shards"]["u10"], store)
    shard_file = store / "data" / "c" / "0" / "0" / "0" / "0"
    raw = bytearray(shard_file.read_bytes())
    raw[-12] ^= 1
    shard_file.write_bytes(bytes(raw))
    rc, err, _ = run_cli(capsys, "verify", store)
    assert rc == 1 and len(err) == 1 and "checksum" in err[0]


@pytest.fixture
def nan_month(sample_products, tmp_path):
    """The normalized u10 month with 60,000 values overwritten by NaN, as the fault injection did."""
    norm = tmp_path / "normalized" / "u10.zarr"
    shutil.copytree(sample_products["normalized"]["u10"], norm)
    arr = zarr.open_array(str(norm / "data"), mode="r+")
    dims = arr.metadata.dimension_names
    values = arr[...]
    view = np.moveaxis(values, [dims.index(d) for d in ("time", "level", "latitude", "longitude")], range(4))
    view[10, 0, :125, :] = np.nan  # 45,000
    view[11, 0, :42, :] = np.nan  # 15,120
    arr[...] = values
    assert np.isnan(arr[...]).sum() == 60120
    return norm


def test_nans_in_a_normalized_month_are_named(sample_products, nan_month, tmp_path, capsys):
    rc, err, _ = run_cli(capsys, "verify", nan_month)
    assert rc == 1 and len(err) == 1, err
    assert str(nan_month) in err[0] and "60120 non-finite values" in err[0] and "2026-03-28T00" in err[0]
    rc, err, _ = run_cli(capsys, "verify", sample_products["shards"]["u10"], "--inputs", nan_month)
    assert rc == 1 and len(err) == 1 and str(nan_month) in err[0] and "non-finite" in err[0], err
    out = tmp_path / "shards" / "u10.zarr"
    rc, err, _ = run_cli(
        capsys,
        "shard",
        "--params",
        json.dumps(SHARD),
        "--field",
        "u10",
        "--year",
        "2026",
        "--inputs",
        nan_month,
        "--output",
        out,
    )
    assert rc == 1 and len(err) == 1 and "non-finite" in err[0] and "rebuild it" in err[0], err
    assert not out.exists() and not list(out.parent.glob(".u10.zarr.part*"))


def test_normalize_refuses_non_finite_output(sample_products, tmp_path, monkeypatch):
    """A zero standard deviation (fault injected into the month's statistics) would divide to inf."""
    from atmorep.config import NormalizeConfig
    from atmorep.data import normalize
    from atmorep.data.normalize.statistics import Moments
    from atmorep.errors import DataError

    real = Moments.stats

    def zero_std(self, method):
        stats = real(self, method)
        stats.std[...] = 0
        return stats

    monkeypatch.setattr(Moments, "stats", zero_std)
    out = tmp_path / "u10.zarr"
    with pytest.raises(DataError, match=r"u10\.zarr: field 'u10' normalizes to \d+ non-finite values .*std 0"):
        normalize.normalize(
            sample_products["data"],
            NormalizeConfig(method="global"),
            "u10",
            "2026-03",
            sample_products["grib"]["u10"],
            out,
        )
    assert not out.exists() and not list(tmp_path.glob(".u10.zarr.part*"))


@pytest.fixture
def small_disk(tmp_path):
    """A 2 MiB tmpfs: a real full disk (needs root and mount; skipped otherwise)."""
    mnt = tmp_path / "disk"
    mnt.mkdir()
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(mnt)], capture_output=True, text=True)
    if r.returncode != 0:
        pytest.skip(f"cannot mount a small tmpfs here: {r.stderr.strip()}")
    try:
        yield mnt
    finally:
        subprocess.run(["umount", "-l", str(mnt)], check=False)


@pytest.mark.parametrize("stage", ["shard", "normalize"])
def test_disk_full_is_one_line_with_the_path_and_the_bytes_needed(sample_products, small_disk, stage):
    out = small_disk / "out" / "u10.zarr"
    if stage == "shard":
        argv = [
            "shard",
            "--params",
            json.dumps(SHARD),
            "--field",
            "u10",
            "--year",
            "2026",
            "--inputs",
            str(sample_products["normalized"]["u10"]),
            "--output",
            str(out),
        ]
        needed = 4 * steps_of(sample_products) * 171 * 360
    else:
        params = {"data": SHARD["data"], "normalize": {"method": "global"}}
        argv = [
            "normalize",
            "--params",
            json.dumps(params),
            "--field",
            "u10",
            "--month",
            "2026-03",
            "--input",
            str(sample_products["grib"]["u10"]),
            "--output",
            str(out),
        ]
        needed = 4 * steps_of(sample_products) * 181 * 360
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    env.pop("ATMOREP_DEBUG", None)
    r = subprocess.run([sys.executable, "-m", "atmorep", *argv], env=env, capture_output=True, text=True, timeout=300)
    lines = [line for line in r.stderr.splitlines() if " INFO " not in line]
    assert r.returncode == 1 and len(lines) == 1, r.stderr[-3000:]
    assert lines[0].startswith(f"atmorep {stage}: error: {out}: no space left on device"), lines
    assert f"({needed} bytes)" in lines[0] and "free on its file system" in lines[0] and "Traceback" not in r.stderr
    assert not out.exists() and not [p for p in out.parent.glob(".*") if p.name.startswith(".u10")]
    r = subprocess.run(
        [sys.executable, "-m", "atmorep", "--debug", *argv], env=env, capture_output=True, text=True, timeout=300
    )
    assert r.returncode == 1 and "Traceback" in r.stderr and "No space left on device" in r.stderr
