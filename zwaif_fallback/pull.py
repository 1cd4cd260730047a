"""Downloading a model from the Hugging Face Hub into a place discovery reads.

``pull`` takes what ``pull_plan.plan_pull`` takes (``REPO/FILE.gguf``, a repo id, a URL, a
curated file's name) and fetches its files: one GGUF, every part of a split GGUF, or a
transformers model's safetensors with its config and tokenizer files. It asks the Hub for
each file's size and sha256 (a HEAD: ``X-Linked-Size``, ``X-Linked-Etag``), refuses when
the disk is too small for all of them together, then streams each into a hidden partial
file beside its destination (``download.Download``). A partial file left by a cut
connection, a cancel or Ctrl-C is resumed from its size by a range request; a cut
connection is resumed at once, a few times. A file whose sha256 differs is deleted. Only
when every file of the model is verified, and its bytes are on the disk (fsync), are they
renamed into place, config.json last, so discovery never sees a file that was not
verified, nor a split model or a folder with a file missing, not even after a power cut.

Why not ``huggingface_hub.hf_hub_download`` (checked in its 2.4 source): it downloads to a
process-unique ``.incomplete`` file that it deletes on any failure, so an interrupted
download always starts over; it moves the file into place without comparing its sha256
(it hashes only a file already in a ``local_dir`` that lacks its metadata); and it can be
stopped only by raising from a tqdm, which deletes the partial file too. So the transfer
is hub.py's own: a plain GET of the address huggingface_hub resolved. huggingface_hub
still speaks the rest of the protocol (the token, each file's metadata, the repo's listing:
hub_api.py), and the Hugging Face cache is written in its documented layout
(``blobs/<sha256 or etag>``, ``snapshots/<commit>/<file>`` linking to the blob,
``refs/<revision>``), in which ``hf_hub_download(..., local_files_only=True)``,
``scan_cache_dir`` and ``locations.hf_cache_models`` find it.
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
import shutil
import threading
import time
from collections.abc import Callable
from pathlib import Path, PurePosixPath
from typing import Literal

from .download import Download, ProgressCallback, PullProgress, format_size, sync_folder
from .errors import HubUnavailable, NotEnoughSpace, StorageError
from .files import replace_when_free
from .hub import Hub, HubModel, RemoteFile
from .locations import group_gguf_files, hf_cache_dir, hf_folder_candidate
from .model_info import ModelInfo, inspect_candidate
from .pull_plan import ALLOWED_SUFFIXES, PullPlan, check_file_type, plan_pull

__all__ = ["ALLOWED_SUFFIXES", "ProgressCallback", "PullProgress", "check_file_type", "plan_pull",
           "pull"]

log = logging.getLogger(__name__)

Destination = Literal["models_dir", "hf_cache"]
_GIT_OBJECT = re.compile(r"[0-9a-f]{40}|[0-9a-f]{64}")
#: How long a verified file's rename into place waits while another process holds it: on
#: Windows a virus scanner reads a file that has just been written, and a model's gigabytes
#: take it seconds. A bound chosen, not measured (no Windows here); elsewhere no wait.
PUBLISH_WAIT_S = 10.0 if os.name == "nt" else 0.0


def pull(spec: str | HubModel, *, hub: Hub, models_dir: Path, download_to: Destination = "models_dir",
         hf_cache: Path | None = None, progress: ProgressCallback | None = None,
         cancel: threading.Event | None = None,
         clock: Callable[[], float] = time.monotonic) -> ModelInfo:
    """Download a model's files where discovery finds them, verified, resuming partial ones.

    Args:
        spec: what ``plan_pull`` takes.
        hub: the Hub to read (its endpoint, token and offline mode).
        models_dir: where it goes with ``download_to="models_dir"`` (a transformers model in
            its own folder, named as the repo), and where a file at a plain URL (not in the
            Hub's layout) always goes.
        download_to: "models_dir", or "hf_cache" (the Hugging Face cache, found by
            discovery when ``scan_system_stores`` is on).
        hf_cache: the Hugging Face cache; None: huggingface_hub's (HF_HUB_CACHE, HF_HOME).
        progress: called with a ``PullProgress`` a few times a second and once at the end
            of each file.
        cancel: set it (from another thread) to stop; the partial file is kept.
        clock: seconds, for the rate.

    Returns:
        The downloaded model as discovery describes it.

    Raises:
        InvalidSettings: not an allowed file, or ``spec`` names no file.
        HubOffline, HubUnavailable, HubFileNotFound, HubAccessDenied: the Hub said no, or
            the connection failed (the bytes received are kept for the next pull).
        NotEnoughSpace: its disk has less free space than the files need; nothing was fetched.
        InvalidModelFile: a file's sha256 or size differs from the Hub's; it was deleted.
        DownloadCancelled: ``cancel`` was set, or Ctrl-C; the partial file is kept.
        StorageError: it could not be written.
    """
    plan = plan_pull(spec, hub)
    remotes = [hub.stat(model) for model in plan.files]
    commits = {r.commit for r in remotes if r.commit}
    if len(commits) > 1:
        raise HubUnavailable(f"hub changed: {plan.label} got a new commit while its files were "
                             "listed; pull again")
    cache = hf_cache or hf_cache_dir()
    places = [_Place.choose(model, remote, plan, models_dir=Path(models_dir), download_to=download_to,
                            hf_cache=cache) for model, remote in zip(plan.files, remotes, strict=True)]
    try:
        todo = [(i, model, remote, place) for i, (model, remote, place)
                in enumerate(zip(plan.files, remotes, places, strict=True)) if not place.done(remote)]
        downloads: dict[Path, Download] = {}  # files with the same bytes share a blob in the HF cache
        for i, model, remote, place in todo:
            if place.partial not in downloads:
                downloads[place.partial] = Download(model, remote, place.partial, progress=progress,
                                                    cancel=cancel, clock=clock, part=i + 1,
                                                    parts=len(plan.files))
        if downloads:
            _check_space(places[0].partial.parent, sum(d.missing_bytes for d in downloads.values()),
                         plan.label)
        for download in downloads.values():
            download.run(hub)
        for _, model, remote, place in todo:  # config.json last: then the folder is a model
            place.publish(model, remote)
        for folder in {path.parent for *_, place in todo for path in (place.target, place.visible)}:
            sync_folder(folder)  # the new names on the disk too
    except OSError as exc:
        # on Windows a file another process holds (a model loaded from it) refuses its rename
        held = (" or close what holds its files open" if isinstance(exc, PermissionError) and os.name == "nt"
                else "")
        raise StorageError(f"cannot write {places[0].target.parent}: {exc.strerror or exc}; check "
                           f"the folder's permissions and free space{held}") from exc
    return _info(plan, places)


class _Place:
    """Where a download goes: the partial file, the verified file, and for the HF cache the
    snapshot link that names it."""

    def __init__(self, target: Path, partial: Path, source: str, link: Path | None = None,
                 ref: Path | None = None) -> None:
        self.target, self.partial, self.source, self.link, self.ref = target, partial, source, link, ref

    @classmethod
    def choose(cls, model: HubModel, remote: RemoteFile, plan: PullPlan, *, models_dir: Path,
               download_to: Destination, hf_cache: Path) -> _Place:
        # the blob's name in the HF cache: an LFS file's sha256, else its git object id
        key = remote.sha256 or (remote.etag if _GIT_OBJECT.fullmatch(remote.etag) else
                                hashlib.sha256(f"{remote.etag}:{remote.size_bytes}".encode()).hexdigest())
        if download_to == "hf_cache" and model.repo and remote.commit:
            repo_dir = hf_cache / ("models--" + model.repo.replace("/", "--"))
            blob = repo_dir / "blobs" / key
            ref = repo_dir / "refs" / model.revision if model.revision != remote.commit else None
            return cls(blob, blob.with_name(blob.name + ".incomplete"), "hf_cache",
                       repo_dir / "snapshots" / remote.commit / model.file, ref)
        folder = models_dir / plan.folder if plan.folder else models_dir
        target = folder / PurePosixPath(model.file).name
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
        if self.partial.exists() or not self.target.is_file():  # else: a shared blob, moved already
            replace_when_free(self.partial, self.target, PUBLISH_WAIT_S)
        if self.link is not None:
            self.link.parent.mkdir(parents=True, exist_ok=True)
            self.link.unlink(missing_ok=True)
            _snapshot_entry(self.link, self.target)
        if self.ref is not None and remote.commit:
            self.ref.parent.mkdir(parents=True, exist_ok=True)
            self.ref.write_text(remote.commit, encoding="utf-8")


def _snapshot_entry(link: Path, blob: Path) -> None:
    """A snapshot's file for its blob in the HF cache: a relative symlink, as huggingface_hub
    makes it. Windows refuses symlinks without Developer Mode or admin rights, but not hard
    links on NTFS: then a hard link (the same bytes, no second copy). Where neither can be
    made (FAT32, exFAT), the blob itself moves into the snapshot, as huggingface_hub does
    without symlinks."""
    try:
        link.symlink_to(os.path.relpath(blob, link.parent))
        return
    except OSError as exc:
        log.info("no symlink in the HF cache (%s); a hard link instead", exc)
    try:
        os.link(blob, link)
    except OSError as exc:
        log.info("no hard link in the HF cache (%s); the file moves into the snapshot", exc)
        replace_when_free(blob, link, PUBLISH_WAIT_S)


def _check_space(folder: Path, needed: int, label: str) -> None:
    existing = folder
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    free = shutil.disk_usage(existing).free
    if needed > free:
        raise NotEnoughSpace(f"not enough space: {label} needs {format_size(needed)} more, but "
                             f"{existing} has {format_size(free)} free; free some space, or set "
                             "models_dir (or download_to) to a folder on a bigger disk")


def _info(plan: PullPlan, places: list[_Place]) -> ModelInfo:
    paths, source = [p.visible for p in places], places[0].source
    if plan.kind == "transformers":
        folder = paths[-1].parent
        name = plan.files[0].repo if source == "hf_cache" else folder.name
        return inspect_candidate(hf_folder_candidate(folder, source, name))
    [candidate] = group_gguf_files(paths, source)  # a split model's parts are one candidate
    return inspect_candidate(candidate)
