"""A drop-in for Z-WAIF's ``API/fallback_api.py`` (its ``pre-release`` branch).

Z-WAIF replaces that file with one line::

    from zwaif_fallback.fallback_api import *

and its web UI, settings, start and API controller then call zwaif-fallback for every
function they import from it, with the names, arguments and return shapes they read.
Everything is answered by the default manager (``default_manager()``), the one
``try_fallbacks`` uses: a model switched in Z-WAIF's UI answers its next fallback chat.

The functions, in three groups:

* chats (here): ``try_fallbacks`` and ``api_call`` answer an OpenAI request through the
  failover chain; ``generate_streaming_response`` and ``generate_image_response`` answer
  messages as text; ``FallbackLLM`` (``get_fallback_llm()``) and ``switch_fallback_model``
  are the local model.
* the machine and its models (``fallback_api_models``): system info, VRAM in GiB, each
  model's fit, discovery, and the fallback model on disk.
* speed, ranking, health and monitoring (``fallback_api_health``).

Importing this module is cheap: the manager is made on the first call, and nothing is
downloaded, loaded or written to ``.env``, ever.
"""

from __future__ import annotations

import base64
import logging
import mimetypes
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from .errors import FallbackError
from .fallback_api_health import (
    get_fallback_model_performance_stats,
    get_fallback_system_health,
    get_health_recommendations,
    monitor_fallback_performance,
    optimize_fallback_model_selection,
)
from .fallback_api_models import (
    auto_setup_fallback_model,
    check_model_compatibility,
    default_manager,
    discover_models,
    ensure_tinyllama_gguf_model,
    estimate_model_vram_requirement,
    get_available_vram_gb,
    get_model_info,
    get_optimal_fallback_model,
    get_system_info,
)

__all__ = [
    "FallbackLLM",
    "api_call",
    "auto_setup_fallback_model",
    "check_model_compatibility",
    "discover_models",
    "ensure_tinyllama_gguf_model",
    "estimate_model_vram_requirement",
    "generate_image_response",
    "generate_streaming_response",
    "get_available_vram_gb",
    "get_fallback_llm",
    "get_fallback_model_performance_stats",
    "get_fallback_system_health",
    "get_health_recommendations",
    "get_model_info",
    "get_optimal_fallback_model",
    "get_system_info",
    "monitor_fallback_performance",
    "optimize_fallback_model_selection",
    "switch_fallback_model",
    "try_fallbacks",
]

log = logging.getLogger(__name__)

#: the largest image sent on to the servers, as OpenAI takes them; a bigger one is only named
MAX_IMAGE_BYTES = 20 * 2**20
#: the last piece of a stream that nothing could answer (Z-WAIF speaks what it reads)
FAILED_LINE = "(The fallback could not answer just now.)"
#: "[Platform: ...]" tags Z-WAIF puts in a message, and its names for them
PLATFORMS = {"[Platform: Twitch Chat]": "twitch", "[Platform: Discord": "discord",
             "[Platform: Web Interface]": "webui", "[Platform: Voice Chat]": "voice",
             "[Platform: Minecraft]": "minecraft", "[Platform: Alarm]": "alarm",
             "[Platform: Hangout]": "hangout"}
#: the longest message each platform takes (Minecraft's chat line, Twitch's, Discord's)
PLATFORM_LIMITS = {"minecraft": 256, "twitch": 500, "discord": 2000}


def try_fallbacks(request: dict[str, Any]) -> dict[str, Any]:
    """``zwaif_fallback.try_fallbacks``: an OpenAI ``chat.completion`` dict, or an OpenAI
    error object when nothing could answer. Never raises."""
    from . import default

    return default.try_fallbacks(request)


def api_call(request: dict[str, Any]) -> dict[str, Any]:
    """``try_fallbacks``: an OpenAI ``chat.completion`` dict (read
    ``["choices"][0]["message"]["content"]``), or ``{"error": {...}, "attempts": [...]}``
    when nothing could answer. Never raises."""
    return try_fallbacks(request)


def _text_of(response: dict[str, Any]) -> str:
    """The answer's text; FallbackError with the chain's own message when there is none."""
    if "choices" in response:
        return str(response["choices"][0]["message"].get("content") or "")
    raise FallbackError(response["error"]["message"])


def _request(messages: list[dict[str, Any]], max_tokens: int, temperature: float,
             stop: list[str] | None) -> dict[str, Any]:
    request: dict[str, Any] = {"messages": messages, "max_tokens": max_tokens, "temperature": temperature}
    if stop:
        request["stop"] = stop
    return request


