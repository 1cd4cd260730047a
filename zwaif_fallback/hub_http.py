"""The HTTP side of reading the Hub: what a status or a failed connection means, in one
line, and a remote file read forward by range requests (what ``read_gguf_header_from``
needs of a file). httpx is only a type here: hub.py imports it on first use.
"""

from __future__ import annotations

import errno
import logging
import socket
from typing import TYPE_CHECKING, Protocol
from urllib.parse import urlsplit

from .errors import HubAccessDenied, HubFileNotFound, HubUnavailable, InvalidModelFile

if TYPE_CHECKING:
    import httpx

log = logging.getLogger(__name__)

__all__ = ["FIRST_BLOCK", "MAX_BLOCK", "GetRange", "RangedFile", "check_status", "connect_problem",
           "content_range_size", "hub_token", "is_true"]

FIRST_BLOCK = 256 * 1024  # fetched first: most headers without a vocabulary fit in it
MAX_BLOCK = 2 * 1024 * 1024  # the most one later request asks for


class GetRange(Protocol):
    """Bytes ``start`` to ``stop`` of the file at ``url``: (data, the file's size, the URL that
    answered after redirects, its ETag) (``Hub._get_range``)."""

    def __call__(self, url: str, start: int, stop: int, *, what: str) -> tuple[bytes, int, str, str]: ...


def check_status(response: httpx.Response, what: str) -> None:
    code = response.status_code
    host = response.url.netloc.decode("ascii", "replace")
    if code in (200, 206):
        return
    if code == 404:
        raise HubFileNotFound(f"not found: {what} ({host} answered 404); check the repo id, "
                              "the revision and the file name")
    if code in (401, 403):
        raise HubAccessDenied(f"access denied: {what} ({host} answered {code}); the repo is gated "
                              "or private: accept its license on its Hub page and set HF_TOKEN "
                              "(or run: hf auth login)")
    if code == 416:
        raise InvalidModelFile(str(response.url), "is empty")
    if code >= 500 or code == 429:
        raise HubUnavailable(f"hub down: {host} answered {code} for {what}; try again later")
    raise HubUnavailable(f"hub down: {host} answered {code} for {what}")


def connect_problem(url: str, exc: Exception) -> str:
    """Which of 'no network' and 'hub down' a failed connection means, in one line."""
    host = urlsplit(url).netloc
    cause: BaseException | None = exc
    while cause is not None:
        if isinstance(cause, socket.gaierror):
            return (f"no network: cannot look up {host} ({cause.strerror or cause}); check the "
                    "connection, or set HF_HUB_OFFLINE=1")
        if isinstance(cause, OSError) and cause.errno in (errno.ENETUNREACH, errno.EHOSTUNREACH):
            return f"no network: {host} is unreachable ({cause.strerror}); check the connection"
        if isinstance(cause, ConnectionRefusedError):
            return (f"hub down: nothing answers at {host} (connection refused); try again later, "
                    "or check HF_ENDPOINT")
        cause = cause.__cause__ or cause.__context__
    text = str(exc) or type(exc).__name__
    if "name resolution" in text or "not known" in text or "nodename" in text:
        return f"no network: cannot look up {host} ({text}); check the connection"
    if "refused" in text:
        return f"hub down: nothing answers at {host} ({text}); try again later, or check HF_ENDPOINT"
    return f"hub down: the connection to {host} failed ({text}); try again later"


class RangedFile:
    """A remote file read by HTTP range requests: what ``read_gguf_header_from`` needs of a
    file (``seek`` and ``read``).

    Fetches what is read, no more: how far to read ahead is the reader's call (it knows
    where a vocabulary probably ends, and that the token types after it are stepped
    over). The first ``FIRST_BLOCK`` bytes are fetched at once and kept, so a reader that
    goes back to the start of the file reads them again for free; otherwise only the
    bytes from the last read on are kept. Later requests go to the URL that answered the
    first (a CDN's, after the Hub's redirect); a changed ETag between them means the file
    changed under the reader. ``fetched`` counts the bytes received.
    """

    def __init__(self, get_range: GetRange, url: str, what: str) -> None:
        self._get_range = get_range
        self._what = what
        data, self.size, self._url, self._etag = get_range(url, 0, FIRST_BLOCK, what=what)
        self._first = data
        self._buf, self._base, self._pos = data, 0, 0
        self.fetched = len(data)

    def seek(self, offset: int, whence: int = 0, /) -> int:
        self._pos = offset if whence == 0 else self._pos + offset if whence == 1 else self.size + offset
        return self._pos

    def read(self, size: int = -1, /) -> bytes:
        if size < 0:
            raise ValueError("a remote file is read in ranges: give a size")
        pos, stop = self._pos, min(self._pos + size, self.size)
        if not self._base <= pos <= self._base + len(self._buf):  # a jump: start afresh there
            self._buf, self._base = (self._first, 0) if pos <= len(self._first) else (b"", pos)
        end = self._base + len(self._buf)
        if stop > end:
            data, _, _, etag = self._get_range(self._url, end, stop, what=self._what)
            if etag != self._etag:
                raise InvalidModelFile(self._url, "changed on the server while its header was "
                                                  "read (its ETag changed): try again")
            self.fetched += len(data)
            self._buf, self._base = self._buf[pos - self._base:] + data, pos
        self._pos = max(stop, pos)
        return self._buf[pos - self._base:stop - self._base]


def content_range_size(value: str) -> int:
    """The total size in ``Content-Range: bytes 0-99/1234``, or -1."""
    total = value.rpartition("/")[2].strip()
    return int(total) if total.isdigit() else -1


def is_true(value: str | None) -> bool:
    """huggingface_hub's reading of a boolean environment variable."""
    return (value or "").upper() in {"1", "ON", "YES", "TRUE"}


def hub_token() -> str | None:
    """The token huggingface_hub would send (HF_TOKEN, or the file ``hf auth login`` wrote)."""
    from huggingface_hub import get_token

    try:
        return get_token()
    except Exception as exc:  # a broken token file or OIDC setup: read public files without one
        log.warning("no Hugging Face token: %s", exc)
        return None
