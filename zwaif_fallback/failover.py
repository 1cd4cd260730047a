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
answer there, as no other target could finish its arguments.
"""

from __future__ import annotations

import contextvars
import logging
import queue
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any, NamedTuple

from .backends.base import ALIVE, GenerationParams, TargetFailed, ToolCalls, Usage
from .breaker import CircuitBreaker
from .errors import AllTargetsFailed, FallbackError
from .results import Attempt, ChatResult, Source, Switch, merge_tool_calls

__all__ = ["ChatRun", "FailoverChain", "Piece", "Target", "answered_by"]

log = logging.getLogger(__name__)

StreamFn = Callable[..., Iterator[str | ToolCalls]]


@dataclass
class Target:
    """Something that can answer: a server, the host's callable, or a local model.

    ``stream(messages, params, prefix=..., deadline_s=..., cancel=...)`` yields pieces.
    Remote targets (``guarded``) run in a watchdog thread with deadlines and retries.
    """

    name: str
    source: Source
    stream: StreamFn
    breaker: CircuitBreaker | None = None
    guarded: bool = True
    #: ``stream`` for an event loop, yielding the pieces of each network read as a list:
    #: serve relays a server's answer with it (``relay``); None for the others.
    astream: Callable[..., AsyncIterator[list[str | ToolCalls]]] | None = None
    on_breaker_open: Callable[[], None] | None = None
    notes: Callable[[], list[str]] | None = None  # what the attempt should say besides its verdict
    #: the model's name as an answer reports it, when ``name`` is not that (a server's URL):
    #: the name it is asked for; the server's own name for it, once it has said, wins
    model: str = ""


def answered_by(target: Target, usage: Usage) -> str:
    """The name an answer reports for its model: the server's own once it has said it (the
    first event of its stream has it), else the name ``target`` was asked by, else its name."""
    return usage.model or target.model or target.name


class Piece(NamedTuple):
    """A piece of the answer and the target that gave it: text, or tool-call deltas."""

    text: str
    target: Target
    tool_calls: tuple[dict[str, Any], ...] = ()
    #: the model's name as the answer reports it (``answered_by``)
    model: str = ""


_END = object()


def _notes(target: Target) -> list[str]:
    return target.notes() if target.notes is not None else []


class _Cancelled(Exception):
    """The reader went away (``FailoverChain(cancel=...)`` was set): stop without a verdict."""


#: How often a wait for a target's next piece looks at the caller's cancel event.
CANCEL_POLL_S = 0.1


class _Pump:
    """Runs a target's stream in a thread and hands pieces over under time limits."""

    def __init__(self, start: Callable[[threading.Event], Iterator[str | ToolCalls]],
                 caller_cancel: threading.Event | None = None) -> None:
        self.cancel = threading.Event()
        self._caller_cancel = caller_cancel
        self._queue: queue.SimpleQueue[tuple[bool, Any]] = queue.SimpleQueue()
        self._start = start
        # in the caller's context: a server's request says which serves it came through
        threading.Thread(target=contextvars.copy_context().run, args=(self._run,), daemon=True,
                         name="zwaif-target").start()

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


