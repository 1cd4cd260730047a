"""Ollama's own API (``POST /api/chat``, ``/api/generate``) on ``serve``, for hosts that speak it.

Z-WAIF's ``API_TYPE = Ollama`` (and ``API_TYPE_VISUAL``, its default for images) calls the
``ollama`` package's ``chat()``, which sends Ollama's request shape to ``OLLAMA_HOST`` and
reads newline-delimited JSON back, not OpenAI's. Pointing ``OLLAMA_HOST`` at serve gives
such a host the same failover as ``/v1/chat/completions``: the request is read into the
OpenAI shape the chain takes (``chat_request``), and the answer is written in Ollama's
(``OllamaChunks`` for a stream, ``whole_answer`` otherwise).

Ollama's options map to OpenAI's names where there is one (``num_predict`` is
``max_tokens``); the other samplers (``top_k``, ``min_p``, ``repeat_penalty``, ...) go to
an OpenAI-compatible server as fields of their own, which llama.cpp's server reads and
Ollama's ``/v1`` drops. So with an Ollama primary, name its own API (``.../api``):
``OllamaBackend`` sends it the request's ``options`` (``num_ctx`` included) and
``keep_alive`` as they came, which no OpenAI-compatible server is sent.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from .backends.ollama import SAMPLER_OPTIONS, ollama_tool_call, openai_tool_call
from .backends.openai import OLLAMA_FIELDS
from .chat_run import Piece
from .completions import BadRequestField, ChunkMaker, fallback_info
from .ollama_info import render, timestamp
from .results import ChatResult

__all__ = ["CHAT", "GENERATE", "Endpoint", "OllamaChunks", "chat_request", "generate_request", "whole_answer"]

#: Ollama's options that a request names otherwise: its length limit is llama.cpp's
#: ``n_predict``, negative for none, as ``parse_request`` reads it.
RENAMED_OPTIONS = {"num_predict": "n_predict"}
#: Ollama's options that keep their names in an OpenAI request: OpenAI's own, and the
#: samplers that only some servers read, sent on as fields of their own.
SAME_OPTIONS = frozenset({"temperature", "top_p", "stop", "seed"}) | SAMPLER_OPTIONS

#: An image's first base64 characters, and its media type (Ollama sends images bare).
_IMAGE_KINDS = (("/9j/", "image/jpeg"), ("iVBORw0KGgo", "image/png"), ("R0lGOD", "image/gif"),
                ("UklGR", "image/webp"))


def chat_request(body: Mapping[str, Any]) -> dict[str, Any]:
    """The OpenAI chat-completions request that an Ollama ``/api/chat`` body asks for.

    Raises:
        InvalidSettings: a field is missing or of the wrong kind; the message names it.
    """
    model = body.get("model")
    if not isinstance(model, str) or not model.strip():
        raise BadRequestField("model", "missing: name the model, as Ollama requires")
    messages = body.get("messages")
    if not isinstance(messages, list):
        raise BadRequestField("messages", "missing: give a list of {'role': ..., 'content': ...}")
    request: dict[str, Any] = {"model": model, "stream": body.get("stream") is not False,
                               "messages": _answered_calls([_message(m, i) for i, m in enumerate(messages)])}
    options = body.get("options")
    if options is not None and not isinstance(options, Mapping):
        raise BadRequestField("options", "must be an object such as {'temperature': 0.7}")
    for name, value in (options or {}).items():
        if name in RENAMED_OPTIONS:
            request[RENAMED_OPTIONS[name]] = value
        elif name in SAME_OPTIONS:
            request[name] = value
    answer_format = body.get("format")
    if answer_format == "json":
        request["response_format"] = {"type": "json_object"}
    elif isinstance(answer_format, Mapping):
        request["response_format"] = {"type": "json_schema",
                                      "json_schema": {"name": "answer", "schema": answer_format}}
    if body.get("tools"):
        request["tools"] = body["tools"]
    # kept as they came for an Ollama primary (``OllamaBackend``); other servers are not sent them
    request |= {k: body[k] for k in OLLAMA_FIELDS if body.get(k) is not None}
    return request


#: What ``/api/generate`` takes that ``/api/chat`` does not.
GENERATE_FIELDS = ("prompt", "system", "images", "raw", "template", "context", "suffix")


def generate_request(body: Mapping[str, Any]) -> dict[str, Any]:
    """The OpenAI request that an Ollama ``/api/generate`` body asks for: its ``system`` and
    ``prompt`` (with its ``images``) as a chat of one turn, which is what Ollama makes of
    them with the model's template; or, for a ``raw`` prompt (written for a template
    already), a text completion of the prompt as it is (its ``"prompt"`` field).

    Raises:
        InvalidSettings: a field is missing or of the wrong kind; the message names it.
    """
    prompt, system = body.get("prompt"), body.get("system")
    if not isinstance(prompt, str):
        raise BadRequestField("prompt", "missing: give the text to answer")
    if system is not None and not isinstance(system, str):
        raise BadRequestField("system", "must be text")
    turn: dict[str, Any] = {"role": "user", "content": prompt}
    if body.get("images") is not None:
        turn["images"] = body["images"]
    messages = ([{"role": "system", "content": system}] if system else []) + [turn]
    request = chat_request({**{k: v for k, v in body.items() if k not in GENERATE_FIELDS},
                            "messages": messages})
    if body.get("raw") is True:  # as Ollama: no template, no system message, no images
        del request["messages"]
        request["prompt"] = prompt
    return request


def _message(message: Any, index: int) -> Any:
    """An Ollama message as OpenAI's: its images as ``image_url`` parts, its tool calls'
    arguments as JSON text. Anything not a dict is left for ``parse_request`` to refuse."""
    if not isinstance(message, Mapping):
        return message
    out = {k: v for k, v in message.items() if k not in ("images", "tool_calls", "tool_name", "thinking")}
    if isinstance(out.get("role"), str):
        out["role"] = out["role"].lower()  # as Ollama reads it
    images = message.get("images")
    if images:
        if not isinstance(images, list) or not all(isinstance(i, str) for i in images):
            raise BadRequestField(f"messages[{index}].images", "must be a list of base64 texts")
        text = message.get("content")
        out["content"] = ([{"type": "text", "text": text}] if isinstance(text, str) and text else []) + [
            {"type": "image_url", "image_url": {"url": f"data:{_media_type(i)};base64,{i}"}} for i in images]
    calls = message.get("tool_calls")
    if isinstance(calls, list) and calls:
        out["tool_calls"] = [_openai_call(call, index, j) for j, call in enumerate(calls)]
    if message.get("role") == "tool" and message.get("tool_name"):
        out["name"] = message["tool_name"]
    return out


def _answered_calls(messages: list[Any]) -> list[Any]:
    """``messages``, each tool result given the id of the call it answers: OpenAI's servers
    match a result to its call by ``tool_call_id``, which Ollama's clients may leave out (a
    result names its tool, or nothing, and answers the calls in order)."""
    pending: list[tuple[str, str]] = []  # (id, name) of the calls not answered yet
    for message in messages:
        if not isinstance(message, dict):
            continue
        if message.get("tool_calls"):
            pending = [(c["id"], c["function"]["name"]) for c in message["tool_calls"]]
        elif message.get("role") == "tool" and pending:
            answered = message.get("tool_call_id")
            match = next((p for p in pending if p[0] == answered), None) or \
                next((p for p in pending if p[1] == message.get("name")), pending[0])
            pending.remove(match)
            message["tool_call_id"] = match[0]
    return messages




def _media_type(image: str) -> str:
    return next((kind for start, kind in _IMAGE_KINDS if image.startswith(start)), "image/png")


def _openai_call(call: Any, message: int, index: int) -> dict[str, Any]:
    function = call.get("function") if isinstance(call, Mapping) else None
    if not isinstance(function, Mapping) or not isinstance(function.get("name"), str):
        raise BadRequestField(f"messages[{message}].tool_calls",
                              "each needs a function with a name and arguments")
    return openai_tool_call(call, call.get("id") or f"call_{message}_{index}")


def _said(text: str, calls: list[dict[str, Any]], *, generate: bool) -> dict[str, Any]:
    """What an answer (or a piece of it) says: ``/api/generate``'s ``response``, or
    ``/api/chat``'s ``message`` with the tool calls."""
    if generate:
        return {"response": text}
    message: dict[str, Any] = {"role": "assistant", "content": text}
    if calls:
        message["tool_calls"] = [ollama_tool_call(c) for c in calls]
    return {"message": message}


