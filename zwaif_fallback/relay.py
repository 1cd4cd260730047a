"""serve's streamed answers, relayed from the servers on the event loop.

With a thread per stream, a piece crossed three threads (the upstream reader, the chain,
the loop) and 64 streams meant some 190 threads taking turns at the GIL: about 42 us of
CPU a chunk, and each stream's setup (threads, a blocking connect) delayed the others'
first chunks. Here a chat's servers (the primary, then the remotes) are read by one task
on the loop, with ``httpx.AsyncClient``: the pieces of each network read become chunks
together, and nothing waits on a thread.

The rules are the chain's own (``FailoverChain``), on the same ``ChatRun``: a deadline for
the first piece, retries by stamina within it, the circuit breaker, and a stall limit once
the answer streams (the read timeout). At the first target that is not a server (a local
model, the host's callable), or once every server has failed, the chat goes on in a thread
through the chain itself, continuing the same run, so the reader sees one answer with no
duplicate and no gap; the chain also says when no target at all could answer.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from typing import TYPE_CHECKING, Any

from .backends.base import TargetFailed, ToolCalls, Usage
from .completions import ChunkMaker, error_object
from .failover import ChatRun, Piece, Target
from .results import ChatResult
from .sse import DONE_EVENT, ChunkPump, event

if TYPE_CHECKING:
    from starlette.requests import Request

    from .chats import ChatPlan

__all__ = ["EventStream", "Relay"]

log = logging.getLogger(__name__)

#: What the producer hands the response: chunk dicts, encoded events, or the end.
_Batch = list[Any]
_END: _Batch = []
#: uvicorn's ``send``, once the response has started.
_Send = Callable[[dict[str, Any]], Awaitable[None]]


class Relay:
    """One streamed chat completion: ``first`` gives the first chunk (or the error object,
    when nothing could answer), then ``send_body`` the whole response body.

    A task of its own reads the upstream, so that a client that goes away (``watch``)
    cancels it at once, closing the upstream request, or the local generation it handed
    the chat to. Until the response starts, that task queues what it makes; from then on it
    writes each network read's chunks to the client itself. A chunk then crosses one task
    switch (from the upstream's socket to this task) rather than two, and under load each
    switch waits for everything else the loop has to do: the 64-stream burst's tail delay
    was mostly those waits. A client that reads slowly now also slows the upstream read,
    instead of a queue growing without bound.
    """

    def __init__(self, plan: ChatPlan, chunks: ChunkMaker) -> None:
        if plan.cancel is None:
            raise ValueError("a relayed chat needs a cancel event (the reader may go away)")
        self._plan = plan
        self._chunks = chunks
        self._cancel = plan.cancel
        self._run = ChatRun(started=plan.chain.clock())
        self._queue: asyncio.Queue[_Batch] = asyncio.Queue()
        self._task = asyncio.get_running_loop().create_task(self._produce())
        self._watcher: asyncio.Task[None] | None = None
        self._held: _Batch = []  # what came with the first chunk
        self._handed_over = False
        self._send: _Send | None = None  # set once the response started: write, don't queue
        self._ended = False  # the body's end was handed on
        self._sending = asyncio.Lock()  # the writes in order: the first flush, then the task's

    async def first(self) -> dict[str, Any]:
        batch = await self._queue.get()
        if not batch:
            return error_object(RuntimeError("the answer ended before it began"))
        first, self._held = batch[0], batch[1:]
        return first if isinstance(first, dict) else error_object(RuntimeError("no first chunk"))

    async def send_body(self, send: _Send, first: dict[str, Any]) -> None:
        """Send the response body: the first chunk's event with all that is queued, in one
        write; then the task sends the rest as it comes, and this returns when it is done."""
        try:
            batch, ended = [first, *self._held], False
            while not ended and not self._queue.empty():
                ready = self._queue.get_nowait()
                ended = not ready
                batch += ready
            if not ended:
                self._send = send  # from here on the task writes; the lock keeps this first
            async with self._sending:
                await send(_body(batch, more=not ended))
            if not ended:
                await asyncio.wait((self._task,))  # it sent the end, or was stopped
                if not self._ended:  # stopped before its end (the reader went away)
                    await send(_body(_END, more=False))
        finally:
            self.close()

    def watch(self, request: Request) -> None:
        """Stop when the client disconnects. The body has been read, so the next ASGI
        message is the disconnect (Starlette's own check relies on ``send`` failing, which
        uvicorn does not do: it drops what a gone client would have received)."""

        async def wait_for_disconnect() -> None:
            while (await request.receive())["type"] != "http.disconnect":
                pass
            self.close()

        self._watcher = asyncio.get_running_loop().create_task(wait_for_disconnect())

    def close(self) -> None:
        """Stop: the reader is gone, or the body has been sent."""
        if not self._task.done() and not self._cancel.is_set():  # once: a second cancel
            # would interrupt the upstream request's close
            self._cancel.set()
            self._task.cancel()
            self._queue.put_nowait(_END)  # for a ``first`` still waiting
        if self._watcher is not None and self._watcher is not asyncio.current_task():
            self._watcher.cancel()

    # -- the producer ---------------------------------------------------------------------

    async def _produce(self) -> None:
        try:
            await self._servers()
        except asyncio.CancelledError:
            if not self._handed_over:  # else the chain counts it, in its thread
                self._plan.recorder.record_cancelled()
            log.info("the reader went away after %d pieces", self._run.tokens)
            raise
        except Exception as exc:  # a last guard: the response must end, with the error
            if not self._ended:
                await self._emit([error_object(exc)], last=True)
            return
        if not self._ended:
            await self._emit(_END, last=True)

    async def _emit(self, batch: _Batch, *, last: bool = False) -> None:
        """Hand ``batch`` on: into the queue before the response starts, else to the client.
        ``last`` ends the body (an empty batch is just the end)."""
        self._ended = last
        if self._send is None:
            self._queue.put_nowait(batch)
            if last and batch:
                self._queue.put_nowait(_END)
            return
        async with self._sending:
            try:
                await self._send(_body(batch, more=not last))
            except OSError as exc:  # uvicorn drops what a gone client would get; this is a guard
                log.info("the reader could not be written to: %s", exc)
                raise asyncio.CancelledError from exc

    async def _servers(self) -> None:
        plan, run = self._plan, self._run
        servers = plan.servers
        for i, target in enumerate(servers):
            if target.astream is None:  # the host's callable: the chain runs it, in a thread
                await self._hand_over(itertools.chain(servers[i:], plan.locals))
                return
            if run.skipped(target):
                continue
            usage = Usage()
            if await self._answer(target, usage):
                # The body sends the answer's last pieces first: making the end (the result,
                # its recording, x_fallback) takes a while, and streams often end together.
                await asyncio.sleep(0)
                result = run.result(target, plan.params, usage, plan.chain.clock())
                if result.fell_back:  # its attempts go to the history, in SQLite: off the loop
                    await asyncio.to_thread(plan.finished, result)
                else:
                    plan.finished(result)
                await self._emit([*self._chunks.ending(result), DONE_EVENT], last=True)
                return
            if not run.settled(usage):  # a cut tool call: no target can go on with it
                await self._hand_over(iter(()))
                return
        await self._hand_over(plan.locals)

    async def _answer(self, target: Target, usage: Usage) -> bool:
        """Relay ``target``'s answer; whether it finished it (its failure is on the run)."""
        run, clock, record = self._run, self._plan.chain.clock, self._plan.recorder.record_piece
        start, produced, tries = clock(), 0, [0]
        try:
            async for batch in self._guarded(target, usage, tries):
                now = clock()
                chunks: _Batch = []
                for piece in batch:
                    run.took(piece, target, produced, now)
                    produced += 1
                    if isinstance(piece, ToolCalls):
                        chunks.append(self._chunks.piece(Piece("", target, piece.deltas)))
                    elif self._chunks.began:
                        chunks.append(self._chunks.text_event(target.name, piece))
                    else:
                        chunks.append(self._chunks.piece(Piece(piece, target)))
                record(len(batch))
                await self._emit(chunks)
        except TargetFailed as exc:
            run.failed(target, exc, latency_s=clock() - start, tries=tries[0], produced=produced)
            return False
        run.succeeded(target, latency_s=clock() - start, tries=tries[0], produced=produced)
        return True

    async def _guarded(self, target: Target, usage: Usage,
                       tries: list[int]) -> AsyncIterator[list[str | ToolCalls]]:
        """``FailoverChain._guarded`` on the loop: retries within the deadline for the first
        piece, then the pieces, each network read's together."""
        assert target.astream is not None
        chain, plan = self._plan.chain, self._plan
        deadline = chain.clock() + chain.timeout_s
        stream: AsyncIterator[list[str | ToolCalls]] | None = None
        first: list[str | ToolCalls] | None = None
        async for attempt in chain.retries():
            with attempt:
                tries[0] += 1
                remaining = chain.time_left(deadline)
                stream = target.astream(plan.messages, plan.params, prefix=self._run.prefix,
                                        deadline_s=remaining, stall_s=chain.stall_s, usage=usage)
                first = await _first(stream, remaining)
        assert stream is not None
        try:
            if first is None:  # an empty answer
                return
            yield first
            async for batch in stream:
                yield batch
        finally:
            await stream.aclose()  # type: ignore[attr-defined]

    async def _hand_over(self, targets: Iterator[Target]) -> None:
        """Go on in a thread, through the chain: the local models, or what is left. With no
        targets left, the chain ends the answer with the attempts so far."""
        self._handed_over = True
        plan, results = self._plan, list[ChatResult]()
        began = self._chunks.began
        pump = ChunkPump(self._chunks.relay(plan.pieces(self._run, targets, results.append), results),
                         self._cancel,
                         first_raw=not began)
        try:
            if not began:
                first = await pump.first()
                if first is None:
                    return
                await self._emit([first])
            async for batch in pump.batches():
                await self._emit(batch)
        finally:
            pump.close()


def _body(batch: _Batch, *, more: bool) -> dict[str, Any]:
    """The ASGI message that sends ``batch``'s chunks (dicts or encoded events) at once."""
    return {"type": "http.response.body", "more_body": more,
            "body": b"".join(item if isinstance(item, bytes) else event(item) for item in batch)}


async def _first(stream: AsyncIterator[list[str | ToolCalls]],
                 within_s: float) -> list[str | ToolCalls] | None:
    """The stream's first batch within ``within_s`` (None: it ended without one).

    The timeout cancels this task rather than running the read in another (as
    ``asyncio.wait_for`` does before Python 3.12): the stream's connection stays in the one
    task that reads it to the end.
    """
    task = asyncio.current_task()
    assert task is not None
    expired = False

    def expire() -> None:
        nonlocal expired
        expired = True
        task.cancel()

    timer = asyncio.get_running_loop().call_later(within_s, expire)
    try:
        return await stream.__anext__()
    except StopAsyncIteration:
        return None
    except asyncio.CancelledError:
        await stream.aclose()  # type: ignore[attr-defined]
        if not expired:
            raise
        if hasattr(task, "uncancel"):
            task.uncancel()
        raise TargetFailed(f"no answer within {within_s:.1f} s", retryable=True, hung=True) from None
    except BaseException:
        await stream.aclose()  # type: ignore[attr-defined]
        raise
    finally:
        timer.cancel()


class EventStream:
    """The response of a relayed stream, as an ASGI app: the body's parts as they come, the
    last one with the end of the body. Starlette's ``StreamingResponse`` would send that end
    as one more write, and start a task group per request to hear the client go away, which
    ``Relay.watch`` already does."""

    def __init__(self, relay: Relay, first: dict[str, Any], headers: dict[str, str]) -> None:
        self._relay = relay
        self._first = first
        self._headers = [(b"content-type", b"text/event-stream; charset=utf-8"),
                         *((k.lower().encode("latin-1"), v.encode("latin-1")) for k, v in headers.items())]

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": self._headers})
        await self._relay.send_body(send, self._first)
