"""Chats: one answer through the failover chain, from input checks to the recorded result.

The input is checked before anything is sent; the chain is built from the settings of
the moment; each finished result goes to telemetry and becomes this thread's last one.
"""

from __future__ import annotations

import asyncio
import itertools
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from .backends.base import RAW_ROLE, GenerationParams, Message, check_messages
from .characters import persona, with_persona
from .chat_run import ChatRun, Piece, Target
from .errors import CLOSED, AllTargetsFailed, FallbackError, InvalidSettings
from .failover import FailoverChain
from .results import Attempt, ChatResult
from .routing import Primary, Router
from .settings import FallbackSettings, validate_field

__all__ = ["ChatPlan", "ChatStream", "Chats", "Recorder"]


class Recorder(Protocol):
    """Where chats are counted (``Telemetry`` is one): it must never raise into a chat."""

    def record_piece(self, count: int = 1) -> None: ...

    def record_chat(self, result: ChatResult) -> None: ...

    def record_failure(self, attempts: list[Attempt]) -> None: ...

    def record_cancelled(self) -> None: ...


class Chats:
    """Answers chats for one manager. Thread-safe; ``last_result`` is per thread.

    Args:
        settings: the settings now (timeout, retries, auto_switch, the primary...).
        router: the targets of each chat, with their breakers.
        recorder: where results, failures and streamed pieces are counted.
        on_primary_answer: told each time the primary gave a whole answer (the manager
            warms up its fallback then, while nothing is urgent).
        closed: whether the manager is closed: then every chat is refused.
    """

    def __init__(self, *, settings: Callable[[], FallbackSettings], router: Router,
                 recorder: Callable[[], Recorder],
                 on_primary_answer: Callable[[], None] | None = None,
                 clock: Callable[[], float] = time.perf_counter,
                 closed: Callable[[], bool] = lambda: False) -> None:
        self._settings = settings
        self._router = router
        self._recorder = recorder
        self._on_primary_answer = on_primary_answer
        self._clock = clock
        self._closed = closed
        self._last = threading.local()

    @property
    def last_result(self) -> ChatResult | None:
        result: ChatResult | None = getattr(self._last, "result", None)
        return result

    def answer(self, messages: Sequence[Message], primary: Primary, model: str | None,
               gen: dict[str, Any], done: Callable[[ChatResult], None] | None,
               cancel: threading.Event | None, *,
               extra: Mapping[str, Any] | None = None, raw: bool = False) -> Iterator[Piece]:
        """The answer's pieces; bad input raises here, before the first piece.

        ``model`` is a request's model name and ``extra`` the request fields the chain does
        not read (both: see ``Router.targets``); ``done`` receives the ChatResult when the
        answer is complete; setting ``cancel`` stops it (the reader went away), counted as
        cancelled. ``raw``: a text completion, which continues the one user message as it is
        (``RAW_ROLE``), with no chat template.
        """
        plan = self.plan(messages, primary, model, gen, done, cancel, extra=extra, raw=raw)
        return plan.pieces(None, itertools.chain(plan.servers, plan.locals))

    def plan(self, messages: Sequence[Message], primary: Primary, model: str | None,
             gen: dict[str, Any], done: Callable[[ChatResult], None] | None,
             cancel: threading.Event | None, *,
             extra: Mapping[str, Any] | None = None, raw: bool = False) -> ChatPlan:
        """``answer``'s chat, not begun: serve's relay drives its servers on the event loop
        and hands the rest to ``ChatPlan.pieces``. Bad input raises here, and so does a
        closed manager (FallbackError)."""
        if self._closed():
            raise FallbackError(CLOSED)
        checked = check_messages(messages)
        if raw:
            if len(checked) != 1 or checked[0]["role"] != "user":
                raise InvalidSettings("a text completion is one prompt: give one user message")
            checked = [{"role": RAW_ROLE, "content": checked[0]["content"]}]
        params = GenerationParams.from_kwargs(**gen)
        settings = self._settings()
        if isinstance(primary, str):
            validate_field("primary_url", primary)
        elif primary is not None and not callable(primary):
            raise InvalidSettings("primary must be a base URL, a callable, or None")
        chain = FailoverChain(timeout_s=settings.timeout, max_retries=settings.max_retries,
                              auto_switch=settings.auto_switch, clock=self._clock, cancel=cancel,
                              why_no_local=self._router.why_no_local)
        request_extra = dict(extra or {})
        # a request naming a text-generation-webui character: its persona, for the local models
        # here, and for the servers that know no characters (``Router.server_targets``)
        character = persona(request_extra, settings.characters_dir or None) if request_extra and not raw \
            else None
        if character is not None:
            checked = with_persona(checked, character)
        servers = self._router.server_targets(settings, primary, model=model, extra=request_extra, raw=raw,
                                              persona=character)
        locals_ = self._router.local_targets(model=model, extra=request_extra)

        def finished(result: ChatResult) -> None:
            self._last.result = result
            self._recorder().record_chat(result)
            if result.source == "primary" and self._on_primary_answer is not None:
                self._on_primary_answer()
            if done is not None:
                done(result)

        return ChatPlan(chain=chain, messages=checked, params=params, servers=servers,
                        locals=locals_, finished=finished, recorder=self._recorder(), cancel=cancel)


