"""A GGUF header reader that never reads tensor data or vocabularies.

``gguf.GGUFReader`` parses every array up front: a 150k-token vocabulary costs
it seconds. Discovery needs only the scalar metadata and the tensor table, so
this reader steps over big arrays. String arrays are length-prefixed, so the
only way past one is to walk it; the walk is vectorised with numpy (see
``_skip_strings``) and falls back to plain stepping where a file is unusual.

Every count and length is checked against the file size before it is trusted:
a truncated or hostile file raises ``InvalidModelFile`` quickly, never hangs and
never allocates more than the file holds.
"""

from __future__ import annotations

import math
import os
import struct
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from .errors import InvalidModelFile
from .ggml import GGML_TYPES, tensor_nbytes

__all__ = ["ArrayInfo", "GGUFHeader", "Seekable", "TensorInfo", "read_gguf_header",
           "read_gguf_header_from"]

GGUF_MAGIC = b"GGUF"
MAX_TENSORS = 1_000_000
MAX_KV = 100_000
MAX_DIMS = 4
MAX_KEY_BYTES = 65_535
MAX_KEPT_STRING = 1 << 20  # strings up to 1 MiB (chat templates) are kept; longer ones skipped
MAX_KEPT_ARRAY = 1024  # numeric arrays up to this long (per-layer head counts) are kept
MAX_KEPT_STRING_ARRAY = 64  # short string arrays (tags, languages) are kept

# GGUF value types: id -> struct format (None: string, array).
_SCALARS = {0: "<B", 1: "<b", 2: "<H", 3: "<h", 4: "<I", 5: "<i", 6: "<f", 7: "<?",
            10: "<Q", 11: "<q", 12: "<d"}
_STRING, _ARRAY = 8, 9
_U32, _U64 = struct.Struct("<I"), struct.Struct("<Q")


@dataclass(frozen=True)
class ArrayInfo:
    """An array that was stepped over: its element type and length."""

    type: int
    count: int


@dataclass(frozen=True)
class TensorInfo:
    name: str
    shape: tuple[int, ...]
    ggml_type: int
    offset: int

    @property
    def n_elements(self) -> int:
        return math.prod(self.shape)

    @property
    def nbytes(self) -> int:
        return tensor_nbytes(self.ggml_type, self.n_elements)


@dataclass
class GGUFHeader:
    path: Path
    version: int
    metadata: dict[str, Any]
    tensors: list[TensorInfo]
    alignment: int
    data_offset: int
    file_size: int = 0
    extra_tensor_files: list[Path] = field(default_factory=list)


class Seekable(Protocol):
    """What the reader needs of a file: a local one, or a remote one read by HTTP ranges."""

    def seek(self, offset: int, whence: int = 0, /) -> int: ...

    def read(self, size: int = -1, /) -> bytes: ...


class _Corrupt(Exception):
    """Raised inside the reader; turned into InvalidModelFile with the path."""


class _Cursor:
    """Reads forward through a file, keeping a buffer from the parse position on.

    Plain reads, not mmap: first-touch page faults cost more than a copy on some
    kernels (sandboxes, VMs). The buffer slides: bytes behind the parse position
    are dropped, so memory stays at a few hundred KiB whatever the file claims.
    Positions are absolute; ``buf`` holds the file from ``base`` on.
    """

    def __init__(self, handle: Seekable, size: int) -> None:
        self.handle = handle
        self.size = size
        self.buf = b""
        self.base = 0
        self.pos = 0

    def need(self, n: int, what: str) -> None:
        """Make ``n`` bytes at the position readable, or fail as truncated."""
        end = self.pos + n
        if n < 0 or end > self.size:
            raise _Corrupt(f"truncated: {what} at byte {self.pos} runs past the end "
                           f"of the file ({self.size} bytes)")
        if end > self.base + len(self.buf):
            self.fill(end)

    def fill(self, end: int) -> None:
        """Buffer the file from the position to at least ``end``."""
        end = min(self.size, end)
        have = self.base + len(self.buf)
        if end <= have:
            return
        stop = min(self.size, max(end, self.pos + _CHUNK))
        if self.pos >= have:  # skipped past the buffer: start afresh
            self.handle.seek(self.pos)
            self.buf, self.base = self.handle.read(stop - self.pos), self.pos
        else:
            self.handle.seek(have)
            self.buf = self.buf[self.pos - self.base:] + self.handle.read(stop - have)
            self.base = self.pos
        if self.base + len(self.buf) < end:
            raise _Corrupt("the file shrank while it was read")

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
            raise _Corrupt(f"truncated: {what} at byte {self.pos} runs past the end of the file")
        self.pos += n


