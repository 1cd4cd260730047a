"""What one chat gives back: the answer, who gave it, and every attempt on the way.

``ChatResult`` is what ``FallbackManager.chat`` returns and what the CLI's ``--json`` prints;
``to_openai`` turns it into the ``chat.completion`` a host reads. ``Attempt`` is one try of
one target, ``Switch`` a place where a streamed answer moved to another target.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterable
from typing import Any, Literal

from pydantic import Field

from ._model import Model

__all__ = ["Attempt", "ChatResult", "Source", "Switch", "merge_tool_calls"]

Source = Literal["primary", "remote", "local"]


class Attempt(Model):
    """One try of one target (its retries included)."""

    target: str
    source: Source
    ok: bool
    error: str | None = None
    latency_s: float
    tries: int = 1  # requests sent; 0 when an open circuit breaker skipped the target
    tokens: int = 0  # as the target counted them, or its pieces where it could not say
    notes: list[str] = Field(default_factory=list, description="how a local load stepped down")


class Switch(Model):
    """Where a streamed answer moved from one target to the next."""

    at_char: int
    from_target: str
    to_target: str


class ChatResult(Model):
    """The answer and how it was obtained."""

    text: str
    model: str
    source: Source
    fell_back: bool
    attempts: list[Attempt]
    ttft_s: float | None
    latency_s: float
    tokens: int
    switches: list[Switch] = Field(default_factory=list)
    finish_reason: str = "stop"
    #: the prompt as the answering target counted it (with any continued text); None when
    #: that target cannot say (the host's callable, a server that sends no usage)
    prompt_tokens: int | None = None
    #: the answer's tokens as each target that gave a part of it counted them (pieces
    #: for a part whose target could not say)
    completion_tokens: int = 0
    #: the tool calls of the answer, whole (its deltas merged by index), as OpenAI gives them
    tool_calls: list[dict[str, Any]] = Field(default_factory=list)

    def usage(self) -> dict[str, int] | None:
        """OpenAI's ``usage`` object, or None when the prompt's token count is unknown."""
        if self.prompt_tokens is None:
            return None
        return {"prompt_tokens": self.prompt_tokens, "completion_tokens": self.completion_tokens,
                "total_tokens": self.prompt_tokens + self.completion_tokens}

    def to_openai(self) -> dict[str, Any]:
        """The answer as an OpenAI ``chat.completion`` object (``usage`` only when known)."""
        completion: dict[str, Any] = {
            "id": f"chatcmpl-{uuid.uuid4().hex[:24]}",
            "object": "chat.completion",
            "created": int(time.time()),
            "model": self.model,
            "choices": [{
                "index": 0,
                "message": {"role": "assistant", "content": self.text or None,
                            "tool_calls": self.tool_calls} if self.tool_calls else
                           {"role": "assistant", "content": self.text},
                "finish_reason": self.finish_reason,
            }],
        }
        usage = self.usage()
        if usage is not None:
            completion["usage"] = usage
        return completion


def merge_tool_calls(deltas: Iterable[dict[str, Any]]) -> list[dict[str, Any]]:
    """Whole tool calls from their streamed deltas: per ``index``, the id, type and name as
    first given, the arguments joined."""
    calls: dict[Any, dict[str, Any]] = {}
    for delta in deltas:
        call = calls.setdefault(delta.get("index"), {"id": None, "type": "function",
                                                     "function": {"name": "", "arguments": ""}})
        for key in ("id", "type"):
            if delta.get(key):
                call[key] = delta[key]
        function = delta.get("function")
        function = function if isinstance(function, dict) else {}
        call["function"]["name"] += function.get("name") or ""
        call["function"]["arguments"] += function.get("arguments") or ""
    return list(calls.values())
