"""Downloading one model file from the Hugging Face Hub into a place discovery reads.

``pull`` takes what ``hub.parse_spec`` takes (``REPO/FILE.gguf``, a repo id, a URL) or a
curated file's name, refuses anything but .gguf and .safetensors (pickle files run code
when loaded; remote code is code), asks the Hub for the file's size and sha256 (a HEAD:
``X-Linked-Size``, ``X-Linked-Etag``), refuses when the disk is too small, then streams
it into a hidden partial file beside its destination. A partial file left by a cut
connection, a cancel or Ctrl-C is resumed from its size by a range request; a cut
connection is resumed at once, a few times. Only a file whose sha256 matches is renamed
into place, so discovery never sees a file that was not verified; a mismatch deletes it.

Why not ``huggingface_hub.hf_hub_download`` (checked in its 2.4 source): it downloads to a
process-unique ``.incomplete`` file that it deletes on any failure, so an interrupted
download always starts over; it moves the file into place without comparing its sha256
(it hashes only a file already in a ``local_dir`` that lacks its metadata); and it can be
stopped only by raising from a tqdm, which deletes the partial file too. So the transfer
is hub.py's httpx client with range resume. huggingface_hub still gives the token (hub.py
asks it), and the Hugging Face cache is written in its documented layout
(``blobs/<sha256>``, ``snapshots/<commit>/<file>`` linking to the blob, ``refs/<revision>``),
which huggingface_hub and ``locations.hf_cache_models`` read.
"""

from __future__ import annotations

import hashlib
import logging
import os
import shutil
import threading
import time
from collections.abc import Callable
from pathlib import Path, PurePosixPath
from typing import Literal

from ._model import Model
from .errors import (
    DownloadCancelled,
    HubUnavailable,
    InvalidModelFile,
    InvalidSettings,
    NotEnoughSpace,
    StorageError,
)
from .hub import Hub, HubModel, RemoteFile, curated, parse_spec
from .locations import PICKLE_SUFFIXES, Candidate, hf_cache_dir
from .model_info import ModelInfo, inspect_candidate
from .units import size_text

__all__ = ["ALLOWED_SUFFIXES", "PullProgress", "check_file_type", "pull", "resolve_pull_spec"]

log = logging.getLogger(__name__)

ALLOWED_SUFFIXES = (".gguf", ".safetensors")
CHUNK = 1 << 20
#: how often progress is reported, seconds
REPORT_EVERY_S = 0.25
#: how many times a cut connection is resumed within one pull
RESUMES = 3

Destination = Literal["models_dir", "hf_cache"]


class PullProgress(Model):
    """How far a download is."""

    file: str
    downloaded_bytes: int  # on disk now, resumed bytes included
    total_bytes: int | None
    resumed_from_bytes: int  # what an earlier, interrupted download had left
    rate_bytes_per_s: float  # this pull's bytes over its time
    eta_s: float | None
    done: bool = False


ProgressCallback = Callable[[PullProgress], None]


def check_file_type(name: str) -> None:
    """Refuse a file that is not model weights in a format that cannot run code.

    Raises:
        InvalidSettings: a pickle file, or anything but .gguf and .safetensors.
    """
    lower = name.lower()
    if lower.endswith(PICKLE_SUFFIXES):
        raise InvalidSettings(f"{name!r} is a pickle file, which can run code when it is loaded: "
                              "pull fetches only .gguf and .safetensors files")
    if not lower.endswith(ALLOWED_SUFFIXES):
        raise InvalidSettings(f"{name!r} is not a .gguf or .safetensors file: pull fetches model "
                              "weights only, never code or other files")


def resolve_pull_spec(spec: str | HubModel, hub: Hub) -> HubModel:
    """The one file ``spec`` names: ``REPO/FILE.gguf`` or ``.safetensors``, a URL, a curated
    file's name, or a repo id (its first file in the common quantizations, Q4_K_M first).

    Raises:
        InvalidSettings: none of these, or not an allowed file type.
        HubOffline, HubUnavailable, HubFileNotFound, HubAccessDenied: listing a repo failed.
    """
    if isinstance(spec, HubModel):
        model = spec
    else:
        text = spec.strip()
        parts = text.split("/")
        known = [m for m in curated() if "/" not in text and m.file.lower() == text.lower()]
        if known:
            model = known[0]
        elif text.startswith(("https://", "http://")) or len(parts) >= 3:
            check_file_type(parts[-1])
            if text.lower().endswith(".safetensors") and len(parts) >= 3 and "://" not in text:
                model = HubModel(repo="/".join(parts[:2]), file="/".join(parts[2:]))
            else:
                model = parse_spec(text)
        else:
            model = parse_spec(text)
    if not model.file:
        model = hub.repo_files(model.repo, revision=model.revision)[0]
    check_file_type(model.file)
    return model


