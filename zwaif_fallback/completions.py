"""OpenAI chat-completions dicts in and out: the call path a host already has.

A host that talks to an OpenAI-compatible API builds a request dict and reads
``response["choices"][0]["message"]["content"]``. These functions take that same dict,
answer through the failover chain, and give back what OpenAI would: a
``chat.completion``, or ``chat.completion.chunk`` dicts for a stream. They never
raise: a host's call site tests for ``"choices"``, so a bad request or a chain with
no target left comes back as an OpenAI error object that lists the attempts.

Which fields are read, and which go on unchanged to the servers, is
``completion_request``'s to say. A request with text-generation-webui's own fields
comes from a host written for Oobabooga, and its stream is shaped as Oobabooga sent it
up to 4.0 (see ``ChunkMaker``).

A request with ``tools`` cannot be answered by a local model unless its ``tool_choice``
is ``"none"`` (see ``Router.targets``). A server's tool calls come back as OpenAI sends
them: ``delta.tool_calls`` in a stream, ``message.tool_calls`` otherwise, with
``finish_reason: "tool_calls"``.
"""

from __future__ import annotations

import json
import logging
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Mapping
from json.encoder import encode_basestring_ascii
from typing import Any, Protocol
from urllib.parse import quote

from .chat_run import Piece
from .completion_request import BadRequestField, CompletionRequest, parse_request, parse_text_request
from .errors import AllTargetsFailed, FallbackError, InvalidSettings, NotAllowed
from .results import Attempt, ChatResult

# BadRequestField, CompletionRequest and the parsers live in completion_request; hosts and
# tests import them from here too
__all__ = ["DONE_EVENT", "Answer", "BadRequestField", "ChunkMaker", "CompletionRequest", "TextChunks",
           "chat_completion", "error_object", "event", "fallback_info", "internal_error", "parse_request",
           "parse_text_request", "status_of", "stream_chat_completion", "stream_text_completion",
           "text_completion", "who_answered"]

log = logging.getLogger(__name__)


class Answer(Protocol):
    """``Chats.answer``: the failover chain piece by piece (requests take the settings'
    primary: ``primary`` is always None here)."""

    def __call__(self, messages: list[dict[str, str]], primary: None, model: str | None,
                 gen: dict[str, Any], done: Callable[[ChatResult], None],
                 cancel: threading.Event | None, *,
                 extra: Mapping[str, Any] | None = None, raw: bool = False) -> Iterator[Piece]: ...


def chat_completion(answer: Answer, request: Any,
                    cancel: threading.Event | None = None) -> dict[str, Any]:
    """The whole answer as a ``chat.completion`` dict (with ``x_fallback``: who answered and
    how), or an error object; never raises. Setting ``cancel`` stops it (an error object
    that says so)."""
    try:
        result = _whole(answer, parse_request(request), cancel)
        return {**result.to_openai(), "x_fallback": fallback_info(result)}
    except Exception as exc:  # the host's call site must get a dict, whatever happened
        return error_object(exc)


def text_completion(answer: Answer, request: Any,
                    cancel: threading.Event | None = None) -> dict[str, Any]:
    """``chat_completion`` for a text completion (``parse_text_request``): a
    ``text_completion`` dict, or an error object; never raises."""
    try:
        result = _whole(answer, parse_text_request(request), cancel)
        completion = result.to_openai()
        choice = completion["choices"][0]
        return {**completion, "id": _text_id(), "object": "text_completion",
                "choices": [_text_choice(choice["message"].get("content"), choice["finish_reason"])],
                "x_fallback": fallback_info(result)}
    except Exception as exc:  # the host's call site must get a dict, whatever happened
        return error_object(exc)


def _ask(answer: Answer, checked: CompletionRequest, results: list[ChatResult],
         cancel: threading.Event | None) -> Iterator[Piece]:
    """The chain's pieces for ``checked``; its ChatResult goes to ``results`` at the end."""
    return answer(checked.messages, None, checked.model, checked.gen, results.append, cancel,
                  extra=checked.extra, raw=checked.raw)