def read_gguf_header(path: str | Path) -> GGUFHeader:
    """Read a GGUF file's metadata and tensor table.

    Args:
        path: a regular file.

    Returns:
        The header; big arrays (vocabularies, merges) appear as ``ArrayInfo``.

    Raises:
        InvalidModelFile: not a GGUF file, truncated, or with absurd values.
    """
    path = Path(path)
    try:
        with open(path, "rb") as handle:
            return read_gguf_header_from(handle, size=os.fstat(handle.fileno()).st_size, path=path)
    except OSError as exc:
        raise InvalidModelFile(path, f"cannot read: {exc.strerror or exc}") from None


def read_gguf_header_from(handle: Seekable, *, size: int, path: str | Path) -> GGUFHeader:
    """Read a GGUF header from an open file of ``size`` bytes (``read_gguf_header``'s reader,
    for files that are not local: hub.py reads remote ones by HTTP ranges).

    Args:
        handle: the file; read forward in blocks of a few hundred KiB, from byte 0 on.
        size: the whole file's size, which every count and length is checked against.
        path: what errors and ``GGUFHeader.path`` call the file.

    Raises:
        InvalidModelFile: not a GGUF file, truncated, or with absurd values. Whatever
            ``handle`` raises passes through.
    """
    path = Path(path)
    try:
        if size < 24:
            handle.seek(0)
            start = handle.read(4)
            if not start:
                raise _Corrupt("truncated: the file is empty")
            if not GGUF_MAGIC.startswith(start):
                raise _Corrupt(f"not a GGUF file (starts with {start!r}, expected b'GGUF')")
            raise _Corrupt(f"truncated: {size} bytes is too short for a GGUF header")
        return _parse(path, _Cursor(handle, size))
    except _Corrupt as exc:
        raise InvalidModelFile(path, str(exc)) from None


