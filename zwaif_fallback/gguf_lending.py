"""A GGUF header read with the walk over its vocabulary lent by a file that has the same one.

Files with the same vocabulary can share the walk over it (``RunLender``, which
hub_headers.py implements for the Hub, where the walk costs megabytes): one file walks
its vocabulary and the big arrays right after it (token types, merges) and lends the run
(their keys, their length in bytes, the bytes they end with); another file then jumps
that far past its own vocabulary's start and reads the rest of its header from its own
bytes. The jump counts only if it lands exactly: the bytes before the landing match
the lender's, the key-values left parse to exactly the declared count (none of them a
big string array, which a walk would fetch), and the tensor table parses and accounts
for the file's size to the byte (``HeaderParser.finish(exact=True)``). Otherwise the file
is walked as any other, with the same result. What the jump does not check: the arrays it
passes over get the lender's counts (a file with a merge more, and other merges shorter by
as many bytes, would show the lender's count), and their bytes are not read (a vocabulary
damaged inside, which a walk would reject, goes unseen).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from .errors import InvalidModelFile
from .gguf_cursor import CHUNK, Corrupt, Seekable
from .gguf_header import ArrayInfo, GGUFHeader, HeaderParser, VocabStart, open_parser, read_gguf_header_from

__all__ = ["RunLender", "VocabRun", "read_borrowing"]

TAIL_BYTES = 4096  # a lent run's last bytes, which a borrower's must match


@dataclass(frozen=True)
class VocabRun:
    """What walking a vocabulary gave: the key-values from it to the first one that is not a
    stepped-over array (token types, scores, merges come between), how many bytes they
    take, and up to TAIL_BYTES of their end (none where the run ends in a skipped array)."""

    arrays: tuple[tuple[str, ArrayInfo], ...]
    length: int
    tail: bytes


class RunLender(Protocol):
    """Lends a run walked in another file that has the same vocabulary (hub_headers.py)."""

    def lend(self, start: VocabStart) -> VocabRun | None:
        """At the vocabulary: a run to jump over it with, or None to walk it."""

    def walked(self, run: VocabRun) -> None:
        """The vocabulary was walked, and gave ``run``."""

    def tried(self, problem: str | None) -> None:
        """The lent run landed exactly (None), or why not; the file was then walked."""


def read_borrowing(handle: Seekable, *, size: int, path: str | Path, block_bytes: int = CHUNK,
                   lender: RunLender | None) -> GGUFHeader:
    """Read a GGUF header as ``read_gguf_header_from`` does, with the walk over its vocabulary
    lent by ``lender`` from a file with the same one.

    Args:
        handle, size, path, block_bytes: as for ``read_gguf_header_from``.
        lender: lends the walk over the vocabulary from a file with the same one; None: the
            file is read alone. A header read with a lent run has the lender's ``ArrayInfo``
            for the arrays after the vocabulary (the vocabulary's own count is this file's);
            all else is this file's.

    Raises:
        InvalidModelFile: not a GGUF file, truncated, or with absurd values. Whatever
            ``handle`` raises passes through.
    """
    if lender is None:
        return read_gguf_header_from(handle, size=size, path=path, block_bytes=block_bytes)
    path = Path(path)
    try:
        parser = open_parser(handle, size=size, block_bytes=block_bytes)
        vocab = parser.to_vocab()
        if vocab is None:  # every key-value is read
            return parser.finish(path)
        return _share(path, parser, vocab, lender)
    except Corrupt as exc:
        raise InvalidModelFile(path, str(exc)) from None


def _share(path: Path, parser: HeaderParser, vocab: VocabStart, lender: RunLender) -> GGUFHeader:
    """The rest of the header, with the run the lender lends or by walking it (and telling
    the lender what the walk gave)."""
    cur = parser.cur
    strings = cur.pos
    run = lender.lend(vocab)
    if run is not None:
        metadata, left = dict(parser.metadata), parser.left
        try:
            header = _jump(path, parser, vocab, run)
        except Corrupt as exc:
            lender.tried(str(exc))
            parser.metadata, parser.left = metadata, left
            cur.jump(strings)
        else:
            lender.tried(None)
            return header
    parser.walk(vocab)
    arrays = [(vocab.key, parser.metadata[vocab.key])]
    end, tail = cur.pos, cur.behind(TAIL_BYTES)
    while parser.left:
        key = parser.kv()
        if not isinstance(parser.metadata[key], ArrayInfo):
            break
        arrays.append((key, parser.metadata[key]))
        end, tail = cur.pos, cur.behind(TAIL_BYTES)
    lender.walked(VocabRun(tuple(arrays), end - vocab.offset, tail))
    while parser.left:
        parser.kv()
    return parser.finish(path)


def _jump(path: Path, parser: HeaderParser, vocab: VocabStart, run: VocabRun) -> GGUFHeader:
    """Jump over the vocabulary as far as ``run`` says, and read on from there; raises
    Corrupt where the landing is not exact."""
    cur = parser.cur
    land = vocab.offset + run.length
    if (run.arrays[0][0] != vocab.key or len(run.arrays) > parser.left
            or not cur.pos <= land - len(run.tail) <= land <= cur.size):
        raise Corrupt("the lent run does not fit this file's key-values")
    cur.jump(land - len(run.tail))
    parser.expect_rest()
    if cur.read(len(run.tail), "the end of the vocabulary") != run.tail:
        raise Corrupt(f"the {len(run.tail)} bytes before byte {land} differ from the lender's")
    parser.passed(vocab)
    for key, info in run.arrays[1:]:
        parser.add(key, info)
    if parser.to_vocab() is not None:  # what a walk would fetch: a missed landing's garbage?
        raise Corrupt("a big string array follows the lent run")
    return parser.finish(path, exact=True)
