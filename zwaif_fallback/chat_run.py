"""What one chat's failover works on: the targets it tries (``Target``), the pieces they
give (``Piece``), and the state of the run (``ChatRun``): the answer so far, the attempts,
where it switched targets, the tokens counted.

A run is driven by ``failover.FailoverChain`` in threads, or by ``relay`` on serve's event
loop, which hands it on to the chain at the first target that is not a server; either way
the same ``ChatRun`` says what the next target continues and what the ``ChatResult`` is.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass, field
from typing import Any, NamedTuple

from .backends.base import GenerationParams, TargetFailed, ToolCalls, Usage
from .breaker import CircuitBreaker
from .results import Attempt, ChatResult, Source, Switch, merge_tool_calls

__all__ = ["ChatRun", "Piece", "Target", "answered_by"]

# A failed target and an opened circuit are the failover log's news, whoever drives the run.
log = logging.getLogger("zwaif_fallback.failover")

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


def _notes(target: Target) -> list[str]:
    return target.notes() if target.notes is not None else []


@dataclass
class ChatRun:
    """The state of one chat while it streams, kept by whoever drives its targets
    (``FailoverChain``'s threads, or ``relay`` on serve's event loop) and handed on between them."""

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
        ``max_tokens``, which bounds the whole answer, not each target's part. The parts
        before are counted in tokens where their targets said (``settled``), else in pieces."""
        if not self.tokens:
            return params
        left = max(params.max_tokens - max(self.completion_tokens, 1), 1)
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
        last = self.attempts[-1]
        if last.tokens:
            last.tokens = _counted(usage, last.tokens)
            self.completion_tokens += last.tokens
        return not self.tool_deltas

    def result(self, target: Target, params: GenerationParams, usage: Usage, now: float) -> ChatResult:
        """The ChatResult, once ``target`` has finished the answer."""
        last = self.attempts[-1]
        last.tokens = _counted(usage, last.tokens)
        return ChatResult(
            text=self.prefix,
            model=answered_by(target, usage),
            source=target.source,
            fell_back=any(not a.ok for a in self.attempts),
            attempts=self.attempts,
            ttft_s=round(self.ttft_s, 4) if self.ttft_s is not None else None,
            latency_s=round(now - self.started, 4),
            tokens=self._answer_tokens(usage),
            switches=self.switches,
            finish_reason=self._finish_reason(target, params, usage),
            tool_calls=merge_tool_calls(self.tool_deltas),
            prompt_tokens=usage.prompt_tokens,
            completion_tokens=self._answer_tokens(usage),
        )

    def _answer_tokens(self, usage: Usage) -> int:
        """The answer's tokens: as each target that gave a part counted them, or its pieces
        where it could not say (a piece is a token or more: a whole character of Japanese)."""
        return self.completion_tokens + _counted(usage, self.attempts[-1].tokens)

    def _finish_reason(self, target: Target, params: GenerationParams, usage: Usage) -> str:
        """Why the answer ended: as the server that finished it said, or else from what was
        given ("length" when the limit was asked for and reached)."""
        if self.tool_deltas:
            return "tool_calls"
        if usage.finish_reason not in (None, "tool_calls"):  # tool calls: only with the calls
            return usage.finish_reason
        reached = self._answer_tokens(usage) >= params.max_tokens
        return "length" if _capped(target, params) and reached else "stop"


def _counted(usage: Usage, pieces: int) -> int:
    """The tokens a target reported for its part, or its pieces when it reported none."""
    return usage.completion_tokens if usage.completion_tokens is not None else pieces


def _capped(target: Target, params: GenerationParams) -> bool:
    """Whether ``params.max_tokens`` bounded the target's answer: a server is sent it only
    when the caller chose it (``OpenAIBackend``), a local model always."""
    return target.source == "local" or "max_tokens" in params.model_fields_set
