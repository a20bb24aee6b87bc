"""Start N training ranks with a launcher: the one command line for laptops, MPI and SLURM.

``atmorep launch --with srun --ranks 8 -- train --config …`` runs the launcher's command, forwards
SIGTERM/SIGUSR1 to it, and returns its exit status. A training run that checkpointed on a signal
exits 75 (EX_TEMPFAIL); inside a SLURM job the launcher then requeues the job
(``scontrol requeue``), so the scheduler starts it again, the rule runs again and training resumes
from its checkpoint, while Snakemake simply keeps waiting for the same job. Rank discovery in the
started processes is :mod:`atmorep.train.distributed`'s job.
"""

from __future__ import annotations

import logging
import os
import shutil
import signal
import subprocess
import sys

log = logging.getLogger(__name__)

LAUNCHERS = ("torchrun", "srun", "mpirun", "none")
EXIT_REQUEUE = 75


def command(launcher: str, ranks: int, args: list[str], per_node: int | None = None) -> list[str]:
    """The argv that starts ``ranks`` processes of ``python -m atmorep ARGS``."""
    module = ["-m", "atmorep", *args]
    if launcher == "torchrun":
        return ["torchrun", "--standalone", f"--nproc_per_node={ranks}", *module]
    if launcher == "srun":
        # the Snakemake SLURM jobstep strips SLURM_NTASKS from the environment: say the count explicitly
        nodes = [f"--ntasks-per-node={per_node}"] if per_node else []
        return ["srun", f"--ntasks={ranks}", *nodes, "--kill-on-bad-exit=1", sys.executable, *module]
    if launcher == "mpirun":
        return ["mpirun", "-n", str(ranks), sys.executable, *module]
    if launcher == "none":
        if ranks != 1:
            raise ValueError("--with none starts exactly one rank")
        return [sys.executable, *module]
    raise ValueError(f"unknown launcher {launcher!r} (choose from {', '.join(LAUNCHERS)})")


def launch(launcher: str, ranks: int, args: list[str], per_node: int | None = None) -> int:
    argv = command(launcher, ranks, args, per_node)
    if shutil.which(argv[0]) is None:
        raise FileNotFoundError(f"launcher '{argv[0]}' is not on PATH")
    env = {**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")}  # mpirun/srun don't set it
    child = subprocess.Popen(argv, env=env)
    for sig in (signal.SIGTERM, signal.SIGUSR1):
        signal.signal(sig, lambda signum, frame: child.send_signal(signum))
    status = child.wait()
    if launcher == "torchrun" and status != 0 and _requeue_requested(args):
        status = EXIT_REQUEUE  # torchrun reports a worker's 75 as 1
    if status == EXIT_REQUEUE and "SLURM_JOB_ID" in os.environ:
        log.warning("checkpointed after a signal: requeueing SLURM job %s", os.environ["SLURM_JOB_ID"])
        subprocess.run(["scontrol", "requeue", os.environ["SLURM_JOB_ID"]], check=False)
    return status


def _requeue_requested(args: list[str]) -> bool:
    """Whether the run's workers left a 'checkpointed on a signal' marker."""
    if "--output-dir" not in args:
        return False
    marker = os.path.join(args[args.index("--output-dir") + 1], "checkpoints", "REQUEUE")
    return os.path.exists(marker)
