"""The interface every runtime implements: load, stream, unload.

A backend streams text pieces for OpenAI-style messages. ``prefix`` is text the
assistant has already said (a previous target died mid-answer): the backend
continues it instead of starting over, so the reader sees no duplicate.
"""

from __future__ import annotations

import ctypes
import math
import os
import re
import sys
import threading
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from pydantic import Field, ValidationError, field_validator

from .._model import Model
from ..errors import InvalidSettings

if TYPE_CHECKING:
    from ..fit import Compatibility

__all__ = ["Backend", "Cancel", "GenerationParams", "LocalBackend", "Message", "TargetFailed",
           "ToolCalls", "Usage", "check_messages", "well_formed"]

Message = Mapping[str, Any]
MAX_PROMPT_CHARS = 2_000_000


class TargetFailed(Exception):
    """A target could not answer. ``retryable`` errors may succeed when tried again."""

    def __init__(self, message: str, *, retryable: bool = False, fast: bool = False,
                 hung: bool = False) -> None:
        super().__init__(message)
        self.retryable = retryable
        self.fast = fast  # the target is down for sure (connection refused): do not wait on it
        self.hung = hung  # the deadline for its first piece passed without a word from it


class Cancel(threading.Event):
    """A cancel event that can also tell a runtime at once, not only at its next token.

    Any ``threading.Event`` works as a ``cancel``: a backend looks at it between pieces.
    This one also runs the callbacks given to ``on_set`` when it is set, so that
    llama.cpp can be told to stop inside a decode: a long prompt takes seconds to
    evaluate on a CPU, and the model stays locked until it ends.
    """

    def __init__(self) -> None:
        super().__init__()
        self._callbacks: list[Callable[[], None]] = []
        self._callbacks_lock = threading.Lock()

    def set(self) -> None:
        with self._callbacks_lock:  # held while they run: ``on_set``'s remover waits for them
            super().set()
            callbacks, self._callbacks = self._callbacks, []
            for callback in callbacks:
                callback()

    def on_set(self, callback: Callable[[], None]) -> Callable[[], None]:
        """Run ``callback`` (a quick one, on the thread that sets this) when this is set;
        at once if it is set already. Returns a function that removes it: once that has
        returned, ``callback`` does not run any more."""
        with self._callbacks_lock:
            if not self.is_set():
                self._callbacks.append(callback)
                return lambda: self._remove(callback)
        callback()
        return lambda: None

    def _remove(self, callback: Callable[[], None]) -> None:
        with self._callbacks_lock:
            if callback in self._callbacks:
                self._callbacks.remove(callback)


@dataclass(frozen=True)
class ToolCalls:
    """A server's tool-call deltas (``delta.tool_calls``), yielded among the text pieces and
    relayed as given. Unlike text, a tool call that a failure cuts off is never continued by
    another target: its arguments would not survive the seam."""

    deltas: tuple[dict[str, Any], ...]


@dataclass
class Usage:
    """What the runtime says of one answer besides its pieces, filled in by the backend
    that gives it: token counts and, from a server, its finish reason and model name.

    None means the runtime cannot say (the host's own callable, a server that sends no
    usage): callers report nothing rather than a guess.
    """

    prompt_tokens: int | None = None
    completion_tokens: int | None = None
    #: why the server ended its answer ("stop", "length", ...), as it said
    finish_reason: str | None = None
    #: the server's name for the model that answered, from its first event that has one
    model: str | None = None


