"""An OpenAI-compatible upstream that streams as fast as it can, for throughput benchmarks.

``python benchmarks/fast_upstream.py PORT [CHUNKS] [INTERVAL_MS] [FRAMING]`` answers every POST
to ``/v1/chat/completions`` with CHUNKS (200) content chunks and ``[DONE]``, over plain asyncio
streams so that the upstream costs as little as possible. INTERVAL_MS (0) paces the chunks as
a model generating at 1000/INTERVAL_MS tokens/s would. FRAMING is how the body is sent:

* ``chunked`` (the default): HTTP/1.1 chunked encoding, one HTTP chunk an event, and the
  connection kept alive for the next request, as llama.cpp's server, vLLM and Ollama send;
* ``close``: the raw events, the body ending when the connection closes (a new connection
  a request), the cheapest framing for any reader to parse.

Each chunk's content is the sender's ``time.monotonic_ns()`` followed by a space: a reader on
this machine subtracts it from its own clock to get the chunk's delay.
"""

from __future__ import annotations

import asyncio
import json
import sys
import time
import uuid

HEADS = {
    "chunked": b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nCache-Control: no-cache\r\n"
               b"Transfer-Encoding: chunked\r\n\r\n",
    "close": b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nCache-Control: no-cache\r\n"
             b"Connection: close\r\n\r\n",
}


def event(answer: str, created: int, content: str | None, finish: str | None = None) -> bytes:
    """One event of the answer ``answer``, as llama.cpp's Python server (llama_cpp.server)
    writes it: its fields, in its order, JSON with spaces. A reader's cost grows with the
    events' size, so events smaller than a real server's would make any proxy that writes
    OpenAI's shape look slower to the reader than it is."""
    delta = {"content": content} if content is not None else {}
    payload = {"id": answer, "model": "fast", "created": created, "object": "chat.completion.chunk",
               "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}]}
    return b"data: " + json.dumps(payload).encode() + b"\n\n"


def chunked(data: bytes) -> bytes:
    """``data`` as one chunk of a chunked HTTP/1.1 body."""
    return b"%x\r\n%s\r\n" % (len(data), data)


async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, chunks: int,
                 interval_s: float, framing: str) -> None:
    """Answers requests on one connection: until the client closes it (chunked), or one."""
    frame = chunked if framing == "chunked" else (lambda data: data)
    try:
        while True:
            head = await reader.readuntil(b"\r\n\r\n")
            length = next((int(line.split(b":", 1)[1]) for line in head.split(b"\r\n")
                           if line.lower().startswith(b"content-length:")), 0)
            await reader.readexactly(length)
            if head.startswith(b"GET"):
                body = json.dumps({"object": "list", "data": [{"id": "fast", "object": "model"}]}).encode()
                writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: "
                             + str(len(body)).encode() + b"\r\n\r\n" + body)
            else:
                writer.write(HEADS[framing])
                start = time.monotonic()
                answer, created = f"chatcmpl-{uuid.uuid4()}", int(time.time())
                for i in range(chunks):
                    if interval_s:  # on a fixed schedule: a late chunk does not delay the next ones
                        await asyncio.sleep(max(start + i * interval_s - time.monotonic(), 0.0))
                    writer.write(frame(event(answer, created, f"{time.monotonic_ns()} ")))
                    await writer.drain()
                writer.write(frame(event(answer, created, None, "stop")) + frame(b"data: [DONE]\n\n"))
                if framing == "chunked":
                    writer.write(b"0\r\n\r\n")
            await writer.drain()
            if framing == "close" or b"connection: close" in head.lower():
                break
    except (ConnectionError, asyncio.IncompleteReadError):
        pass
    finally:
        writer.close()


async def main(port: int, chunks: int, interval_s: float, framing: str) -> None:
    if framing not in HEADS:
        raise SystemExit(f"FRAMING must be one of {', '.join(HEADS)}, not {framing!r}")
    server = await asyncio.start_server(lambda r, w: handle(r, w, chunks, interval_s, framing),
                                        "127.0.0.1", port, backlog=256)
    async with server:
        await server.serve_forever()


if __name__ == "__main__":
    asyncio.run(main(int(sys.argv[1]), int(sys.argv[2]) if len(sys.argv) > 2 else 200,
                     float(sys.argv[3]) / 1000 if len(sys.argv) > 3 else 0.0,
                     sys.argv[4] if len(sys.argv) > 4 else "chunked"))