def _whole(answer: Answer, checked: CompletionRequest, cancel: threading.Event | None) -> ChatResult:
    results: list[ChatResult] = []
    for _ in _ask(answer, checked, results, cancel):
        pass
    if not results:  # cancelled: the chain stopped without an answer
        raise FallbackError("the answer was cancelled before its end")
    return results[0]


def stream_chat_completion(answer: Answer, request: Any,
                           cancel: threading.Event | None = None) -> Iterator[dict[str, Any]]:
    """``chat.completion.chunk`` dicts as the answer comes; never raises.

    The first chunk carries the role and ``x_fallback`` with the source and model of the
    target that began the answer; each chunk's ``model`` names the model that gave its
    piece (``answered_by``). The last chunk has ``finish_reason`` and ``x_fallback`` (who answered, the
    attempts, where a switch happened), which OpenAI clients ignore. With
    ``stream_options.include_usage``, every chunk has ``usage: None`` and one more chunk
    with no choices carries the counts, as OpenAI sends them (when the answering target
    knows its prompt's tokens). When no target can answer, or the request is bad, the
    stream ends with one error object instead. Setting ``cancel`` (the reader went away)
    ends the stream within a tenth of a second, closing what was in flight.
    """
    try:
        checked = parse_request(request)
    except InvalidSettings as exc:
        yield error_object(exc)
        return
    yield from _stream(answer, checked, ChunkMaker(checked.include_usage, oobabooga=checked.oobabooga),
                       cancel)


def stream_text_completion(answer: Answer, request: Any,
                           cancel: threading.Event | None = None) -> Iterator[dict[str, Any]]:
    """``stream_chat_completion`` for a text completion (``parse_text_request``): its chunks
    as OpenAI streams ``/v1/completions`` (``TextChunks``); never raises."""
    try:
        checked = parse_text_request(request)
    except InvalidSettings as exc:
        yield error_object(exc)
        return
    yield from _stream(answer, checked, TextChunks(checked.include_usage), cancel)


def _stream(answer: Answer, checked: CompletionRequest, chunks: ChunkMaker,
            cancel: threading.Event | None) -> Iterator[dict[str, Any]]:
    results: list[ChatResult] = []
    try:
        pieces = _ask(answer, checked, results, cancel)
    except Exception as exc:
        yield chunks.failure(exc)
        return
    yield from chunks.relay(pieces, results)


#: One encoder for every chunk: ``json.dumps(separators=...)`` builds a new one per call,
#: which doubles the cost of encoding a chunk.
_encode = json.JSONEncoder(separators=(",", ":")).encode
_TEXT = "\u0000text\u0000"  # marks where a text chunk's content goes (see ChunkMaker.text_event)
#: What ends an OpenAI stream after its last chunk.
DONE_EVENT = b"data: [DONE]\n\n"


def event(item: dict[str, Any]) -> bytes:
    """One server-sent event, as OpenAI sends it: ``data: {...}`` and a blank line."""
    return b"data: " + _encode(item).encode() + b"\n\n"


