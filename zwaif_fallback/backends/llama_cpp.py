"""GGUF models through llama-cpp-python.

The prompt is built with the chat template stored in the GGUF (as llama-cpp-python's
own chat handler does), so an answer cut off elsewhere can be continued exactly:
the partial text is appended after the assistant turn's opening.

Some llama.cpp failures abort the process instead of raising: before a file is loaded
in this process for the first time, a child process loads it (``llama_preflight``).
"""

from __future__ import annotations

import ctypes
import logging
import os
import sys
import threading
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any

from ..errors import ModelLoadError, OutOfMemory
from ..memory import CUDA_LOAD_CONTEXT_MB
from .base import Cancel, GenerationParams, LocalBackend, TargetFailed, Usage, raw_prompt
from .llama_log import LlamaLog
from .llama_preflight import import_llama, preflight

if TYPE_CHECKING:
    from ..fit import Compatibility

__all__ = ["LlamaCppBackend"]

log = logging.getLogger(__name__)

_KV_TYPES = {"f16": "GGML_TYPE_F16", "q8_0": "GGML_TYPE_Q8_0", "q4_0": "GGML_TYPE_Q4_0"}

def _physical_cores() -> int:
    import psutil

    return max(1, psutil.cpu_count(logical=False) or os.cpu_count() or 1)


# What llama.cpp logs when a buffer cannot be had: cudaMalloc, Vulkan, Metal, or the host's
# own allocator ("insufficient memory", or mmap/malloc failing under a limit).
class _Abort:
    """A flag that stops the decode in progress: a long prompt takes seconds to evaluate on
    a CPU, and the model stays locked until the decode returns.

    llama.cpp calls its abort callback after each node of the compute graph (hundreds a
    token), on the decoding thread, while its other threads wait. A Python callback would
    take the GIL each time, so the callback is C code: libc's ``strlen`` over a two-byte
    buffer. It returns 1 (abort) once the first byte is set, and 0 while it is not (the
    second byte stays 0). The CPU backend checks it; layers on a GPU run to their end.
    Where libc cannot be found, the generation still stops at its next token.
    """

    def __init__(self, llama_cpp: Any, ctx: Any) -> None:
        self._flag = ctypes.create_string_buffer(2)
        self._reader = _strlen(llama_cpp)  # C code in libc; kept beside the flag it reads
        if self._reader is not None:
            llama_cpp.llama_set_abort_callback(ctx, self._reader, ctypes.addressof(self._flag))

    def set(self) -> None:
        self._flag[0] = b"\x01"

    def clear(self) -> None:
        self._flag[0] = b"\x00"


def _strlen(llama_cpp: Any) -> Any:
    """libc's ``strlen`` as a ggml abort callback, or None where libc cannot be found."""
    try:
        libc = ctypes.cdll.msvcrt if sys.platform == "win32" else ctypes.CDLL(None)
        return ctypes.cast(libc.strlen, llama_cpp.ggml_abort_callback)
    except (OSError, AttributeError) as exc:
        log.debug("no abort callback for llama.cpp (%s): a cancel waits for the next token", exc)
        return None


def _devices(llama_cpp: Any, n_gpu_layers: int) -> dict[str, int]:
    """A CPU plan loads with no GPU device at all.

    With ``n_gpu_layers=0`` alone, a GPU build of llama.cpp still opens the GPU: a CUDA
    context, compute buffers and weights copied up for large batches (op offload). A CPU
    plan is made when the GPU is full, so it must take nothing there. ``split_mode`` NONE
    with ``main_gpu`` -1 makes llama.cpp clear its device list (src/llama.cpp).
    """
    if n_gpu_layers != 0:
        return {}
    return {"split_mode": llama_cpp.LLAMA_SPLIT_MODE_NONE, "main_gpu": -1}


