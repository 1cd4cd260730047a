"""backends/http_stream.py: serve's HTTP client for streamed answers, against real sockets."""

from __future__ import annotations

import asyncio
import json

import pytest
from servers import refused_url

from zwaif_fallback.backends.http_stream import HOLD_MAX, HTTPStreamError, StreamPool
from zwaif_fallback.chat_run import Piece, Target
from zwaif_fallback.completions import ChunkMaker, event

EVENTS = [b'data: {"n":%d}\n\n' % i for i in range(50)]


class Upstream:
    """An HTTP/1.1 server on asyncio streams: each POST gets EVENTS, as one HTTP chunk each
    (``chunked``) or raw with the connection closed after (``close``). It counts the
    connections it accepts and can drop idle ones (``drop_idle``), as servers do on their
    keep-alive timeout."""

    def __init__(self, framing: str = "chunked", *, drop_idle: bool = False,
                 pause_s: float = 0.0) -> None:
        self.framing = framing
        self.drop_idle = drop_idle
        self.pause_s = pause_s  # between events
        self.connections = 0
        self.bodies: list[bytes] = []

    async def __aenter__(self) -> Upstream:
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        self.url = f"http://127.0.0.1:{self._server.sockets[0].getsockname()[1]}/v1/chat/completions"
        return self

    async def __aexit__(self, *exc: object) -> None:
        self._server.close()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                length = next(int(line.split(b":")[1]) for line in head.split(b"\r\n")
                              if line.lower().startswith(b"content-length:"))
                self.bodies.append(await reader.readexactly(length))
                if self.framing == "chunked":
                    writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\n"
                                 b"Transfer-Encoding: chunked\r\n\r\n")
                    for data in EVENTS:
                        writer.write(b"%x\r\n%s\r\n" % (len(data), data))
                        await writer.drain()
                        await asyncio.sleep(self.pause_s)
                    writer.write(b"0\r\n\r\n")
                    await writer.drain()
                    if self.drop_idle:
                        break
                else:
                    writer.write(b"HTTP/1.0 200 OK\r\nContent-Type: text/event-stream\r\n\r\n"
                                 + b"".join(EVENTS))
                    await writer.drain()
                    break
        except (asyncio.IncompleteReadError, ConnectionError, asyncio.CancelledError):
            pass  # the client went, or the test ended
        finally:
            writer.close()


async def post(pool: StreamPool, url: str, body: bytes = b"{}") -> bytes:
    response = await pool.post(url, body, {"Accept": "text/event-stream"}, connect_s=5, read_s=5)
    try:
        assert response.status == 200 and response.headers["content-type"] == "text/event-stream"
        return await response.read()
    finally:
        response.close()


@pytest.mark.parametrize("framing", ["chunked", "close"])
def test_a_streamed_body_arrives_whole(framing: str):
    async def main() -> None:
        async with Upstream(framing) as upstream:
            pool = StreamPool()
            body = json.dumps({"messages": [{"role": "user", "content": "héllo"}]}).encode()
            assert await post(pool, upstream.url, body) == b"".join(EVENTS)
            assert upstream.bodies == [body]
            pool.close()

    asyncio.run(main())


def test_connections_are_kept_alive_between_requests():
    async def main() -> None:
        async with Upstream("chunked") as upstream:
            pool = StreamPool()
            for _ in range(5):
                assert await post(pool, upstream.url) == b"".join(EVENTS)
            assert upstream.connections == 1
            pool.close()

    asyncio.run(main())


def test_an_idle_connection_the_server_dropped_is_replaced_not_failed():
    async def main() -> None:
        async with Upstream("chunked", drop_idle=True) as upstream:
            pool = StreamPool()
            for _ in range(3):
                assert await post(pool, upstream.url) == b"".join(EVENTS)
            assert upstream.connections == 3
            pool.close()

    asyncio.run(main())