def _done_reason(finish_reason: str) -> str:
    return "length" if finish_reason == "length" else "stop"


def whole_answer(answer: dict[str, Any], *, generate: bool = False) -> dict[str, Any]:
    """An OpenAI ``chat.completion`` (or error object) as Ollama's answer to ``stream: false``."""
    if "error" in answer:
        return render(answer)
    choice = answer["choices"][0]
    message = choice.get("message") or {"content": choice.get("text")}  # a chat's, or a text's
    said = _said(message.get("content") or "", message.get("tool_calls") or [], generate=generate)
    shown: dict[str, Any] = {"model": answer["model"], "created_at": timestamp(answer["created"]),
                             **said, "done": True, "done_reason": _done_reason(choice["finish_reason"])}
    usage = answer.get("usage")
    if usage:
        shown["prompt_eval_count"] = usage["prompt_tokens"]
        shown["eval_count"] = usage["completion_tokens"]
    if "x_fallback" in answer:
        shown["x_fallback"] = answer["x_fallback"]
    return shown


class OllamaChunks(ChunkMaker):
    """A stream in Ollama's shape: one JSON object a line, each with a piece of the message
    and ``done: false``, then the last with ``done: true``, the reason and the token counts.
    An error after the first piece is a line ``{"error": "..."}``, as Ollama sends it.

    The first and the last line carry ``x_fallback`` beside Ollama's fields (clients read
    the fields they know): who answered, and on the last line the attempts.

    Lines are written at least ``write_gap_s`` apart, and the pieces that come meanwhile make
    one line (``joined``): SillyTavern's Ollama reader parses all it has received as one JSON
    object, so two lines that arrive in one network read never parse, and the rest of the
    answer is lost. Ollama itself writes a line a token.
    """

    media_type = b"application/x-ndjson"
    write_gap_s = 0.01

    def __init__(self, *, generate: bool = False) -> None:
        super().__init__(include_usage=False)
        self.done_event = b""
        self.generate = generate  # /api/generate's lines: ``response``, not ``message``
        self.created_at = timestamp()  # each line's: when the answer began

    def _line(self, model: str, content: str) -> dict[str, Any]:
        return {"model": model, "created_at": self.created_at,
                **_said(content, [], generate=self.generate), "done": False}

    def piece(self, piece: Piece) -> dict[str, Any]:
        # a tool call's deltas are not a message's text: the calls come whole on the last line
        model = piece.model or piece.target.name
        line = self._line(model, piece.text)
        if not self.began:
            self.began = True
            line["x_fallback"] = {"source": piece.target.source, "model": model}
        return line

    def text_event(self, model: str, text: str) -> bytes:
        return self.encode(self._line(model, text))

    def ending(self, result: ChatResult) -> list[dict[str, Any]]:
        last: dict[str, Any] = {
            "model": result.model, "created_at": self.created_at,
            **_said("", result.tool_calls, generate=self.generate), "done": True,
            "done_reason": _done_reason(result.finish_reason),
            "total_duration": round(result.latency_s * 1e9), "eval_count": result.completion_tokens}
        if result.prompt_tokens is not None:
            last["prompt_eval_count"] = result.prompt_tokens
        if result.ttft_s is not None:
            last["eval_duration"] = round((result.latency_s - result.ttft_s) * 1e9)
        last["x_fallback"] = fallback_info(result)
        return [last]

    def joined(self, batch: list[Any]) -> list[Any]:
        """The lines of ``batch`` as few as they can be: a line with more to come gives its
        text to the next such line, which keeps the first one's ``x_fallback`` (who began).
        The last line and an error line take no text: AnythingLLM and Open WebUI read no
        content on the last line, and Ollama's clients raise at an error."""
        if len(batch) < 2:
            return batch
        lines: list[dict[str, Any]] = []
        for item in batch:
            if item == b"":  # the done event: nothing, in Ollama's streams
                continue
            line = json.loads(item) if isinstance(item, bytes) else item
            if lines and lines[-1].get("done") is False and line.get("done") is False:
                before = lines.pop()
                line = dict(line)
                if "x_fallback" in before:
                    line.setdefault("x_fallback", before["x_fallback"])
                if self.generate:
                    line["response"] = before["response"] + line["response"]
                else:
                    line["message"] = {**line["message"], "content": before["message"]["content"]
                                       + line["message"]["content"]}
            lines.append(line)
        return lines

    def encode(self, item: dict[str, Any]) -> bytes:
        return json.dumps(render(item), ensure_ascii=False, separators=(",", ":")).encode() + b"\n"

    def render(self, error: dict[str, Any]) -> dict[str, Any]:
        return render(error)


