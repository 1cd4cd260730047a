"""GGUF headers on the Hub, read by range requests (``read_header``); files that share a
vocabulary walk it once (``VocabSharing``, the run lender of ``Hub.read_all``).

A GGUF's vocabulary and merges are most of its header (5-8 MiB for Qwen2.5 and Llama 3),
and the files of one family share them: its sizes, its quantizations. Files are grouped
by what their reader meets first of the vocabulary (``fingerprint``). The first file of a
group to get there leads: it walks its vocabulary and lends the run
(``gguf_lending.VocabRun``: the arrays' keys, their length in bytes, the bytes they end
with). The others wait for their own leader only, then jump that far past their own
vocabulary's start and read the rest of their header from their own bytes; gguf_lending
checks the landing, and walks the file where it is not exact. A leader that fails before
its run is known leaves its group: those waiting walk their own, the next to come leads.
A leader slower than ``wait_s`` (a Hub sending a trickle) is waited for no longer: those
waiting walk their own.
"""

from __future__ import annotations

import hashlib
import threading

from .errors import InvalidModelFile
from .gguf_header import GGUFHeader, VocabStart
from .gguf_lending import VocabRun, read_borrowing
from .hub_http import MAX_BLOCK, GetRange, RangedFile

__all__ = ["Seat", "VocabSharing", "fingerprint", "read_header"]


def read_header(get_range: GetRange, url: str, *, what: str, path: str,
                sharing: VocabSharing | None) -> GGUFHeader:
    """The GGUF header of the file at ``url``, read by range requests (``hub_http.RangedFile``).

    Args:
        get_range: fetches a range (``Hub._get_range``).
        what: how errors and ``sharing`` name the file; ``path``: what the header calls it.
        sharing: where files with the same vocabulary lend their walk over it; None: read
            the file alone.

    Raises:
        InvalidModelFile: it is not a GGUF file (the error names ``url``). What
            ``get_range`` raises passes through.
    """
    remote = RangedFile(get_range, url, what)
    seat = sharing.seat(what) if sharing is not None else None
    try:
        return read_borrowing(remote, size=remote.size, path=path, block_bytes=MAX_BLOCK, lender=seat)
    except InvalidModelFile as exc:
        raise InvalidModelFile(url, exc.reason) from None
    finally:
        if seat is not None:
            seat.close()  # a leader that failed lets its followers go


def fingerprint(start: VocabStart) -> bytes:
    """What tells vocabularies apart before they are walked: the tokenizer's model and
    pre-tokenizer (read before the vocabulary), the array's key and length, and a hash of
    its first bytes. Files that share it are most likely to share the whole run."""
    digest = hashlib.sha256()
    for part in (start.before.get("tokenizer.ggml.model"), start.before.get("tokenizer.ggml.pre"),
                 start.key, start.count):
        digest.update(repr(part).encode() + b"\0")
    digest.update(start.head)
    return digest.digest()


class _Group:
    def __init__(self) -> None:
        self.ready = threading.Event()  # set once the run is known, or the leader failed
        self.run: VocabRun | None = None


class VocabSharing:
    """The groups of one read of many files, and what each file did. Thread-safe.

    Args:
        wait_s: the longest a file waits for its leader's run before it walks its own.

    Attributes:
        leaders: the files that walked their vocabulary for their group.
        followers: the files that jumped over theirs with their leader's run.
        fallbacks: file -> why it walked its vocabulary after all (the run did not land
            exactly, or its leader failed).
    """

    def __init__(self, *, wait_s: float = 60.0) -> None:
        self.wait_s = wait_s
        self._lock = threading.Lock()
        self._groups: dict[bytes, _Group] = {}
        self.leaders: list[str] = []
        self.followers: list[str] = []
        self.fallbacks: dict[str, str] = {}

    def seat(self, what: str) -> Seat:
        """The lender for one file's reader (``what`` names the file); close it when the
        read ends, however it ends."""
        return Seat(self, what)

    def _join(self, key: bytes, what: str) -> tuple[_Group, bool]:
        """The group with ``key``, and whether ``what`` leads it (it is new)."""
        with self._lock:
            group = self._groups.get(key)
            if group is not None:
                return group, False
            self._groups[key] = group = _Group()
            self.leaders.append(what)
            return group, True

    def _leave(self, key: bytes, group: _Group) -> None:
        with self._lock:
            if self._groups.get(key) is group:
                del self._groups[key]
        group.ready.set()

    def _record(self, what: str, problem: str | None) -> None:
        with self._lock:
            if problem is None:
                self.followers.append(what)
            else:
                self.fallbacks[what] = problem


class Seat:
    """One file's place in a ``VocabSharing``: the ``gguf_lending.RunLender`` its reader asks."""

    def __init__(self, sharing: VocabSharing, what: str) -> None:
        self._sharing = sharing
        self._what = what
        self._leads: tuple[bytes, _Group] | None = None

    def lend(self, start: VocabStart) -> VocabRun | None:
        key = fingerprint(start)
        group, leads = self._sharing._join(key, self._what)
        if leads:
            self._leads = (key, group)
            return None
        if not group.ready.wait(self._sharing.wait_s):
            self._sharing._record(self._what, f"its leader took over {self._sharing.wait_s:g} s")
            return None
        if group.run is None:
            self._sharing._record(self._what, "its leader failed before walking its vocabulary")
        return group.run

    def walked(self, run: VocabRun) -> None:
        if self._leads is not None:  # a follower that walked after all has nothing to lend
            group = self._leads[1]
            group.run = run
            group.ready.set()

    def tried(self, problem: str | None) -> None:
        self._sharing._record(self._what, problem)

    def close(self) -> None:
        """The read ended: a leader without a run leaves its group."""
        if self._leads is not None and not self._leads[1].ready.is_set():
            self._sharing._leave(*self._leads)
