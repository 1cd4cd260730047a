"""Reading forward through a GGUF header: a sliding buffer, bounds checks, and the walk
over length-prefixed string arrays (gguf_header.py's reader).

How far to read ahead is the parser's call, not the file's: it sets ``Cursor.horizon``
where it expects the bytes it needs to end (the end of a vocabulary, estimated from the
strings walked so far; the end of the tensor table), and a read stops there unless more
is needed. A remote file (hub_http.RangedFile) fetches what is asked, so the bytes of an
array that is stepped over (token types, scores: a fixed size each) are never fetched.
"""

from __future__ import annotations

import struct
from typing import Any, Protocol

__all__ = ["CHUNK", "Corrupt", "Cursor", "Seekable", "skip_strings"]

CHUNK = 1 << 18  # a local file's reads: 256 KiB at a time
_WINDOW = 1 << 16  # small enough that numpy's temporaries are reused, not page-faulted anew
_SLACK = 4096  # read this much past an estimate: a short one costs another request
_U32, _U64 = struct.Struct("<I"), struct.Struct("<Q")


class Seekable(Protocol):
    """What the reader needs of a file: a local one, or a remote one read by HTTP ranges."""

    def seek(self, offset: int, whence: int = 0, /) -> int: ...

    def read(self, size: int = -1, /) -> bytes: ...


class Corrupt(Exception):
    """Raised inside the reader; gguf_header turns it into InvalidModelFile with the path."""


class Cursor:
    """Reads forward through a file, keeping a buffer from the parse position on.

    Plain reads, not mmap: first-touch page faults cost more than a copy on some
    kernels (sandboxes, VMs). The buffer slides: bytes behind the parse position
    are dropped, so memory stays at a few ``block_bytes`` whatever the file claims.
    Positions are absolute; ``buf`` holds the file from ``base`` on.

    Args:
        block_bytes: the most read at once.
    """

    def __init__(self, handle: Seekable, size: int, *, block_bytes: int = CHUNK) -> None:
        self.handle = handle
        self.size = size
        self.block_bytes = block_bytes
        self.horizon = CHUNK  # where the parser expects what it needs to end: reads stop there
        self.buf = b""
        self.base = 0
        self.pos = 0

    def need(self, n: int, what: str) -> None:
        """Make ``n`` bytes at the position readable, or fail as truncated."""
        end = self.pos + n
        if n < 0 or end > self.size:
            raise Corrupt(f"truncated: {what} at byte {self.pos} runs past the end "
                          f"of the file ({self.size} bytes)")
        if end > self.base + len(self.buf):
            self.fill(end)

    def fill(self, end: int) -> None:
        """Buffer the file from the position to at least ``end``, and on to the horizon."""
        end = min(self.size, end)
        have = self.base + len(self.buf)
        if end <= have:
            return
        stop = min(self.size, max(end, min(self.pos + self.block_bytes, self.horizon)))
        if self.pos >= have:  # skipped past the buffer: start afresh
            self.handle.seek(self.pos)
            self.buf, self.base = self.handle.read(stop - self.pos), self.pos
        else:
            self.handle.seek(have)
            self.buf = self.buf[self.pos - self.base:] + self.handle.read(stop - have)
            self.base = self.pos
        if self.base + len(self.buf) < end:
            raise Corrupt("the file shrank while it was read")

    def jump(self, pos: int) -> None:
        """Go to ``pos``, forward or back; the buffer is kept where it still covers it."""
        if not self.base <= pos <= self.base + len(self.buf):
            self.buf, self.base = b"", pos
        self.pos = pos

    def peek(self, n: int) -> bytes:
        """Up to ``n`` bytes from the position on, without moving."""
        self.need(min(n, self.size - self.pos), "a look ahead")
        return self.buf[self.pos - self.base:self.pos - self.base + n]

    def behind(self, n: int) -> bytes:
        """Up to ``n`` bytes before the position that are still buffered (none after a skip)."""
        if self.pos > self.base + len(self.buf):
            return b""
        return self.buf[max(0, self.pos - self.base - n):self.pos - self.base]

    def unpack(self, fmt: struct.Struct, what: str) -> Any:
        self.need(fmt.size, what)
        (value,) = fmt.unpack_from(self.buf, self.pos - self.base)
        self.pos += fmt.size
        return value

    def u32(self, what: str) -> int:
        return int(self.unpack(_U32, what))

    def u64(self, what: str) -> int:
        return int(self.unpack(_U64, what))

    def read(self, n: int, what: str) -> bytes:
        self.need(n, what)
        start = self.pos - self.base
        self.pos += n
        return self.buf[start:start + n]

    def string(self, what: str, limit: int) -> str | None:
        """A GGUF string; None (and skipped, never buffered) when longer than ``limit``."""
        n = self.u64(what)
        if n > limit:
            self.skip(n, what)
            return None
        return self.read(n, what).decode("utf-8", errors="replace")

    def skip(self, n: int, what: str) -> None:
        if n < 0 or self.pos + n > self.size:
            raise Corrupt(f"truncated: {what} at byte {self.pos} runs past the end of the file")
        self.pos += n


