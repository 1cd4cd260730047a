"""Checking an OpenAI request dict before the failover chain answers it.

``parse_request`` reads a chat-completions request, ``parse_text_request`` a
text-completions one (``/v1/completions``); each refuses a wrong field with
``BadRequestField``, which names it as OpenAI's errors do (``param``).

Fields read: messages, model, max_tokens (or max_completion_tokens, or llama.cpp's
n_predict), temperature, top_p, stop, seed, stream, stream_options, n (only 1). Every other field (a vendor's
samplers such as ``repetition_penalty``, ``min_p`` or ``top_k``, ``logit_bias``,
``response_format``, ``user``, ``tools``) goes unchanged to the primary and the remote
servers, and is ignored by local models (a debug line names the fields, never their
values). The servers also get the messages as the host sent them, tool calls, tool
results and images included; local models get their text.

A request with any of text-generation-webui's own fields (``OOBABOOGA_FIELDS``) comes
from a host written for Oobabooga (``CompletionRequest.oobabooga``).
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import Any

from .backends.base import GenerationParams, check_messages, well_formed
from .errors import InvalidSettings

__all__ = ["BadRequestField", "CompletionRequest", "parse_request", "parse_text_request"]

#: The fields the chain interprets itself; every other one is passed on (``CompletionRequest.extra``).
READ_FIELDS = frozenset({"messages", "model", "max_tokens", "max_completion_tokens", "n_predict",
                         "temperature", "top_p", "stop", "seed", "stream", "stream_options", "n"})
GEN_FIELDS = ("temperature", "top_p", "stop", "seed")
#: Fields only text-generation-webui reads (its ``ChatCompletionRequest``): a request with one
#: was written for Oobabooga. Passed on like any other field.
OOBABOOGA_FIELDS = frozenset({"mode", "character", "preset", "truncation_length", "instruction_template",
                              "instruction_template_str", "chat_template_str", "chat_instruct_command",
                              "continue_"})


@dataclass(frozen=True)
class CompletionRequest:
    """A request dict, checked: what the failover chain needs to answer it."""

    messages: list[dict[str, str]]
    model: str | None
    gen: dict[str, Any]
    include_usage: bool
    #: the fields the chain does not interpret, and the messages, as given: servers receive
    #: them, local models not
    extra: dict[str, Any]
    #: the request has text-generation-webui's own fields: its stream is Oobabooga's
    #: (``completions.ChunkMaker``)
    oobabooga: bool = False
    #: a text completion (``parse_text_request``): the one message is a prompt to continue
    raw: bool = False


class BadRequestField(InvalidSettings):
    """A request field with a wrong value; ``param`` names it, as OpenAI's errors do."""

    def __init__(self, param: str, message: str) -> None:
        super().__init__(message if message.startswith(param) else f"{param}: {message}")
        self.param = param


def parse_request(request: Any) -> CompletionRequest:
    """Check an OpenAI chat-completions request.

    Raises:
        InvalidSettings: a field is missing or wrong; the message names it.
    """
    if not isinstance(request, Mapping):
        raise BadRequestField("request", f"must be a dict with 'messages', not {type(request).__name__}")
    if "messages" not in request:
        raise BadRequestField("messages", "missing: give a list of {'role': ..., 'content': ...}")
    request = well_formed(request)  # what servers are sent as given, too
    try:
        messages = check_messages(request["messages"])
    except InvalidSettings as exc:
        raise BadRequestField("messages", str(exc)) from None
    model = request.get("model")
    if model is not None and not isinstance(model, str):
        raise BadRequestField("model", f"must be text, not {type(model).__name__}")
    gen = {k: request[k] for k in GEN_FIELDS if request.get(k) is not None}
    # the length limit by OpenAI's names, or llama.cpp's (``n_predict``, which Z-WAIF's
    # pre-release sends, and Ollama's ``num_predict`` becomes), the first one given
    limit = next((f for f in ("max_completion_tokens", "max_tokens", "n_predict")
                  if request.get(f) is not None), "max_tokens")
    value = request.get(limit)
    # llama.cpp's and Ollama's -1 (no limit) and -2 (fill the context): the chain's own limit
    unlimited = limit == "n_predict" and isinstance(value, (int, float)) and value < 0
    if value is not None and not unlimited:
        gen["max_tokens"] = value
    try:
        GenerationParams.from_kwargs(**gen)  # refuse bad values here, naming the request's field
    except InvalidSettings as exc:
        field = exc.problems[0].split("=", 1)[0] if exc.problems else "request"
        raise BadRequestField(limit if field == "max_tokens" else field, str(exc)) from None
    options = request.get("stream_options")
    if options is not None and not isinstance(options, Mapping):
        raise BadRequestField("stream_options", "must be a dict such as {'include_usage': true}")
    n = request.get("n")
    if n is not None and n != 1:
        raise BadRequestField("n", f"n={n!r}: one choice per request is supported; send n=1")
    _check_ollamas_fields(request)
    return CompletionRequest(messages=messages, model=model or None, gen=gen,
                             include_usage=bool(options and options.get("include_usage")),
                             extra=_passed_on(request), oobabooga=not OOBABOOGA_FIELDS.isdisjoint(request))