class LlamaCppBackend(LocalBackend):
    """One GGUF model in this process; generations on it are queued (contexts are not thread-safe).

    Args:
        path: the GGUF file (the first shard of a split model).
        n_ctx, n_gpu_layers, flash_attn, kv_type: from the fit (llama.cpp's meanings).
        safe_load: check the file in a child process before the first load.
    """

    gpu_context_mb = CUDA_LOAD_CONTEXT_MB

    def __init__(self, name: str, path: str, *, n_ctx: int = 4096, n_gpu_layers: int = 0,
                 flash_attn: bool = False, kv_type: str = "f16", n_threads: int | None = None,
                 safe_load: bool = True, fit: Compatibility | None = None,
                 vram_probe: Callable[[int], float | None] | None = None) -> None:
        super().__init__(name, fit=fit, vram_probe=vram_probe)
        self.path = path
        self.n_ctx = n_ctx
        self.n_gpu_layers = n_gpu_layers
        self.flash_attn = flash_attn
        self.kv_type = kv_type
        # llama-cpp-python's default is half the logical cores; llama.cpp's own is the physical ones.
        self.n_threads = n_threads or _physical_cores()
        self.safe_load = safe_load
        self._llm: Any = None
        self._formatter: Any = None
        self._abort: _Abort | None = None

    @property
    def loaded(self) -> bool:
        return self._llm is not None

    def replan(self, fit: Compatibility) -> None:
        with self._lock:
            self.n_gpu_layers, self.n_ctx, self.fit = fit.gpu_layers, fit.n_ctx, fit

    def import_runtime(self) -> None:
        import_llama()

    def _load_locked(self) -> None:
        if self._llm is not None:
            return
        llama_cpp = import_llama()
        if self.safe_load:
            preflight(self.path)
        kv = getattr(llama_cpp, _KV_TYPES[self.kv_type])
        with LlamaLog(llama_cpp) as llama_log:
            try:
                self._llm = llama_cpp.Llama(
                    self.path, n_ctx=self.n_ctx, n_gpu_layers=self.n_gpu_layers,
                    flash_attn=self.flash_attn, type_k=kv, type_v=kv, n_threads=self.n_threads,
                    verbose=False, **_devices(llama_cpp, self.n_gpu_layers))
            except (ValueError, RuntimeError, OSError, MemoryError) as exc:
                plan = f"n_gpu_layers={self.n_gpu_layers}, n_ctx={self.n_ctx}"
                short = llama_log.out_of_memory()
                if short is not None or isinstance(exc, MemoryError):
                    raise OutOfMemory(f"{self.name} ran out of memory loading with {plan}: "
                                      f"{short or exc}") from exc
                why = llama_log.failure()
                raise ModelLoadError(f"llama.cpp could not load {self.name} ({plan}): {exc}"
                                     + (f" ({why})" if why else "")) from exc
        self._formatter = self._make_formatter(llama_cpp)
        self._abort = _Abort(llama_cpp, self._llm.ctx)
        log.info("loaded %s (n_ctx=%d, gpu_layers=%d)", self.name, self.n_ctx, self.n_gpu_layers)

    def _make_formatter(self, llama_cpp: Any) -> Any:
        template = self._llm.metadata.get("tokenizer.chat_template")
        if not template:
            return None
        from llama_cpp.llama_chat_format import Jinja2ChatFormatter

        model = self._llm._model
        eos_id, bos_id = self._llm.token_eos(), self._llm.token_bos()
        return Jinja2ChatFormatter(
            template=template,
            eos_token=model.token_get_text(eos_id) if eos_id != -1 else "",
            bos_token=model.token_get_text(bos_id) if bos_id != -1 else "",
            stop_token_ids=[eos_id],
        )

    def _unload_locked(self) -> None:
        self._llm.close()
        self._llm = self._formatter = self._abort = None
        log.info("unloaded %s", self.name)

    def _generate(self, messages: list[dict[str, str]], params: GenerationParams, prefix: str,
                  cancel: threading.Event | None, usage: Usage) -> Iterator[str]:
        abort = self._abort
        assert abort is not None  # loaded
        # serve's Cancel stops a decode in progress; any other event is seen between pieces.
        unhook = cancel.on_set(abort.set) if isinstance(cancel, Cancel) else None
        pieces: list[str] = []
        finish: str | None = None
        try:
            for chunk in self._completion(messages, params, prefix, usage):
                if cancel is not None and cancel.is_set():
                    return
                piece = chunk["choices"][0].get("text") or ""
                finish = chunk["choices"][0].get("finish_reason") or finish
                if piece:
                    pieces.append(piece)
                    yield piece
            # llama.cpp's own word: a piece holds a whole character, several tokens of a
            # Japanese answer, so counting pieces against max_tokens would miss "length"
            usage.finish_reason = usage.finish_reason or finish
        except (ValueError, RuntimeError) as exc:
            if cancel is not None and cancel.is_set():
                return  # the decode was aborted as asked (llama_decode returned 2)
            raise TargetFailed(f"llama.cpp failed while generating: {exc}") from exc
        finally:
            if unhook is not None:
                unhook()
            abort.clear()
            # The stream's chunks are not tokens (a multi-byte character waits for its last
            # token), so the answer is counted with the model's own tokenizer: ~0.1 ms. An
            # answer cut by its length generated its whole budget, whose last tokens may be
            # a character never finished, so never delivered: that budget is the count.
            cut = usage.finish_reason == "length" and usage.completion_tokens
            if not cut and self._llm is not None:
                text = "".join(pieces).encode("utf-8")
                usage.completion_tokens = len(self._llm.tokenize(text, add_bos=False, special=True)) \
                    if text else 0

    def count_tokens(self, messages: list[dict[str, str]]) -> int | None:
        with self._lock:
            self._load_locked()
            return len(self._prompt(messages, "")[0])

    def reset_decode_stats(self) -> None:
        with self._lock:
            if self._llm is not None:
                import llama_cpp

                llama_cpp.llama_perf_context_reset(self._llm.ctx)

    def decode_stats(self) -> tuple[int, float] | None:
        with self._lock:
            if self._llm is None:
                return None
            import llama_cpp

            perf = llama_cpp.llama_perf_context(self._llm.ctx)
            return (int(perf.n_eval), perf.t_eval_ms / 1000.0) if perf.n_eval else None

    def _prompt(self, messages: list[dict[str, str]], prefix: str) -> tuple[list[int], list[str], Any]:
        """(prompt tokens, stop strings, stopping criteria) from the GGUF's chat template."""
        llm = self._llm
        raw = raw_prompt(messages)
        if raw is not None:  # a text completion: the prompt as it is
            tokens = llm.tokenize((raw + prefix).encode("utf-8"), add_bos=True, special=True)
            return _one_bos(tokens, llm.token_bos()), [], None
        if self._formatter is not None:
            formatted = self._formatter(messages=messages)
            tokens = llm.tokenize((formatted.prompt + prefix).encode("utf-8"),
                                  add_bos=not formatted.added_special, special=True)
            stop = formatted.stop if isinstance(formatted.stop, list) else [formatted.stop]
            return tokens, stop, formatted.stopping_criteria
        # No template in the file: a plain role-prefixed transcript.
        text = "".join(f"{m['role']}: {m['content']}\n" for m in messages) + "assistant: " + prefix
        return llm.tokenize(text.encode("utf-8"), add_bos=True, special=True), [], None

    def _fit_history(self, messages: list[dict[str, str]], prefix: str,
                     budget: int) -> tuple[list[int], list[str], Any]:
        """The prompt of ``messages`` without their oldest turns, at most ``budget`` tokens
        where it can be (else the shortest there is: the caller refuses it).

        Hosts written for text-generation-webui send the whole chat and let the server cut it
        to its context (``truncation_length``); a long session would otherwise be refused by
        the fallback just when it is needed. As there, the oldest turns go first; the system
        messages at the start and the last message stay. A user turn goes with the answers
        that follow it, so the chat left still begins with a user turn, as templates expect.
        """
        head = 0
        while head < len(messages) - 1 and messages[head].get("role") == "system":
            head += 1
        turns = messages[head:]
        built = self._prompt(messages, prefix)
        while len(turns) > 1 and len(built[0]) > budget:
            cut = 1
            while cut < len(turns) - 1 and turns[cut].get("role") != "user":
                cut += 1
            turns = turns[cut:]
            built = self._prompt(messages[:head] + turns, prefix)
        dropped = len(messages) - head - len(turns)
        log.info("%s: left out the %d oldest messages to fit n_ctx=%d (%d prompt tokens)",
                 self.name, dropped, self.n_ctx, len(built[0]))
        return built

    def _cut_text(self, tokens: list[int], budget: int) -> list[int]:
        """A text completion's prompt without its first tokens, ``budget`` left (a BOS stays
        first): text-generation-webui cuts a prompt longer than its context so
        (``truncation_length``), and hosts written for it (SillyTavern's text completions)
        send the whole story and rely on it."""
        bos = tokens[:1] if tokens[:1] == [self._llm.token_bos()] else []
        kept = bos + tokens[len(tokens) - (budget - len(bos)):]
        log.info("%s: left out the prompt's first %d tokens to fit n_ctx=%d", self.name,
                 len(tokens) - len(kept), self.n_ctx)
        return kept

    def _completion(self, messages: list[dict[str, str]], params: GenerationParams,
                    prefix: str, usage: Usage) -> Iterator[Any]:
        llm = self._llm
        prompt, template_stop, criteria = self._prompt(messages, prefix)
        room = min(params.max_tokens, self.n_ctx // 2)  # the answer's, as far as it can be had
        if len(prompt) + room > self.n_ctx:
            if raw_prompt(messages) is not None:
                prompt = self._cut_text(prompt, self.n_ctx - room)
            else:
                prompt, template_stop, criteria = self._fit_history(messages, prefix, self.n_ctx - room)
        usage.prompt_tokens = len(prompt)
        stop = list(params.stop) + template_stop
        if len(prompt) >= self.n_ctx:
            raise TargetFailed(f"the prompt is {len(prompt)} tokens; {self.name} is loaded with "
                               f"n_ctx={self.n_ctx}: shorten the history or raise n_ctx")
        max_tokens = min(params.max_tokens, self.n_ctx - len(prompt))
        usage.completion_tokens = max_tokens  # the count when it ends by length (``_generate``)
        if params.seed is not None:
            # Reusing the cached prompt prefix evaluates it in other batch shapes, which
            # changes the floats a little; with a seed the caller wants the same answer twice.
            llm.reset()
        # llama-cpp-python checks max_tokens only after a complete UTF-8 character, so a model
        # that keeps emitting broken bytes would run to the end of the context: cap it here.
        from llama_cpp import StoppingCriteriaList

        cap = len(prompt) + max_tokens

        def at_cap(tokens: Any, logits: Any) -> bool:
            if len(tokens) < cap:
                return False
            usage.finish_reason = "length"  # llama-cpp-python says "stop" for any criterion
            return True

        limits = StoppingCriteriaList([at_cap])
        if criteria is not None:
            limits.extend(criteria)
        return llm.create_completion(
            prompt=prompt, max_tokens=max_tokens, temperature=params.temperature,
            top_p=params.top_p, stop=stop or None, seed=params.seed, stream=True,
            stopping_criteria=limits)


def _one_bos(tokens: list[int], bos: int) -> list[int]:
    """``tokens`` with one BOS where a prompt that begins with the BOS's own text was given
    a second one: two confuse a model, and text-generation-webui drops the extra one too."""
    if bos != -1 and len(tokens) > 1 and tokens[0] == tokens[1] == bos:
        return tokens[1:]
    return tokens
