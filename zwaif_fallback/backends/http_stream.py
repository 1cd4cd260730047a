"""A small HTTP/1.1 client for streamed answers, on asyncio and httptools.

``serve`` relays every chunk of a server's answer. Through httpx, reading a chunked body cost
about 20 us of Python a chunk (h11, httpcore and anyio each handle it), more than all else
serve does with the chunk. Here an asyncio protocol feeds the bytes to httptools (llhttp, in
C, the parser uvicorn uses): a chunk costs a callback, and the pieces of one network read
come out together. Connections are kept alive, a few per server.

It does what a chat completion needs and no more: one POST, its status, headers and body;
plain HTTP or TLS; no proxies and no redirects (as ``OpenAIBackend``'s httpx client:
``trust_env=False``, ``follow_redirects=False``). Errors are the ones asyncio raises
(``ConnectionRefusedError``, ``OSError``, ``TimeoutError``) and ``HTTPStreamError``.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any
from urllib.parse import urlsplit

__all__ = ["HTTPStreamError", "StreamPool", "StreamResponse"]

#: Idle connections kept per server.
KEEP_IDLE = 64
#: Body bytes held unread before the connection stops reading (the server then waits, as
#: TCP makes it): a reader that is slower than its server does not fill the memory.
HOLD_MAX = 1 << 20


class HTTPStreamError(Exception):
    """The connection broke, or the server's answer was not HTTP."""


class _Connection(asyncio.Protocol):
    """One connection and its response parser (httptools calls the ``on_*`` methods)."""

    def __init__(self) -> None:
        import httptools

        self.transport: asyncio.Transport | None = None
        self._parser = httptools.HttpResponseParser(self)
        self._waiter: asyncio.Future[None] | None = None
        self.lost: BaseException | None = None

    def start(self) -> None:
        """Ready for the next response on this connection."""
        self.status = 0
        self.headers: dict[str, str] = {}
        self.headers_done = self.complete = self.keep_alive = False
        self.body: list[bytes] = []
        self.held = 0  # the bytes in ``body``

    # -- asyncio.Protocol ----------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        import httptools

        try:
            self._parser.feed_data(data)
        except httptools.HttpParserError as exc:
            self.lost = HTTPStreamError(f"the server's answer is not valid HTTP: {exc}")
            assert self.transport is not None
            self.transport.close()
        if self.held > HOLD_MAX and self.transport is not None and self.transport.is_reading():
            self.transport.pause_reading()
        self._wake()

    def connection_lost(self, exc: Exception | None) -> None:
        if self.headers_done and not self.complete and self._ends_at_close():
            self.complete = True  # an HTTP/1.0 body, which the closing connection ends
        elif self.lost is None:
            self.lost = exc or HTTPStreamError("the server closed the connection")
        self._wake()

    # -- httptools -----------------------------------------------------------------------

    def on_header(self, name: bytes, value: bytes) -> None:
        self.headers[name.decode("latin-1").lower()] = value.decode("latin-1")

    def on_headers_complete(self) -> None:
        self.status = self._parser.get_status_code()
        self.headers_done = True

    def on_body(self, body: bytes) -> None:
        self.body.append(body)
        self.held += len(body)

    def on_message_complete(self) -> None:
        self.complete = True
        self.keep_alive = self._parser.should_keep_alive()  # only valid here (llhttp)

    # -- for the response ----------------------------------------------------------------

    def take(self) -> bytes:
        """The body bytes held so far, reading again if they had stopped it."""
        data = b"".join(self.body) if len(self.body) > 1 else self.body[0]
        self.body.clear()
        self.held = 0
        if self.transport is not None and not self.transport.is_reading() \
                and not self.transport.is_closing():
            self.transport.resume_reading()
        return data

    @property
    def reusable(self) -> bool:
        return (self.complete and self.keep_alive and self.lost is None
                and self.transport is not None and not self.transport.is_closing())

    async def wait(self, timeout_s: float) -> None:
        """Until more has come (or the connection ended); TimeoutError after ``timeout_s``.

        Not ``asyncio.wait_for``: before Python 3.12 it waits on a second future, which the
        first one's callback completes, so a read reached the reader a loop turn later, and
        under load each turn waits for everything else the loop has to do.
        """
        loop = asyncio.get_running_loop()
        self._waiter = waiter = loop.create_future()
        timer = loop.call_later(timeout_s, _expire, waiter)
        try:
            await waiter
        finally:
            timer.cancel()
            self._waiter = None

    def close(self) -> None:
        if self.transport is not None:
            self.transport.close()

    def _wake(self) -> None:
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(None)

    def _ends_at_close(self) -> bool:
        return "content-length" not in self.headers and \
            "chunked" not in self.headers.get("transfer-encoding", "").lower()


