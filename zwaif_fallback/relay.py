"""serve's streamed answers, relayed from the servers on the event loop.

With a thread per stream, a piece crossed three threads (the upstream reader, the chain,
the loop) and 64 streams meant some 190 threads taking turns at the GIL: about 42 us of
CPU a chunk, and each stream's setup (threads, a blocking connect) delayed the others'
first chunks. Here a chat's servers (the primary, then the remotes) are read by one task
on the loop, through ``backends.http_stream``: the pieces of each network read become chunks
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
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, MutableMapping
from typing import TYPE_CHECKING, Any

from .backends.base import ALIVE, TargetFailed, ToolCalls, Usage
from .chat_run import ChatRun, Piece, Target, answered_by
from .completions import ChunkMaker, error_object, status_of, who_answered
from .errors import BackendUnavailable
from .results import ChatResult
from .sse import ChunkPump

if TYPE_CHECKING:
    from starlette.requests import Request

    from .chats import ChatPlan

__all__ = ["Relay", "on_disconnect", "shutting_down"]

log = logging.getLogger(__name__)

#: What the producer writes at once: chunk dicts, encoded events, or the end (empty).
_Batch = list[Any]
_END: _Batch = []
#: uvicorn's ``send``.
_Send = Callable[[MutableMapping[str, Any]], Awaitable[None]]


class Relay:
    """One streamed chat completion, as the ASGI app that answers its request.

    A task of its own reads the upstream, so that a client that goes away (``watch``)
    cancels it at once, closing the upstream request, or the local generation it handed
    the chat to. That task is also the only one that writes to the client: it starts the
    response with the first chunk (or, when nothing could answer, sends the error as a plain
    JSON response, as OpenAI does), then writes each network read's chunks as they come. So
    a chunk crosses one task switch, from the upstream's socket to this task, and nothing
    is queued between tasks: a client that reads slowly slows the upstream read instead of
    growing a queue.
    """

    def __init__(self, plan: ChatPlan, chunks: ChunkMaker) -> None:
        if plan.cancel is None:
            raise ValueError("a relayed chat needs a cancel event (the reader may go away)")
        self._plan = plan
        self._chunks = chunks
        self._cancel = plan.cancel
        self._run = ChatRun(started=plan.chain.clock())
        self._asgi: tuple[Any, Any] = ({}, None)  # the request's scope and receive, once answered
        self._send: _Send | None = None
        self._task: asyncio.Task[None] | None = None
        self._watcher: asyncio.Task[None] | None = None
        self._handed_over = False
        self._started = False  # the response has started
        self._ended = False  # the body's end was sent
        self._last_write = 0.0  # when, on the loop's clock (see ``_spaced``)
        self._shutting_down = False  # serve is stopping: the stream ends with an error saying so

    async def __call__(self, scope: Any, receive: Any, send: _Send) -> None:
        """Answer: start the task that reads and writes, and end the response once it is
        done, should it have stopped before the end (the reader went away)."""
        self._asgi = scope, receive
        self._send = send
        try:
            if not self._cancel.is_set():  # the reader may have gone already
                self._task = asyncio.get_running_loop().create_task(self._produce())
                await asyncio.wait((self._task,))
            if not self._started and self._shutting_down:
                await self._respond_with(error_object(shutting_down()))
            elif not self._started and self._cancel.is_set():  # the reader left first: no one to tell
                await self._respond_with({"error": {"message": "the reader went away before the answer "
                                                    "began", "type": "server_error", "param": None,
                                                    "code": "cancelled"}, "attempts": []})
            elif not self._started:
                await self._respond_with(error_object(RuntimeError("the answer ended before it began")))
            elif not self._ended:
                stopped = [self._chunks.failure(shutting_down())] if self._shutting_down else _END
                await send(_body(stopped, self._chunks, more=False))
        finally:
            self.close()

    def watch(self, request: Request) -> None:
        """Stop when the client disconnects (``on_disconnect``)."""

        self._watcher = on_disconnect(request, self.close)

    def shut_down(self) -> None:
        """Stop because serve is shutting down: a begun stream ends with an error event that
        says so, not as if the answer were whole."""
        self._shutting_down = True
        self.close()

    def close(self) -> None:
        """Stop: the reader is gone, or the response has been sent."""
        if not self._cancel.is_set() and (self._task is None or not self._task.done()):
            self._cancel.set()  # once: a second cancel would interrupt the upstream request's close
            if self._task is not None:
                self._task.cancel()
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
                await self._emit([self._chunks.failure(exc)], last=True)
            return
        if not self._ended:
            await self._emit(_END, last=True)

    async def _emit(self, batch: _Batch, *, last: bool = False) -> None:
        """Write ``batch`` to the client, starting the response with its first chunk; ``last``
        ends the body (an empty batch is just the end)."""
        assert self._send is not None
        if self._ended:  # the response is over (its end, or an error response): nothing follows
            return
        try:
            if not self._started:
                if not batch:  # it ended before it began: ``__call__`` answers that
                    return
                first = batch[0]
                if "error" in first:  # nothing was sent yet: a plain error response
                    await self._respond_with(first)
                    return
                self._started = True
                await self._send({"type": "http.response.start", "status": 200, "headers": [
                    (b"content-type", self._chunks.media_type), (b"cache-control", b"no-cache"),
                    *((k.lower().encode("latin-1"), v.encode("latin-1"))
                      for k, v in who_answered(first).items())]})
            if not self._chunks.write_gap_s:
                self._ended = last
                await self._send(_body(batch, self._chunks, more=not last))
                return
            lines = self._chunks.joined(batch)
            for i, line in enumerate(lines):
                await self._spaced()
                self._ended = last and i == len(lines) - 1
                await self._send(_body([line], self._chunks, more=not self._ended))
            if last and not lines:
                self._ended = True
                await self._send(_body(_END, self._chunks, more=False))
        except OSError as exc:  # uvicorn drops what a gone client would get; this is a guard
            log.info("the reader could not be written to: %s", exc)
            raise asyncio.CancelledError from exc

    async def _spaced(self) -> None:
        """Wait until the stream's ``write_gap_s`` has passed since its last write. The reads
        wait too, so what comes meanwhile is ``joined`` into the next write."""
        loop = asyncio.get_running_loop()
        wait = self._last_write + self._chunks.write_gap_s - loop.time()
        if wait > 0:
            await asyncio.sleep(wait)
        self._last_write = loop.time()

    async def _respond_with(self, error: dict[str, Any]) -> None:
        """The whole response: ``error`` as JSON, with its status."""
        from starlette.responses import JSONResponse

        assert self._send is not None
        self._started = self._ended = True
        await JSONResponse(self._chunks.render(error), status_code=status_of(error))(*self._asgi, self._send)

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
                await self._emit([*self._chunks.ending(result), self._chunks.done_event], last=True)
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
                model, before = answered_by(target, usage), produced
                for piece in batch:
                    if piece == ALIVE:  # the deadline has seen it: nothing to send
                        continue
                    run.took(piece, target, produced, now)
                    produced += 1
                    if isinstance(piece, ToolCalls):
                        chunks.append(self._chunks.piece(Piece("", target, piece.deltas, model)))
                    elif self._chunks.began:
                        chunks.append(self._chunks.text_event(model, piece))
                    else:
                        chunks.append(self._chunks.piece(Piece(piece, target, model=model)))
                record(produced - before)
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
                stream = target.astream(plan.messages, self._run.budget(plan.params),
                                        prefix=self._run.prefix, deadline_s=remaining,
                                        stall_s=chain.stall_s, usage=usage)
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
                         self._cancel, done=self._chunks.done_event, first_raw=not began,
                         encode=self._chunks.encode)
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


def on_disconnect(request: Request, then: Callable[[], None]) -> asyncio.Task[None]:
    """A task that calls ``then`` when the client of ``request`` disconnects. The body has
    been read, so the next ASGI message is the disconnect (Starlette's own check relies on
    ``send`` failing, which uvicorn does not do: it drops what a gone client would get)."""

    async def wait() -> None:
        while (await request.receive())["type"] != "http.disconnect":
            pass
        then()

    return asyncio.get_running_loop().create_task(wait())


def shutting_down() -> BackendUnavailable:
    """What an answer stopped by serve's shutdown ends with."""
    return BackendUnavailable("zwaif-fallback serve is shutting down: this answer was stopped "
                              "before its end; send the request again once serve is back")


def _body(batch: _Batch, chunks: ChunkMaker, *, more: bool) -> dict[str, Any]:
    """The ASGI message that sends ``batch``'s chunks (dicts or encoded events) at once."""
    return {"type": "http.response.body", "more_body": more,
            "body": b"".join(item if isinstance(item, bytes) else chunks.encode(item) for item in batch)}


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