class ChunkMaker:
    """The ``chat.completion.chunk`` dicts of one stream: one id; the first chunk with the
    role and who began the answer, the last with ``x_fallback``, then the usage chunk when
    the request asked for it (see ``stream_chat_completion``), and ``done_event``.

    ``oobabooga``: the stream is shaped as text-generation-webui sent it up to 4.0 (its
    ``extensions/openai``): every delta has a text (``""`` in the last chunk, and in an
    error event, which gets an empty choice), the usage rides on the last chunk, and
    nothing follows it, no ``data: [DONE]``. Hosts written for it read
    ``payload['choices'][0]['delta']['content']`` of every event: Z-WAIF's stream loop
    stops at anything else, and OpenAI's shapes have plenty.
    """

    #: the response's content type
    media_type = b"text/event-stream; charset=utf-8"
    #: the least time between two writes of the stream; what comes meanwhile is ``joined``
    #: into one chunk where it can be (see ``OllamaChunks``). 0: as it comes
    write_gap_s = 0.0

    def __init__(self, include_usage: bool, *, oobabooga: bool = False) -> None:
        self.id, self.created = f"chatcmpl-{uuid.uuid4().hex[:24]}", int(time.time())
        self.include_usage = include_usage
        self.oobabooga = oobabooga
        self._extra = {"usage": None} if include_usage and not oobabooga else {}
        #: what the stream's bytes end with, after its last chunk
        self.done_event = b"" if oobabooga else DONE_EVENT
        self.began = False  # the first piece's chunk has been made
        self._frames: dict[str, tuple[bytes, bytes]] = {}  # model -> around a text chunk's content

    def chunk(self, model: str, delta: dict[str, Any], finish_reason: str | None = None) -> dict[str, Any]:
        if self.oobabooga and delta.get("content") is None:
            delta = {**delta, "content": ""}
        return {"id": self.id, "object": "chat.completion.chunk", "created": self.created,
                "model": model, "choices": [{"index": 0, "delta": delta, "finish_reason": finish_reason}],
                **self._extra}

    def piece(self, piece: Piece) -> dict[str, Any]:
        delta: dict[str, Any] = {"tool_calls": list(piece.tool_calls)} if piece.tool_calls \
            else {"content": piece.text}
        model = piece.model or piece.target.name
        if self.began:
            return self.chunk(model, delta)
        self.began = True
        opening = self.chunk(model, {"role": "assistant", "content": None, **delta})
        opening["x_fallback"] = {"source": piece.target.source, "model": model}
        return opening

    def text_event(self, model: str, text: str) -> bytes:
        """``event(self.chunk(model, {"content": text}))``, byte for byte, for a chunk after
        the first: what surrounds the text is encoded once a model, the text alone each time
        (serve relays tens of thousands of chunks a second)."""
        frame = self._frames.get(model)
        if frame is None:
            head, _, tail = event(self.chunk(model, {"content": _TEXT})).rpartition(
                encode_basestring_ascii(_TEXT).encode())
            frame = self._frames[model] = head, tail
        return frame[0] + encode_basestring_ascii(text).encode() + frame[1]

    def ending(self, result: ChatResult) -> list[dict[str, Any]]:
        """The last chunk, and the usage chunk when asked for (and known)."""
        last = self.chunk(result.model, {} if self.began else {"role": "assistant", "content": ""},
                          result.finish_reason)
        last["x_fallback"] = fallback_info(result)
        usage = result.usage()
        if usage is None or not (self.include_usage or self.oobabooga):
            return [last]
        if self.oobabooga:  # on the last chunk, asked for or not, as text-generation-webui sent it
            last["usage"] = usage
            return [last]
        return [last, {"id": self.id, "object": "chat.completion.chunk", "created": self.created,
                       "model": result.model, "choices": [], "usage": usage}]

    def relay(self, pieces: Iterator[Piece], results: list[ChatResult]) -> Iterator[dict[str, Any]]:
        """The chunks of ``pieces``, then the ending once ``results`` holds the ChatResult;
        a failure, even after the first piece, ends the stream with its error object."""
        try:
            for piece in pieces:
                yield self.piece(piece)
        except Exception as exc:
            yield self.failure(exc)
            return
        if results:  # none: cancelled, the reader is gone and nothing more is said
            yield from self.ending(results[0])

    def joined(self, batch: list[Any]) -> list[Any]:
        """A batch of chunks (dicts or encoded) as the fewest that say the same; here, as it is."""
        return batch

    def encode(self, item: dict[str, Any]) -> bytes:
        """A chunk (or error object) as the stream's bytes."""
        return event(item)

    def render(self, error: dict[str, Any]) -> dict[str, Any]:
        """The body of an error response sent before the stream began (OpenAI's, as it is)."""
        return error

    def failure(self, exc: BaseException) -> dict[str, Any]:
        """The error object that ends the stream, for ``exc``."""
        failure = error_object(exc)
        if self.oobabooga:
            failure["choices"] = [{"index": 0, "delta": {"content": ""}, "finish_reason": None}]
        return failure


