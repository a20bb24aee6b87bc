"""Atomic replacement of files and directories, the lock of a training's output directory, and a full
disk reported as one line (:class:`DiskFull`).

A product is written into a hidden temporary sibling and renamed into place once complete, so a
reader never sees half of it. The temporary's name carries the writer's pid and host
(``.NAME.part-PID@HOST``): a writer killed with SIGKILL cannot clean up, and the next write into
the same directory removes what dead processes of this host left there, never a live writer's (or
another host's, whose processes cannot be checked from here).
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import re
import shutil
import socket
from pathlib import Path

log = logging.getLogger(__name__)

_LEFTOVER = re.compile(r"^\..+\.(?:part|old)-(?P<pid>\d+)@(?P<host>.+)$")


def _me() -> str:
    return f"{os.getpid()}@{socket.gethostname()}"


def _job() -> str:
    return f"slurm job {os.environ['SLURM_JOB_ID']}" if os.environ.get("SLURM_JOB_ID") else ""


def alive(pid: int) -> bool:
    """Whether a process ``pid`` exists on this host."""
    try:
        os.kill(pid, 0)  # signal 0: only the existence and permission checks
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process
        return True
    return True


def _dead(owner: str) -> bool:
    """Whether ``PID@HOST`` names a process of this host that no longer exists."""
    pid, _, host = owner.partition("@")
    # another host's pid says nothing here; our own is never dead
    return host == socket.gethostname() and pid.isdigit() and int(pid) != os.getpid() and not alive(int(pid))


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():  # a link to a directory goes, not what it points to
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)


def sweep(directory: str | Path) -> list[Path]:
    """Remove the temporaries that dead writers of this host left in ``directory``."""
    try:
        entries = [e.name for e in os.scandir(directory) if e.name.startswith(".")]
    except FileNotFoundError:
        return []
    removed = []
    for name in entries:
        m = _LEFTOVER.match(name)
        if m and _dead(f"{m['pid']}@{m['host']}"):
            _remove(Path(directory) / name)
            removed.append(Path(directory) / name)
    if removed:
        log.info("removed what killed writers left in %s: %s", directory, ", ".join(p.name for p in removed))
    return removed


class Replacement:
    """Write ``out`` (a file or a directory) atomically::

        with Replacement(out) as tmp:
            write(tmp)          # on success tmp replaces out; on an exception it is removed

    or, across methods, ``commit()`` then ``close()`` (``close`` alone discards the temporary).
    """

    def __init__(self, out: str | Path):
        self.out = Path(out)
        self.out.parent.mkdir(parents=True, exist_ok=True)
        sweep(self.out.parent)
        # A sibling: the same file system, so the final rename is atomic.
        self.tmp = self.out.with_name(f".{self.out.name}.part-{_me()}")
        _remove(self.tmp)  # a leftover under our name: an earlier attempt, or a dead process with our pid

    def commit(self) -> Path:
        if self.out.is_dir() and not self.out.is_symlink():  # rename() cannot replace a non-empty directory
            old = self.out.with_name(f".{self.out.name}.old-{_me()}")
            _remove(old)
            # Two renames: between them `out` is briefly absent, never half old and half new.
            os.replace(self.out, old)
            os.replace(self.tmp, self.out)
            _remove(old)
        else:
            os.replace(self.tmp, self.out)
        return self.out

    def close(self) -> None:
        _remove(self.tmp)

    def __enter__(self) -> Path:
        return self.tmp

    def __exit__(self, exc_type, exc, tb) -> None:
        try:
            if exc_type is None:
                self.commit()
        finally:
            self.close()


class Locked(ValueError):  # a ValueError: the CLI reports it in one line
    pass


class DirectoryLock:
    """``DIRECTORY/.lock`` naming its holder (``PID@HOST``, and its SLURM job): one writer per
    directory. A lock whose holder died on this host is taken over, and so is one of this same SLURM
    job (a requeued job's earlier run, possibly on another node, is over); one held by a live
    process, or by another host, is refused naming the holder."""

    def __init__(self, directory: str | Path, what: str = "this directory"):
        self.path, self.what, self.held = Path(directory) / ".lock", what, False

    def acquire(self) -> DirectoryLock:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        for _ in range(3):
            try:  # O_EXCL: creating the file is the test-and-set; exactly one process succeeds
                fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                try:
                    holder, _, job = self.path.read_text().strip().partition("\n")
                except FileNotFoundError:
                    continue  # released meanwhile
                if holder == _me():  # ours already (a second acquire in the same process)
                    self.held = True
                    return self
                requeued = bool(job) and job == _job()
                if not requeued and not _dead(holder):
                    pid, _, host = holder.partition("@")
                    raise Locked(
                        f"{self.path.parent} is in use by {self.what} of process {pid} on {host} "
                        f"({self.path}); wait for it to finish, or write elsewhere"
                    ) from None
                log.warning(
                    "%s: taking over the lock of process %s, %s",
                    self.path,
                    holder,
                    f"an earlier run of {job}" if requeued else "which no longer exists",
                )
                self.path.unlink(missing_ok=True)
                continue  # and race for it with O_EXCL like anyone else
            with os.fdopen(fd, "w") as f:
                f.write(f"{_me()}\n{_job()}\n")
            self.held = True
            return self
        raise Locked(f"{self.path}: could not take the lock (contended)")

    def release(self) -> None:
        if self.held:
            try:
                if self.path.read_text().split("\n")[0] == _me():  # not if it was taken over meanwhile
                    self.path.unlink()
            except FileNotFoundError:
                pass
            self.held = False

    def __enter__(self) -> DirectoryLock:
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()


class DiskFull(OSError):
    """No space (or quota) left while writing ``path``, which needs about ``needed`` bytes."""

    def __init__(self, path: str | Path, needed: int | None, cause: OSError):
        super().__init__(cause.errno, cause.strerror)
        self.path, self.needed = Path(path), needed

    def __str__(self) -> str:
        return self.describe(self)

    @staticmethod
    def describe(exc: OSError) -> str:
        """One line: the path, the bytes it needs, the bytes free, the next step."""
        path = exc.path if isinstance(exc, DiskFull) else Path(exc.filename or ".")
        needed = exc.needed if isinstance(exc, DiskFull) else None
        where = next((p for p in (path, *path.parents) if p.exists()), Path("."))  # path may not exist yet
        free = shutil.disk_usage(where).free
        need = f"needs about {_mb(needed)}" if needed else "needs more space"
        why = exc.strerror or f"errno {exc.errno}"
        return (
            f"{path}: no space left on device ({why}): writing it {need}, {_mb(free)} free on its file "
            "system; free space there (or write elsewhere) and rerun"
        )


def _mb(n: int) -> str:
    return f"{n} bytes" if n < 1 << 20 else f"{n / 2**20:.1f} MiB ({n} bytes)"


@contextlib.contextmanager
def space_for(path: str | Path, needed: int | None):
    """Turn a full disk or quota (``OSError`` ENOSPC/EDQUOT, or torch's write failure on a file system
    with less than ``needed`` bytes free) while writing ``path`` into :class:`DiskFull`."""
    try:
        yield
    except DiskFull:
        raise
    except OSError as exc:
        if exc.errno not in (errno.ENOSPC, errno.EDQUOT):
            raise
        raise DiskFull(path, needed, exc) from exc
    except RuntimeError as exc:  # torch.save on a full disk: "unexpected pos …", "failed writing file …"
        where = next((p for p in (Path(path), *Path(path).parents) if p.exists()), Path("."))
        # torch gives no errno: a full disk is inferred from the free space, else the error is another
        if shutil.disk_usage(where).free >= (needed or 1 << 20):
            raise
        raise DiskFull(path, needed, OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))) from exc