class ChatStream(Iterator[str]):
    """The text of one streamed answer, as it comes; ``result`` is its ChatResult once it
    has ended. Unlike ``last_result`` it does not depend on the thread that read the last
    piece. An asyncio host reads it with ``async for`` (``__aiter__``)."""

    def __init__(self) -> None:
        self.result: ChatResult | None = None
        self._pieces: Iterator[Piece] = iter(())
        self._cancel: threading.Event = threading.Event()

    def __aiter__(self) -> AsyncIterator[str]:
        """The same text for an event loop, read on a thread of this stream's own: a local
        model's stream holds the model between pieces, so streams read on a shared pool of
        threads (``asyncio.to_thread``'s, a few per core) waited on each other for good once
        more of them fell back at once than the pool had threads. Leaving the ``async for``
        early stops the answer, as ``cancel`` does."""
        return self._read_on_a_thread()

    async def _read_on_a_thread(self) -> AsyncIterator[str]:
        loop = asyncio.get_running_loop()
        handed: asyncio.Queue[tuple[str, Any]] = asyncio.Queue()

        def hand(kind: str, value: Any) -> None:
            try:
                loop.call_soon_threadsafe(handed.put_nowait, (kind, value))
            except RuntimeError:  # the loop is closed: nobody reads any more
                self._cancel.set()

        def read() -> None:
            try:
                for text in self:
                    if self._cancel.is_set():
                        break  # the reader left
                    hand("text", text)
                else:
                    hand("end", None)
            except BaseException as exc:  # raised where the host reads, as a plain read would
                hand("error", exc)
            finally:
                self.close()  # on the thread that ran it: the model or connection is let go

        threading.Thread(target=read, name="zwaif-chat-stream", daemon=True).start()
        try:
            while True:
                kind, value = await handed.get()
                if kind == "end":
                    return
                if kind == "error":
                    raise value
                yield value
        finally:
            self._cancel.set()  # a no-op once it ended; else the answer stops

    def __next__(self) -> str:
        while True:
            piece = next(self._pieces)
            if piece.text:
                return piece.text

    def close(self) -> None:
        """Stop reading: the request or local generation in flight is closed."""
        close = getattr(self._pieces, "close", None)
        if close is not None:
            close()

    def _finished(self, result: ChatResult) -> None:
        self.result = result

    @classmethod
    def of(cls, start: Callable[[Callable[[ChatResult], None]], Iterator[Piece]], *,
           cancel: threading.Event) -> ChatStream:
        """The stream of the pieces ``start(done)`` gives, ``done`` keeping their result;
        ``cancel`` is the one ``start`` gave the chat."""
        stream = cls()
        stream._cancel = cancel
        stream._pieces = start(stream._finished)
        return stream


@dataclass
class ChatPlan:
    """One chat ready to run: its chain, checked input and targets (the servers listed, the
    local models still to rank), and where its result and pieces are counted."""

    chain: FailoverChain
    messages: list[dict[str, str]]
    params: GenerationParams
    servers: list[Target]
    locals: Iterator[Target]
    finished: Callable[[ChatResult], None]
    recorder: Recorder
    cancel: threading.Event | None

    def pieces(self, run: ChatRun | None, targets: Iterable[Target],
               done: Callable[[ChatResult], None] | None = None) -> Iterator[Piece]:
        """The chain's pieces over ``targets``, counted; ``run`` continues a begun chat, and
        ``done`` is told the result too."""

        def finished(result: ChatResult) -> None:
            self.finished(result)
            if done is not None:
                done(result)

        return _metered(self.chain.pieces(self.messages, self.params, targets, finished, run),
                        self.recorder, self.cancel)


def _metered(pieces: Iterator[Piece], recorder: Recorder,
             cancel: threading.Event | None) -> Iterator[Piece]:
    try:
        for piece in pieces:
            recorder.record_piece()
            yield piece
    except AllTargetsFailed as exc:
        recorder.record_failure(exc.attempts)
        raise
    finally:  # the reader may also close this generator itself once it has cancelled
        if cancel is not None and cancel.is_set():
            recorder.record_cancelled()
