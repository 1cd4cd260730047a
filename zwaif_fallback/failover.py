"""The call path: targets tried in order, each under its deadline, retries and breaker.

Order: the primary, then ``remote_urls``, then local models best first. For the
primary and the remotes:

* **Deadline.** ``timeout`` bounds the wait for the first piece of the answer,
  all retries included. A hung server yields to the next target at the deadline;
  a refused connection yields at once.
* **Retries.** Retryable errors (dropped connections, 429, 5xx, read timeouts)
  are retried by stamina with exponential backoff and jitter, inside the deadline.
* **Circuit breaker.** A target that keeps failing is skipped without a request
  until its cooldown ends. One that let the whole deadline pass without a word is hung:
  its circuit opens at once, so the next chats do not wait out the deadline too.

Once a target streams, a gap longer than ``stall_s`` or an error counts as its
failure; the next target continues the *same* answer from the text so far, so
the reader sees no duplicate and no gap. ``ChatResult.switches`` records where.
A server's tool calls are relayed as they stream; one that a failure cuts off ends the
answer there, as no other target could finish its arguments. What a run keeps between
targets (the answer so far, the attempts, the switches) is ``chat_run.ChatRun``.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from typing import Any

from .backends.base import ALIVE, Cancel, GenerationParams, TargetFailed, ToolCalls, Usage
from .chat_run import ChatRun, Piece, Target, answered_by
from .errors import AllTargetsFailed, FallbackError
from .net import start_for_request
from .results import ChatResult

__all__ = ["FailoverChain"]

log = logging.getLogger(__name__)

_END = object()


class _Cancelled(Exception):
    """The reader went away (``FailoverChain(cancel=...)`` was set): stop without a verdict."""


#: How often a wait for a target's next piece looks at the caller's cancel event.
CANCEL_POLL_S = 0.1


class _Pump:
    """Runs a target's stream in a thread and hands pieces over under time limits."""

    def __init__(self, start: Callable[[threading.Event], Iterator[str | ToolCalls]],
                 caller_cancel: threading.Event | None = None) -> None:
        self.cancel = Cancel()  # closes the server's response at once, with no thread to watch it
        self._caller_cancel = caller_cancel
        self._queue: queue.SimpleQueue[tuple[bool, Any]] = queue.SimpleQueue()
        self._start = start
        start_for_request(self._run, "zwaif-target")

    def _run(self) -> None:
        try:
            for piece in self._start(self.cancel):
                if self.cancel.is_set():
                    return
                self._queue.put((True, piece))
            self._queue.put((True, _END))
        except BaseException as exc:  # handed to the reader, who decides
            self._queue.put((False, exc))

    def next(self, timeout_s: float, what: str) -> Any:
        deadline = time.monotonic() + max(timeout_s, 0.0)
        while True:
            if self._caller_cancel is not None and self._caller_cancel.is_set():
                self.close()
                raise _Cancelled
            left = deadline - time.monotonic()
            wait = left if self._caller_cancel is None else min(left, CANCEL_POLL_S)
            try:
                ok, item = self._queue.get(timeout=max(wait, 0.0))
                break
            except queue.Empty:
                if left <= wait:
                    self.close()
                    raise TargetFailed(f"no {what} within {timeout_s:.1f} s", retryable=True,
                                       hung=what == "answer") from None
        if ok:
            return item
        if isinstance(item, TargetFailed):
            raise item
        raise TargetFailed(f"{type(item).__name__}: {item}") from item

    def close(self) -> None:
        self.cancel.set()


