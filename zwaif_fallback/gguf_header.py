"""A GGUF header reader that never reads tensor data or vocabularies.

``gguf.GGUFReader`` parses every array up front: a 150k-token vocabulary costs
it seconds. Discovery needs only the scalar metadata and the tensor table, so
this reader steps over big arrays. String arrays are length-prefixed, so the
only way past one is to walk it; the walk is vectorised with numpy
(``gguf_cursor.skip_strings``) and falls back to plain stepping where a file is unusual.

Every count and length is checked against the file size before it is trusted:
a truncated or hostile file raises ``InvalidModelFile`` quickly, never hangs and
never allocates more than the file holds.

Files with the same vocabulary can share the walk over it (``gguf_lending``): for that,
the parser stops at the vocabulary (``HeaderParser.to_vocab``) and can check that a jump
past it landed exactly (``HeaderParser.finish(exact=True)``).
"""

from __future__ import annotations

import math
import os
import struct
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .errors import InvalidModelFile
from .ggml import GGML_TYPES, tensor_nbytes
from .gguf_cursor import CHUNK, Corrupt, Cursor, Seekable, skip_strings

__all__ = ["ArrayInfo", "GGUFHeader", "HeaderParser", "Seekable", "TensorInfo", "VocabStart", "open_parser",
           "read_gguf_header", "read_gguf_header_from"]

GGUF_MAGIC = b"GGUF"
MAX_TENSORS = 1_000_000
MAX_KV = 100_000
MAX_DIMS = 4
MAX_KEY_BYTES = 65_535
MAX_KEPT_STRING = 1 << 20  # strings up to 1 MiB (chat templates) are kept; longer ones skipped
MAX_KEPT_ARRAY = 1024  # numeric arrays up to this long (per-layer head counts) are kept
MAX_KEPT_STRING_ARRAY = 64  # short string arrays (tags, languages) are kept
HEAD_BYTES = 16 * 1024  # a vocabulary's first bytes, which tell vocabularies apart

# How far to read ahead after a key-value: about what the rest of the header takes.
_KV_GUESS, _TENSOR_GUESS, _SLACK = 64, 72, 4096

# GGUF value types: id -> struct format (None: string, array).
_SCALARS = {0: "<B", 1: "<b", 2: "<H", 3: "<h", 4: "<I", 5: "<i", 6: "<f", 7: "<?",
            10: "<Q", 11: "<q", 12: "<d"}
_STRING, _ARRAY = 8, 9


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


@dataclass(frozen=True)
class VocabStart:
    """A file's first big string array (its vocabulary), as its reader met it."""

    key: str
    count: int
    offset: int  # where its key starts
    head: bytes  # up to HEAD_BYTES from its first string on
    before: dict[str, Any]  # the metadata read before it (tokenizer.ggml.model, .pre)


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


def read_gguf_header_from(handle: Seekable, *, size: int, path: str | Path,
                          block_bytes: int = CHUNK) -> GGUFHeader:
    """Read a GGUF header from an open file of ``size`` bytes (``read_gguf_header``'s reader,
    for files that are not local: hub.py reads remote ones by HTTP ranges).

    Args:
        handle: the file; read forward from byte 0 on, no further ahead than the parse
            expects to need, at most ``block_bytes`` at a time.
        size: the whole file's size, which every count and length is checked against.
        path: what errors and ``GGUFHeader.path`` call the file.

    Raises:
        InvalidModelFile: not a GGUF file, truncated, or with absurd values. Whatever
            ``handle`` raises passes through.
    """
    path = Path(path)
    try:
        parser = open_parser(handle, size=size, block_bytes=block_bytes)
        while parser.left:
            parser.kv()
        return parser.finish(path)
    except Corrupt as exc:
        raise InvalidModelFile(path, str(exc)) from None


def open_parser(handle: Seekable, *, size: int, block_bytes: int = CHUNK) -> HeaderParser:
    """A parser at the first key-value of the header in ``handle``, its counts read and checked.

    Raises:
        Corrupt: not a GGUF file, truncated, or with absurd counts.
    """
    if size < 24:
        handle.seek(0)
        start = handle.read(4)
        if not start:
            raise Corrupt("truncated: the file is empty")
        if not GGUF_MAGIC.startswith(start):
            raise Corrupt(f"not a GGUF file (starts with {start!r}, expected b'GGUF')")
        raise Corrupt(f"truncated: {size} bytes is too short for a GGUF header")
    return HeaderParser(Cursor(handle, size, block_bytes=block_bytes))


