"""The host's own API call as a failover target: ``(messages, **gen) -> str | Iterator[str]``."""

from __future__ import annotations

import functools
import threading
from collections.abc import Callable, Hashable, Iterator
from typing import Any

from .base import Backend, GenerationParams, TargetFailed, Usage

__all__ = ["HostBackend", "identity"]

# Errors of the host's call that are worth a retry: network trouble, timeouts.
RETRYABLE = (TimeoutError, ConnectionError, OSError)


def identity(call: Callable[..., Any]) -> Hashable:
    """What tells one host callable from another, for its breaker: its code and what it
    closes over, so that a lambda made anew for each chat is still one target, while
    closures over another user or bot (or another method's object) are not."""
    func = getattr(call, "__func__", None)
    if func is not None:  # a bound method: a new object at each attribute access
        return ("method", identity(func), _value(getattr(call, "__self__", None)))
    if isinstance(call, functools.partial):
        return ("partial", identity(call.func), tuple(_value(a) for a in call.args),
                tuple(sorted((k, _value(v)) for k, v in call.keywords.items())))
    code = getattr(call, "__code__", None)
    if code is None:  # a callable object
        return ("object", _value(call))
    cells = tuple(_value(_contents(cell)) for cell in (getattr(call, "__closure__", None) or ()))
    return ("function", code, cells)


def _contents(cell: Any) -> Any:
    try:
        return cell.cell_contents
    except ValueError:  # an empty cell: a name assigned after the function was made
        return None


def _value(value: Any) -> Hashable:
    """Equal values alike (the same user id made twice; objects, by default, by identity). A
    value that cannot be hashed (a list, a dict: the chat's messages, made anew each time) by
    its type alone: by its identity, each chat would have made a new target, whose breaker
    never opened."""
    try:
        hash(value)
    except Exception:  # TypeError, or a __hash__ of the host's own that fails
        return ("unhashable", type(value).__qualname__)
    return ("value", type(value).__qualname__, value)


class HostBackend(Backend):
    """Wraps the host's callable; its exceptions become TargetFailed."""

    source = "primary"

    def __init__(self, call: Callable[..., Any], name: str | None = None) -> None:
        super().__init__(name or getattr(call, "__qualname__", None) or "host")
        self._call = call

    def stream(self, messages: list[dict[str, str]], params: GenerationParams, *,
               prefix: str = "", deadline_s: float | None = None,
               cancel: threading.Event | None = None, usage: Usage | None = None) -> Iterator[str]:
        # The host's callable returns text only: ``usage`` stays unknown rather than guessed.
        sent = messages + ([{"role": "assistant", "content": prefix}] if prefix else [])
        # only what the caller chose, as a server is sent: the host's API keeps its own
        # presets (max_tokens, temperature, top_p) for the rest
        gen = params.model_dump(include=set(params.model_fields_set), exclude_none=True)
        if not gen.get("stop"):
            gen.pop("stop", None)
        try:
            result = self._call(sent, **gen)
            if isinstance(result, str):
                yield result
                return
            for piece in result:
                if cancel is not None and cancel.is_set():
                    return
                if piece:
                    yield str(piece)
        except TargetFailed:
            raise
        except RETRYABLE as exc:
            raise TargetFailed(f"{type(exc).__name__}: {exc}", retryable=True) from exc
        except Exception as exc:
            raise TargetFailed(f"{type(exc).__name__}: {exc}") from exc
