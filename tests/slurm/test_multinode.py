"""Two SLURM nodes on this one machine (tests/slurm/twonode.sh: each slurmd in its own network and UTS
namespace, so each node has its own host name and address, joined by veth pairs on a bridge).

Ranks find each other across the hosts through PMI2 (mpi4py) and through plain SLURM variables, and
profiles/slurm with pretrain on 2 nodes x 1 task trains the model of a 1-node 2-rank run of the same
seed (same losses, same weights). The fixture starts the cluster when it is not up (``.ci/run``
starts it) and stops what it started; the one-node cluster of test_profile.py keeps running beside it.
"""

from __future__ import annotations

import copy
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import torch
import yaml

from atmorep.model.file import load_state

sys.path.insert(0, str(Path(__file__).parent))
from conftest import REPO  # noqa: E402
from test_profile import make_profile, slurm_jobs, snakemake  # noqa: E402
from test_workflow import TINY  # noqa: E402

pytestmark = [pytest.mark.slow, pytest.mark.slurm, pytest.mark.multinode]

TWONODE = Path(__file__).with_name("twonode.sh")
STATE = Path(os.environ.get("ATMOREP_SLURM2_STATE", "/tmp/atmorep-slurm2"))
NODES = ["atmnode1", "atmnode2"]


def _twonode(cmd: str) -> subprocess.CompletedProcess:
    return subprocess.run(["bash", str(TWONODE), cmd], capture_output=True, text=True, timeout=300)


@pytest.fixture(scope="module")
def twonode() -> dict:
    """What a client of the two-node cluster adds to its environment (sbatch/srun pass it on to the jobs)."""
    if shutil.which("slurmctld") is None and not Path("/usr/sbin/slurmctld").exists():
        pytest.skip("SLURM is not installed (.ci/run installs slurmctld, slurmd, slurm-client, munge)")
    if os.geteuid() != 0 or shutil.which("ip") is None or shutil.which("nsenter") is None:
        pytest.skip("the two-node cluster needs root, iproute2 (ip netns) and util-linux (nsenter, unshare)")
    started = False
    if _twonode("status").returncode != 0:
        r = _twonode("start")
        assert r.returncode == 0, r.stdout + r.stderr
        started = True
    # PyPI's MPICH (the `mpich` extra) picks UCX, whose address exchange over PMI2 between two hosts
    # fails at MPI_Init here now and then ("failed to unpack address, invalid bandwidth", as in
    # pmodels/mpich#7417); its libfabric netmod does not. Sites bring their own MPI.
    yield {"SLURM_CONF": str(STATE / "etc" / "slurm.conf"), "MPIR_CVAR_CH4_NETMOD": "ofi"}
    if started:
        _twonode("stop")


PROBE = """
import json, os, socket
import torch, torch.distributed as dist
from atmorep.train import distributed
launcher = distributed.discover()
rank, size = distributed.init()
total = torch.tensor([float(rank + 1)])
dist.all_reduce(total)
me = (socket.gethostname(), socket.gethostbyname(socket.gethostname()))
hosts = [None] * size
dist.all_gather_object(hosts, me)
if rank == 0:
    print(json.dumps({"launcher": launcher, "size": size, "master": os.environ["MASTER_ADDR"],
                      "sum": total.item(), "hosts": hosts}))
distributed.finish()
"""


@pytest.mark.parametrize("mpi, launcher", [("pmi2", "mpi"), ("none", "srun")])
def test_ranks_meet_across_hosts(twonode, mpi, launcher):
    env = {**os.environ, **twonode}
    r = subprocess.run(
        ["srun", "--nodes=2", "--ntasks=2", f"--mpi={mpi}", sys.executable, "-c", PROBE],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )
    assert r.returncode == 0, r.stdout + r.stderr
    got = json.loads(r.stdout.strip().splitlines()[-1])
    hosts = got.pop("hosts")
    assert got == {"launcher": launcher, "size": 2, "master": "atmnode1", "sum": 3.0}
    assert [h for h, _ in hosts] == NODES
    addrs = {a for _, a in hosts}
    assert len(addrs) == 2 and not any(a.startswith("127.") for a in addrs)  # what gloo binds: not loopback


# TINY, shorter: two trainings run here
MULTI = copy.deepcopy(TINY)
MULTI["train"].update(steps=10, checkpoint_every=10)
MODEL = "results/tiny/train/model.safetensors"


def two_node_profile(tmp_path: Path) -> Path:
    """profiles/slurm (account and partition set, as test_profile.py does) with pretrain on 2 nodes."""
    prof = make_profile(tmp_path)
    cfg = yaml.safe_load((prof / "config.yaml").read_text())
    cfg["set-resources"]["pretrain"]["nodes"] = 2  # x tasks = train.ranks = 2: one task per node
    (prof / "config.yaml").write_text(yaml.safe_dump(cfg))
    return prof


def test_pretrain_on_two_nodes_equals_one_node_two_ranks(twonode, tmp_path):
    one, two = tmp_path / "one", tmp_path / "two"
    one.mkdir()
    (one / "tiny.yaml").write_text(yaml.safe_dump(MULTI))
    local = ("--profile", str(REPO / "profiles" / "local"))
    r = snakemake(one, *local, "--omit-from", "pretrain")  # the inputs, once
    assert r.returncode == 0, (r.stdout + r.stderr)[-4000:]
    shutil.copytree(one, two, symlinks=True)

    r = snakemake(two, "--profile", str(two_node_profile(tmp_path / "p")), MODEL, env=twonode)
    out = r.stdout + r.stderr
    assert r.returncode == 0, out[-6000:]
    r = snakemake(one, *local, MODEL)  # torchrun: 2 ranks on this host
    assert r.returncode == 0, (r.stdout + r.stderr)[-4000:]

    env = {**os.environ, **twonode}
    placed = {}  # rule -> (state, node count, nodes) in SLURM's view
    for job in slurm_jobs(out):
        q = subprocess.run(
            ["squeue", "--states=all", "-h", "-j", job, "-o", "%k|%T|%D|%N"], capture_output=True, text=True, env=env
        ).stdout.strip()
        rule, st, n, nodes = q.split("|")
        placed[rule] = (st, int(n), nodes)
    assert placed == {"rule_pretrain": ("COMPLETED", 2, "atmnode[1-2]")}  # the inputs came from the copy
    assert "on 2 ranks" in (two / "logs" / "tiny" / "pretrain.log").read_text()
    a = pd.read_csv(two / "results" / "tiny" / "train" / "metrics.csv")
    b = pd.read_csv(one / "results" / "tiny" / "train" / "metrics.csv")
    assert len(a) == MULTI["train"]["steps"] and (a["loss"].values == b["loss"].values).all()
    wa = load_state(two / MODEL)[0]
    wb = load_state(one / MODEL)[0]
    assert wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa)