class GenerationParams(Model):
    """OpenAI's generation names, validated."""

    #: a local model answers at most what its context leaves; a server, as it is asked
    max_tokens: int = Field(256, ge=1, le=1 << 20)
    temperature: float = Field(0.7, ge=0.0, le=5.0)
    top_p: float = Field(0.95, ge=0.0, le=1.0)  # 0: the likeliest token only
    stop: list[str] = Field(default_factory=list)
    seed: int | None = None

    @field_validator("temperature", "top_p")
    @classmethod
    def _finite(cls, value: float) -> float:
        if not math.isfinite(value):
            raise ValueError("must be a finite number")
        return value

    @field_validator("seed")
    @classmethod
    def _random_when_negative(cls, value: int | None) -> int | None:
        # -1 is text-generation-webui's and llama.cpp's "random" (SillyTavern sends it each
        # time): no seed, so that a local model keeps its cached prompt
        return None if value is not None and value < 0 else value

    @field_validator("stop", mode="before")
    @classmethod
    def _stop_list(cls, value: Any) -> Any:
        return [value] if isinstance(value, str) else ([] if value is None else value)

    @classmethod
    def from_kwargs(cls, **gen: Any) -> GenerationParams:
        """Build from ``chat(**gen)`` keywords; unknown or bad values raise InvalidSettings."""
        unknown = sorted(set(gen) - set(cls.model_fields))
        if unknown:
            raise InvalidSettings(f"unknown generation option(s) {', '.join(unknown)}; "
                                  f"use {', '.join(cls.model_fields)}")
        try:
            return cls(**{k: v for k, v in gen.items() if v is not None})
        except ValidationError as exc:
            problems = [f"{e['loc'][0]}={e.get('input')!r}: {e['msg']}" for e in exc.errors()]
            raise InvalidSettings("; ".join(problems), problems=problems) from None


#: A piece with no text: the server works on the answer (a model that thinks first sends
#: its reasoning, which hosts are not shown) but has given none of it yet. It keeps the
#: deadline for the first piece and the stall limit from taking the server for hung; it is
#: not a token, and it is not text the host sees.
ALIVE = ""

#: The role of the one message of a text completion (``/v1/completions``): its content is a
#: prompt to continue as it is, not a chat turn to put in the model's chat template.
RAW_ROLE = "raw"


def raw_prompt(messages: Sequence[Mapping[str, Any]]) -> str | None:
    """The prompt of a text completion's messages (``RAW_ROLE``), None for a chat."""
    if len(messages) == 1 and messages[0].get("role") == RAW_ROLE:
        return str(messages[0].get("content") or "")
    return None


#: What a text-only model reads where a message had an image. Told, it says it cannot see
#: it; not told, it describes a picture it never saw (a host's camera view, spoken aloud).
IMAGE_PLACEHOLDER = "\n[An image is attached here, which you cannot see.]\n"
#: An image inline in a message's text, as text-generation-webui's multimodal chats take it
#: and Z-WAIF sends its camera view: ``<img src="data:image/jpeg;base64,...">``. Read as text,
#: a webcam frame is some 100,000 tokens of base64.
INLINE_IMAGE = re.compile(r"""<img\s[^<>]{0,512}?src\s*=\s*(["'])data:image/[^"'<>]*\1[^<>]{0,512}>""",
                          re.IGNORECASE)  # each scan bounded: a crafted text cannot make it quadratic


