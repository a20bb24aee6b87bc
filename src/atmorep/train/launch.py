"""Start N training ranks with a launcher: the one command line for laptops, MPI and SLURM.

``atmorep launch --with srun --ranks 8 -- train --config …`` runs the launcher's command and
returns one exit status with one line saying why. A training run that checkpointed on a signal
exits 75 (EX_TEMPFAIL); inside a SLURM job the launcher then requeues the job
(``scontrol requeue``), so the scheduler starts it again, the rule runs again and training resumes
from its checkpoint, while Snakemake simply keeps waiting for the same job. Rank discovery in the
started processes is :mod:`atmorep.train.distributed`'s job.

The launcher and its ranks share a *room*, a private directory named in ``ATMOREP_LAUNCH_DIR``
(with the launcher's pid and host): every rank on the launcher's host writes ``PID.pid`` once its
signal handlers are installed, and ``PID.status`` (exit code and one line) when it ends. So

- SIGTERM/SIGUSR1 to the launcher go to the ranks by pid, not through torchrun (which dies on
  SIGUSR1 and leaves its workers running); srun and mpiexec relay signals to every task themselves,
  so they also get it when some ranks run on other hosts. The launcher then waits for the
  checkpoint and exits 75. Ctrl-C stops the ranks the same way (a second one kills them): the
  launched command has its own session, so the terminal's SIGINT reaches only the launcher;
- no rank outlives its launcher: a rank on the launcher's host holds a pidfd of the launcher and
  kills itself when it becomes readable (the launcher died, even by SIGKILL). A parent-death signal
  (prctl PR_SET_PDEATHSIG) would only watch the rank's own parent, which is torchrun, hydra's proxy
  or slurmstepd, never the launcher; torchrun also puts each worker in a session of its own, so a
  process group cannot reach them either. Ranks on other hosts (multi-node srun) die with their
  job step when srun goes;
- an error inside the ranks reaches the user as its one line, printed once by the launcher, and a
  requeue exit as "checkpointed, requeue", without torchrun's ChildFailedError block
  (``--debug`` or ``ATMOREP_DEBUG=1`` restores tracebacks and torchrun's own reports).
"""

from __future__ import annotations

import json
import logging
import os
import select
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
from pathlib import Path

log = logging.getLogger(__name__)

LAUNCHERS = ("torchrun", "srun", "mpirun", "none")
EXIT_REQUEUE = 75  # EX_TEMPFAIL (sysexits.h): "try again later"
EXIT_INTERRUPTED = 130  # 128 + SIGINT, what a shell reports for Ctrl-C


class Requeue(Exception):
    """A run saved its checkpoint on a signal and asks to be run again: the CLI exits
    :data:`EXIT_REQUEUE` with this message (the library raises, only the CLI exits)."""


ROOM, LAUNCHER_PID, LAUNCHER_HOST = "ATMOREP_LAUNCH_DIR", "ATMOREP_LAUNCHER_PID", "ATMOREP_LAUNCHER_HOST"


def debug() -> bool:
    """Whether tracebacks are wanted (``atmorep --debug`` sets ``ATMOREP_DEBUG=1`` for the ranks too)."""
    return os.environ.get("ATMOREP_DEBUG", "") not in ("", "0")