def _parse(path: Path, cur: _Cursor) -> GGUFHeader:
    magic = cur.read(4, "magic")
    if magic != GGUF_MAGIC:
        raise _Corrupt(f"not a GGUF file (starts with {magic!r}, expected b'GGUF')")
    version = cur.u32("version")
    if version not in (2, 3):
        raise _Corrupt(f"unsupported GGUF version {version} (2 and 3 are supported)")
    n_tensors = cur.u64("tensor count")
    n_kv = cur.u64("metadata count")
    # Every tensor entry takes at least 28 bytes and every key-value at least 13.
    if n_tensors > MAX_TENSORS:
        raise _Corrupt(f"absurd tensor count {n_tensors}")
    if n_kv > MAX_KV:
        raise _Corrupt(f"absurd metadata count {n_kv}")
    if n_tensors * 28 + n_kv * 13 > cur.size:
        raise _Corrupt(f"truncated or corrupt: declares {n_tensors} tensors and {n_kv} metadata "
                       f"entries, more than a file of {cur.size} bytes can hold")

    metadata: dict[str, Any] = {}
    for _ in range(n_kv):
        key = cur.string("metadata key", MAX_KEY_BYTES)
        if key is None:
            raise _Corrupt(f"metadata key at byte {cur.pos} is longer than {MAX_KEY_BYTES} bytes")
        metadata[key] = _value(cur, cur.u32(f"type of {key}"), key, depth=0)

    tensors = []
    for _ in range(n_tensors):
        name = cur.string("tensor name", MAX_KEY_BYTES)
        if name is None:
            raise _Corrupt(f"tensor name at byte {cur.pos} is longer than {MAX_KEY_BYTES} bytes")
        n_dims = cur.u32(f"dimensions of {name}")
        if not 1 <= n_dims <= MAX_DIMS:
            raise _Corrupt(f"tensor {name} has {n_dims} dimensions (1 to {MAX_DIMS} allowed)")
        shape = tuple(cur.u64(f"shape of {name}") for _ in range(n_dims))
        type_id = cur.u32(f"type of {name}")
        if type_id not in GGML_TYPES:
            raise _Corrupt(f"tensor {name} has unknown ggml type {type_id}")
        offset = cur.u64(f"offset of {name}")
        info = TensorInfo(name, shape, type_id, offset)
        if any(d == 0 for d in shape) or info.n_elements > cur.size * 256:
            raise _Corrupt(f"tensor {name} has an absurd shape {shape}")
        tensors.append(info)

    alignment = metadata.get("general.alignment", 32)
    if not isinstance(alignment, int) or alignment <= 0 or alignment & (alignment - 1):
        raise _Corrupt(f"general.alignment {alignment!r} is not a power of two")
    data_offset = -(-cur.pos // alignment) * alignment
    data_size = cur.size - data_offset
    for info in tensors:
        if info.offset + info.nbytes > data_size:
            raise _Corrupt(f"truncated: tensor {info.name} ends at byte "
                           f"{data_offset + info.offset + info.nbytes}, past the end of the "
                           f"file ({cur.size} bytes); the download is probably incomplete")
    return GGUFHeader(path, version, metadata, tensors, alignment, data_offset, cur.size)


def _value(cur: _Cursor, vtype: int, key: str, *, depth: int) -> Any:
    fmt = _SCALARS.get(vtype)
    if fmt is not None:
        return cur.unpack(struct.Struct(fmt), key)
    if vtype == _STRING:
        text = cur.string(key, MAX_KEPT_STRING)
        return text if text is not None else ArrayInfo(_STRING, 0)
    if vtype != _ARRAY:
        raise _Corrupt(f"metadata {key} has unknown value type {vtype}")
    if depth > 2:
        raise _Corrupt(f"metadata {key} nests arrays too deeply")
    etype = cur.u32(f"element type of {key}")
    count = cur.u64(f"length of {key}")
    efmt = _SCALARS.get(etype)
    if efmt is not None:
        esize = struct.calcsize(efmt)
        if count <= MAX_KEPT_ARRAY:
            return list(struct.unpack(f"<{count}{efmt[1]}", cur.read(count * esize, key)))
        cur.skip(count * esize, key)
        return ArrayInfo(etype, count)
    if etype == _STRING:
        if count * 8 > cur.size - cur.pos:
            raise _Corrupt(f"metadata {key} claims {count} strings, more than the file can hold")
        if count <= MAX_KEPT_STRING_ARRAY:
            return [cur.string(key, MAX_KEPT_STRING) for _ in range(count)]
        _skip_strings(cur, count, key)
        return ArrayInfo(etype, count)
    if etype == _ARRAY:
        if count * 12 > cur.size - cur.pos:
            raise _Corrupt(f"metadata {key} claims {count} arrays, more than the file can hold")
        for _ in range(count):
            _value(cur, _ARRAY, key, depth=depth + 1)
        return ArrayInfo(etype, count)
    raise _Corrupt(f"metadata {key} has arrays of unknown type {etype}")


def _skip_strings(cur: _Cursor, count: int, key: str) -> None:
    """Step over ``count`` length-prefixed strings.

    A Python loop costs ~0.2 us a string, most of the time discovery would spend
    on a file with a 150k vocabulary and 150k merges. Instead, ``_walk_window``
    finds, in 64 KiB windows, every offset where a string shorter than 256 bytes
    could start, and follows ``next = offset + 8 + length`` through them with
    vectorised comparisons. The walk is exact: a long string or a stray
    candidate only breaks a link, and one plain step resumes it.
    """
    remaining = count
    while remaining:
        if remaining < 64:
            for _ in range(remaining):
                cur.skip(cur.u64(key), key)
            return
        cur.need(8, key)
        cur.fill(cur.pos + _WINDOW)
        end = min(cur.size, cur.pos + _WINDOW) - cur.base
        done, pos = _walk_window(cur.buf, cur.pos - cur.base, end, remaining)
        pos += cur.base
        if done == 0:
            cur.skip(cur.u64(key), key)  # a string of 256 bytes or more: one plain step
            remaining -= 1
            continue
        if pos > cur.size:
            raise _Corrupt(f"truncated: the strings of {key} run past the end of the file")
        cur.pos = pos
        remaining -= done


_WINDOW = 1 << 16  # small enough that numpy's temporaries are reused, not page-faulted anew
_CHUNK = 1 << 18  # bytes read at a time


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