def test_a_response_left_unread_gives_its_connection_up():
    async def main() -> None:
        async with Upstream("chunked", pause_s=0.005) as upstream:
            pool = StreamPool()
            response = await pool.post(upstream.url, b"{}", {}, connect_s=5, read_s=5)
            async for _ in response.chunks():
                break
            response.close()  # mid-body: the connection cannot carry another request
            assert await post(pool, upstream.url) == b"".join(EVENTS)
            assert upstream.connections == 2
            pool.close()

    asyncio.run(main())


def test_a_reader_slower_than_its_server_holds_a_bounded_body_and_misses_nothing():
    """The server sends 16 MiB at once; the reader takes its time. The connection stops
    reading at HOLD_MAX (plus one network read), then goes on, and every byte arrives."""
    size = 16 << 20

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        await reader.readexactly(2)
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % size)
        writer.write(bytes(range(256)) * (size // 256))
        await writer.drain()
        writer.close()

    async def main() -> None:
        server = await asyncio.start_server(handle, "127.0.0.1", 0)
        url = f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}/v1/chat/completions"
        pool = StreamPool()
        response = await pool.post(url, b"{}", {}, connect_s=5, read_s=5)
        connection = response._connection
        received, most_held, paused = 0, 0, False
        async for data in response.chunks():
            received += len(data)
            for _ in range(20):  # a slow reader: the server gets time to send more
                await asyncio.sleep(0.002)
                most_held = max(most_held, connection.held)
                paused = paused or not connection.transport.is_reading()
        response.close()
        pool.close()
        server.close()
        assert received == size
        assert paused
        assert HOLD_MAX < most_held <= HOLD_MAX + (1 << 20)

    asyncio.run(main())


def test_a_refused_connection_and_a_silent_server_raise_what_asyncio_raises():
    async def main() -> None:
        pool = StreamPool()
        with pytest.raises(ConnectionRefusedError):
            await pool.post(refused_url() + "/chat/completions", b"{}", {}, connect_s=5, read_s=5)

        async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            await reader.read(1 << 16)
            await asyncio.sleep(5)

        server = await asyncio.start_server(silent, "127.0.0.1", 0)
        url = f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}/v1/chat/completions"
        with pytest.raises(asyncio.TimeoutError):
            await pool.post(url, b"{}", {}, connect_s=5, read_s=0.2)
        server.close()

        async def garbage(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            await reader.read(1 << 16)
            writer.write(b"SSH-2.0-OpenSSH_9.6\r\n\r\n")
            await writer.drain()

        server = await asyncio.start_server(garbage, "127.0.0.1", 0)
        url = f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}/v1/chat/completions"
        with pytest.raises(HTTPStreamError, match="not valid HTTP"):
            await pool.post(url, b"{}", {}, connect_s=5, read_s=2)
        server.close()

    asyncio.run(main())


def test_a_header_with_a_line_break_is_refused_before_anything_is_sent():
    async def main() -> None:
        async with Upstream("chunked") as upstream:
            with pytest.raises(ValueError, match="line break"):
                await StreamPool().post(upstream.url, b"{}", {"Authorization": "Bearer x\r\nEvil: 1"},
                                        connect_s=5, read_s=5)
            assert upstream.connections == 0

    asyncio.run(main())


@pytest.mark.parametrize("include_usage", [False, True])
def test_a_text_chunk_made_the_fast_way_is_the_same_bytes(include_usage: bool):
    maker = ChunkMaker(include_usage)
    for model in ["http://127.0.0.1:5000/v1", 'a "quoted" model', "\x00text\x00"]:
        target = Target(name=model, source="primary", stream=lambda *a, **k: iter(()))
        maker.piece(Piece("first", target))
        for text in ["hello", "", "é \"quotes\" \\ \n\t\x00 ☃ 😀", "\x00text\x00"]:
            assert maker.text_event(model, text) == event(maker.chunk(model, {"content": text}))