def pull(spec: str | HubModel, *, hub: Hub, models_dir: Path, download_to: Destination = "models_dir",
         hf_cache: Path | None = None, progress: ProgressCallback | None = None,
         cancel: threading.Event | None = None,
         clock: Callable[[], float] = time.monotonic) -> ModelInfo:
    """Download one model file where discovery finds it, verified, resuming a partial one.

    Args:
        spec: what ``resolve_pull_spec`` takes.
        hub: the Hub to read (its endpoint, token and offline mode).
        models_dir: where it goes with ``download_to="models_dir"``, and where a file at a
            plain URL (not in the Hub's layout) always goes.
        download_to: "models_dir", or "hf_cache" (the Hugging Face cache, found by
            discovery when ``scan_system_stores`` is on).
        hf_cache: the Hugging Face cache; None: huggingface_hub's (HF_HUB_CACHE, HF_HOME).
        progress: called with a ``PullProgress`` a few times a second and once at the end.
        cancel: set it (from another thread) to stop; the partial file is kept.
        clock: seconds, for the rate.

    Returns:
        The downloaded model as discovery describes it.

    Raises:
        InvalidSettings: not an allowed file, or ``spec`` names no file.
        HubOffline, HubUnavailable, HubFileNotFound, HubAccessDenied: the Hub said no, or
            the connection failed (the bytes received are kept for the next pull).
        NotEnoughSpace: its disk has less free space than the file needs; nothing was fetched.
        InvalidModelFile: its sha256 or size differs from the Hub's; it was deleted.
        DownloadCancelled: ``cancel`` was set, or Ctrl-C; the partial file is kept.
        StorageError: it could not be written.
    """
    model = resolve_pull_spec(spec, hub)
    remote = hub.stat(model)
    place = _Place.choose(model, remote, models_dir=models_dir, download_to=download_to,
                          hf_cache=hf_cache or hf_cache_dir())
    try:
        if not place.done(remote):
            _download(model, remote, place, hub=hub, progress=progress, cancel=cancel, clock=clock)
            place.publish(model, remote)
    except OSError as exc:
        raise StorageError(f"cannot write {place.target}: {exc.strerror or exc}; check the "
                           "folder's permissions and free space") from exc
    return _info(place)


class _Place:
    """Where a download goes: the partial file, the verified file, and for the HF cache the
    snapshot link that names it."""

    def __init__(self, target: Path, partial: Path, source: str, link: Path | None = None,
                 ref: Path | None = None) -> None:
        self.target, self.partial, self.source, self.link, self.ref = target, partial, source, link, ref

    @classmethod
    def choose(cls, model: HubModel, remote: RemoteFile, *, models_dir: Path,
               download_to: Destination, hf_cache: Path) -> _Place:
        key = remote.sha256 or hashlib.sha256(f"{remote.etag}:{remote.size_bytes}".encode()).hexdigest()
        if download_to == "hf_cache" and model.repo and remote.commit:
            repo_dir = hf_cache / ("models--" + model.repo.replace("/", "--"))
            blob = repo_dir / "blobs" / key
            ref = repo_dir / "refs" / model.revision if model.revision != remote.commit else None
            return cls(blob, blob.with_name(blob.name + ".incomplete"), "hf_cache",
                       repo_dir / "snapshots" / remote.commit / model.file, ref)
        target = Path(models_dir) / PurePosixPath(model.file).name
        # hidden and not named .gguf: discovery skips it until it is verified and renamed
        return cls(target, target.with_name(f".{target.name}.{key[:16]}.incomplete"), "models_dir")

    @property
    def visible(self) -> Path:
        return self.link or self.target

    def done(self, remote: RemoteFile) -> bool:
        """Whether the verified file is there already (then nothing is fetched)."""
        if not self.visible.is_file():
            return False
        if remote.size_bytes is not None and self.visible.stat().st_size != remote.size_bytes:
            if self.link is None:
                raise StorageError(f"{self.target} exists and is not this file (its size differs); "
                                   "move it away or delete it, then pull again")
            return False
        return True

    def publish(self, model: HubModel, remote: RemoteFile) -> None:
        os.replace(self.partial, self.target)
        if self.link is not None:
            self.link.parent.mkdir(parents=True, exist_ok=True)
            self.link.unlink(missing_ok=True)
            self.link.symlink_to(os.path.relpath(self.target, self.link.parent))
        if self.ref is not None and remote.commit:
            self.ref.parent.mkdir(parents=True, exist_ok=True)
            self.ref.write_text(remote.commit, encoding="utf-8")


