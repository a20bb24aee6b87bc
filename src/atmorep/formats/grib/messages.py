"""Splitting a GRIB file into its messages, as bytes, hashing the file on the way.

Written by hand rather than left to ecCodes' file reader (``codes_grib_new_from_file``, which cfgrib
also uses) for what the stages need beside the handles: one large buffered read per block instead of a
read per message; every byte fed to a hasher during the same pass, so normalize records the sha256 of
its input without reading it twice; each message's offset, length and bytes, so that the files source
can index a mirror and copy messages unchanged; and errors that name the message and byte where a file
is truncated or corrupt. Decoding stays with ecCodes (:mod:`.decode`), one message at a time.

A message's length is read from its indicator section (GRIB1: 3 bytes, GRIB2: 8 bytes), with ECMWF's
convention for GRIB1 messages over 8 MB, whose 24-bit length counts 120-byte units.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from atmorep.errors import DataError

_BLOCK = 16 << 20  # bytes per read while splitting a file


@dataclass(frozen=True)
class Raw:
    """One GRIB message as bytes."""

    index: int
    offset: int
    length: int
    data: bytes


def _length(head: bytes, path: Path, index: int, offset: int) -> int:
    """Total length of the message starting with ``head`` (at least 16 bytes, or its start)."""
    if len(head) < 16:
        raise DataError(f"{path}: message {index + 1} is truncated (file ends at byte {offset + len(head)})")
    edition = head[7]  # octet 8 of section 0 in both editions
    if edition == 1:
        return int.from_bytes(head[4:7], "big")  # octets 5-7
    if edition == 2:
        return int.from_bytes(head[8:16], "big")  # octets 9-16
    raise DataError(f"{path}: message {index + 1} at byte {offset} has GRIB edition {edition} (only 1 and 2 exist)")


def _grib1_large_length(take: Callable[[int, int], bytes], length: int) -> int:
    """ECMWF's convention for GRIB1 messages over 8 MB: the 24-bit length counts 120-byte units.

    ``take(a, b)`` returns bytes ``a..b`` of the message: only the section headers on the way to
    section 4 are read, however large a bitmap section before it is (ERA5-Land's sea points).
    """
    if not length & 0x800000:
        return length

    def u24(pos: int) -> int:
        return int.from_bytes(take(pos, pos + 3), "big")

    # Walk sections 1-3 (each starts with its 3-byte length) to section 4, the data.
    flags = take(15, 16)[0]  # section 1 octet 8: 0x80 a grid section follows, 0x40 a bitmap section
    pos = 8 + u24(8)
    if flags & 0x80:
        pos += u24(pos)
    if flags & 0x40:
        pos += u24(pos)
    sec4 = u24(pos)
    # A section-4 length under 120 marks the convention (a real one is longer): the true length is the
    # units times 120, less that small value, plus the 4 bytes of the end section "7777".
    if sec4 < 120:
        return (length & 0x7FFFFF) * 120 - sec4 + 4
    return length


class _Buffered:
    """Sequential reads of a file in large blocks, hashing every byte read."""

    def __init__(self, f, hasher):
        self.f, self.hasher = f, hasher
        self.buf = bytearray()
        self.base = 0  # file offset of buf[0]
        self.eof = False

    def fill(self, upto: int) -> bool:
        """Make buf hold file bytes up to absolute offset ``upto``; False at end of file."""
        while self.base + len(self.buf) < upto and not self.eof:
            # At least a block: one large read serves many messages; a larger message gets one read.
            chunk = self.f.read(max(_BLOCK, upto - self.base - len(self.buf)))
            if not chunk:
                self.eof = True
                break
            if self.hasher is not None:
                self.hasher.update(chunk)
            self.buf += chunk
        return self.base + len(self.buf) >= upto

    def find(self, start: int) -> int:
        """Absolute offset of the next b'GRIB' at or after ``start``, or -1."""
        while True:
            i = self.buf.find(b"GRIB", start - self.base)
            if i >= 0:
                return self.base + i
            if self.eof:
                return -1
            # Search on from 3 bytes back: a b'GRIB' split across two reads is still found.
            start = max(start, self.base + len(self.buf) - 3)
            self.fill(self.base + len(self.buf) + 1)

    def take(self, start: int, end: int) -> bytes:
        return bytes(self.buf[start - self.base : end - self.base])

    def drop(self, upto: int) -> None:
        # Only once a block is consumed: deleting from the front per message would copy the buffer each time.
        if upto - self.base > _BLOCK:
            del self.buf[: upto - self.base]
            self.base = upto


def _taker(r: _Buffered, at: int) -> Callable[[int, int], bytes]:
    """Bytes ``a..b`` of the message at byte ``at``."""
    return lambda a, b: _fill_take(r, at + a, at + b)


def _fill_take(r: _Buffered, a: int, b: int) -> bytes:
    r.fill(b)
    return r.take(a, b)


def iter_raw(path: str | Path, hasher=None) -> Iterator[Raw]:
    """Every message of ``path`` in file order; bytes between messages are skipped.

    ``hasher`` (e.g. ``hashlib.sha256()``) sees every byte of the file once the iteration ends.
    Raises :class:`DataError` naming the message for a truncated or corrupt one.
    """
    path = Path(path)
    with open(path, "rb") as f:
        r = _Buffered(f, hasher)
        pos, index = 0, 0
        while True:
            start = r.find(pos)
            if start < 0:
                break
            r.fill(start + 16)
            length = _length(r.take(start, start + 16), path, index, start)
            if r.buf[start - r.base + 7] == 1 and length & 0x800000:
                length = _grib1_large_length(_taker(r, start), length)
            if not r.fill(start + length):
                raise DataError(
                    f"{path}: message {index + 1} is truncated (needs {length} bytes from byte "
                    f"{start}, the file ends at {r.base + len(r.buf)})"
                )
            data = r.take(start, start + length)
            # A wrong length (a corrupt indicator section) lands anywhere but on the end marker.
            if data[-4:] != b"7777":
                raise DataError(f"{path}: message {index + 1} is truncated or corrupt (no end marker 7777)")
            yield Raw(index, start, length, data)
            index += 1
            pos = start + length
            r.drop(pos)
        if index == 0:
            raise DataError(f"{path}: not a GRIB file (no GRIB message found)")