def skip_strings(cur: Cursor, count: int, key: str) -> None:
    """Step over ``count`` length-prefixed strings.

    A Python loop costs ~0.2 us a string, most of the time discovery would spend
    on a file with a 150k vocabulary and 150k merges. Instead, ``_walk_window``
    finds, in 64 KiB windows, every offset where a string shorter than 256 bytes
    could start, and follows ``next = offset + 8 + length`` through them with
    vectorised comparisons. The walk is exact: a long string or a stray
    candidate only breaks a link, and one plain step resumes it.

    The horizon is where the strings probably end: what remains at the mean length of
    those walked so far, a little over, so that what follows is not read with them.
    """
    start, remaining = cur.pos, count
    while remaining:
        walked = count - remaining
        mean = (cur.pos - start) / walked if walked else 16
        cur.horizon = cur.pos + int(remaining * mean * 1.02) + _SLACK
        if remaining < 64:
            for _ in range(remaining):
                cur.skip(cur.u64(key), key)
            return
        cur.need(8, key)
        cur.fill(min(cur.pos + _WINDOW, cur.horizon))
        end = min(cur.pos + _WINDOW, cur.base + len(cur.buf)) - cur.base
        done, pos = _walk_window(cur.buf, cur.pos - cur.base, end, remaining)
        pos += cur.base
        if done == 0:
            cur.skip(cur.u64(key), key)  # a string of 256 bytes or more: one plain step
            remaining -= 1
            continue
        if pos > cur.size:
            raise Corrupt(f"truncated: the strings of {key} run past the end of the file")
        cur.pos = pos
        remaining -= done


def _walk_window(buf: bytes, start: int, end: int, count: int) -> tuple[int, int]:
    """Walk up to ``count`` strings from ``start`` using candidates inside ``buf[start:end]``.

    Returns how many strings were stepped over and the position after them.
    """
    import numpy as np

    if end - start < 8:
        return 0, start
    window = np.frombuffer(buf, dtype=np.uint8, count=end - start, offset=start)
    # A string shorter than 256 bytes starts at p when bytes p+1..p+7 are zero: AND
    # shifted zero masks together (1+1 -> 2, 2+2 -> 4, 4+3 -> 7 bytes in a row).
    zero = window == 0
    two = zero[:-1] & zero[1:]
    four = two[:-2] & two[2:]
    seven = four[:-3] & four[3:]
    cand = np.flatnonzero(seven) - 1  # seven[q] covers q..q+6, so the string starts at q-1
    cand = cand[cand >= 0]
    if cand.size == 0 or cand[0] != 0:
        return 0, start
    lengths = window[cand].astype(np.int64)
    nxt = cand + 8 + lengths
    breaks = np.flatnonzero(cand[1:] != nxt[:-1])
    i = done = 0
    while True:
        k = int(np.searchsorted(breaks, i))
        stop = int(breaks[k]) if k < breaks.size else cand.size - 1
        steps = stop - i + 1
        if done + steps >= count:
            return count, start + int(nxt[i + (count - done) - 1])
        done += steps
        target = int(nxt[stop])
        j = int(np.searchsorted(cand, target))
        if j == cand.size or cand[j] != target:
            return done, start + target
        i = j
