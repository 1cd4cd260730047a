"""A file's body as pull receives it: ``readinto`` big buffers, and ``abort`` from another
thread (a cancel, even while the server sends nothing).

Two readers. ``RawBody`` reads a plain answer (200 or 206 with a Content-Length, no
chunking, no compression, no proxy) with the standard library's ``http.client``, straight
from the socket into the caller's buffer. Why not httpx here: httpx reads the socket in
64 KiB pieces through h11, which copies each piece twice and costs Python work per piece;
on a fast link that halved the download rate (benchmarks/bench_pull.py: 0.45 of curl's,
against about 1.0 with this reader). Everything else (redirects, proxies, errors, chunked
answers) stays with httpx: ``HttpxBody`` wraps its response, and ``Hub.body`` picks.

Either raises only ``HubUnavailable`` while reading (httpx's errors are translated where
the request was made, in ``Hub._request``).
"""

from __future__ import annotations

import functools
import http.client
import socket
import ssl
import urllib.request
from typing import TYPE_CHECKING, Protocol
from urllib.parse import urlsplit

from .errors import HubUnavailable
from .hub_http import connect_problem

if TYPE_CHECKING:
    from collections.abc import Iterator

    import httpx

__all__ = ["Body", "HttpxBody", "RawBody", "open_raw_body", "ssl_context", "uses_proxy"]


class Body(Protocol):
    """The bytes of one answer, read in order."""

    status_code: int  # 200, or 206 for a range

    def readinto(self, view: memoryview) -> int:
        """Fill the start of ``view`` with what arrives next (at least one byte, without
        waiting for more once some came); 0 at the end of the body."""
        ...

    def abort(self) -> None:
        """From another thread: make a waiting or later ``readinto`` end at once."""
        ...


@functools.cache
def ssl_context() -> ssl.SSLContext:
    """httpx's default context (certifi's CAs, or SSL_CERT_FILE / SSL_CERT_DIR), made once
    a process: loading the CAs takes ~50 ms, which each new Hub (one a pull) paid before."""
    import httpx

    return httpx.create_ssl_context()


def uses_proxy(url: str) -> bool:
    """Whether a proxy is set for ``url``'s scheme (httpx reads the same settings); then
    httpx, which knows proxies and NO_PROXY, makes the request."""
    proxies = urllib.request.getproxies()
    return bool(proxies.get(urlsplit(url).scheme) or proxies.get("all"))


def open_raw_body(url: str, headers: dict[str, str], *, timeout_s: float,
                  ssl_context: ssl.SSLContext | None, what: str) -> RawBody | None:
    """A GET of ``url`` read by ``http.client``, or None when the answer is not a plain
    200/206 with a Content-Length (then nothing of it was read, and httpx asks again).

    Raises:
        HubUnavailable: the connection failed or timed out.
    """
    parts = urlsplit(url)
    host = parts.hostname or ""
    conn: http.client.HTTPConnection
    if parts.scheme == "https":
        conn = http.client.HTTPSConnection(host, parts.port, timeout=timeout_s, context=ssl_context)
    else:
        conn = http.client.HTTPConnection(host, parts.port, timeout=timeout_s)
    target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    try:
        conn.request("GET", target, headers=headers)
        response = conn.getresponse()
    except (OSError, http.client.HTTPException) as exc:
        conn.close()
        raise HubUnavailable(_problem(url, exc, what, timeout_s)) from None
    encoding = (response.getheader("Content-Encoding") or "identity").lower()
    if response.status not in (200, 206) or response.chunked or response.length is None \
            or encoding != "identity":
        conn.close()
        return None
    return RawBody(conn, response, url=url, what=what, timeout_s=timeout_s)


class RawBody:
    """A plain answer's body, read from the socket into the caller's buffer."""

    def __init__(self, conn: http.client.HTTPConnection, response: http.client.HTTPResponse, *,
                 url: str, what: str, timeout_s: float) -> None:
        self.status_code = response.status
        self._conn, self._response = conn, response
        self._left = response.length or 0
        self._url, self._what, self._timeout_s = url, what, timeout_s
        self._sock = conn.sock

    def readinto(self, view: memoryview) -> int:
        if not self._left:
            return 0
        if len(view) > self._left:
            view = view[:self._left]
        try:
            # one recv at most, straight into ``view`` (after what http.client buffered
            # with the headers); HTTPResponse.readinto would wait until ``view`` is full
            n = self._response.fp.readinto1(view)
        except (OSError, ValueError) as exc:  # ValueError: read after abort closed it
            raise HubUnavailable(_problem(self._url, exc, self._what, self._timeout_s)) from None
        if not n:
            host = urlsplit(self._url).netloc
            raise HubUnavailable(f"hub down: {host} closed the connection with {self._left} bytes "
                                 f"of {self._what} still to come; try again later")
        self._left -= n
        return n

    def abort(self) -> None:
        try:
            if self._sock is not None:
                self._sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass  # already closed

    def close(self) -> None:
        self._conn.close()


class HttpxBody:
    """An httpx response's body, for the answers ``RawBody`` does not take."""

    def __init__(self, response: httpx.Response) -> None:
        self.status_code = response.status_code
        self._response = response
        self._pieces: Iterator[bytes] = response.iter_raw()
        self._rest = memoryview(b"")

    def readinto(self, view: memoryview) -> int:
        if not self._rest:
            self._rest = memoryview(next(self._pieces, b""))
        n = min(len(view), len(self._rest))
        view[:n] = self._rest[:n]
        self._rest = self._rest[n:]
        return n

    def abort(self) -> None:
        stream = self._response.extensions.get("network_stream")
        sock = stream.get_extra_info("socket") if stream is not None else None
        if isinstance(sock, socket.socket):
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass


def _problem(url: str, exc: Exception, what: str, timeout_s: float) -> str:
    if isinstance(exc, TimeoutError):
        return (f"timed out: {urlsplit(url).netloc} sent nothing for {what} within {timeout_s:g} s; "
                "the Hub or the network is slow, try again")
    return connect_problem(url, exc)