class TextChunks(ChunkMaker):
    """The chunks of a text completion's stream, as OpenAI streams ``/v1/completions``:
    ``object: "text_completion"``, each choice's ``text``."""

    def __init__(self, include_usage: bool) -> None:
        super().__init__(include_usage)
        self.id = _text_id()

    def chunk(self, model: str, delta: dict[str, Any], finish_reason: str | None = None) -> dict[str, Any]:
        return {"id": self.id, "object": "text_completion", "created": self.created, "model": model,
                "choices": [_text_choice(delta.get("content"), finish_reason)], **self._extra}

    def ending(self, result: ChatResult) -> list[dict[str, Any]]:
        return [{**chunk, "object": "text_completion"} for chunk in super().ending(result)]


def _text_id() -> str:
    return f"cmpl-{uuid.uuid4().hex[:24]}"


def _text_choice(text: str | None, finish_reason: str | None) -> dict[str, Any]:
    """A text completion's one choice, as OpenAI gives it (no log probabilities)."""
    return {"index": 0, "text": text or "", "logprobs": None, "finish_reason": finish_reason}


def fallback_info(result: ChatResult) -> dict[str, Any]:
    """Who answered and how: the ``x_fallback`` field of a stream's last chunk."""
    return {"source": result.source, "model": result.model, "fell_back": result.fell_back,
            "switches": [s.model_dump() for s in result.switches],
            "attempts": [a.model_dump() for a in result.attempts]}


def error_object(exc: BaseException) -> dict[str, Any]:
    """An OpenAI error object for ``exc``, with the chain's attempts when there were some."""
    attempts: list[Attempt] = list(getattr(exc, "attempts", []) or [])
    if isinstance(exc, InvalidSettings):
        error = {"message": str(exc), "type": "invalid_request_error",
                 "param": getattr(exc, "param", None), "code": "invalid_value"}
    elif isinstance(exc, NotAllowed):  # a 403: the request is refused, not the server broken
        error = {"message": str(exc), "type": "invalid_request_error", "param": None, "code": "not_allowed"}
    elif isinstance(exc, AllTargetsFailed):
        error = {"message": str(exc), "type": "server_error", "param": None,
                 "code": "all_targets_failed"}
    elif isinstance(exc, FallbackError):
        error = {"message": str(exc), "type": "server_error", "param": None,
                 "code": _snake(type(exc).__name__)}
    else:
        log.exception("chat completion failed unexpectedly")
        error = internal_error(exc)
    return {"error": error, "attempts": [a.model_dump() for a in attempts]}


def internal_error(exc: BaseException) -> dict[str, Any]:
    """The OpenAI error object for an exception that is a bug of ours, not the request's or a
    target's doing (the caller logs its traceback)."""
    return {"message": f"internal error: {type(exc).__name__}: {exc} (the log has its traceback)",
            "type": "server_error", "param": None, "code": "internal_error"}


def status_of(answer: dict[str, Any]) -> int:
    """The HTTP status of an answer or first chunk: 400 for a bad request, 503 for any other
    error object, else 200."""
    error = answer.get("error")
    if not isinstance(error, dict):
        return 200
    return 400 if error.get("type") == "invalid_request_error" else 503


def who_answered(answer: dict[str, Any]) -> dict[str, str]:
    """The headers that tell the host which target answered (an answer or a first chunk)."""
    info = answer.get("x_fallback") or {}
    model = info.get("model") or answer.get("model")
    headers = {}
    if info.get("source"):
        headers["X-Fallback-Source"] = str(info["source"])
    if model:
        # a header is Latin-1 without control characters; a model's name may be anything
        # (a server's word for it, a host's Japanese name): what else it holds is %-encoded
        headers["X-Fallback-Model"] = quote(str(model), safe=" !#$&'()*+,/:;=?@[]~")
    return headers


def _snake(name: str) -> str:
    return "".join(f"_{c.lower()}" if c.isupper() else c for c in name).lstrip("_")
