"""Every error zwaif-fallback raises, named for what the caller does next.

    FallbackError                 the root: catch this to catch everything
    ├── InvalidSettings           a value is out of range or the wrong type: fix it
    ├── ModelNotFound             no model by that name: pick one of the known names
    ├── JobNotFound               no background job has that id: use one that start_* returned
    ├── InvalidModelFile          the file is not a usable model: replace or re-download it
    ├── IncompatibleModel         the model cannot run on this machine: pick a smaller one
    ├── ModelLoadError            the runtime failed to load it: see the message
    │   └── OutOfMemory           it ran out of VRAM or RAM: a smaller plan may fit
    ├── BackendUnavailable        an optional runtime is not installed: pip install the extra
    ├── Busy                      the same work is already running: stop it or wait for it
    ├── NotStarted                nothing to stop or report yet: start it first
    ├── StorageError              a file could not be written: check the folder and the disk
    │   └── NotEnoughSpace        a download would not fit on its disk: free space or pick another folder
    ├── DownloadCancelled         a download was stopped; its partial file is kept: run it again to resume
    ├── PortUnavailable           an address and port cannot be listened on: pick another port
    ├── HostUnavailable           the host to listen on is no address of this machine: pick another host
    ├── NotAllowed                serve does not let this request in (a web page, a name): see the message
    ├── HubUnavailable            the Hub cannot be read now (no network, down, timed out): try later
    │   └── HubOffline            HF_HUB_OFFLINE is set, so nothing was fetched: unset it
    ├── HubFileNotFound           no such repo or file on the Hub (404): check the name
    ├── HubAccessDenied           the repo is gated or private (401, 403): accept its license, set HF_TOKEN
    └── AllTargetsFailed          no target could answer: see ``attempts``

Both not-found errors are also ``LookupError``s, and ``InvalidSettings`` a ``ValueError``.
The CLI exits with ``exit_code``: 2 for bad input (a value, a name, an id), 1 for an
operation that failed.

Messages say what to do, because they end up in front of a person (CLI, UI).
Third-party exceptions are translated at the edge with ``raise ... from exc``.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

__all__ = [
    "AllTargetsFailed",
    "BackendUnavailable",
    "Busy",
    "DownloadCancelled",
    "FallbackError",
    "HostUnavailable",
    "HubAccessDenied",
    "HubFileNotFound",
    "HubOffline",
    "HubUnavailable",
    "IncompatibleModel",
    "InvalidModelFile",
    "InvalidSettings",
    "JobNotFound",
    "ModelLoadError",
    "ModelNotFound",
    "NotAllowed",
    "NotEnoughSpace",
    "NotStarted",
    "OutOfMemory",
    "PortUnavailable",
    "StorageError",
]

#: What a call on a closed manager is told (not in __all__, which lists the errors).
CLOSED = "this manager is closed; make a new FallbackManager"


class FallbackError(Exception):
    """Root of every error raised by zwaif-fallback."""

    #: CLI exit status: 2 for bad input from the user, 1 for a failed operation.
    exit_code = 1


class InvalidSettings(FallbackError, ValueError):
    """A setting or an argument (a chat's messages, options) is out of range, wrong or pinned."""

    exit_code = 2

    def __init__(self, message: str, *, problems: Sequence[str] = ()) -> None:
        super().__init__(message)
        self.problems = list(problems) or [message]


class ModelNotFound(FallbackError, LookupError):
    """No discovered model has that name, and it is not an existing file path."""

    exit_code = 2

    def __init__(self, name: str, known: Sequence[str] = (), suggestions: Sequence[str] = (),
                 *, broken: Sequence[str] = (), path: bool = False) -> None:
        """
        Args:
            name: what the person typed.
            known: the usable models' names, listed in the message (the first 8).
            suggestions: the closest of them, asked about instead of the list.
            broken: the names of models found but unusable: counted, not listed, since
                naming one invites using it; ``zwaif-fallback models`` says why each fails.
            path: ``name`` looks like a path (``catalog.looks_like_path``), and there is no
                file there.
        """
        self.name = name
        self.known = list(known)
        self.broken = list(broken)
        if path:
            what = f"no file at {name!r}, and no model has that name: check the path"
        else:
            what = f"no model named {name!r}"
        if suggestions:
            hint = "did you mean " + ", ".join(repr(s) for s in suggestions) + "?"
        elif self.known:
            shown = ", ".join(self.known[:8]) + (", ..." if len(self.known) > 8 else "")
            hint = f"known models: {shown}"
        elif self.broken:
            hint = "no usable model was discovered"
        else:
            hint = "no models were discovered: put a .gguf file in the models folder"
        if self.broken:
            count = len(self.broken)
            how = (f"{count} broken model{'' if count == 1 else 's'} not listed; "
                   "see why with: zwaif-fallback models")
        else:
            how = "list them with: zwaif-fallback models"
        super().__init__(f"{what}; {hint} ({how})")


class JobNotFound(FallbackError, LookupError):
    """No background job has that id: it was never started, or forgotten as one of the oldest."""

    exit_code = 2

    def __init__(self, job_id: object) -> None:
        self.job_id = job_id
        super().__init__(f"no job with id {job_id!r}")


class InvalidModelFile(FallbackError):
    """A file claims to be a model but cannot be read as one."""

    def __init__(self, path: str | os.PathLike[str], reason: str) -> None:
        self.path = str(path)
        self.reason = reason
        super().__init__(f"{self.path}: {reason}")


class IncompatibleModel(FallbackError):
    """The model does not fit this machine in any configuration."""


class ModelLoadError(FallbackError):
    """A runtime failed to load a model that looked valid."""


class OutOfMemory(ModelLoadError):
    """A load ran out of VRAM or RAM. The same plan would fail again; a smaller one may fit."""


class BackendUnavailable(FallbackError):
    """An optional dependency is missing; the message names the pip command."""


class Busy(FallbackError):
    """The same work is already running (a monitoring session, a download): stop or wait for it."""


class NotStarted(FallbackError):
    """There is nothing to stop or report on yet (no monitoring session was started)."""

    exit_code = 2


class StorageError(FallbackError):
    """A file could not be written (the settings file): check its folder, permissions and space."""


class NotEnoughSpace(StorageError):
    """A download would not fit in the free space of its folder's disk; nothing was downloaded."""


class DownloadCancelled(FallbackError):
    """A download was cancelled; the bytes received are kept, and the next pull resumes from them."""


class PortUnavailable(FallbackError):
    """An address and port cannot be listened on (in use, or not allowed): pick another port."""


class HostUnavailable(FallbackError):
    """The host to listen on is not an address of this machine (or no name for one): pick another."""


class NotAllowed(FallbackError):
    """serve does not let a request in (a web page's origin, a name not this machine's): see the message."""


class AllTargetsFailed(FallbackError):
    """Every target of the failover chain failed: ``attempts`` says how, ``note`` why no local one ran."""

    def __init__(self, attempts: Sequence[Any], *, note: str = "") -> None:
        self.attempts = list(attempts)
        self.note = note
        lines = "; ".join(
            [f"{getattr(a, 'target', '?')}: {getattr(a, 'error', '?')}" for a in self.attempts]
            + ([note] if note else [])
        )
        super().__init__(f"no target could answer ({lines or 'no targets configured'})")


class HubUnavailable(FallbackError):
    """The Hub cannot be read now: no network, the Hub (or HF_ENDPOINT) is down, or it timed out."""


class HubOffline(HubUnavailable):
    """HF_HUB_OFFLINE is set, so nothing was fetched."""


class HubFileNotFound(FallbackError, LookupError):
    """The Hub has no such repo, revision or file (HTTP 404)."""

    exit_code = 2


class HubAccessDenied(FallbackError):
    """The repo is gated or private (HTTP 401 or 403): accept its license, or set HF_TOKEN."""
