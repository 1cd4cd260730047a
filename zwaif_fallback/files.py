"""Files as people's machines hold them: text that Windows tools saved with a BOM or in
UTF-16, and a rename that Windows refuses for a moment while a scanner reads the file."""

from __future__ import annotations

import codecs
import locale
import os
import re
import time
from pathlib import Path

__all__ = ["expanded", "read_text", "replace_when_free"]


def expanded(path: str | os.PathLike[str]) -> Path:
    """``path`` with a leading ``~`` expanded where it can be; as written where it cannot
    (``~name`` of no such user, or no home folder at all, as for a service account), so that
    looking there finds nothing instead of raising RuntimeError."""
    try:
        return Path(path).expanduser()
    except RuntimeError:
        return Path(path)


def read_text(path: Path) -> str:
    """A text file as a person may have saved it on Windows: UTF-8 with or without a BOM
    (PowerShell 5.1's ``Set-Content -Encoding UTF8`` writes one, as Notepad did before 2019),
    or UTF-16 with its BOM (PowerShell 5.1's ``>``), or else in the system's own encoding
    where that is not UTF-8 (Notepad's "ANSI" before 2019: cp932 on a Japanese Windows,
    cp1252 on an English one). JSON parsers refuse a BOM.

    Raises:
        OSError: the file cannot be read.
        UnicodeDecodeError: it is in none of these.
    """
    raw = path.read_bytes()
    if raw.startswith((codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)):
        return raw.decode("utf-16")
    try:
        return raw.decode("utf-8-sig")
    except UnicodeDecodeError:
        system = codecs.lookup(locale.getpreferredencoding(False)).name
        # UTF-8 with a stray byte would decode in cp1252 too, garbled for good by the next save
        if system == "utf-8" or _UTF8_SEQUENCE.search(raw):
            raise
        try:
            return raw.decode(system)
        except UnicodeDecodeError:
            pass
        raise


#: A character of more than one byte in UTF-8: a file that holds one was written in UTF-8.
_UTF8_SEQUENCE = re.compile(rb"[\xc2-\xdf][\x80-\xbf]|[\xe0-\xef][\x80-\xbf]{2}|[\xf0-\xf4][\x80-\xbf]{3}")


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
