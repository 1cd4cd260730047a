"""An Ollama server over its own API (``/api/chat``): the primary, with ``primary_api = "ollama"``.

Ollama's OpenAI-compatible ``/v1`` reads OpenAI's samplers only: ``num_ctx``, ``top_k``,
``min_p``, ``repeat_penalty`` and ``keep_alive`` never reach the model through it, and a
host such as Z-WAIF sets all of them (its context length above all: Ollama's default is
far shorter than a companion bot's history). Through ``/api/chat`` they do: a request that
came in as Ollama's (``ollama_api``) keeps its ``options`` and ``keep_alive``, and OpenAI's
fields are put into ``options`` under Ollama's names.

The answer streams as one JSON object a line; the last has ``done: true``, the reason and
the token counts. Everything else (deadlines, retries, breakers, the relay) is the
OpenAI backend's, as this is that backend with another request and another reader.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Mapping
from typing import Any
from urllib.parse import urlsplit

from ..net import server_headers
from .base import ALIVE, GenerationParams, TargetFailed, ToolCalls, Usage, raw_prompt
from .openai import SAMPLER_FIELDS, OpenAIBackend
from .openai_answers import FINISH_REASONS, UNNAMED_MODEL, Lines, read_model_name

__all__ = ["OllamaBackend", "OllamaLines", "is_ollamas_v1", "listed_models", "models_url", "ollama_root",
           "ollama_tool_call", "openai_tool_call"]

#: OpenAI's names of Ollama's options.
OPTION_NAMES = {"max_tokens": "num_predict"}
#: Samplers a request may carry as fields of their own (from ``/v1``), which Ollama takes
#: as options.
SAMPLER_OPTIONS = frozenset({"top_k", "min_p", "typical_p", "repeat_penalty", "repeat_last_n",
                             "frequency_penalty", "presence_penalty", "mirostat", "mirostat_tau",
                             "mirostat_eta", "tfs_z", "penalize_newline"})


def ollama_root(url: str) -> str:
    """Ollama's own API is at the server's root: ``http://127.0.0.1:11434``, also when the
    URL names its ``/api`` or its OpenAI-compatible ``/v1``."""
    root = url.rstrip("/")
    for suffix in ("/api", "/v1"):
        if root.endswith(suffix):
            return root[: -len(suffix)]
    return root


#: Ollama's own port: a server there is Ollama.
OLLAMA_PORT = 11434


def is_ollamas_v1(url: str) -> bool:
    """Whether ``url`` is Ollama's OpenAI-compatible API (``/v1`` on Ollama's port)."""
    try:
        parts = urlsplit(url)
        return parts.port == OLLAMA_PORT and parts.path.rstrip("/").endswith("/v1")
    except ValueError:
        return False


def models_url(url: str, *, ollama: bool) -> str:
    """Where a server lists its models: OpenAI's ``/models``, or Ollama's ``/api/tags``."""
    return f"{ollama_root(url)}/api/tags" if ollama else f"{url.rstrip('/')}/models"


def listed_models(payload: Any, *, ollama: bool) -> list[dict[str, Any]]:
    """The models of a server's list (``models_url``), as OpenAI's ``/models`` gives them
    (``id`` each); Ollama's own entries are kept whole under ``x_ollama``."""
    if not isinstance(payload, dict):
        return []
    if ollama:
        return [{"id": m["name"], "object": "model", "created": 0, "owned_by": "ollama", "x_ollama": m}
                for m in payload.get("models") or [] if isinstance(m, dict) and m.get("name")]
    return [m for m in payload.get("data") or [] if isinstance(m, dict) and m.get("id")]


