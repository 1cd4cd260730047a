"""The settings file on disk: read without ever crashing, written atomically.

A file that is not a JSON object is moved aside (``.bak``, ``.bak2`` ...) and
reported; a write goes to a temporary file in the same folder, is flushed to
disk, then renamed over the old one, so a crash leaves either file whole.
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from pydantic import SecretStr

from .errors import StorageError
from .files import read_text, replace_when_free

__all__ = ["load_file", "read_file_quietly", "to_json", "write_atomically"]

log = logging.getLogger("zwaif_fallback.settings")


#: Larger than any settings file: a path that points at a model, say, is not read or moved.
MAX_SETTINGS_BYTES = 1 << 20


class _NotSettings(ValueError):
    """The file is far too large to be a settings file."""


def load_file(path: Path, problems: list[str]) -> dict[str, Any]:
    try:
        return _object(path)
    except (FileNotFoundError, NotADirectoryError):  # none there (the write says why it cannot be)
        return {}
    except _NotSettings as exc:
        message = f"{exc}; using defaults"
        problems.append(message)
        log.warning("%s", message)
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
    except _NotSettings as exc:
        raise StorageError(f"{exc}, so nothing was written: set settings_file to a JSON file") from exc
    except ValueError as exc:
        log.error("settings file %s is corrupt (%s); %s", path, exc, _set_aside(path))
        return {}


def _object(path: Path) -> dict[str, Any]:
    """The JSON object in the file (an empty file is an empty one).

    Raises:
        OSError: the file cannot be read.
        _NotSettings: it is far too large to be one.
        ValueError: it is not text, not JSON, or not an object.
    """
    size = path.stat().st_size
    if size > MAX_SETTINGS_BYTES:
        raise _NotSettings(f"{path} is not a settings file: it holds {size} bytes")
    try:
        text = read_text(path)
    except UnicodeDecodeError as exc:
        raise ValueError(f"not text in UTF-8 ({exc.reason} at byte {exc.start}): save it as UTF-8") from None
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
    text = json.dumps(dict(data), indent=2, sort_keys=True, ensure_ascii=False) + "\n"  # readable paths
    try:
        encoded = text.encode("utf-8")
    except UnicodeEncodeError:  # a path that is not UTF-8 (surrogates for its bytes): as \u escapes
        encoded = (json.dumps(dict(data), indent=2, sort_keys=True) + "\n").encode("ascii")
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(encoded)
            handle.flush()
            os.fsync(handle.fileno())
        _replace(tmp, path)
    except BaseException as exc:
        Path(tmp).unlink(missing_ok=True)
        if isinstance(exc, OSError):
            raise StorageError(f"cannot write settings to {path}: {exc.strerror or exc}") from exc
        raise


#: How long a save waits for another process to let go of the settings file: on Windows,
#: where a file held open cannot be replaced. Elsewhere a PermissionError is the folder's or
#: the file's own, and waiting would not clear it.
REPLACE_WAIT_S = 1.0 if os.name == "nt" else 0.0


def _replace(tmp: str, path: Path) -> None:
    replace_when_free(tmp, path, REPLACE_WAIT_S)
