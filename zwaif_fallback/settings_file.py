"""The settings file on disk: read without ever crashing, written atomically, one writer at a time.

A read never moves or changes the file: one that is not a JSON object is reported, and the
defaults are used until someone fixes it. A save holds a lock beside the file (so that two
processes saving at once each keep the other's values), reads it, merges, writes a temporary
file in the same folder, flushes it to disk, and renames it over the old one (through a
symbolic link, to its target), keeping the old file's permissions: a crash leaves either file
whole. A save refuses a file it cannot read as settings, rather than write over it.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import stat
import sys
import tempfile
import time
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import IO, Any

from pydantic import SecretStr

from .errors import StorageError
from .files import read_text, replace_when_free

__all__ = ["file_signature", "load_file", "locked", "read_file_quietly", "set_aside_if_corrupt", "to_json",
           "write_atomically"]

log = logging.getLogger("zwaif_fallback.settings")


#: Larger than any settings file: a path that points at a model, say, is not read or moved.
MAX_SETTINGS_BYTES = 1 << 20

#: How long a save waits for another process's save of the same file (which takes milliseconds).
LOCK_WAIT_S = 10.0


class _NotSettings(ValueError):
    """The path is a folder, or a file far too large to be a settings file."""


def load_file(path: Path, problems: list[str]) -> dict[str, Any]:
    """The saved settings, or ``{}`` with what went wrong appended to ``problems``. The file
    is left as it is whatever it holds: it may be half-way through being saved by an editor."""
    try:
        return _object(path)
    except (FileNotFoundError, NotADirectoryError):  # none there (the write says why it cannot be)
        return {}
    except _NotSettings as exc:
        message = f"{exc}; using defaults"
    except OSError as exc:
        message = f"cannot read settings file {path} ({exc.strerror or exc}); using defaults"
    except ValueError as exc:  # not text, not JSON, or not an object
        message = (f"settings file {path} is corrupt ({exc}); using defaults, and no setting can "
                   f"be saved until it is fixed: {_REMEDY}")
    problems.append(message)
    log.warning("%s", message)
    return {}


_REMEDY = ("correct it in a text editor, or run `zwaif-fallback settings --reset`, which moves it "
           "aside (to .bak) and starts a new one")


def file_signature(path: Path) -> tuple[int, int, int] | None:
    """What changes when the file is saved again (modified time, size, inode), cheap to compare
    before each chat; None when there is no file."""
    try:
        info = os.stat(path)
    except OSError:
        return None
    return (info.st_mtime_ns, info.st_size, info.st_ino)


def read_file_quietly(path: Path) -> dict[str, Any]:
    """The file's object for a merge before a write, which keeps what it holds.

    Raises:
        StorageError: the file is there but cannot be read as settings (a folder, unreadable,
            corrupt): writing over it would lose what a person saved in it.
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
        raise StorageError(f"settings file {path} is corrupt ({exc}), so nothing was saved (saving "
                           f"would lose what it holds): {_REMEDY}") from exc


def set_aside_if_corrupt(path: Path) -> str | None:
    """Move the file aside (``.bak``, ``.bak2`` ...) if it is corrupt, before a reset writes
    anew; say what became of it, or None when it was not corrupt."""
    try:
        _object(path)
    except _NotSettings:
        return None  # a folder or a model: not ours to move (the read refuses it)
    except ValueError as exc:
        return f"settings file {path} was corrupt ({exc}); {_set_aside(path)}"
    except OSError:
        return None
    return None


def _object(path: Path) -> dict[str, Any]:
    """The JSON object in the file (an empty file is an empty one).

    Raises:
        OSError: the file cannot be read.
        _NotSettings: it is a folder, or far too large to be one.
        ValueError: it is not text, not JSON, or not an object.
    """
    if path.is_dir():
        raise _NotSettings(f"settings file {path} is a folder, not a file: name a file in it, "
                           f"such as {path / 'fallback_settings.json'}")
    size = path.stat().st_size
    if size > MAX_SETTINGS_BYTES:
        raise _NotSettings(f"{path} is not a settings file: it holds {size} bytes")
    try:
        text = read_text(path)
    except UnicodeDecodeError as exc:
        raise ValueError(f"not text in UTF-8 ({exc.reason} at byte {exc.start}): save it as UTF-8") from None
    try:
        data = json.loads(text) if text.strip() else {}
    except json.JSONDecodeError as exc:
        raise ValueError(f"JSON error at line {exc.lineno} column {exc.colno}: {exc.msg}") from None
    except RecursionError:  # thousands of brackets: no settings file is written so
        raise ValueError("its JSON is nested too deeply to be settings") from None
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
    log.warning("moved corrupt settings file %s to %s", path, backup)
    return f"moved it to {backup}"


