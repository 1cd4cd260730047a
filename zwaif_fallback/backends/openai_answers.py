"""What an OpenAI-compatible server answers, read into the chain's pieces.

The transports (httpx in ``OpenAIBackend.stream``, ``http_stream`` in ``astream``) hand the
bytes over; this reads them the same way for both: server-sent events line by line
(``Events``), a whole answer from a server that ignored ``stream`` (``whole_answer``), the
token counts, and what an error status means (``status_error``).
"""

from __future__ import annotations

import html
import json
import json.decoder
import re
from collections.abc import Callable, Iterator
from http import HTTPStatus
from typing import Any

from .base import ALIVE, TargetFailed, ToolCalls, Usage, well_formed

__all__ = ["FINISH_REASONS", "RETRYABLE_STATUS", "UNNAMED_MODEL", "Events", "Lines", "read_model_name",
           "server_said", "status_error", "whole_answer"]

RETRYABLE_STATUS = {408, 409, 425, 429, 500, 502, 503, 504}

#: A JSON string's text and where it ends, from just after its opening quote (the C
#: function json.loads uses; typeshed does not declare it).
_scanstring: Callable[[str, int], tuple[str, int]] = json.decoder.scanstring  # type: ignore[attr-defined]


class Lines:
    """Reads a streamed answer line by line, as the network gives it, into answer pieces
    (each line by ``_line``, a subclass's).

    ``finished``: the server said the answer is whole; ``end`` raises when the stream
    stopped before that, as the connection then closed mid-answer. ``done``: nothing more
    is to be read.
    """

    def __init__(self, usage: Usage) -> None:
        self._usage = usage
        self.finished = False
        self.done = False
        self._rest = b""  # a line not yet ended
        self._failure: TargetFailed | None = None
        self._high = ""  # the first half of a surrogate pair whose second is in the next piece

    def feed(self, data: bytes) -> list[str | ToolCalls]:
        """The pieces of the lines that ``data`` completes. A line that fails the answer
        stops the reading there; ``check`` then raises its failure, once the pieces
        before it have been passed on."""
        *lines, self._rest = (self._rest + data).split(b"\n")
        pieces: list[str | ToolCalls] = []
        for line in lines:
            try:
                pieces += self._line(line)
            except TargetFailed as exc:
                self._failure = exc
                break
        return self._characters(pieces)

    def check(self) -> None:
        if self._failure is not None:
            raise self._failure

    def end(self) -> list[str | ToolCalls]:
        """The pieces of an unended last line; raises if the answer did not finish."""
        pieces = self._characters(self._line(self._rest))
        if self._high:  # a half whose other half never came
            pieces.append(well_formed(self._high))
        self._rest, self._high = b"", ""
        if not self.finished:
            raise TargetFailed("the stream ended before the answer was finished", retryable=True)
        return pieces

    def _characters(self, pieces: list[str | ToolCalls]) -> list[str | ToolCalls]:
        """``pieces`` as UTF-8 can carry them. A server that writes JSON's ``\\u`` escapes may
        put an emoji's two halves (``\\ud83d``, ``\\ude00``) in two events: the first half
        waits for the second, and a half on its own becomes U+FFFD (``well_formed``)."""
        out: list[str | ToolCalls] = []
        for piece in pieces:
            if isinstance(piece, str) and piece is not ALIVE:
                piece, self._high = self._high + piece, ""
                if "\ud800" <= piece[-1:] <= "\udbff":
                    piece, self._high = piece[:-1], piece[-1]
                piece = well_formed(piece)
                if not piece:
                    continue
            out.append(piece)
        return out

    def _line(self, line: bytes) -> list[str | ToolCalls]:
        raise NotImplementedError


class Events(Lines):
    """Reads a server-sent event stream into answer pieces; ``done`` once ``[DONE]`` came.

    Most events of an answer differ only in their text, and parsing each as JSON was most of
    what serve spent on a relayed chunk. So once an event has been parsed and found to hold
    a text and nothing else, its bytes around the text are kept (``_Frame``): a later event
    with those same bytes around one JSON string is that event with another text, read by
    decoding the string alone. Anything else is parsed whole, as before.
    """

    def __init__(self, usage: Usage) -> None:
        super().__init__(usage)
        self._frame: _Frame | None = None

    def _line(self, line: bytes) -> list[str | ToolCalls]:
        if not line.startswith(b"data:"):
            return []
        payload = line[5:].strip()
        if self._frame is not None:
            text = self._frame.text(payload)
            if text:
                return [text]
        if payload == b"[DONE]":
            if not self.finished:  # llama.cpp's server ends an answer this way when a newer
                # request interrupts it (unless started with --interrupt_requests false)
                raise TargetFailed("the server ended the stream before the answer was finished "
                                   "(it may stop an answer for a newer request)")
            self.done = True
            return []
        try:
            event = json.loads(payload)
        except ValueError:
            raise TargetFailed(f"the server sent malformed JSON: {payload[:80]!r}") from None
        if not isinstance(event, dict):
            return []
        if event.get("error"):
            raise TargetFailed(f"the server reported: {_message(event)}", retryable=True)
        _read_usage(event, self._usage)
        choice = _choice(event)
        if choice is None:
            return []
        pieces: list[str | ToolCalls] = []
        text = _text(choice)
        if text:
            pieces.append(text)
        calls = _tool_calls(choice)
        if calls:
            pieces.append(calls)
        if not pieces and _reasons(choice):
            pieces.append(ALIVE)
        self.finished = self.finished or choice.get("finish_reason") is not None
        _read_finish(choice, self._usage)
        if text and not calls and not self.finished and "usage" not in event:
            self._frame = _Frame.of(payload, text) or self._frame
        return pieces


