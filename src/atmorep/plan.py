"""Capacity planner: what a campaign will cost before anything is submitted.

``atmorep plan --config run.yaml`` (or ``snakemake plan``) prints the GRIB volume to download, the
zarr bytes and inode count of the shard stores, core-hours per stage, GPU-hours of pretraining from
the model's FLOPs at a stated MFU, and the number of SLURM jobs the profile submits.

Per-unit costs of the CPU stages are throughputs measured on our CI machine (2 cores, AMD EPYC
Zen 3): :data:`CORE_S_PER_GB` below, for a site to scale to its own machines.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import yaml

from atmorep.architectures import from_config
from atmorep.config import Config, ConfigError
from atmorep.data.acquire.sources import source
from atmorep.train.throughput import table_peak

#: GRIB1 bytes per message besides the packed values (sections 0, 1, 2, 5, section 4's header and its
#: pad byte), measured
GRIB1_HEADER = 108


def message_bytes(points: int, bits: int) -> int:
    """Bytes of one GRIB1 message of ``points`` values at ``bits`` each: section 4 (11 header bytes and
    the values) is padded to an even length, so the pad byte is there only when it would be odd."""
    values = math.ceil(points * bits / 8)
    return GRIB1_HEADER - 1 + values + (11 + values) % 2


#: core-seconds per GB of float32 data, measured on 2-core CI machines (logs/*/*.benchmark.tsv);
#: "evaluate" is the infer and score rules together
CORE_S_PER_GB = {"acquire": 25.0, "normalize": 30.0, "shard": 12.0, "evaluate": 60.0}


def _peak(name: str) -> float:
    if (peak := table_peak(name)) is None:  # the throughput table renamed it: GPU-hours would be None x float
        raise LookupError(f"train.throughput has no peak FLOP/s for '{name}'")
    return peak


#: peak dense bf16 FLOP/s of one GPU (H100 SXM) used for GPU-hours
GPU_PEAK_FLOPS = _peak("NVIDIA H100 80GB HBM3")


@dataclass(frozen=True)
class Plan:
    grib_bytes: int
    grib_files: int
    zarr_bytes: int
    zarr_inodes: int
    core_hours: dict[str, float]
    train_flops: float
    gpu_hours: float
    slurm_jobs: dict[str, int]

    def text(self, mfu: float) -> str:
        rows = [
            f"GRIB to download       {_size(self.grib_bytes)} in {self.grib_files} files",
            f"zarr shard stores      {_size(self.zarr_bytes)} (uncompressed float32) "
            f"in at most {self.zarr_inodes} inodes",
            "core-hours per stage   " + ", ".join(f"{k} {v:.3g}" for k, v in self.core_hours.items()),
            f"pretraining            {self.train_flops:.3g} FLOP = {self.gpu_hours:.3g} GPU-hours "
            f"at {mfu:.0%} MFU of {GPU_PEAK_FLOPS / 1e12:.0f} TFLOP/s (bf16)",
            "SLURM jobs             "
            + ", ".join(f"{k} {v}" for k, v in self.slurm_jobs.items())
            + f" (total {sum(self.slurm_jobs.values())})",
        ]
        return "\n".join(rows)


def grid(cfg: Config) -> tuple[np.ndarray, np.ndarray]:
    """(latitudes, longitudes) of the grid the source delivers after ``data.area``."""
    if (g := source(cfg.acquire).grid(cfg.data)) is None:
        raise ConfigError(
            f"acquire.source {cfg.acquire.source}: the grid comes with the data; set data.grid to plan the campaign"
        )
    return g


def time_steps(cfg: Config, month: str) -> int:
    """Valid times of ``month`` the source delivers inside the campaign."""
    if (t := source(cfg.acquire).times(cfg.data, month)) is None:
        raise ConfigError(
            f"acquire.source {cfg.acquire.source}: the time steps come with the data; set data.step_hours to "
            "plan the campaign"
        )
    return len(t)


def plan(cfg: Config, profile: dict | None = None, mfu: float = 0.45) -> Plan:
    from atmorep.data import shards as S
    from atmorep.model.summary import training_flops
    from atmorep.train.memory import masked_fraction

    lats, lons = grid(cfg)
    nlat, nlon = len(lats), len(lons)
    months = cfg.data.months()
    steps = {m: time_steps(cfg, m) for m in months}
    bits = source(cfg.acquire).bits(cfg.data)
    # One message per (time, level): its header plus the packed values.
    grib = sum(
        steps[m] * len(spec.levels) * message_bytes(nlat * nlon, bits)
        for spec in cfg.data.fields.values()
        for m in months
    )
    # The field only names errors: the crop keeps whole tokens of every field, so it is one for all.
    rows, cols = S.crop(cfg.data, cfg.shard, "", lats, lons)
    ny, nx = rows.stop - rows.start, cols.stop - cols.start
    zarr_bytes, inodes = 0, 0
    for f, spec in cfg.data.fields.items():
        L = len(spec.levels)
        for year in cfg.data.years():
            T = sum(steps[m] for m in months if m.startswith(year))
            shape = (T, L, ny, nx)
            _, shard_shape = S.layout(cfg.shard, cfg.shard.token_size_for(f), shape)
            n_months = sum(1 for m in months if m.startswith(year))
            # mean and std per month and level; per grid point as well when normalized locally.
            stats = n_months * L * 2 * (ny * nx if cfg.normalize.method_for(f) == "local" else 1)
            zarr_bytes += 4 * (math.prod(shape) + stats)  # float32
            inodes += math.prod(math.ceil(n / s) for n, s in zip(shape, shard_shape)) + STORE_FILES
    # The rates are per GB of float32 values on the grid the source delivers (before the shard crop).
    data_gb = sum(steps[m] * len(s.levels) for s in cfg.data.fields.values() for m in months) * nlat * nlon * 4 / 1e9
    core_hours = {stage: data_gb * rate / 3600 for stage, rate in CORE_S_PER_GB.items()}
    # batch_size is per rank and per micro-step.
    samples = cfg.train.steps * cfg.train.batch_size * cfg.train.gradient_accumulation * cfg.train.ranks
    train_flops = training_flops(cfg.model, from_config(cfg).fields, masked_fraction(cfg.train.masking)) * samples
    return Plan(
        grib,
        len(cfg.data.fields) * len(months),
        zarr_bytes,
        inodes,
        core_hours,
        train_flops,
        train_flops / (GPU_PEAK_FLOPS * mfu) / 3600,
        slurm_jobs(cfg, profile or {}),
    )


def report(cfg: Config, profile: dict | None, mfu: float, device_memory: str, ranks: int | None = None) -> str:
    """What ``atmorep plan`` prints: the campaign's plan and the fit planner's line for GPUs of
    ``device_memory`` (e.g. "80GiB") on ``ranks`` ranks (default ``train.ranks``)."""
    from atmorep.train.memory import fit_line

    line = fit_line(cfg.model, from_config(cfg).fields, cfg.train, device_memory, ranks or cfg.train.ranks)
    return f"{plan(cfg, profile, mfu).text(mfu)}\n{line}"


#: files of a shard store besides the data shards, at most: zarr.json of the group and of 8 arrays,
#: one chunk file for each of time, level, latitude, longitude, month, mean, std (zarr skips a chunk
#: whose values all equal the fill value, e.g. level [0] of a surface field)
STORE_FILES = 9 + 7


def slurm_jobs(cfg: Config, profile: dict) -> dict[str, int]:
    """SLURM jobs per stage, with the profile's job grouping (``groups`` / ``group-components``)."""
    units = {
        "acquire": len(cfg.data.fields) * len(cfg.data.months()),
        "normalize": len(cfg.data.fields) * len(cfg.data.months()),
        "shard": len(cfg.data.fields) * len(cfg.data.years()),
        "pretrain": 1,
        "infer": 1,
        "score": 1,
        "embed": 1,  # rule all always asks for the model's embeddings
        "finetune": len(cfg.finetune.tasks),  # one job per task
    }
    # Snakemake submits a group of group-components jobs as one SLURM job.
    groups, sizes = profile.get("groups", {}), profile.get("group-components", {})
    return {rule: math.ceil(n / sizes.get(groups.get(rule), 1)) for rule, n in units.items() if n}


def load_profile(path: str | Path | None) -> dict:
    if path is None:
        return {}
    p = Path(path)
    # A profile is a directory holding config.yaml (Snakemake's layout), or that file itself.
    return yaml.safe_load((p / "config.yaml" if p.is_dir() else p).read_text()) or {}


def _size(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB", "TB", "PB"):
        if n < 1000 or unit == "PB":
            return f"{n:.1f} {unit}"
        n /= 1000
    return f"{n:.1f} PB"