def to_json(value: Any) -> Any:
    if isinstance(value, SecretStr):
        return value.get_secret_value()
    if isinstance(value, Path):
        return str(value)
    return value


@contextlib.contextmanager
def locked(path: Path) -> Iterator[None]:
    """Hold the lock of the settings file at ``path`` (``.NAME.lock`` beside it) while a save
    reads, merges and writes: another process's save waits, then merges with this one.

    Raises:
        StorageError: the folder is not there, or the lock cannot be had.
    """
    path = _target(Path(path))
    _check_folder(path)
    lock_path = path.with_name(f".{path.name}.lock")
    deadline = time.monotonic() + LOCK_WAIT_S
    while True:
        try:
            handle = open(lock_path, "a+b")  # noqa: SIM115 - closed below, after the unlock
        except OSError as exc:
            raise StorageError(f"cannot write settings to {path}: {exc.strerror or exc}") from exc
        if not _try_lock(handle):
            handle.close()
            if time.monotonic() >= deadline:
                raise StorageError(f"another process has been saving {path} for {LOCK_WAIT_S:g} s "
                                   f"(it holds {lock_path}), so nothing was written: try again")
            time.sleep(0.02)
            continue
        if _same_file(handle, lock_path):
            break
        handle.close()  # the holder before removed it as this one opened it: take the new one
    try:
        yield
    finally:
        with contextlib.suppress(OSError):  # Windows: another process has it open; it stays
            lock_path.unlink()
        handle.close()  # releases the lock


def _same_file(handle: IO[bytes], lock_path: Path) -> bool:
    try:
        return os.path.samestat(os.fstat(handle.fileno()), lock_path.stat())
    except OSError:
        return False


if sys.platform == "win32":
    import msvcrt

    def _try_lock(handle: IO[bytes]) -> bool:
        handle.seek(0)
        try:
            msvcrt.locking(handle.fileno(), msvcrt.LK_NBLCK, 1)
        except OSError:
            return False
        return True
else:
    import fcntl

    def _try_lock(handle: IO[bytes]) -> bool:
        try:
            fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return False
        return True


def _target(path: Path) -> Path:
    """The file a save writes: a symbolic link's target, so that the link stays one."""
    return Path(os.path.realpath(path)) if path.is_symlink() else path


def _check_folder(path: Path) -> None:
    """Refuse a settings file whose folder is not there: a mistyped path would make folders
    that the next start, without the typo, never looks in.

    Raises:
        StorageError: the folder is missing, or is a file.
    """
    directory = path.parent if str(path.parent) else Path(".")
    if directory.is_dir():
        return
    what = "is a file" if directory.exists() else "does not exist"
    raise StorageError(f"cannot write settings to {path}: the folder {directory} {what}, so nothing "
                       "was written; create the folder, or check the settings file's path "
                       "(--settings-file, FALLBACK_SETTINGS_FILE)")


def write_atomically(path: Path, data: Mapping[str, Any]) -> None:
    """Write ``data`` as JSON so that a crash leaves either the old file or the new one; the
    new one keeps the old one's permissions (a new file is readable by its owner only: it may
    hold an API key), and a symbolic link stays a link to the file written.

    Raises:
        StorageError: the file cannot be written, or its folder is not there.
    """
    path = _target(Path(path))
    _check_folder(path)
    directory = path.parent if str(path.parent) else Path(".")
    try:
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
        _keep_access(path, tmp)
        _replace(tmp, path)
    except BaseException as exc:
        Path(tmp).unlink(missing_ok=True)
        if isinstance(exc, OSError):
            raise StorageError(f"cannot write settings to {path}: {exc.strerror or exc}") from exc
        raise


def _keep_access(path: Path, tmp: str) -> None:
    """Give the new file the old one's permission bits, and its owner where this process may
    (a save with sudo must not leave a service's settings readable by root only)."""
    try:
        old = path.stat()
    except OSError:
        return  # a new file: mkstemp's owner-only
    os.chmod(tmp, stat.S_IMODE(old.st_mode))
    if hasattr(os, "chown") and (old.st_uid, old.st_gid) != (os.geteuid(), os.getegid()):
        with contextlib.suppress(OSError):
            os.chown(tmp, old.st_uid, old.st_gid)


#: How long a save waits for another process to let go of the settings file: on Windows,
#: where a file held open cannot be replaced. Elsewhere a PermissionError is the folder's or
#: the file's own, and waiting would not clear it.
REPLACE_WAIT_S = 1.0 if os.name == "nt" else 0.0


def _replace(tmp: str, path: Path) -> None:
    replace_when_free(tmp, path, REPLACE_WAIT_S)