def _download(model: HubModel, remote: RemoteFile, place: _Place, *, hub: Hub,
              progress: ProgressCallback | None, cancel: threading.Event | None,
              clock: Callable[[], float]) -> None:
    transfer = _Transfer(model, remote, place.partial, progress=progress, cancel=cancel, clock=clock)
    _check_space(place.partial.parent, transfer.total - transfer.have if transfer.total else 0,
                 model.label)
    place.partial.parent.mkdir(parents=True, exist_ok=True)
    for attempt in range(RESUMES + 1):
        before = transfer.have
        try:
            transfer.run(hub)
            break
        except HubUnavailable as exc:
            if transfer.have == before or attempt == RESUMES:
                raise HubUnavailable(f"{exc}; the {format_size(transfer.have)} received are kept "
                                     f"in {place.partial}: pull again to resume") from None
            log.warning("%s; resuming at byte %d", exc, transfer.have)
    transfer.verify()


class _Transfer:
    """The bytes of one file into its partial file, hashed as they arrive."""

    def __init__(self, model: HubModel, remote: RemoteFile, partial: Path, *,
                 progress: ProgressCallback | None, cancel: threading.Event | None,
                 clock: Callable[[], float]) -> None:
        self.model, self.remote, self.partial = model, remote, partial
        self.total = remote.size_bytes or 0
        self.progress, self.cancel, self.clock = progress, cancel, clock
        self.hasher = hashlib.sha256()
        self.have = partial.stat().st_size if partial.is_file() else 0
        if self.have > self.total > 0:  # not a prefix of this file: start over
            self.have = 0
        elif self.have and remote.sha256:
            with open(partial, "rb") as handle:
                left = self.have
                while left:
                    data = handle.read(min(CHUNK, left))
                    if not data:
                        break
                    self.hasher.update(data)
                    left -= len(data)
        self.resumed_from = self.have
        self.started_s = clock()
        self.reported_s = float("-inf")

    def run(self, hub: Hub) -> None:
        if self.total and self.have == self.total:
            return
        with hub.stream(self.remote.url, start=self.have, what=self.model.label) as response:
            if self.have and response.status_code != 206:  # the server ignored the range
                self.have, self.resumed_from, self.hasher = 0, 0, hashlib.sha256()
            try:
                with open(self.partial, "r+b" if self.partial.exists() else "wb") as out:
                    out.seek(self.have)
                    out.truncate()
                    for chunk in response.iter_bytes():  # as it arrives: a cut loses no buffered bytes
                        out.write(chunk)
                        self.hasher.update(chunk)
                        self.have += len(chunk)
                        if self.cancel is not None and self.cancel.is_set():
                            raise DownloadCancelled(self._kept("cancelled"))
                        self._report()
            except KeyboardInterrupt:
                raise DownloadCancelled(self._kept("interrupted")) from None

    def verify(self) -> None:
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
                                   rate_bytes_per_s=rate, eta_s=0.0 if done else eta, done=done))


def format_size(nbytes: int) -> str:
    return size_text(nbytes / (1 << 20), smallest="KiB")


def _check_space(folder: Path, needed: int, label: str) -> None:
    existing = folder
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    free = shutil.disk_usage(existing).free
    if needed > free:
        raise NotEnoughSpace(f"not enough space: {label} needs {format_size(needed)} more, but "
                             f"{existing} has {format_size(free)} free; free some space, or set "
                             "models_dir (or download_to) to a folder on a bigger disk")


def _info(place: _Place) -> ModelInfo:
    path = place.visible
    name = path.name.removesuffix(".gguf")
    if path.suffix.lower() == ".safetensors":
        return ModelInfo(name=name, path=str(path), format="transformers", source=place.source,
                         size_bytes=path.stat().st_size, valid=False,
                         error="a .safetensors file alone: put it in a folder with its config.json")
    return inspect_candidate(Candidate("gguf", path, place.source, name, [path]))
