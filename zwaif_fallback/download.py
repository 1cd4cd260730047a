"""One file's bytes into its partial file: resumed from the partial's size, hashed as they
arrive, retried after a cut connection, stopped by a cancel, verified at the end.

The body is received on a thread (``_Receiver``) into a few big buffers while the caller's
thread writes and hashes the one before: a socket read, a file write and a sha256 of a big
buffer all release the GIL, so on two cores the network, the disk and the hash overlap.
The caller's thread never waits on the network for more than ``POLL_S``: a cancel stops
the download at once even when the server sends nothing, by shutting the socket down
under the receiving thread.
"""

from __future__ import annotations

import hashlib
import logging
import os
import queue
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from types import TracebackType

from ._model import Model
from .errors import DownloadCancelled, HubUnavailable, InvalidModelFile
from .hub import Hub
from .hub_body import Body
from .hub_models import HubModel, RemoteFile
from .units import size_text

__all__ = ["BUFFER_BYTES", "Download", "PullProgress", "ProgressCallback", "format_size"]

log = logging.getLogger(__name__)

#: one receive buffer; a few of them are in flight at once
BUFFER_BYTES = 4 << 20
BUFFERS = 4
#: how long the writing thread waits for data before it looks at the cancel event again
POLL_S = 0.1
#: how often progress is reported, seconds
REPORT_EVERY_S = 0.25
#: how many times a cut connection is resumed within one pull
RESUMES = 3


class PullProgress(Model):
    """How far a download is."""

    file: str
    downloaded_bytes: int  # on disk now, resumed bytes included
    total_bytes: int | None
    resumed_from_bytes: int  # what an earlier, interrupted download had left
    rate_bytes_per_s: float  # this pull's bytes over its time
    eta_s: float | None
    done: bool = False
    part: int = 1  # which file of the pull this is (a split GGUF's part, a folder's file) ...
    parts: int = 1  # ... of how many


ProgressCallback = Callable[[PullProgress], None]


class Download:
    """The bytes of ``remote`` into ``partial``, resuming what an earlier try left there.

    Args:
        model: the file, for messages.
        remote: what the server said of it (size, sha256, URL).
        partial: the hidden file it is written to.
        progress, cancel, clock: as ``pull`` takes them.
        part, parts: which file of the pull this is, of how many (for progress).
    """

    def __init__(self, model: HubModel, remote: RemoteFile, partial: Path, *,
                 progress: ProgressCallback | None = None, cancel: threading.Event | None = None,
                 clock: Callable[[], float], part: int = 1, parts: int = 1) -> None:
        self.model, self.remote, self.partial = model, remote, partial
        self.total = remote.size_bytes or 0
        self.progress, self.cancel, self.clock = progress, cancel, clock
        self.part, self.parts = part, parts
        self.hasher = hashlib.sha256()
        self.have = partial.stat().st_size if partial.is_file() else 0
        if self.have > self.total > 0:  # not a prefix of this file: start over
            self.have = 0
        elif self.have and remote.sha256:
            self._hash_existing()
        self.resumed_from = self.have
        self.started_s = clock()
        self.reported_s = float("-inf")

    @property
    def missing_bytes(self) -> int:
        """What is still to fetch (0 when the size is unknown)."""
        return max(self.total - self.have, 0)

    def run(self, hub: Hub) -> None:
        """Fetch the rest, resuming a cut connection up to ``RESUMES`` times, then verify.

        Raises:
            HubUnavailable, HubFileNotFound, HubAccessDenied: the partial file is kept.
            DownloadCancelled: ``cancel`` was set, or Ctrl-C; the partial file is kept.
            InvalidModelFile: the sha256 or size differs; the partial file was deleted.
        """
        self.partial.parent.mkdir(parents=True, exist_ok=True)
        for attempt in range(RESUMES + 1):
            before = self.have
            try:
                self._fetch(hub)
                break
            except HubUnavailable as exc:
                if self.have == before or attempt == RESUMES:
                    raise HubUnavailable(f"{exc}; the {format_size(self.have)} received are kept "
                                         f"in {self.partial}: pull again to resume") from None
                log.warning("%s; resuming at byte %d", exc, self.have)
        self._verify()

    def _hash_existing(self) -> None:
        with open(self.partial, "rb") as handle:
            left = self.have
            while left:
                data = handle.read(min(BUFFER_BYTES, left))
                if not data:
                    break
                self.hasher.update(data)
                left -= len(data)

    def _fetch(self, hub: Hub) -> None:
        if self.total and self.have == self.total:
            return
        with hub.body(self.remote.url, start=self.have, what=self.model.label) as body:
            if self.have and body.status_code != 206:  # the server ignored the range
                self.have, self.resumed_from, self.hasher = 0, 0, hashlib.sha256()
            try:
                mode = "r+b" if self.partial.exists() else "wb"
                with open(self.partial, mode, buffering=0) as out, _Receiver(body) as receiver:
                    if out.seek(0, os.SEEK_END) > self.have:
                        # only then: on ext4, a truncate to 0 makes close() flush the whole file
                        out.truncate(self.have)
                    out.seek(self.have)
                    for view in receiver.views(self._cancelled):
                        while view:  # a raw write may take less than it was given
                            written = out.write(view) or 0
                            self.hasher.update(view[:written])
                            self.have += written
                            view = view[written:]
                        self._cancelled()
                        self._report()
            except KeyboardInterrupt:
                raise DownloadCancelled(self._kept("interrupted")) from None

    def _cancelled(self) -> None:
        if self.cancel is not None and self.cancel.is_set():
            raise DownloadCancelled(self._kept("cancelled"))

    def _verify(self) -> None:
        if self.total and self.have != self.total:
            self.partial.unlink(missing_ok=True)
            raise InvalidModelFile(self.model.label, f"arrived with {self.have} bytes, not the "
                                   f"{self.total} the Hub announced; it was deleted: pull again")
        got = self.hasher.hexdigest()
        if self.remote.sha256 and got != self.remote.sha256:
            self.partial.unlink(missing_ok=True)
            raise InvalidModelFile(self.model.label, f"its sha256 is {got}, not the Hub's "
                                   f"{self.remote.sha256}; the download was deleted: pull again, "
                                   "and if it happens again, the mirror (HF_ENDPOINT) serves a bad copy")
        sync_file(self.partial)  # on the disk before it gets its name: a power cut after the
        # rename must not leave a model file that discovery trusts with its bytes missing
        self._report(done=True)

    def _kept(self, what: str) -> str:
        return (f"{what}: {format_size(self.have)} of {self.model.label} kept in {self.partial}; "
                "pull again to resume")

    def _report(self, *, done: bool = False) -> None:
        if self.progress is None:
            return
        now = self.clock()
        if not done and now - self.reported_s < REPORT_EVERY_S:
            return
        self.reported_s = now
        elapsed = now - self.started_s
        rate = (self.have - self.resumed_from) / elapsed if elapsed > 0 else 0.0
        eta = (self.total - self.have) / rate if rate > 0 and self.total else None
        self.progress(PullProgress(file=self.model.label, downloaded_bytes=self.have,
                                   total_bytes=self.remote.size_bytes, resumed_from_bytes=self.resumed_from,
                                   rate_bytes_per_s=rate, eta_s=0.0 if done else eta, done=done,
                                   part=self.part, parts=self.parts))


