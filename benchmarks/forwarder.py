"""A bare TCP forwarder: the least one Python hop between a client and its server can cost.

``python benchmarks/forwarder.py PORT UPSTREAM_PORT`` accepts connections on PORT and copies
bytes both ways to a connection of its own to UPSTREAM_PORT (127.0.0.1), one for each client
connection, closing each side when the other closes. It reads nothing it forwards: no HTTP,
no events, no failover. bench_serve measures it beside serve, as the floor that any proxy
written in Python with asyncio starts from on the same cores.
"""

from __future__ import annotations

import asyncio
import sys


class Half(asyncio.Protocol):
    """One side of a forwarded connection: what it receives goes to ``peer``'s transport."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.peer: Half | None = None
        self._early: list[bytes] = []  # what came before the peer was connected

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport

    def join(self, peer: Half) -> None:
        self.peer = peer
        assert peer.transport is not None
        for data in self._early:
            peer.transport.write(data)
        self._early.clear()

    def data_received(self, data: bytes) -> None:
        if self.peer is None or self.peer.transport is None:
            self._early.append(data)
        else:
            self.peer.transport.write(data)

    def eof_received(self) -> bool:
        if self.peer is not None and self.peer.transport is not None:
            self.peer.transport.write_eof()
        return True  # keep the other direction open until the peer closes too

    def connection_lost(self, exc: Exception | None) -> None:
        if self.peer is not None and self.peer.transport is not None:
            self.peer.transport.close()

    # flow control: a peer that cannot keep up pauses this side's reading
    def pause_writing(self) -> None:
        if self.peer is not None and self.peer.transport is not None:
            self.peer.transport.pause_reading()

    def resume_writing(self) -> None:
        if self.peer is not None and self.peer.transport is not None:
            self.peer.transport.resume_reading()


class ClientSide(Half):
    def __init__(self, upstream_port: int) -> None:
        super().__init__()
        self._upstream_port = upstream_port

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        asyncio.get_running_loop().create_task(self._connect())

    async def _connect(self) -> None:
        assert self.transport is not None
        try:
            _, upstream = await asyncio.get_running_loop().create_connection(
                Half, "127.0.0.1", self._upstream_port)
        except OSError:
            self.transport.close()
            return
        if self.transport.is_closing():  # the client left while this connected
            upstream.transport.close()  # type: ignore[union-attr]
            return
        upstream.join(self)
        self.join(upstream)


async def main(port: int, upstream_port: int) -> None:
    server = await asyncio.get_running_loop().create_server(
        lambda: ClientSide(upstream_port), "127.0.0.1", port, backlog=256)
    async with server:
        await server.serve_forever()


if __name__ == "__main__":
    asyncio.run(main(int(sys.argv[1]), int(sys.argv[2])))