class _Frame:
    """The bytes of a text-only event around its text: ``head`` up to the JSON string,
    ``tail`` after it."""

    #: The text that ``of`` puts in the frame to prove it, which no server sends.
    _PROBE = "\x00zwaif-fallback\x00"

    def __init__(self, head: str, tail: str) -> None:
        self._head = head
        self._tail = tail
        self._start = len(head)

    def text(self, payload: bytes) -> str | None:
        """The text of ``payload`` when it is this frame around one JSON string, else None."""
        try:
            event = payload.decode()
        except UnicodeDecodeError:
            return None
        if not (event.startswith(self._head) and event.endswith(self._tail)
                and len(event) >= self._start + len(self._tail) + 2 and event[self._start] == '"'):
            return None
        try:
            text, end = _scanstring(event, self._start + 1)
        except ValueError:  # an unended string, or one JSON refuses (a control character)
            return None
        return text if end == len(event) - len(self._tail) else None

    @classmethod
    def of(cls, payload: bytes, text: str) -> _Frame | None:
        """The frame around ``text`` in ``payload``, an event parsed as holding that text and
        nothing else (no finish, no tool call, no usage); None when it cannot be found. The
        frame must be the text's: with another string in its place, the event parses to
        that string as its text. Its other bytes are the parsed event's, so they still say
        nothing else."""
        try:
            event = payload.decode()
        except UnicodeDecodeError:  # JSON in UTF-16 or -32: parsed whole, every time
            return None
        at = event.find('"content"')
        while at >= 0:
            start = event.find('"', event.find(":", at + 9) + 1)
            try:
                found, end = _scanstring(event, start + 1)
            except ValueError:
                found, end = None, -1
            if found == text:
                frame = cls(event[:start], event[end:])
                if frame._proves():
                    return frame
            at = event.find('"content"', at + 1)
        return None

    def _proves(self) -> bool:
        try:
            event = json.loads(self._head + json.dumps(self._PROBE) + self._tail)
        except ValueError:
            return False
        choice = _choice(event) if isinstance(event, dict) else None
        return choice is not None and _text(choice) == self._PROBE


def _choice(event: dict[str, Any]) -> dict[str, Any] | None:
    """The first choice of a chunk or an answer, None when it has none."""
    choices = event.get("choices")
    choice = choices[0] if isinstance(choices, list) and choices else None
    return choice if isinstance(choice, dict) else None


def _delta_of(choice: dict[str, Any]) -> dict[str, Any]:
    delta = choice.get("delta") or choice.get("message")
    return delta if isinstance(delta, dict) else {}


def _text(choice: dict[str, Any]) -> str:
    text = _delta_of(choice).get("content") or choice.get("text") or ""
    return text if isinstance(text, str) else ""


def _reasons(choice: dict[str, Any]) -> bool:
    """Whether the chunk carries a thinking model's reasoning (llama.cpp's server and vLLM
    name it ``reasoning_content``, others ``reasoning``)."""
    delta = _delta_of(choice)
    return bool(delta.get("reasoning_content") or delta.get("reasoning"))


def _tool_calls(choice: dict[str, Any]) -> ToolCalls | None:
    """The tool-call deltas of a chunk's choice (or the calls of a whole message, indexed as
    a stream would give them), None when it has none."""
    calls = _delta_of(choice).get("tool_calls")
    if not isinstance(calls, list):
        return None
    deltas = tuple({"index": i, **call} for i, call in enumerate(calls) if isinstance(call, dict))
    return ToolCalls(deltas) if deltas else None


def whole_answer(content: bytes, usage: Usage) -> Iterator[str | ToolCalls]:
    try:
        answer = json.loads(content)
    except ValueError:
        raise TargetFailed("the server answered with something that is not JSON") from None
    if not isinstance(answer, dict):
        raise TargetFailed("the server answered with JSON that is not an object")
    if answer.get("error"):  # some servers and gateways say an error with status 200
        raise TargetFailed(f"the server reported: {_message(answer)}", retryable=True)
    choice = _choice(answer)
    if choice is None or not choice.keys() & {"message", "delta", "text"}:
        said = "no choice" if choice is None else "a choice with no message"
        raise TargetFailed(f"the server's answer holds {said}: it is not an OpenAI-compatible "
                           f"answer (is the URL that of the server's API?)")
    _read_usage(answer, usage)
    _read_finish(choice, usage)
    text, calls = _text(choice), _tool_calls(choice)
    if text or calls is None:
        yield text
    if calls is not None:
        yield calls