class _Receiver:
    """A body read on its own thread into ``BUFFERS`` buffers, handed over in order."""

    def __init__(self, body: Body) -> None:
        self._body = body
        self._free: queue.SimpleQueue[bytearray | None] = queue.SimpleQueue()
        self._full: queue.SimpleQueue[tuple[bytearray, int] | BaseException] = queue.SimpleQueue()
        self._made = 0  # buffers are made as the writer falls behind: a small file needs one
        self._thread = threading.Thread(target=self._receive, name="zwaif-pull-receive", daemon=True)

    def __enter__(self) -> _Receiver:
        self._thread.start()
        return self

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        if self._thread.is_alive():
            self._body.abort()  # a receive waiting on a stalled server ends now
            self._free.put(None)
            self._thread.join(timeout=5)

    def views(self, check: Callable[[], None]) -> Iterator[memoryview]:
        """The body's bytes, in order; ``check`` runs while waiting and may raise to stop."""
        while True:
            try:
                item = self._full.get(timeout=POLL_S)
            except queue.Empty:
                check()
                continue
            if isinstance(item, BaseException):
                raise item
            buffer, n = item
            if not n:
                return
            yield memoryview(buffer)[:n]
            self._free.put(buffer)

    def _receive(self) -> None:
        try:
            while (buffer := self._next_buffer()) is not None:
                n = self._body.readinto(memoryview(buffer))
                self._full.put((buffer, n))
                if not n:
                    return
        except BaseException as exc:  # handed to the writing thread, which raises it
            self._full.put(exc)

    def _next_buffer(self) -> bytearray | None:
        if self._made < BUFFERS and self._free.empty():
            self._made += 1
            return bytearray(BUFFER_BYTES)
        return self._free.get()


def sync_file(path: Path) -> None:
    """Wait until ``path``'s bytes are on the disk (Windows flushes only a handle that may write)."""
    fd = os.open(path, os.O_RDWR | getattr(os, "O_BINARY", 0))
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def sync_folder(folder: Path) -> None:
    """Wait until the names in ``folder`` (a rename, a new link) are on the disk. POSIX only:
    Windows cannot open a folder, and NTFS journals its names."""
    if os.name == "nt":
        return
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def format_size(nbytes: int) -> str:
    return size_text(nbytes / (1 << 20), smallest="KiB")