def _expire(waiter: asyncio.Future[None]) -> None:
    if not waiter.done():
        waiter.set_exception(TimeoutError())


class StreamResponse:
    """A response whose body is read as it comes; ``close`` gives the connection back to
    the pool when the body was read to its end, and drops it otherwise."""

    def __init__(self, connection: _Connection, pool: StreamPool, key: tuple[str, str, int],
                 read_s: float) -> None:
        self._connection = connection
        self._pool = pool
        self._key = key
        self._read_s = read_s
        self.status = connection.status
        self.headers = connection.headers

    async def chunks(self) -> AsyncIterator[bytes]:
        """The body, what each network read brought together; TimeoutError when the server
        says nothing for the read timeout, HTTPStreamError or OSError when it breaks off."""
        connection = self._connection
        while True:
            if connection.body:
                yield connection.take()
                continue
            if connection.complete:
                return
            if connection.lost is not None:
                raise connection.lost
            await connection.wait(self._read_s)

    async def read(self) -> bytes:
        return b"".join([data async for data in self.chunks()])

    def close(self) -> None:
        if self._connection.reusable:
            self._pool.release(self._key, self._connection)
        else:
            self._connection.close()


class StreamPool:
    """Connections to servers, kept alive between requests; one pool serves one event loop."""

    def __init__(self) -> None:
        self._idle: dict[tuple[str, str, int], list[_Connection]] = {}

    async def post(self, url: str, body: bytes, headers: dict[str, str], *, connect_s: float,
                   read_s: float) -> StreamResponse:
        """POST ``body`` to ``url``; returns once the response's headers have come.

        Raises:
            ConnectionRefusedError, OSError: the server could not be reached.
            TimeoutError: no connection within ``connect_s``, or no headers within ``read_s``.
            HTTPStreamError: the connection broke, or the answer was not HTTP.
            ValueError: the URL is not http(s), or a header would break the request.
        """
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"not an http(s) URL: {url!r}")
        key = (parts.scheme, parts.hostname, parts.port or (443 if parts.scheme == "https" else 80))
        host = parts.netloc.rpartition("@")[2]
        lines = [f"POST {parts.path or '/'}{'?' + parts.query if parts.query else ''} HTTP/1.1",
                 f"Host: {host}", "Content-Type: application/json", f"Content-Length: {len(body)}",
                 "User-Agent: zwaif-fallback", *(f"{k}: {v}" for k, v in headers.items())]
        if any("\r" in line or "\n" in line for line in lines):
            raise ValueError("a header value holds a line break")
        request = ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body
        connection = self._idle_connection(key)
        if connection is not None:
            try:
                return await self._send(connection, request, key, read_s)
            except (HTTPStreamError, OSError):  # the server had closed the idle connection
                pass  # (it may, between requests): a new one
        return await self._send(await self._connect(key, connect_s), request, key, read_s)

    async def _send(self, connection: _Connection, request: bytes, key: tuple[str, str, int],
                    read_s: float) -> StreamResponse:
        connection.start()
        assert connection.transport is not None
        connection.transport.write(request)
        try:
            while not connection.headers_done:
                if connection.lost is not None:
                    raise connection.lost
                await connection.wait(read_s)
        except BaseException:
            connection.close()
            raise
        return StreamResponse(connection, self, key, read_s)

    def release(self, key: tuple[str, str, int], connection: _Connection) -> None:
        idle = self._idle.setdefault(key, [])
        if len(idle) < KEEP_IDLE:
            idle.append(connection)
        else:
            connection.close()

    def close(self) -> None:
        for idle in self._idle.values():
            for connection in idle:
                connection.close()
        self._idle.clear()

    def _idle_connection(self, key: tuple[str, str, int]) -> _Connection | None:
        idle = self._idle.get(key, [])
        while idle:
            connection = idle.pop()
            if connection.transport is not None and not connection.transport.is_closing() \
                    and connection.lost is None:
                return connection
        return None

    @staticmethod
    async def _connect(key: tuple[str, str, int], connect_s: float) -> _Connection:
        scheme, host, port = key
        tls: Any = None
        if scheme == "https":
            from ..hub_body import ssl_context

            tls = ssl_context()
        loop = asyncio.get_running_loop()
        _, connection = await asyncio.wait_for(
            loop.create_connection(_Connection, host, port, ssl=tls), connect_s)
        return connection
