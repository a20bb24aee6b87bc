"""The slab: where a decoded month lives between the passes of normalize (in memory when it fits
``normalize.memory_mb``, else a scratch file), read back in time blocks of ``normalize.block_mb``.

Legend: T time steps, L levels, Y latitude rows, X longitude columns.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import numpy as np

from atmorep.config import NormalizeConfig

log = logging.getLogger(__name__)

_CHUNK_BYTES = 16 << 20  # target size of one chunk of the normalized store


class MemorySlab:
    """The month as one float32 array ``(T, L, Y, X)``.

    The decoder writes each message into ``target(it, il)`` and then calls ``commit``: here the
    target is the slab itself, so nothing is copied and ``commit`` has nothing to do.
    """

    def __init__(self, shape):
        self.values = np.empty(shape, np.float32)

    def target(self, it: int, il: int) -> np.ndarray:
        return self.values[it, il]

    def commit(self, it: int, il: int, values_YX: np.ndarray) -> None:
        pass

    def read(self, t0: int, t1: int) -> np.ndarray:
        return self.values[t0:t1]

    def close(self) -> None:
        self.values = np.empty((0,) * self.values.ndim, np.float32)  # the month's memory goes back


class FileSlab:
    """The month in a raw float32 scratch file ``(T, L, Y, X)``; only one message or block in memory."""

    def __init__(self, shape, path: Path):
        self.shape, self.path = tuple(shape), Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o600)
        self.frame = int(np.prod(self.shape[2:])) * 4  # bytes of one (time, level) message
        # Full size at once (sparse): messages arrive in any order and land at their own offset.
        os.ftruncate(self.fd, int(np.prod(self.shape)) * 4)
        self.buf = np.empty(self.shape[2:], np.float32)

    def target(self, it: int, il: int) -> np.ndarray:
        return self.buf

    def commit(self, it: int, il: int, values_YX: np.ndarray) -> None:
        _write_all(self.fd, values_YX.data.cast("B"), (it * self.shape[1] + il) * self.frame)

    def read(self, t0: int, t1: int) -> np.ndarray:
        block = np.empty((t1 - t0, *self.shape[1:]), np.float32)
        view = block.data.cast("B")
        offset, done = t0 * self.shape[1] * self.frame, 0
        # A loop: Linux moves at most ~2 GiB per read call, and a block may be larger.
        while done < len(view):
            n = os.preadv(self.fd, [view[done:]], offset + done)
            if n <= 0:
                raise OSError(f"{self.path}: short read")
            done += n
        return block

    def close(self) -> None:
        os.close(self.fd)
        self.path.unlink(missing_ok=True)


def _write_all(fd: int, view: memoryview, offset: int) -> None:
    done = 0  # pwrite may write less than asked (and at most ~2 GiB a call)
    while done < len(view):
        done += os.pwrite(fd, view[done:], offset + done)


def make_slab(shape, cfg: NormalizeConfig, scratch: Path) -> MemorySlab | FileSlab:
    nbytes = int(np.prod(shape)) * 4
    if nbytes <= cfg.memory_mb << 20:
        return MemorySlab(shape)
    log.info("month decodes to %.1f GB > normalize.memory_mb: streaming through %s", nbytes / 1e9, scratch)
    return FileSlab(shape, scratch)


def block_steps(cfg: NormalizeConfig, shape) -> tuple[int, int]:
    """(time steps per block, per chunk): a block's float64 copy fits ``block_mb``; blocks hold whole chunks."""
    T, L, Y, X = shape
    per_chunk = max(1, min(T, _CHUNK_BYTES // (Y * X * 4)))
    per_block = max(1, min(T, (cfg.block_mb << 20) // (L * Y * X * 8)))  # 8: Moments.update's float64 copy
    per_chunk = min(per_chunk, per_block)
    # Whole chunks per block: each chunk of the store is written once, by one block.
    return (per_block // per_chunk) * per_chunk, per_chunk