class FailoverChain:
    """Runs one chat through a list of targets.

    Args:
        timeout_s: deadline for a guarded target's first piece, retries included.
        max_retries: attempts on a guarded target for retryable errors.
        stall_s: the longest gap between pieces once a guarded target streams.
        auto_switch: go on to the next local model when one fails.
        cancel: set when the reader has gone (a client disconnected): the chain stops
            within ``CANCEL_POLL_S``, closes the request or generation in flight and
            records no failure.
    """

    def __init__(self, *, timeout_s: float, max_retries: int, stall_s: float | None = None,
                 auto_switch: bool = True, clock: Callable[[], float] = time.perf_counter,
                 cancel: threading.Event | None = None,
                 why_no_local: Callable[[], str] | None = None) -> None:
        self.timeout_s = timeout_s
        self._why_no_local = why_no_local  # named in the failure when no local model was tried
        self.max_retries = max_retries
        self.stall_s = stall_s if stall_s is not None else timeout_s
        self.auto_switch = auto_switch
        self.clock = clock
        self._cancel = cancel

    def stream(self, messages: list[dict[str, str]], params: GenerationParams,
               targets: Iterable[Target], done: Callable[[ChatResult], None]) -> Iterator[str]:
        """Yield the answer; call ``done`` with the ChatResult when it is complete.

        Raises:
            AllTargetsFailed: no target could finish the answer (``attempts`` says why).
        """
        return (piece.text for piece in self.pieces(messages, params, targets, done) if piece.text)

    def pieces(self, messages: list[dict[str, str]], params: GenerationParams,
               targets: Iterable[Target], done: Callable[[ChatResult], None],
               run: ChatRun | None = None) -> Iterator[Piece]:
        """Like ``stream``, with the target that gave each piece. ``run`` continues a chat
        that other targets began (serve's relay hands over at the first local one)."""
        run = run if run is not None else ChatRun(started=self.clock())
        locals_tried = 0
        for target in targets:
            if target.source == "local":
                if locals_tried and not self.auto_switch:
                    break
                locals_tried += 1
            if run.skipped(target):
                continue
            usage = Usage()
            try:
                for piece in self._try(target, messages, params, run, usage):
                    model = answered_by(target, usage)
                    yield (Piece("", target, piece.deltas, model) if isinstance(piece, ToolCalls)
                           else Piece(piece, target, model=model))
                    self._check_cancel()
                self._check_cancel()  # a local generation that saw it ends early, not done
            except _Cancelled:
                log.info("the reader went away: %s stopped after %d pieces", target.name, run.tokens)
                return
            if run.attempts[-1].ok:
                done(run.result(target, params, usage, self.clock()))
                return
            if not run.settled(usage):
                break
        tried_local = any(a.source == "local" for a in run.attempts)
        why = self._why_no_local() if self._why_no_local is not None and not tried_local else ""
        raise AllTargetsFailed(run.attempts, note=why)

    def _check_cancel(self) -> None:
        if self._cancel is not None and self._cancel.is_set():
            raise _Cancelled

    def _try(self, target: Target, messages: list[dict[str, str]], params: GenerationParams,
             run: ChatRun, usage: Usage) -> Iterator[str | ToolCalls]:
        start, produced, tries = self.clock(), 0, [0]
        prefix, params = run.prefix, run.budget(params)
        try:
            pieces = (self._guarded(target, messages, params, prefix, tries, usage) if target.guarded
                      else self._direct(target, messages, params, prefix, tries, usage))
            for piece in pieces:
                if piece == ALIVE:  # the deadline has seen it: nothing to give on
                    continue
                run.took(piece, target, produced, self.clock())
                produced += 1
                yield piece
        except TargetFailed as exc:
            run.failed(target, exc, latency_s=self.clock() - start, tries=tries[0], produced=produced)
            return
        run.succeeded(target, latency_s=self.clock() - start, tries=tries[0], produced=produced)

    def _direct(self, target: Target, messages: list[dict[str, str]], params: GenerationParams,
                prefix: str, tries: list[int], usage: Usage) -> Iterator[str | ToolCalls]:
        tries[0] = 1
        try:
            yield from target.stream(messages, params, prefix=prefix, usage=usage, cancel=self._cancel)
        except TargetFailed:
            raise
        except FallbackError as exc:  # its message already says what went wrong
            raise TargetFailed(str(exc)) from exc
        except Exception as exc:  # a local runtime failing any way at all is a failed target
            raise TargetFailed(f"{type(exc).__name__}: {exc}") from exc

    def retries(self) -> Any:
        """stamina's attempts at a guarded target (``for``, or ``async for`` on an event loop):
        retryable failures are tried again with backoff and jitter, within the deadline."""
        import stamina

        return stamina.retry_context(on=_retryable, attempts=self.max_retries, timeout=self.timeout_s,
                                     wait_initial=0.05, wait_max=1.0, wait_jitter=0.1)

    def time_left(self, deadline: float) -> float:
        """What is left until ``deadline`` for a first piece; at it, the target is hung."""
        left = deadline - self.clock()
        if left <= 0:
            raise TargetFailed(f"no answer within the {self.timeout_s:g} s deadline", hung=True)
        return left

    def _guarded(self, target: Target, messages: list[dict[str, str]], params: GenerationParams,
                 prefix: str, tries: list[int], usage: Usage) -> Iterator[str | ToolCalls]:
        deadline = self.clock() + self.timeout_s
        pump: _Pump | None = None
        first: Any = _END
        for attempt in self.retries():
            with attempt:
                tries[0] += 1
                remaining = self.time_left(deadline)
                pump = self._open(target, messages, params, prefix, remaining, usage, self._cancel)
                try:
                    first = pump.next(remaining, "answer")
                except TargetFailed:
                    pump.close()
                    raise
        assert pump is not None
        try:
            item = first
            while item is not _END:
                yield item
                item = pump.next(self.stall_s, "new token")
        finally:
            pump.close()

    @staticmethod
    def _open(target: Target, messages: list[dict[str, str]], params: GenerationParams,
              prefix: str, deadline_s: float, usage: Usage, caller_cancel: threading.Event | None) -> _Pump:
        return _Pump(lambda cancel: target.stream(messages, params, prefix=prefix,
                                                  deadline_s=deadline_s, cancel=cancel, usage=usage),
                     caller_cancel)


def _retryable(exc: BaseException) -> bool:
    return isinstance(exc, TargetFailed) and exc.retryable