def generate_streaming_response(messages: list[dict[str, Any]], max_tokens: int = 200,
                                temperature: float = 0.7,
                                stop_sequences: list[str] | None = None) -> Iterator[str]:
    """The answer through the failover chain, piece by piece as text.

    When nothing can answer, the log says why and the last piece is a short line saying
    that the fallback failed (Z-WAIF speaks what it reads here), so reading never raises.
    """
    try:
        chunks = default_manager().stream_chat_completion(
            _request(messages, max_tokens, temperature, stop_sequences))
    except Exception as exc:  # a broken environment: the manager cannot be made
        chunks = iter([{"error": {"message": str(exc)}}])
    for chunk in chunks:
        if "error" in chunk:
            log.error("fallback stream failed: %s", chunk["error"]["message"])
            yield FAILED_LINE
            return
        for choice in chunk.get("choices", []):
            piece = choice.get("delta", {}).get("content")
            if piece:
                yield piece


def generate_image_response(messages: list[dict[str, Any]], image_path: str, max_tokens: int = 300,
                            temperature: float = 0.7, stop_sequences: list[str] | None = None) -> str:
    """An answer about an image, through the failover chain.

    The image at ``image_path`` goes with the last user message as an OpenAI image part:
    a server that reads images sees it, and a local (text-only) model is told that an
    image it cannot see is attached, as ``serve`` does. A missing or oversized image is
    only named that way.

    Returns:
        The answer's text, or "" when nothing could answer (the log says why); Z-WAIF then
        uses its own apology.
    """
    try:
        with_image = _with_image(messages, Path(image_path))
        return _text_of(try_fallbacks(_request(with_image, max_tokens, temperature, stop_sequences)))
    except Exception as exc:
        log.error("fallback image answer failed: %s", exc)
        return ""


def _with_image(messages: list[dict[str, Any]], path: Path) -> list[dict[str, Any]]:
    from .backends.base import IMAGE_PLACEHOLDER

    try:
        data = path.read_bytes() if path.stat().st_size <= MAX_IMAGE_BYTES else None
    except OSError as exc:
        log.warning("image %s cannot be read (%s): the model is told one is attached", path, exc)
        data = None
    if data is not None:
        kind = mimetypes.guess_type(path.name)[0] or "image/png"
        url = f"data:{kind};base64,{base64.b64encode(data).decode('ascii')}"
        image: dict[str, Any] = {"type": "image_url", "image_url": {"url": url}}
    else:
        image = {"type": "text", "text": IMAGE_PLACEHOLDER}
    out = [dict(m) for m in messages]
    last = next((i for i in range(len(out) - 1, -1, -1) if out[i].get("role") == "user"), None)
    if last is None:
        out.append({"role": "user", "content": [image]})
    else:
        content = out[last].get("content")
        parts = content if isinstance(content, list) else [{"type": "text", "text": str(content or "")}]
        out[last]["content"] = [*parts, image]
    return out


def switch_fallback_model(new_model_name: str) -> bool:
    """Load ``new_model_name`` as the local fallback model; the next fallback chat that
    gets to the local models starts with it.

    Nothing is saved: Z-WAIF's callers save the choice in ``API_FALLBACK_MODEL`` themselves,
    which zwaif-fallback reads as ``preferred_model`` when it starts (and which pins it, so
    saving it here as well would only log that it cannot).

    Returns:
        True when it is loaded; False when it is not (unknown, unusable, does not fit, its
        load failed), with the reason in the log.
    """
    try:
        default_manager().switch_model(new_model_name, persist=False)
    except Exception as exc:
        log.warning("could not switch the fallback model to %s: %s", new_model_name, exc)
        return False
    return True