@dataclass
class ChatRun:
    """The state of one chat while it streams, kept by whoever drives its targets (this
    chain's threads, or ``relay`` on serve's event loop) and handed on between them."""

    started: float
    parts: list[str] = field(default_factory=list)  # the answer's text so far, joined on demand
    chars: int = 0
    tokens: int = 0
    ttft_s: float | None = None
    attempts: list[Attempt] = field(default_factory=list)
    switches: list[Switch] = field(default_factory=list)
    last_target: str | None = None
    completion_tokens: int = 0  # of the parts delivered by targets before the current one
    tool_deltas: list[dict[str, Any]] = field(default_factory=list)

    @property
    def prefix(self) -> str:
        """The answer so far, which the next target continues."""
        return "".join(self.parts)

    def budget(self, params: GenerationParams) -> GenerationParams:
        """``params`` for the target that continues the answer: what is left of
        ``max_tokens``, which bounds the whole answer, not each target's part."""
        if not self.tokens:
            return params
        left = max(params.max_tokens - self.tokens, 1)
        # model_construct keeps which fields the caller chose: a server is sent only those
        return GenerationParams.model_construct(params.model_fields_set,
                                                **{**params.model_dump(), "max_tokens": left})

    def skipped(self, target: Target) -> bool:
        """Whether ``target``'s circuit is open (then the attempt says so, and it is skipped)."""
        if target.breaker is None or target.breaker.allow():
            return False
        state = target.breaker.snapshot()
        why = "a probe is checking whether it answers again" if state.probing else \
            f"retry in {state.retry_in_s:.0f} s"
        self.attempts.append(Attempt(target=target.name, source=target.source, ok=False,
                                     error=f"circuit open: skipped ({why})", latency_s=0.0, tries=0))
        return True

    def took(self, piece: str | ToolCalls, target: Target, produced: int, now: float) -> None:
        """Count a piece; ``produced`` is how many ``target`` gave before it."""
        if produced == 0 and self.last_target is not None and self.chars:
            self.switches.append(Switch(at_char=self.chars, from_target=self.last_target,
                                        to_target=target.name))
        self.tokens += 1
        if isinstance(piece, ToolCalls):
            self.tool_deltas += piece.deltas
        else:
            self.parts.append(piece)
            self.chars += len(piece)
        if self.ttft_s is None:
            self.ttft_s = now - self.started

    def failed(self, target: Target, exc: TargetFailed, *, latency_s: float, tries: int,
               produced: int) -> None:
        """Record ``target``'s failure, on its breaker too."""
        cut = "; it had begun a tool call, which no other target can finish" if self.tool_deltas else ""
        self.attempts.append(Attempt(target=target.name, source=target.source, ok=False,
                                     error=f"{exc}{cut}", latency_s=latency_s, tries=tries,
                                     tokens=produced, notes=_notes(target)))
        log.warning("target %s failed after %d pieces: %s", target.name, produced, exc)
        if target.breaker is not None and target.breaker.record_failure(hung=exc.hung):
            log.warning("circuit for %s opened", target.name)
            if target.on_breaker_open is not None:
                target.on_breaker_open()
        if produced:
            self.last_target = target.name

    def succeeded(self, target: Target, *, latency_s: float, tries: int, produced: int) -> None:
        if target.breaker is not None:
            target.breaker.record_success()
        self.attempts.append(Attempt(target=target.name, source=target.source, ok=True,
                                     latency_s=latency_s, tries=tries, tokens=produced,
                                     notes=_notes(target)))

    def settled(self, usage: Usage) -> bool:
        """After a target's attempt: count the tokens of a failed target's part, and say
        whether the chain may go on (a cut tool call cannot be continued elsewhere)."""
        if self.attempts[-1].tokens:
            self.completion_tokens += _counted(usage, self.attempts[-1].tokens)
        return not self.tool_deltas

    def result(self, target: Target, params: GenerationParams, usage: Usage, now: float) -> ChatResult:
        """The ChatResult, once ``target`` has finished the answer."""
        return ChatResult(
            text=self.prefix,
            model=answered_by(target, usage),
            source=target.source,
            fell_back=any(not a.ok for a in self.attempts),
            attempts=self.attempts,
            ttft_s=round(self.ttft_s, 4) if self.ttft_s is not None else None,
            latency_s=round(now - self.started, 4),
            tokens=self.tokens,
            switches=self.switches,
            finish_reason=self._finish_reason(target, params, usage),
            tool_calls=merge_tool_calls(self.tool_deltas),
            prompt_tokens=usage.prompt_tokens,
            completion_tokens=self.completion_tokens + _counted(usage, self.attempts[-1].tokens),
        )

    def _finish_reason(self, target: Target, params: GenerationParams, usage: Usage) -> str:
        """Why the answer ended: as the server that finished it said, or else from what was
        given ("length" when the limit was asked for and reached)."""
        if self.tool_deltas:
            return "tool_calls"
        if usage.finish_reason not in (None, "tool_calls"):  # tool calls: only with the calls
            return usage.finish_reason
        return "length" if _capped(target, params) and self.tokens >= params.max_tokens else "stop"


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
                 cancel: threading.Event | None = None) -> None:
        self.timeout_s = timeout_s
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
        raise AllTargetsFailed(run.attempts)

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


def _retryable(exc: Exception) -> bool:
    return isinstance(exc, TargetFailed) and exc.retryable


def _counted(usage: Usage, pieces: int) -> int:
    """The tokens a target reported for its part, or its pieces when it reported none."""
    return usage.completion_tokens if usage.completion_tokens is not None else pieces


def _capped(target: Target, params: GenerationParams) -> bool:
    """Whether ``params.max_tokens`` bounded the target's answer: a server is sent it only
    when the caller chose it (``OpenAIBackend``), a local model always."""
    return target.source == "local" or "max_tokens" in params.model_fields_set