def well_formed(value: Any) -> Any:
    """``value`` (text, or the lists and dicts of a request) as UTF-8 can hold it: a lone
    surrogate becomes U+FFFD, and a pair given as two code points becomes its character.

    A JavaScript host that cuts a string in the middle of an emoji sends JSON's
    ``"\\ud83d"``, and a command line in another encoding reaches Python with surrogates for
    its bytes: such text failed at every target as it was encoded, and counted against the
    main API's circuit. Well-formed text is returned as it is, not copied.
    """
    if isinstance(value, str):
        try:
            value.encode("utf-8")
            return value
        except UnicodeEncodeError:
            return value.encode("utf-16", "surrogatepass").decode("utf-16", "replace")
    if isinstance(value, Mapping):
        return {well_formed(key): well_formed(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [well_formed(item) for item in value]
    return value


def check_messages(messages: Sequence[Message]) -> list[dict[str, str]]:
    """OpenAI-style messages as plain ``{"role", "content"}`` text dicts, or InvalidSettings
    saying what is wrong. Content parts are joined into their text, an image part (or an
    image inline in the text, ``INLINE_IMAGE``) as ``IMAGE_PLACEHOLDER``; an assistant
    message that only calls tools has empty content (the servers receive the messages as
    given: see ``completions``)."""
    if isinstance(messages, (str, bytes)) or not isinstance(messages, Sequence) or not messages:
        raise InvalidSettings("messages must be a non-empty list of {'role': ..., 'content': ...}")
    out, total = [], 0
    for i, message in enumerate(messages):
        if not isinstance(message, Mapping):
            raise InvalidSettings(f"message {i} is not a dict with 'role' and 'content'")
        role, content = message.get("role"), message.get("content")
        if role not in ("system", "user", "assistant", "tool"):
            raise InvalidSettings(f"message {i} has role {role!r}; use system, user, assistant or tool")
        if isinstance(content, list):  # OpenAI content parts
            content = "".join(_part_text(p) for p in content if isinstance(p, Mapping))
        if isinstance(content, str) and "<" in content:
            content = INLINE_IMAGE.sub(IMAGE_PLACEHOLDER, content)
        if content is None and role == "assistant" and message.get("tool_calls"):
            content = ""
        if not isinstance(content, str):
            raise InvalidSettings(f"message {i} has no text content")
        content = well_formed(content)
        total += len(content)
        out.append({"role": role, "content": content})
    if not any(m["content"].strip() for m in out):
        raise InvalidSettings("the messages hold no text: there is nothing to answer")
    if total > MAX_PROMPT_CHARS:
        raise InvalidSettings(f"the messages hold {total} characters; the limit is {MAX_PROMPT_CHARS}")
    return out


def _part_text(part: Mapping[str, Any]) -> str:
    if part.get("type") in ("image_url", "input_image", "image"):
        return IMAGE_PLACEHOLDER
    text = part.get("text", "")
    return text if isinstance(text, str) else ""


class Backend(ABC):
    """One runtime serving one model (or one server)."""

    #: what ChatResult.source says when this backend answers
    source: str = "local"

    def __init__(self, name: str) -> None:
        self.name = name

    @abstractmethod
    def stream(self, messages: list[dict[str, str]], params: GenerationParams, *,
               prefix: str = "", deadline_s: float | None = None,
               cancel: threading.Event | None = None,
               usage: Usage | None = None) -> Iterator[str | ToolCalls]:
        """Yield the answer piece by piece (text, or a server's tool calls), continuing after
        ``prefix``.

        ``deadline_s`` is how long the caller will wait for the first piece;
        ``cancel`` is set when the caller gives up (free sockets, stop early);
        ``usage`` receives the token counts where the runtime knows them.
        Raises TargetFailed when the target cannot answer.
        """

    def load(self) -> None:  # noqa: B027 - remote backends have nothing to load
        """Load the model, if this backend has one. Idempotent."""

    def unload(self) -> None:  # noqa: B027 - remote backends have nothing to free
        """Free the model's memory. Idempotent."""

    @property
    def loaded(self) -> bool:
        return True

    def close(self) -> None:
        self.unload()


def _give_back_freed_memory() -> None:
    """Have glibc hand the memory a model freed back to the system. Freed in small pieces,
    across the arenas of the threads that generated, it stays the process's: the RSS grew
    with each keep_alive unload and reload (``benchmarks/bench_unload.py``). Elsewhere
    (Windows, macOS, musl) there is no such call, and nothing is done."""
    if not sys.platform.startswith("linux"):
        return
    try:
        trim = ctypes.CDLL(None).malloc_trim
    except (OSError, AttributeError):  # not glibc
        return
    trim(0)


class LocalBackend(Backend):
    """A model held in this process. One generation, load or unload runs at a time
    (llama.cpp contexts are not thread-safe); others queue on the lock. A model that
    was unloaded while idle is loaded again by its next generation.

    Args:
        fit: the fit it is built from (``LocalModels.fit``); it tells what the
            loaded model holds, and calibration compares a real load with it.
        vram_probe: per-process VRAM in MiB for a pid, to measure what a load added.
    """

    def __init__(self, name: str, *, fit: Compatibility | None = None,
                 vram_probe: Callable[[int], float | None] | None = None) -> None:
        super().__init__(name)
        self._lock = threading.Lock()
        self.fit = fit  # the fit it was built from: what a load of it should hold
        self.vram_probe = vram_probe  # per-process VRAM in MiB for a pid, None where unknown
        # (RAM, VRAM) the last load added; the VRAM without the runtime's own GPU context
        self.measured_mb: tuple[float, float | None] | None = None

    @property
    @abstractmethod
    def loaded(self) -> bool: ...

    def replan(self, fit: Compatibility) -> None:
        """Load by ``fit`` next time: a smaller plan after a load ran out of memory.
        Runtimes with knobs (layers, context) override this to apply them."""
        with self._lock:
            self.fit = fit

    @abstractmethod
    def _load_locked(self) -> None:
        """Load the model (the lock is held; a no-op when loaded). Raises ModelLoadError."""

    @abstractmethod
    def _unload_locked(self) -> None:
        """Free the model (the lock is held, the model is loaded)."""

    @abstractmethod
    def _generate(self, messages: list[dict[str, str]], params: GenerationParams, prefix: str,
                  cancel: threading.Event | None, usage: Usage) -> Iterator[str]:
        """Yield the answer and count its tokens into ``usage`` (the lock is held, the
        model is loaded)."""

    # What the runtime's GPU context holds right after a process's first load, before any
    # kernel ran (subclasses measure it); taken out of ``measured_mb`` so that a first load
    # and a later one measure the same thing: the model's own buffers.
    gpu_context_mb = 0.0

    def import_runtime(self) -> None:
        """Import the runtime (llama-cpp-python, torch and transformers), so that what the
        import holds is not counted as the model's. Raises BackendUnavailable."""

    def load(self) -> None:
        """Load the model and record the memory the load added (``measured_mb``)."""
        with self._lock:
            if self.loaded:
                return
            import psutil

            self.import_runtime()  # torch alone holds ~230 MiB: the model's first load is not charged it

            pid = os.getpid()
            rss = psutil.Process(pid).memory_info().rss
            vram = self.vram_probe(pid) if self.vram_probe else None
            self._load_locked()
            added_ram = (psutil.Process(pid).memory_info().rss - rss) / (1024 * 1024)
            now = self.vram_probe(pid) if self.vram_probe else None
            added_vram = None
            if now is not None:
                added_vram = now - (vram or 0.0) - (0.0 if vram else self.gpu_context_mb)
            self.measured_mb = (added_ram, added_vram)

    def unload(self) -> None:
        with self._lock:
            if self.loaded:
                self._unload_locked()
                _give_back_freed_memory()

    def count_tokens(self, messages: list[dict[str, str]]) -> int | None:
        """Tokens of the prompt these messages make (None when the runtime cannot say)."""
        return None

    def reset_decode_stats(self) -> None:
        """Start counting decode time afresh (runtimes that keep their own counters)."""

    def decode_stats(self) -> tuple[int, float] | None:
        """(tokens decoded, seconds spent decoding them) since the reset, as the runtime
        itself measured them (llama-bench's tg); None when it keeps no such counters."""
        return None

    def stream(self, messages: list[dict[str, str]], params: GenerationParams, *,
               prefix: str = "", deadline_s: float | None = None,
               cancel: threading.Event | None = None, usage: Usage | None = None) -> Iterator[str]:
        from ..errors import ModelLoadError

        with self._lock:
            try:
                self._load_locked()
            except ModelLoadError as exc:
                raise TargetFailed(str(exc)) from exc
            yield from self._generate(messages, params, prefix, cancel,
                                      usage if usage is not None else Usage())