def command(launcher: str, ranks: int, args: list[str], per_node: int | None = None) -> list[str]:
    """The argv that starts ``ranks`` processes of ``python -m atmorep ARGS``."""
    module = ["-m", "atmorep", *args]
    if launcher == "torchrun":
        # torchrun, through this module's quiet entry point (see _torchrun)
        return [sys.executable, "-m", __name__, "--standalone", f"--nproc_per_node={ranks}", *module]
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
    _sweep()
    with tempfile.TemporaryDirectory(prefix="atmorep-launch-") as room:
        Path(room, "launcher").write_text(str(os.getpid()))  # for _sweep, if we die without cleaning up
        env = {
            **os.environ,
            "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1"),  # mpirun/srun don't set it
            ROOM: room,
            LAUNCHER_PID: str(os.getpid()),
            LAUNCHER_HOST: socket.gethostname(),
        }
        status, received = _Relay(argv, env, Path(room), launcher, ranks).run()
        reports = _reports(Path(room))
    errors = [r for r in reports if r["exit"] not in (0, EXIT_REQUEUE)]
    if errors:
        # Ranks usually fail with the same line (bad data, a full disk): print each line once.
        for line in dict.fromkeys(r["message"] for r in errors if r.get("message")):
            print(line, file=sys.stderr)
        return max(r["exit"] for r in errors)
    requeue = [r for r in reports if r["exit"] == EXIT_REQUEUE]
    if requeue or status == EXIT_REQUEUE:
        what = requeue[0].get("message", "checkpoint saved") if requeue else "checkpoint saved"
        if received == signal.SIGINT:  # a person stopped it: no requeue, the command is theirs to rerun
            print(f"atmorep launch: interrupted: {what}; the same command resumes from it", file=sys.stderr)
            return EXIT_INTERRUPTED
        print(f"atmorep launch: {what}: checkpointed, requeue (exit {EXIT_REQUEUE})", file=sys.stderr)
        if "SLURM_JOB_ID" in os.environ:
            log.warning("requeueing SLURM job %s", os.environ["SLURM_JOB_ID"])
            subprocess.run(["scontrol", "requeue", os.environ["SLURM_JOB_ID"]], check=False)
        return EXIT_REQUEUE
    if status != 0:
        how = f"killed by signal {-status}" if status < 0 else f"exit status {status}"
        print(
            f"atmorep launch: {launcher} ended with {how} before any rank reported why; the lines above "
            "are all there is (rerun with --debug for tracebacks)",
            file=sys.stderr,
        )
        return 128 - status if status < 0 else status  # killed by signal N: 128 + N, as a shell says
    return 0


class _Relay:
    """The launched command, and the signals received meanwhile, forwarded to the ranks by pid."""

    def __init__(self, argv, env, room: Path, launcher: str, ranks: int):
        self.argv, self.env, self.room, self.launcher, self.ranks = argv, env, room, launcher, ranks
        self.pending: list[int] = []
        self.received = 0
        self.sent: dict[int, set[int]] = {}  # signal -> pids it went to

    def _on_signal(self, signum, frame):
        if signum == signal.SIGINT and self.received == signal.SIGINT:
            self.pending.append(signal.SIGKILL)  # a second Ctrl-C: stop now
        else:  # SIGINT goes on as SIGTERM: the ranks' handlers checkpoint on it, not mid-collective
            self.pending.append(signal.SIGTERM if signum == signal.SIGINT else signum)
        self.received = signum

    def run(self) -> tuple[int, int]:
        old = {s: signal.signal(s, self._on_signal) for s in (signal.SIGTERM, signal.SIGUSR1, signal.SIGINT)}
        try:
            self.child = subprocess.Popen(self.argv, env=self.env, start_new_session=True)
            # Forwarded from this loop, not from the handler: a rank that registers after the signal
            # came still gets it on a later pass (``sent`` remembers who has it).
            while True:
                try:
                    status = self.child.wait(timeout=0.2)
                    break
                except subprocess.TimeoutExpired:
                    self._forward()
        finally:
            for s, h in old.items():
                signal.signal(s, h)
        return status, self.received

    def _forward(self) -> None:
        pids = [int(p.stem) for p in self.room.glob("*.pid")]
        for sig in dict.fromkeys(self.pending):
            done = self.sent.setdefault(sig, set())
            for pid in set(pids) - done:
                try:
                    os.kill(pid, sig)
                except ProcessLookupError:
                    pass
                done.add(pid)
            # Only when some ranks have no pid file here, i.e. run on other hosts; once.
            if self.launcher in ("srun", "mpirun") and pids and len(pids) < self.ranks and self.child.pid not in done:
                self.child.send_signal(sig)  # ranks on other hosts: srun/mpiexec relay to every task
                done.add(self.child.pid)