class OllamaBackend(OpenAIBackend):
    """Streams chats from an Ollama server's own API (``primary_api = "ollama"``), at the
    server's root URL (``ollama_root``)."""

    chat_path = "/api/chat"
    text_path = "/api/generate"
    stream_type = "application/x-ndjson"
    url_hint = "Ollama's own API is at its root, with no /v1, e.g. http://127.0.0.1:11434"

    def __init__(self, base_url: str, **kwargs: Any) -> None:
        super().__init__(ollama_root(base_url), **kwargs)

    def _request(self, messages: list[dict[str, str]], params: GenerationParams, prefix: str,
                 deadline_s: float | None, model: str | None,
                 extra: Mapping[str, Any] | None) -> tuple[dict[str, Any], dict[str, str], float]:
        extra = extra or {}
        sent = extra.get("messages")
        chat = _named_results([_ollama_message(m) for m in (sent if isinstance(sent, list) else messages)])
        if prefix:  # Ollama goes on with a last assistant message rather than answer it
            chat.append({"role": "assistant", "content": prefix})
        options = dict(extra["options"]) if isinstance(extra.get("options"), Mapping) else {}
        options |= {k: extra[k] for k in SAMPLER_OPTIONS if k in extra}
        options |= {OPTION_NAMES.get(k, k): v for k, v in params.model_dump(
            include=set(SAMPLER_FIELDS & params.model_fields_set)).items()}
        if params.stop:
            options["stop"] = params.stop
        if params.seed is not None:
            options["seed"] = params.seed
        raw = raw_prompt(messages)  # a text completion: the prompt continued as it is
        # a raw prompt's continuation is the model's text as it comes: no thinking split off
        asked: dict[str, Any] = {"prompt": raw + prefix, "raw": True, "think": False} \
            if raw is not None else {"messages": chat}
        body: dict[str, Any] = {"model": model or self.model or UNNAMED_MODEL, **asked, "stream": True}
        if options:
            body["options"] = options
        for field in ("keep_alive", "think", "tools"):
            if extra.get(field) is not None:
                body[field] = extra[field]
        answer_format = extra.get("format", _format_of(extra.get("response_format")))
        if answer_format is not None:
            body["format"] = answer_format
        return body, server_headers(self._api_key, Accept=self.stream_type), min(deadline_s or 10.0, 10.0)

    def _usage_asks(self) -> tuple[bool, ...]:
        return (False,)  # the counts come on the last line, unasked

    def _events(self, usage: Usage) -> Lines:
        return OllamaLines(usage)

    def _whole(self, content: bytes, usage: Usage) -> Iterator[str | ToolCalls]:
        lines = OllamaLines(usage)
        pieces = lines.feed(content + b"\n")
        lines.check()
        return iter([*pieces, *lines.end()] or [""])


class OllamaLines(Lines):
    """Reads Ollama's streamed answer, one JSON object a line, into answer pieces."""

    def __init__(self, usage: Usage) -> None:
        super().__init__(usage)
        self._calls = 0  # tool calls so far: each gets the next index

    def _line(self, line: bytes) -> list[str | ToolCalls]:
        if not line.strip():
            return []
        try:
            part = json.loads(line)
        except ValueError:
            raise TargetFailed(f"the server sent malformed JSON: {line[:80]!r}") from None
        if not isinstance(part, dict):
            return []
        if part.get("error"):
            raise TargetFailed(f"the server reported: {part['error']}", retryable=True)
        read_model_name(part, self._usage)
        message = _mapping(part.get("message"))
        pieces: list[str | ToolCalls] = []
        text = message.get("content") or part.get("response")  # /api/chat's, /api/generate's
        if isinstance(text, str) and text:
            pieces.append(text)
        calls = message.get("tool_calls")
        if isinstance(calls, list) and calls:
            pieces.append(ToolCalls(tuple(self._delta(call) for call in calls if isinstance(call, dict))))
        if not pieces and (message.get("thinking") or part.get("thinking")):  # /api/chat's, /api/generate's
            pieces.append(ALIVE)  # Ollama has a model that can think do so first
        if part.get("done"):
            self.finished = self.done = True
            reason = part.get("done_reason")
            self._usage.finish_reason = reason if reason in FINISH_REASONS else "stop"
            for field, count in (("prompt_tokens", "prompt_eval_count"), ("completion_tokens", "eval_count")):
                value = part.get(count)
                if isinstance(value, int) and not isinstance(value, bool) and value >= 0:
                    setattr(self._usage, field, value)
        return pieces

    def _delta(self, call: dict[str, Any]) -> dict[str, Any]:
        """An Ollama tool call (whole) as one OpenAI delta."""
        index, self._calls = self._calls, self._calls + 1
        return {"index": index, **openai_tool_call(call, call.get("id") or f"call_{index}")}