class FallbackLLM:
    """The local fallback model, as Z-WAIF's code holds it: a view of the default manager.

    Making one loads nothing: the model loads on ``initialize()``, ``switch_model()`` or
    the first fallback chat that gets to it.

    Args:
        model_name: the local model to use first; "" lets the ranking pick.
    """

    def __init__(self, model_name: str = "") -> None:
        self._requested = model_name
        self.lock = threading.Lock()

    @property
    def model_name(self) -> str:
        """The model the manager holds, else the one asked for, else the preferred one."""
        manager = default_manager()
        held = manager.current_model
        if held is not None:
            return held.name
        return self._requested or manager.settings.preferred_model

    @property
    def is_initialized(self) -> bool:
        """Whether a local model is in memory now."""
        return default_manager().loaded_model() is not None

    @property
    def is_gguf(self) -> bool:
        return self.is_gguf_model(self.model_name)

    def is_gguf_model(self, model_name: str) -> bool:
        """Whether ``model_name`` is a GGUF model (llama.cpp), from its file when it is found."""
        try:
            return default_manager().find_model(model_name).format == "gguf"
        except Exception:
            return model_name.lower().endswith(".gguf")

    def switch_model(self, new_model_name: str) -> bool:
        """``switch_fallback_model``; the model asked for is then this one."""
        with self.lock:
            switched = switch_fallback_model(new_model_name)
            if switched:
                self._requested = new_model_name
            return switched

    def initialize(self) -> None:
        """Load the model now (the ranking's best when none was named).

        Raises:
            FallbackError: the model cannot be found, does not fit or fails to load.
        """
        manager = default_manager()
        name = self._requested or manager.settings.preferred_model
        if not name:
            name = manager.optimize(apply=False).selected or ""
        if not name:
            raise FallbackError("no local model can answer on this machine: see get_fallback_system_health()")
        manager.switch_model(name, persist=False)

    def get_prompt_template(self, language: str | None = None) -> dict[str, str]:
        """ChatML's turns (``system``, ``user``, ``assistant``, ``start_token``). A local model
        is prompted with its own chat template from its file; this is for show."""
        return {"system": "<|im_start|>system\n{content}<|im_end|>\n",
                "user": "<|im_start|>user\n{content}<|im_end|>\n",
                "assistant": "<|im_start|>assistant\n{content}<|im_end|>\n",
                "start_token": "<|im_start|>assistant\n"}

    def format_prompt(self, messages: list[dict[str, Any]], language: str | None = None) -> str:
        """``messages`` as one ChatML prompt, ready for the assistant's turn."""
        template = self.get_prompt_template(language)
        turns = [template[m["role"]].format(content=m.get("content") or "")
                 for m in messages if m.get("role") in ("system", "user", "assistant")]
        return "".join(turns) + template["start_token"]

    def generate(self, messages: list[dict[str, Any]], stream: bool = False,
                 **kwargs: Any) -> str | Iterator[str]:
        """An answer through the failover chain (as ``try_fallbacks``); the model this
        process holds answers first among the local ones (``switch_model`` loads one).

        Args:
            kwargs: ``max_new_tokens`` (or ``max_tokens``; 450 when neither), ``temperature``,
                ``top_p``, ``stop``; others (``language``, ``top_k``...) are ignored.

        Returns:
            The text, or with ``stream`` an iterator of its pieces.

        Raises:
            FallbackError: nothing could answer; the message says why (every Z-WAIF call
                site catches it). A stream ends with ``FAILED_LINE`` instead.
        """
        request = _request(messages, int(kwargs.get("max_new_tokens") or kwargs.get("max_tokens") or 450),
                           float(kwargs.get("temperature", 0.7)), kwargs.get("stop"))
        if "top_p" in kwargs:
            request["top_p"] = kwargs["top_p"]
        if stream:
            return generate_streaming_response(messages, request["max_tokens"], request["temperature"],
                                               request.get("stop"))
        return _text_of(default_manager().chat_completion(request))

    def format_response(self, text: str) -> dict[str, str]:
        """An answer cleaned for the platform its ``[Platform: ...]`` tag names.

        Returns:
            ``content`` (without a leading "Assistant:", cut to the platform's longest
            message), ``role`` ("assistant") and ``platform`` ("personal" without a tag).
        """
        platform = next((name for tag, name in PLATFORMS.items() if tag in text), "personal")
        content = text.strip()
        if content.startswith("Assistant:"):
            content = content[len("Assistant:"):].strip()
        if platform == "minecraft":
            content = content.replace("§", "")  # its colour codes
        limit = PLATFORM_LIMITS.get(platform)
        if limit is not None and len(content) > limit:
            content = content[:limit - 3] + "..."
        return {"content": content.strip(), "role": "assistant", "platform": platform}


_llm_lock = threading.Lock()
_llm: FallbackLLM | None = None


def get_fallback_llm() -> FallbackLLM:
    """The process's ``FallbackLLM``, made on first use (loading nothing); its model is
    ``API_FALLBACK_MODEL``, which zwaif-fallback's settings read as ``preferred_model``."""
    global _llm
    with _llm_lock:
        if _llm is None:
            _llm = FallbackLLM()
        return _llm
