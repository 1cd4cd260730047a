"""The host's own API call as a failover target: ``(messages, **gen) -> str | Iterator[str]``."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from typing import Any

from .base import Backend, GenerationParams, TargetFailed, Usage

__all__ = ["HostBackend"]

# Errors of the host's call that are worth a retry: network trouble, timeouts.
RETRYABLE = (TimeoutError, ConnectionError, OSError)


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
        gen = params.model_dump(exclude_none=True)
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