#: The model name a request carries when nobody named one (OpenAI's API requires a name;
#: a server with one model loaded takes any). A server that echoes it back says nothing.
UNNAMED_MODEL = "default"

#: The finish reasons OpenAI's API defines (but the old "function_call", whose calls are not
#: read). Another word from a server is not passed on:
#: the chain then says "stop" or "length" itself, as for a local model.
FINISH_REASONS = frozenset({"stop", "length", "tool_calls", "content_filter"})


def read_model_name(event: dict[str, Any], usage: Usage) -> None:
    """The model's name, as the first event that has one gives it, into ``usage``."""
    model = event.get("model")
    if usage.model is None and isinstance(model, str) and model.strip() not in ("", UNNAMED_MODEL):
        usage.model = model.strip()[:200]


def _read_usage(event: dict[str, Any], usage: Usage) -> None:
    """Copy what the server says of its answer into ``usage``: the model's name and the
    token counts (its last chunk, with ``include_usage``)."""
    read_model_name(event, usage)
    counts = event.get("usage")
    if not isinstance(counts, dict):
        return
    for field in ("prompt_tokens", "completion_tokens"):
        value = counts.get(field)
        if isinstance(value, int) and not isinstance(value, bool) and value >= 0:
            setattr(usage, field, value)


def _read_finish(choice: dict[str, Any], usage: Usage) -> None:
    reason = choice.get("finish_reason")
    if reason in FINISH_REASONS:
        usage.finish_reason = reason


#: The longest a server's own words are quoted in an error: it ends up in a chat's footer.
SAID_CHARS = 200
_HIDDEN = re.compile(r"<(head|script|style)\b.*?</\1\s*>", re.IGNORECASE | re.DOTALL)
_TAG = re.compile(r"<[^>]*>")
_TITLE = re.compile(r"<title[^>]*>(.*?)</title", re.IGNORECASE | re.DOTALL)
_UNKNOWN_MODEL = re.compile(r"model.*(not found|not exist|unknown|no such)", re.IGNORECASE)


def status_error(status: int, content: bytes, *, primary: bool = True,
                 url_hint: str = "it should end in /v1, e.g. http://127.0.0.1:5000/v1") -> TargetFailed:
    """The failure an error status means: the status, what the body says, what to check.

    ``primary``: the server is the main API (whose URL, key and model are settings of their
    own), not one of ``remote_urls``; ``url_hint``: what its URL should look like.
    """
    phrase = _phrase(status)
    said = server_said(content)
    text = f"HTTP {status} {phrase}".rstrip()
    # FastAPI's 404 says "Not Found", a proxy's page "502 Bad Gateway": nothing more
    if said.lower() not in ("", phrase.lower(), f"{status} {phrase}".lower()):
        text += f": {said}"
    if status in (401, 403):
        text += (" (check primary_api_key)" if primary else
                 " (it wants an API key, and only the main API is sent one)")
    elif status == 404 and _UNKNOWN_MODEL.search(said):
        text += (" (the server knows no model by that name: check primary_model)" if primary else
                 " (the server knows no model by that name)")
    elif status == 404:
        text += f" (check {'primary_url' if primary else 'remote_urls'}: {url_hint})"
    return TargetFailed(text, retryable=status in RETRYABLE_STATUS)


def _phrase(status: int) -> str:
    try:
        return HTTPStatus(status).phrase
    except ValueError:
        return ""


def server_said(content: bytes) -> str:
    """What an error answer's body says, on one line: its message in any usual shape, an
    HTML page's text, or plain text."""
    text = content[:65536].decode("utf-8", errors="replace")
    try:
        said = _message(json.loads(text))
    except (ValueError, RecursionError):  # not JSON, or JSON nested past what Python reads
        said = _page_text(text) if text.lstrip().startswith("<") else text
    said = " ".join(said.split())
    return said if len(said) <= SAID_CHARS else said[:SAID_CHARS - 1] + "…"


def _message(body: Any) -> str:
    """The message of a JSON error: OpenAI's ``error.message``, Ollama's ``error``, FastAPI's
    ``detail`` (a text, or a list of ``{loc, msg}``), or ``message``."""
    if isinstance(body, list):
        return "; ".join(filter(None, map(_message, body)))
    if not isinstance(body, dict):
        return "" if body is None else str(body)
    for key in ("error", "detail", "message", "msg"):
        if body.get(key):
            said = _message(body[key])
            loc = body.get("loc") if key == "msg" else None
            return f"{'.'.join(map(str, loc))}: {said}" if isinstance(loc, list) else said
    return json.dumps(body)


def _page_text(page: str) -> str:
    """An HTML error page's words: its body's text, else its title."""
    text = html.unescape(_TAG.sub(" ", _HIDDEN.sub(" ", page)))
    title = _TITLE.search(page)
    return text if text.strip() or title is None else html.unescape(title.group(1))