def _sweep() -> None:
    """Remove the rooms of launchers that died without cleaning up (kill -9)."""
    for mark in Path(tempfile.gettempdir()).glob("atmorep-launch-*/launcher"):
        try:
            os.kill(int(mark.read_text()), 0)
        except ProcessLookupError:
            shutil.rmtree(mark.parent, ignore_errors=True)
        except (OSError, ValueError):  # another user's launcher (EPERM), or a mark being written
            pass


def _reports(room: Path) -> list[dict]:
    out = []
    for p in sorted(room.glob("*.status")):
        try:
            out.append(json.loads(p.read_text()))
        except (OSError, ValueError):
            pass
    return sorted(out, key=lambda r: r.get("rank", 1 << 30))


# -- the rank's side ----------------------------------------------------------------------------


def _room() -> Path | None:
    """The launcher's room when this process is a rank on the launcher's host."""
    room = os.environ.get(ROOM)
    # The room is in the launcher's /tmp: on another host the same path is not it.
    if room and os.environ.get(LAUNCHER_HOST) == socket.gethostname() and os.path.isdir(room):
        return Path(room)
    return None


def watch_launcher() -> None:
    """Kill this rank when its launcher ends (see the module doc); nothing outside a launch."""
    if _room() is None:
        return
    try:
        fd = os.pidfd_open(int(os.environ[LAUNCHER_PID]))
    except ProcessLookupError:  # the launcher is gone already
        os.kill(os.getpid(), signal.SIGKILL)
        return

    # SIGKILL, not an exit: an orphaned rank must not hang in a collective or an exit handler.
    def wait():
        select.select([fd], [], [])  # a pidfd turns readable when its process ends
        os.kill(os.getpid(), signal.SIGKILL)

    threading.Thread(target=wait, name="launcher-watch", daemon=True).start()


def register() -> None:
    """Tell the launcher this rank can take SIGTERM/SIGUSR1 now (its handlers are installed)."""
    if (room := _room()) is not None:
        (room / f"{os.getpid()}.pid").write_text("")


def report(exit_code: int, message: str = "") -> bool:
    """Leave this rank's exit code and one-line message for the launcher; False outside a launch
    (or on another host), where the caller prints the line itself."""
    room = _room()
    if room is None:
        return False
    rank = os.environ.get("RANK") or os.environ.get("PMI_RANK") or os.environ.get("SLURM_PROCID")
    tmp = room / f".{os.getpid()}.status"  # then renamed: the launcher never reads a half-written line
    tmp.write_text(json.dumps({"exit": exit_code, "message": message, "rank": int(rank) if rank else None}))
    os.replace(tmp, room / f"{os.getpid()}.status")
    return True


# -- torchrun, quietly --------------------------------------------------------------------------


def _torchrun(argv: list[str]) -> int:
    """torchrun's own launch, exiting with the first failed worker's code (torchrun says 1) and,
    unless debugging, without its ChildFailedError traceback and agent warnings: the ranks' one-line
    reports say what happened. SIGUSR1 is not this process's business (the launcher signals the
    ranks), so it must not kill it either."""
    signal.signal(signal.SIGUSR1, lambda *_: None)
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.run import parse_args, run

    if not debug():
        handler = logging.StreamHandler()
        handler.addFilter(lambda r: not r.name.startswith("torch.distributed.elastic"))
        logging.basicConfig(handlers=[handler], level=logging.WARNING)
    try:
        run(parse_args(argv))
    except ChildFailedError as exc:
        if debug():
            raise
        codes = [f.exitcode for f in exc.failures.values()]
        # A negative code is a worker torchrun killed after the first failure; the positive one is why.
        return next((c for c in codes if c > 0), 1)
    return 0


if __name__ == "__main__":
    sys.exit(_torchrun(sys.argv[1:]))