def openai_tool_call(call: Mapping[str, Any], call_id: str) -> dict[str, Any]:
    """An Ollama tool call (its arguments an object) as OpenAI's (its arguments JSON text)."""
    function = _mapping(call.get("function"))
    arguments = function.get("arguments")
    text = arguments if isinstance(arguments, str) else json.dumps(arguments or {})
    return {"id": call_id, "type": "function",
            "function": {"name": function.get("name", ""), "arguments": text}}


def ollama_tool_call(call: Mapping[str, Any]) -> dict[str, Any]:
    """An OpenAI tool call (its arguments JSON text) as Ollama's (its arguments an object)."""
    function = _mapping(call.get("function"))
    arguments = function.get("arguments")
    if isinstance(arguments, str):
        try:
            arguments = json.loads(arguments or "{}")
        except ValueError:
            arguments = {}
    shown: dict[str, Any] = {"function": {"name": function.get("name", ""),
                                          "arguments": arguments if isinstance(arguments, dict) else {}}}
    if call.get("id"):
        shown["id"] = call["id"]
    return shown


def _ollama_message(message: Any) -> Any:
    """An OpenAI message as Ollama takes it: image parts as ``images`` (base64, from data
    URLs; Ollama cannot fetch a URL), tool calls' arguments as objects."""
    if not isinstance(message, Mapping):
        return message
    out = {k: v for k, v in message.items() if k not in ("content", "tool_calls")}
    content = message.get("content")
    if isinstance(content, list):
        texts = [p.get("text", "") for p in content if isinstance(p, Mapping) and p.get("type") == "text"]
        images = [_base64_of(p) for p in content if isinstance(p, Mapping) and p.get("type") == "image_url"]
        out["content"] = "\n".join(t for t in texts if isinstance(t, str))
        if any(images):
            out["images"] = [i for i in images if i]
    else:
        out["content"] = content if isinstance(content, str) else ""
    calls = message.get("tool_calls")
    if isinstance(calls, list) and calls:
        out["tool_calls"] = [ollama_tool_call(c) for c in calls if isinstance(c, Mapping)]
    if message.get("role") == "tool" and "name" in message:
        out["tool_name"] = out.pop("name")
    return out


def _named_results(messages: list[Any]) -> list[Any]:
    """``messages``, each tool result named by its tool (``tool_name``), which Ollama's
    templates show the model; OpenAI's name only the call it answers (``tool_call_id``)."""
    names: dict[Any, Any] = {}
    for message in messages:
        if not isinstance(message, dict):
            continue
        for call in message.get("tool_calls") or ():
            names[call.get("id")] = call["function"]["name"]
        if message.get("role") == "tool" and "tool_name" not in message:
            name = names.get(message.get("tool_call_id"))
            if name:
                message["tool_name"] = name
    return messages


def _base64_of(part: Mapping[str, Any]) -> str:
    image = part.get("image_url")
    url = image.get("url") if isinstance(image, Mapping) else image
    if isinstance(url, str) and url.startswith("data:") and ";base64," in url:
        return url.split(";base64,", 1)[1]
    return ""


def _format_of(response_format: Any) -> Any:
    """OpenAI's ``response_format`` as Ollama's ``format``: "json", or the schema."""
    if not isinstance(response_format, Mapping):
        return None
    if response_format.get("type") == "json_object":
        return "json"
    schema = response_format.get("json_schema")
    if response_format.get("type") == "json_schema" and isinstance(schema, Mapping):
        return schema.get("schema")
    return None


def _mapping(value: Any) -> Mapping[str, Any]:
    return value if isinstance(value, Mapping) else {}
