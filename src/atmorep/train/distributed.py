"""Process-group set-up for every launcher: torchrun, mpirun (mpi4py), srun (SLURM), or none.

The launcher is discovered from the environment, in this order:
1. torchrun / deepspeed launcher: RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR, MASTER_PORT are set;
2. MPI (``mpirun``/``mpiexec``, or ``srun --mpi=pmi2``): mpi4py gives rank, size and node-local
   rank; rank 0's host name is broadcast as the master;
3. SLURM without PMI (``srun``): SLURM_PROCID, SLURM_NTASKS, SLURM_LOCALID; the master is the first
   host of SLURM_JOB_NODELIST (resolved with ``scontrol show hostnames``);
4. nothing: a single process.
The backend is NCCL on GPUs and gloo on CPUs; the same command line works on both.
"""

from __future__ import annotations

import logging
import os
import socket
import subprocess

import torch
import torch.distributed as dist

log = logging.getLogger(__name__)

#: set by Open MPI, PMI/PMIx (MPICH, Intel MPI, srun --mpi=pmi2/pmix) and MPICH's hydra launcher
_MPI_VARS = ("OMPI_COMM_WORLD_SIZE", "PMI_SIZE", "PMI_RANK", "PMIX_RANK", "MPI_LOCALNRANKS", "HYDI_CONTROL_FD")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _port_from(text: str) -> str:
    """A port in 20000..29999 that all ranks of one job derive alike (from the job id)."""
    # Ranks on several hosts cannot agree on a free port without talking first; below Linux's
    # ephemeral range (32768+ by default), so the kernel does not hand it to another socket meanwhile.
    return str(20000 + sum(map(ord, text)) * 7919 % 10000)


#: the launcher variables a single-process run set itself (removed again by :func:`finish`)
_SET_HERE: set[str] = set()


def discover() -> str:
    """Fill RANK/WORLD_SIZE/LOCAL_RANK/MASTER_ADDR/MASTER_PORT; returns the launcher found."""
    env = os.environ
    if all(k in env for k in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")):
        return "torchrun"
    # MPI before SLURM: srun --mpi=pmi2 sets both, and mpi4py's ranks are the ones MPI uses.
    if any(k in env for k in _MPI_VARS):
        from mpi4py import MPI

        comm = MPI.COMM_WORLD
        local = comm.Split_type(MPI.COMM_TYPE_SHARED)
        single_node = comm.allreduce(int(local.Get_size() == comm.Get_size()), op=MPI.MIN) == 1
        # On one node, loopback: the host name may resolve to an interface the ranks cannot use.
        master = "127.0.0.1" if single_node else comm.bcast(socket.gethostname(), root=0)
        port = comm.bcast(env.get("MASTER_PORT") or str(_free_port()), root=0)
        # Rank 0 must not go on to wait for the others at the TCP store while its bcast has not left: an
        # MPI without asynchronous progress (MPICH over libfabric tcp, between hosts) sends it only
        # from inside an MPI call. The barrier returns once every rank holds the values.
        comm.Barrier()
        env.update(
            RANK=str(comm.Get_rank()),
            WORLD_SIZE=str(comm.Get_size()),
            LOCAL_RANK=str(local.Get_rank()),
            MASTER_ADDR=env.get("MASTER_ADDR", master),
            MASTER_PORT=port,
        )
        return "mpi"
    # SLURM_STEP_ID: only a task of an srun step is a rank, not any process inside a SLURM allocation.
    if "SLURM_PROCID" in env and "SLURM_NTASKS" in env and "SLURM_STEP_ID" in env:
        nodes = env.get("SLURM_JOB_NODELIST") or env.get("SLURM_NODELIST") or "localhost"
        try:
            master = subprocess.run(
                ["scontrol", "show", "hostnames", nodes], capture_output=True, text=True, check=True
            ).stdout.split()[0]
        except (OSError, subprocess.CalledProcessError, IndexError):
            master = "127.0.0.1"  # no scontrol (a test cluster, a container): right for one node
        if int(env.get("SLURM_NNODES", "1")) == 1:
            master = "127.0.0.1"
        env.update(
            RANK=env["SLURM_PROCID"],
            WORLD_SIZE=env["SLURM_NTASKS"],
            LOCAL_RANK=env.get("SLURM_LOCALID", "0"),
            MASTER_ADDR=env.get("MASTER_ADDR", master),
            MASTER_PORT=env.get("MASTER_PORT", _port_from(env.get("SLURM_JOB_ID", "0") + env["SLURM_STEP_ID"])),
        )
        return "srun"
    single = {"RANK": "0", "WORLD_SIZE": "1", "LOCAL_RANK": "0", "MASTER_ADDR": "127.0.0.1"}
    single["MASTER_PORT"] = env.get("MASTER_PORT", str(_free_port()))
    # What this process set for itself goes again at finish(): a later run in the same process (a
    # notebook, a benchmark's next budget) or a subprocess it starts must not take them for a launcher's.
    _SET_HERE.update(k for k in single if k not in env)
    env.update(single)
    return "single"


def init() -> tuple[int, int]:
    """Join (or create) the process group; returns (rank, world size)."""
    launcher = discover()
    if torch.cuda.is_available():  # before the group: NCCL binds each rank's communicator to its GPU
        torch.cuda.set_device(int(os.environ["LOCAL_RANK"]))
    if not dist.is_initialized():
        dist.init_process_group(backend="nccl" if torch.cuda.is_available() else "gloo")
    log.debug("rank %d of %d via %s", dist.get_rank(), dist.get_world_size(), launcher)
    return dist.get_rank(), dist.get_world_size()


def device() -> torch.device:
    return torch.device(f"cuda:{os.environ.get('LOCAL_RANK', '0')}" if torch.cuda.is_available() else "cpu")


def finish() -> None:
    if dist.is_initialized():
        dist.barrier()  # no rank tears the group down while another is still in a collective
        dist.destroy_process_group()
    for k in _SET_HERE:
        os.environ.pop(k, None)
    _SET_HERE.clear()
