"""The settings file on disk: read without ever crashing, written atomically.

A file that is not a JSON object is moved aside (``.bak``, ``.bak2`` ...) and
reported; a write goes to a temporary file in the same folder, is flushed to
disk, then renamed over the old one, so a crash leaves either file whole.
"""

from __future__ import annotations

import codecs
import json
import logging
import os
import tempfile
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from pydantic import SecretStr

from .errors import StorageError

__all__ = ["load_file", "read_file_quietly", "read_text", "replace_when_free", "to_json", "write_atomically"]

log = logging.getLogger("zwaif_fallback.settings")


def read_text(path: Path) -> str:
    """A text file as a person may have saved it on Windows: UTF-8 with or without a BOM
    (PowerShell 5.1's ``Set-Content -Encoding UTF8`` writes one, as Notepad did before 2019),
    or UTF-16 with its BOM (PowerShell 5.1's ``>``). JSON parsers refuse a BOM.

    Raises:
        OSError: the file cannot be read.
        UnicodeDecodeError: it is in none of these.
    """
    raw = path.read_bytes()
    if raw.startswith((codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)):
        return raw.decode("utf-16")
    return raw.decode("utf-8-sig")


def load_file(path: Path, problems: list[str]) -> dict[str, Any]:
    try:
        return _object(path)
    except (FileNotFoundError, NotADirectoryError):  # none there (the write says why it cannot be)
        return {}
    except OSError as exc:
        message = f"cannot read settings file {path} ({exc.strerror or exc}); using defaults"
        problems.append(message)
        log.warning("%s", message)
    except ValueError as exc:  # not text, not JSON, or not an object
        message = f"settings file {path} is corrupt ({exc}); {_set_aside(path)} and used defaults"
        problems.append(message)
        log.error("%s", message)
    return {}


def read_file_quietly(path: Path) -> dict[str, Any]:
    """The file's object for a merge before a write, which keeps what it holds. A corrupt
    file is moved aside first (the load did so too, unless it went bad since), so that the
    write loses nothing.

    Raises:
        StorageError: the file is there but cannot be read: writing over it would lose it.
    """
    try:
        return _object(path)
    except (FileNotFoundError, NotADirectoryError):  # none there (the write says why it cannot be)
        return {}
    except OSError as exc:
        raise StorageError(f"cannot read settings file {path} ({exc.strerror or exc}), so nothing "
                           "was written; check its permissions") from exc
    except ValueError as exc:
        log.error("settings file %s is corrupt (%s); %s", path, exc, _set_aside(path))
        return {}


def _object(path: Path) -> dict[str, Any]:
    """The JSON object in the file (an empty file is an empty one).

    Raises:
        OSError: the file cannot be read.
        ValueError: it is not text, not JSON, or not an object.
    """
    text = read_text(path)
    data = json.loads(text) if text.strip() else {}
    if not isinstance(data, dict):
        raise ValueError(f"expected a JSON object, found {type(data).__name__}")
    return data


def _set_aside(path: Path) -> str:
    """Move a corrupt file aside (``.bak``, ``.bak2`` ...), and say what became of it."""
    backup = path.with_name(path.name + ".bak")
    n = 1
    while backup.exists():
        n += 1
        backup = path.with_name(f"{path.name}.bak{n}")
    try:
        os.replace(path, backup)
    except OSError as exc:
        log.error("could not move corrupt %s aside: %s", path, exc)
        return f"it could not be moved aside ({exc.strerror or exc})"
    return f"moved it to {backup}"


def to_json(value: Any) -> Any:
    if isinstance(value, SecretStr):
        return value.get_secret_value()
    if isinstance(value, Path):
        return str(value)
    return value


def write_atomically(path: Path, data: Mapping[str, Any]) -> None:
    """Write ``data`` as JSON so that a crash leaves either the old file or the new one."""
    path = Path(path)
    directory = path.parent if str(path.parent) else Path(".")
    try:
        directory.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=directory)
    except OSError as exc:
        raise StorageError(f"cannot write settings to {path}: {exc.strerror or exc}") from exc
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            json.dump(dict(data), handle, indent=2, sort_keys=True)
            handle.write("\n")
            handle.flush()
            os.fsync(handle.fileno())
        _replace(tmp, path)
    except OSError as exc:
        Path(tmp).unlink(missing_ok=True)
        raise StorageError(f"cannot write settings to {path}: {exc.strerror or exc}") from exc


#: How long a save waits for another process to let go of the settings file: on Windows,
#: where a file held open cannot be replaced. Elsewhere a PermissionError is the folder's or
#: the file's own, and waiting would not clear it.
REPLACE_WAIT_S = 1.0 if os.name == "nt" else 0.0


def _replace(tmp: str, path: Path) -> None:
    replace_when_free(tmp, path, REPLACE_WAIT_S)


def replace_when_free(source: str | os.PathLike[str], target: str | os.PathLike[str], wait_s: float) -> None:
    """``os.replace``, tried again for ``wait_s`` while it raises PermissionError: Windows
    refuses to rename a file another process has open, and a virus scanner or a search
    indexer opens a file that has just been written, for a moment.

    Raises:
        OSError: the rename failed, and went on failing for ``wait_s``.
    """
    deadline = time.monotonic() + wait_s
    while True:
        try:
            os.replace(source, target)
            return
        except PermissionError:
            if time.monotonic() >= deadline:
                raise
            time.sleep(0.05)