class HeaderParser:
    """One header, parsed in order: the counts, the key-values one at a time, the tensors."""

    def __init__(self, cur: Cursor) -> None:
        self.cur = cur
        magic = cur.read(4, "magic")
        if magic != GGUF_MAGIC:
            raise Corrupt(f"not a GGUF file (starts with {magic!r}, expected b'GGUF')")
        self.version = cur.u32("version")
        if self.version not in (2, 3):
            raise Corrupt(f"unsupported GGUF version {self.version} (2 and 3 are supported)")
        self.n_tensors = cur.u64("tensor count")
        self.left = cur.u64("metadata count")  # key-values not yet read
        # Every tensor entry takes at least 28 bytes and every key-value at least 13.
        if self.n_tensors > MAX_TENSORS:
            raise Corrupt(f"absurd tensor count {self.n_tensors}")
        if self.left > MAX_KV:
            raise Corrupt(f"absurd metadata count {self.left}")
        if self.n_tensors * 28 + self.left * 13 > cur.size:
            raise Corrupt(f"truncated or corrupt: declares {self.n_tensors} tensors and {self.left} "
                          f"metadata entries, more than a file of {cur.size} bytes can hold")
        self.metadata: dict[str, Any] = {}

    def expect_rest(self) -> None:
        """Read ahead about as far as the key-values left and the tensor table take."""
        self.cur.horizon = (self.cur.pos + self.left * _KV_GUESS + self.n_tensors * _TENSOR_GUESS
                            + _SLACK)

    def key(self) -> tuple[str, int]:
        """The next key-value's key and value type."""
        self.expect_rest()
        key = self.cur.string("metadata key", MAX_KEY_BYTES)
        if key is None:
            raise Corrupt(f"metadata key at byte {self.cur.pos} is longer than {MAX_KEY_BYTES} bytes")
        return key, self.cur.u32(f"type of {key}")

    def add(self, key: str, value: Any) -> None:
        self.metadata[key] = value
        self.left -= 1

    def kv(self) -> str:
        """Read the next key-value into ``metadata``; returns its key."""
        key, vtype = self.key()
        self.add(key, _value(self.cur, vtype, key, depth=0))
        return key

    def to_vocab(self) -> VocabStart | None:
        """Read key-values up to the first big string array (the vocabulary) and stop past
        its count; None when there is none (all key-values are then read)."""
        while self.left:
            offset = self.cur.pos
            key, vtype = self.key()
            if vtype != _ARRAY:
                self.add(key, _value(self.cur, vtype, key, depth=0))
                continue
            etype, count = self.cur.u32(f"element type of {key}"), self.cur.u64(f"length of {key}")
            if etype == _STRING and count > MAX_KEPT_STRING_ARRAY:
                return VocabStart(key, count, offset, self.cur.peek(HEAD_BYTES), dict(self.metadata))
            self.add(key, _array(self.cur, key, etype, count, depth=0))
        return None

    def walk(self, vocab: VocabStart) -> None:
        """Walk the vocabulary ``to_vocab`` stopped at, into ``metadata``."""
        self.add(vocab.key, _array(self.cur, vocab.key, _STRING, vocab.count, depth=0))

    def passed(self, vocab: VocabStart) -> None:
        """Count the vocabulary ``to_vocab`` stopped at as stepped over, unwalked (a jump
        went past it)."""
        self.add(vocab.key, ArrayInfo(_STRING, vocab.count))

    def tensors(self) -> list[TensorInfo]:
        cur, start = self.cur, self.cur.pos
        tensors = []
        for i in range(self.n_tensors):
            mean = (cur.pos - start) / i if i else _TENSOR_GUESS
            cur.horizon = cur.pos + int((self.n_tensors - i) * mean * 1.02) + _SLACK
            name = cur.string("tensor name", MAX_KEY_BYTES)
            if name is None:
                raise Corrupt(f"tensor name at byte {cur.pos} is longer than {MAX_KEY_BYTES} bytes")
            n_dims = cur.u32(f"dimensions of {name}")
            if not 1 <= n_dims <= MAX_DIMS:
                raise Corrupt(f"tensor {name} has {n_dims} dimensions (1 to {MAX_DIMS} allowed)")
            shape = tuple(cur.u64(f"shape of {name}") for _ in range(n_dims))
            type_id = cur.u32(f"type of {name}")
            if type_id not in GGML_TYPES:
                raise Corrupt(f"tensor {name} has unknown ggml type {type_id}")
            offset = cur.u64(f"offset of {name}")
            info = TensorInfo(name, shape, type_id, offset)
            if any(d == 0 for d in shape) or info.n_elements > cur.size * 256:
                raise Corrupt(f"tensor {name} has an absurd shape {shape}")
            tensors.append(info)
        return tensors

    def finish(self, path: Path, *, exact: bool = False) -> GGUFHeader:
        """The tensor table, read and checked against the file's size: the tensors fit in
        it; and with ``exact``, they account for it to the byte (``_check_sizes``)."""
        tensors = self.tensors()
        alignment = self.metadata.get("general.alignment", 32)
        if not isinstance(alignment, int) or alignment <= 0 or alignment & (alignment - 1):
            raise Corrupt(f"general.alignment {alignment!r} is not a power of two")
        size = self.cur.size
        data_offset = -(-self.cur.pos // alignment) * alignment
        for info in tensors:
            if info.offset + info.nbytes > size - data_offset:
                raise Corrupt(f"truncated: tensor {info.name} ends at byte "
                              f"{data_offset + info.offset + info.nbytes}, past the end of the "
                              f"file ({size} bytes); the download is probably incomplete")
        if exact:
            _check_sizes(tensors, alignment, size - data_offset)
        return GGUFHeader(path, self.version, self.metadata, tensors, alignment, data_offset, size)


def _check_sizes(tensors: list[TensorInfo], alignment: int, data_size: int) -> None:
    """The tensors' data is what follows the header, to the byte: every tensor starts aligned
    and holds whole blocks, and the file ends where the furthest tensor does (padding to
    the alignment allowed)."""
    for info in tensors:
        if info.offset % alignment or info.shape[0] % GGML_TYPES[info.ggml_type].block_size:
            raise Corrupt(f"tensor {info.name} is not aligned or not whole blocks")
    last = max((info.offset + info.nbytes for info in tensors), default=0)
    if not last <= data_size <= -(-last // alignment) * alignment:
        raise Corrupt(f"the tensors' data ends at {last} bytes past the header, "
                      f"the file {data_size} bytes past it")


def _value(cur: Cursor, vtype: int, key: str, *, depth: int) -> Any:
    fmt = _SCALARS.get(vtype)
    if fmt is not None:
        return cur.unpack(struct.Struct(fmt), key)
    if vtype == _STRING:
        text = cur.string(key, MAX_KEPT_STRING)
        return text if text is not None else ArrayInfo(_STRING, 0)
    if vtype != _ARRAY:
        raise Corrupt(f"metadata {key} has unknown value type {vtype}")
    if depth > 2:
        raise Corrupt(f"metadata {key} nests arrays too deeply")
    etype = cur.u32(f"element type of {key}")
    count = cur.u64(f"length of {key}")
    return _array(cur, key, etype, count, depth=depth)


def _array(cur: Cursor, key: str, etype: int, count: int, *, depth: int) -> Any:
    """An array's elements, from past its element type and count: kept when short."""
    efmt = _SCALARS.get(etype)
    if efmt is not None:
        esize = struct.calcsize(efmt)
        if count <= MAX_KEPT_ARRAY:
            return list(struct.unpack(f"<{count}{efmt[1]}", cur.read(count * esize, key)))
        cur.skip(count * esize, key)
        return ArrayInfo(etype, count)
    if etype == _STRING:
        if count * 8 > cur.size - cur.pos:
            raise Corrupt(f"metadata {key} claims {count} strings, more than the file can hold")
        if count <= MAX_KEPT_STRING_ARRAY:
            return [cur.string(key, MAX_KEPT_STRING) for _ in range(count)]
        skip_strings(cur, count, key)
        return ArrayInfo(etype, count)
    if etype == _ARRAY:
        if count * 12 > cur.size - cur.pos:
            raise Corrupt(f"metadata {key} claims {count} arrays, more than the file can hold")
        for _ in range(count):
            _value(cur, _ARRAY, key, depth=depth + 1)
        return ArrayInfo(etype, count)
    raise Corrupt(f"metadata {key} has arrays of unknown type {etype}")
