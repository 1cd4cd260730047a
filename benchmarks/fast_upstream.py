"""An OpenAI-compatible upstream that streams as fast as it can, for throughput benchmarks.

``python benchmarks/fast_upstream.py PORT [CHUNKS] [INTERVAL_MS]`` answers every POST to
``/v1/chat/completions`` with CHUNKS (200) content chunks and ``[DONE]``, over plain asyncio
streams so that the upstream costs as little as possible; INTERVAL_MS (0) paces the chunks
as a model generating at 1000/INTERVAL_MS tokens/s would. Each chunk's content is the
sender's ``time.monotonic_ns()`` followed by a space: a reader on this machine subtracts
it from its own clock to get the chunk's delay.
"""

from __future__ import annotations

import asyncio
import json
import sys
import time

HEAD = (b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nCache-Control: no-cache\r\n"
        b"Connection: close\r\n\r\n")


def event(content: str | None, finish: str | None = None) -> bytes:
    delta = {"content": content} if content is not None else {}
    payload = {"id": "chatcmpl-fast", "object": "chat.completion.chunk", "created": 0, "model": "fast",
               "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]}
    return b"data: " + json.dumps(payload, separators=(",", ":")).encode() + b"\n\n"


async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, chunks: int,
                 interval_s: float) -> None:
    try:
        head = await reader.readuntil(b"\r\n\r\n")
        length = next((int(line.split(b":", 1)[1]) for line in head.split(b"\r\n")
                       if line.lower().startswith(b"content-length:")), 0)
        await reader.readexactly(length)
        if head.startswith(b"GET"):
            body = json.dumps({"object": "list", "data": [{"id": "fast", "object": "model"}]}).encode()
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: "
                         + str(len(body)).encode() + b"\r\nConnection: close\r\n\r\n" + body)
        else:
            writer.write(HEAD)
            start = time.monotonic()
            for i in range(chunks):
                if interval_s:  # on a fixed schedule: a late chunk does not delay the next ones
                    await asyncio.sleep(max(start + i * interval_s - time.monotonic(), 0.0))
                writer.write(event(f"{time.monotonic_ns()} "))
                await writer.drain()
            writer.write(event(None, "stop") + b"data: [DONE]\n\n")
        await writer.drain()
    except (ConnectionError, asyncio.IncompleteReadError):
        pass
    finally:
        writer.close()


async def main(port: int, chunks: int, interval_s: float) -> None:
    server = await asyncio.start_server(lambda r, w: handle(r, w, chunks, interval_s), "127.0.0.1",
                                        port, backlog=256)
    async with server:
        await server.serve_forever()


if __name__ == "__main__":
    asyncio.run(main(int(sys.argv[1]), int(sys.argv[2]) if len(sys.argv) > 2 else 200,
                     float(sys.argv[3]) / 1000 if len(sys.argv) > 3 else 0.0))
