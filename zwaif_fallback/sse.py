"""Server-sent events for ``serve``: a blocking iterator of chunk dicts, relayed to the event loop.

Local generation never runs on the event loop: ``relay`` hands a chat that reaches a local
model to a thread of its own, through ``ChunkPump``. The thread encodes each chunk as its
``data:`` line and appends it to a deque; it wakes the loop (``call_soon_threadsafe``, a
write to the loop's self-pipe) only when the reader is waiting for more. The reader takes
every line ready and sends them as one body write. A chunk that comes alone goes out at
once; a burst costs one wakeup and one write, not one per chunk.
"""

from __future__ import annotations

import asyncio
import threading
from collections import deque
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any

from .completions import error_object, event
from .net import start_for_request

__all__ = ["ChunkPump", "event"]

#: Ends the pump's output: after ``done``, after an error event, or when stopped.
_END = object()
class ChunkPump:
    """Runs a blocking iterator of chunk dicts on a thread of its own, for the event loop.

    The first item comes back as a dict (the response's status and headers depend on it),
    every later one as its encoded event (with ``first_raw=False``, the first too: a stream
    that has begun already); the output ends with ``done`` (``ChunkMaker.done_event``: OpenAI's
    ``data: [DONE]``, or nothing for Oobabooga's hosts), or right after an error event (OpenAI
    ends a failed stream with the error). ``close`` sets ``stopped``, the iterator's own
    cancel event: the chain then stops within a tenth of a second, closing the upstream
    request or the local generation, and the thread closes the iterator.
    """

    def __init__(self, items: Iterator[dict[str, Any]], stopped: threading.Event, *, done: bytes,
                 first_raw: bool = True, encode: Callable[[dict[str, Any]], bytes] = event) -> None:
        self._loop = asyncio.get_running_loop()
        self._encode = encode
        self._done = done
        self._first_raw = first_raw
        self._items = items
        self.stopped = stopped
        self._ready: deque[Any] = deque()
        self._lock = threading.Lock()  # the deque and the waiter change together
        self._waiter: asyncio.Future[None] | None = None
        start_for_request(self._run, "zwaif-serve-stream")

    def _run(self) -> None:
        first = self._first_raw
        try:
            for item in self._items:
                if self.stopped.is_set():
                    break
                self._put(item if first else self._encode(item))
                first = False
                if "error" in item:
                    break
            else:
                if self._done:
                    self._put(self._done)
        except Exception as exc:  # stream_chat_completion never raises; this is a last guard
            failure = error_object(exc)
            self._put(failure if first else self._encode(failure))
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

    async def batches(self) -> AsyncIterator[list[bytes]]:
        """The events after the first, those ready together as one list, to the end."""
        while True:
            items = await self.take()
            if items[-1] is _END:
                items.pop()
                if items:
                    yield items
                return
            yield items

    def close(self) -> None:
        self.stopped.set()


def _wake(waiter: asyncio.Future[None]) -> None:
    if not waiter.done():
        waiter.set_result(None)