@dataclass(frozen=True)
class Endpoint:
    """One of Ollama's answering routes, ``/api/chat`` or ``/api/generate``: how its
    request reads, and how its answer is written."""

    generate: bool

    def request(self, body: Mapping[str, Any]) -> dict[str, Any]:
        """The chat-completions request ``body`` asks for (``chat_request``, ``generate_request``)."""
        return generate_request(body) if self.generate else chat_request(body)

    def loaded(self, body: Mapping[str, Any]) -> dict[str, Any] | None:
        """Ollama's answer to a request with nothing to answer, which its clients send to
        load a model (``ollama.chat(model)``, ``ollama.generate(model)``): that it is
        loaded. None for any other request."""
        said = body.get("prompt") if self.generate else body.get("messages")
        if said not in ("", [], None) or not isinstance(body.get("model"), str):
            return None
        return {"model": body["model"], "created_at": timestamp(), **_said("", [], generate=self.generate),
                "done": True, "done_reason": "load"}

    def chunks(self) -> OllamaChunks:
        return OllamaChunks(generate=self.generate)

    def whole(self, answer: dict[str, Any]) -> dict[str, Any]:
        return whole_answer(answer, generate=self.generate)


CHAT, GENERATE = Endpoint(generate=False), Endpoint(generate=True)