def parse_text_request(request: Any) -> CompletionRequest:
    """Check an OpenAI text-completions request (``/v1/completions``, which Z-WAIF's
    pre-release sends for instruction formats it writes itself): its ``prompt`` becomes the
    one message of a ``raw`` request, continued as it is. The other fields are read as a
    chat's.

    Raises:
        InvalidSettings: a field is missing or wrong; the message names it.
    """
    if not isinstance(request, Mapping):
        raise BadRequestField("request", f"must be a dict with 'prompt', not {type(request).__name__}")
    prompt = request.get("prompt")
    if isinstance(prompt, list) and len(prompt) == 1:
        prompt = prompt[0]
    if not isinstance(prompt, str) or not prompt.strip():
        raise BadRequestField("prompt", "give the text to continue, as one string")
    # what would make the answer other than the prompt's continuation, which is what a
    # target that takes over a cut answer goes on with
    if request.get("echo"):
        raise BadRequestField("echo", "the prompt is not sent back: leave echo out, or false")
    if request.get("suffix"):
        raise BadRequestField("suffix", "text after the completion (insertion) is not supported")
    if request.get("best_of") not in (None, 1):
        raise BadRequestField("best_of", "one completion per request is made: leave best_of out, or 1")
    for field in ("tools", "functions"):
        if request.get(field):
            raise BadRequestField(field, "a text completion cannot call tools: use /v1/chat/completions")
    try:
        checked = parse_request({**request, "messages": [{"role": "user", "content": prompt}]})
    except BadRequestField as exc:
        if exc.param != "messages":
            raise
        said = str(exc).removeprefix("messages: ").replace("messages hold", "prompt holds")
        raise BadRequestField("prompt", said) from None
    # logprobs are not read from any target: every answer says null
    extra = {k: v for k, v in checked.extra.items() if k not in ("messages", "prompt", "logprobs", "echo",
                                                                 "suffix", "best_of")}
    return replace(checked, extra=extra, raw=True, oobabooga=False)


def _passed_on(request: Mapping[Any, Any]) -> dict[str, Any]:
    """The fields the chain does not read, and the host's own messages, checked to be JSON a
    server can be sent: a value that is not would otherwise fail the primary's request and
    count against its breaker."""
    extra = {k: v for k, v in request.items() if k not in READ_FIELDS}
    extra["messages"] = list(request["messages"])
    for key, value in extra.items():
        if not isinstance(key, str):
            raise BadRequestField("request", f"field names must be text, not {type(key).__name__}")
        try:
            json.dumps(value, allow_nan=False)
        except (TypeError, ValueError) as exc:
            raise BadRequestField(key, f"cannot be sent on as JSON: {exc}") from None
    return extra


#: A duration as Ollama reads ``keep_alive`` (Go's time.ParseDuration): "5m", "1h30m", "-1s".
_DURATION = re.compile(r"-?(\d+(\.\d*)?|\.\d+)(ns|us|µs|ms|s|m|h)((\d+(\.\d*)?|\.\d+)(ns|us|µs|ms|s|m|h))*")


def _check_ollamas_fields(request: Mapping[str, Any]) -> None:
    """Refuse what an Ollama main API would refuse of the fields passed on to it as they
    came: sent on, its 400 would count against a healthy server and fall back."""
    keep = request.get("keep_alive")
    if keep is not None and not (
            (isinstance(keep, (int, float)) and not isinstance(keep, bool))
            or (isinstance(keep, str) and (keep == "0" or _DURATION.fullmatch(keep)))):
        raise BadRequestField("keep_alive", f"keep_alive={keep!r}: give seconds (a number; -1 keeps "
                                            "the model loaded) or a duration such as \"5m\" or \"1h\"")
    options = request.get("options")
    for name in ("num_ctx", "num_predict", "num_keep", "num_batch", "num_gpu", "num_thread"):
        value = options.get(name) if isinstance(options, Mapping) else None
        # Ollama takes any JSON number here (its clients send 1.0), not text or true
        if value is not None and (isinstance(value, bool) or not isinstance(value, (int, float))):
            raise BadRequestField(f"options.{name}", f"options.{name}={value!r}: give a whole number")
