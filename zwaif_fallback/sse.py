"""Server-sent events for ``serve``: a blocking iterator of chunk dicts, relayed to the event loop.

Generation never runs on the event loop: each stream is pumped by a thread of its own. The
thread encodes each chunk as its ``data:`` line and appends it to a deque; it wakes the loop
(``call_soon_threadsafe``, a write to the loop's self-pipe) only when the reader is waiting
for more. The reader takes every line ready and sends them as one body write. A chunk that
comes alone goes out at once; a burst costs one wakeup and one write, not one per chunk.
"""

from __future__ import annotations

import asyncio
import json
import threading
from collections import deque
from collections.abc import AsyncIterator, Iterator
from typing import TYPE_CHECKING, Any

from .completions import error_object

if TYPE_CHECKING:
    from starlette.requests import Request

__all__ = ["ChunkPump", "event", "event_stream"]

DONE_EVENT = b"data: [DONE]\n\n"
#: Ends the pump's output: after ``DONE_EVENT``, after an error event, or when stopped.
_END = object()
#: One encoder for every chunk: ``json.dumps(separators=...)`` builds a new one per call,
#: which doubles the cost of encoding a chunk.
_encode = json.JSONEncoder(separators=(",", ":")).encode


def event(item: dict[str, Any]) -> bytes:
    """One server-sent event, as OpenAI sends it: ``data: {...}`` and a blank line."""
    return b"data: " + _encode(item).encode() + b"\n\n"


class ChunkPump:
    """Runs a blocking iterator of chunk dicts on a thread of its own, for the event loop.

    The first item comes back as a dict (the response's status and headers depend on it),
    every later one as its encoded event; the output ends with ``DONE_EVENT``, or right after
    an error event (OpenAI ends a failed stream with the error). ``close`` sets ``stopped``,
    the iterator's own cancel event: the chain then stops within a tenth of a second,
    closing the upstream request or the local generation, and the thread closes the iterator.
    """

    def __init__(self, items: Iterator[dict[str, Any]], stopped: threading.Event) -> None:
        self._loop = asyncio.get_running_loop()
        self._items = items
        self.stopped = stopped
        self._ready: deque[Any] = deque()
        self._lock = threading.Lock()  # the deque and the waiter change together
        self._waiter: asyncio.Future[None] | None = None
        self._watcher: asyncio.Task[None] | None = None
        threading.Thread(target=self._run, daemon=True, name="zwaif-serve-stream").start()

    def _run(self) -> None:
        first = True
        try:
            for item in self._items:
                if self.stopped.is_set():
                    break
                self._put(item if first else event(item))
                first = False
                if "error" in item:
                    break
            else:
                self._put(DONE_EVENT)
        except Exception as exc:  # stream_chat_completion never raises; this is a last guard
            failure = error_object(exc)
            self._put(failure if first else event(failure))
        finally:
            close = getattr(self._items, "close", None)
            if close is not None:
                close()
            self._put(_END)

    def _put(self, item: Any) -> None:
        with self._lock:
            self._ready.append(item)
            waiter, self._waiter = self._waiter, None
        if waiter is not None:
            try:
                self._loop.call_soon_threadsafe(_wake, waiter)
            except RuntimeError:  # the loop has closed: nobody is reading
                pass

    async def first(self) -> dict[str, Any] | None:
        """The first chunk, or None when the iterator ended without one."""
        while True:
            with self._lock:
                if self._ready:
                    item = self._ready.popleft()
                    return None if item is _END else item
                waiter = self._waiter = self._loop.create_future()
            await waiter

    async def take(self) -> list[Any]:
        """Every event ready now (waiting for one when none is); ends with ``_END`` at the end."""
        while True:
            with self._lock:
                if self._ready:
                    items = list(self._ready)
                    self._ready.clear()
                    return items
                waiter = self._waiter = self._loop.create_future()
            await waiter

    def watch(self, request: Request) -> None:
        """Close when the client disconnects. The body has been read, so the next ASGI
        message is the disconnect (Starlette's own check relies on ``send`` failing, which
        uvicorn does not do: it drops what a gone client would have received)."""

        async def wait_for_disconnect() -> None:
            while (await request.receive())["type"] != "http.disconnect":
                pass
            self.close()

        self._watcher = self._loop.create_task(wait_for_disconnect())

    def close(self) -> None:
        self.stopped.set()
        if self._watcher is not None and self._watcher is not asyncio.current_task():
            self._watcher.cancel()


async def event_stream(first: dict[str, Any], pump: ChunkPump) -> AsyncIterator[bytes]:
    """The response body: the first chunk's event at once, then the pump's events, all those
    ready in one write."""
    try:
        yield event(first)
        if "error" in first:  # only a last guard: serve answers a first error as plain JSON
            return
        while True:
            items = await pump.take()
            if items[-1] is _END:
                items.pop()
                if items:
                    yield b"".join(items)
                return
            yield b"".join(items)
    finally:
        pump.close()  # the client went away, or the stream ended


def _wake(waiter: asyncio.Future[None]) -> None:
    if not waiter.done():
        waiter.set_result(None)
