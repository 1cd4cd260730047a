"""Hugging Face models through transformers: safetensors folders, or GGUF via ``gguf_file``.

The prompt comes from the tokenizer's chat template; answers stream through
``TextIteratorStreamer`` without echoing the prompt. Nothing is downloaded
(``local_files_only``), remote code stays off and pickle weights are refused
unless the settings allow them.
"""

from __future__ import annotations

import gc
import logging
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..errors import BackendUnavailable, ModelLoadError, OutOfMemory
from ..memory import TORCH_CUDA_CONTEXT_MB
from .base import GenerationParams, LocalBackend, TargetFailed, Usage, raw_prompt

if TYPE_CHECKING:
    from ..fit import Compatibility

__all__ = ["TransformersBackend"]

log = logging.getLogger(__name__)


def _import() -> tuple[Any, Any]:
    try:
        import torch
        import transformers
    except ImportError:
        raise BackendUnavailable(
            'transformers and torch are not installed: pip install "zwaif-fallback[hf]"') from None
    return torch, transformers


class TransformersBackend(LocalBackend):
    """One HF model in this process; generations are queued.

    Args:
        path: a model folder, or a ``.gguf`` file (loaded through ``gguf_file``).
        gpu_layers: llama.cpp-style layer count from the fit: 0 keeps the model
            on the CPU, more than ``n_layers`` puts it all on the GPU, in between
            lets accelerate split it.
    """

    gpu_context_mb = TORCH_CUDA_CONTEXT_MB

    def __init__(self, name: str, path: str, *, gpu_layers: int = 0, n_layers: int = 0,
                 trust_remote_code: bool = False, allow_pickle: bool = False,
                 fit: Compatibility | None = None,
                 vram_probe: Callable[[int], float | None] | None = None) -> None:
        super().__init__(name, fit=fit, vram_probe=vram_probe)
        self.path = path
        self.gpu_layers = gpu_layers
        self.n_layers = n_layers
        self.trust_remote_code = trust_remote_code
        self.allow_pickle = allow_pickle
        self._model: Any = None
        self._tokenizer: Any = None

    @property
    def loaded(self) -> bool:
        return self._model is not None

    def replan(self, fit: Compatibility) -> None:
        with self._lock:
            self.gpu_layers, self.fit = fit.gpu_layers, fit

    def import_runtime(self) -> None:
        _import()
        # transformers imports lazily: what every model's load brings in holds ~95 MiB more
        import transformers.generation.utils
        import transformers.modeling_utils  # noqa: F401

    def _load_locked(self) -> None:
        if self._model is not None:
            return
        torch, transformers = _import()
        folder, extra = self._source()
        device_map = self._device_map(torch)
        options: dict[str, Any] = dict(local_files_only=True, trust_remote_code=self.trust_remote_code,
                                       **extra)
        what = "'s tokenizer (tokenizer.json or tokenizer_config.json: download them again)"
        try:
            tokenizer = transformers.AutoTokenizer.from_pretrained(folder, **options)
            what = ""
            model = transformers.AutoModelForCausalLM.from_pretrained(
                folder, dtype=torch.float32 if device_map == "cpu" else "auto",
                device_map=device_map, use_safetensors=None if self.allow_pickle or extra else True,
                **options)
        except (OSError, ValueError, RuntimeError, ImportError, KeyError, MemoryError) as exc:
            if isinstance(exc, MemoryError) or "out of memory" in str(exc).lower():
                # torch.cuda.OutOfMemoryError is a RuntimeError; the host says MemoryError
                raise OutOfMemory(f"{self.name} ran out of memory loading with transformers on "
                                  f"{device_map}: {exc}") from exc
            raise ModelLoadError(f"transformers could not load {self.name}{what}: {exc}") from exc
        model.eval()
        if tokenizer.pad_token_id is None:
            tokenizer.pad_token = tokenizer.eos_token
        self._model, self._tokenizer = model, tokenizer
        log.info("loaded %s with transformers on %s", self.name, device_map)

    def _source(self) -> tuple[str, dict[str, Any]]:
        path = Path(self.path)
        if path.suffix.lower() == ".gguf":
            return str(path.parent), {"gguf_file": path.name}
        return str(path), {}

    def _device_map(self, torch: Any) -> Any:
        if self.gpu_layers == 0 or not torch.cuda.is_available():
            return "cpu"
        if self.gpu_layers > self.n_layers:
            return "cuda:0"
        return "auto"

    def _unload_locked(self) -> None:
        self._model = self._tokenizer = None
        gc.collect()
        torch, _ = _import()
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
        log.info("unloaded %s", self.name)

    def count_tokens(self, messages: list[dict[str, str]]) -> int | None:
        with self._lock:
            self._load_locked()
            tok, raw = self._tokenizer, raw_prompt(messages)
            try:
                if raw is not None:
                    ids = tok(raw, add_special_tokens=_adds_bos(tok, raw))["input_ids"]
                else:
                    ids = tok.apply_chat_template(messages, add_generation_prompt=True, tokenize=True,
                                                  return_dict=True)["input_ids"]
            except (ValueError, TypeError):
                return None
            return len(ids)

    def _generate(self, messages: list[dict[str, str]], params: GenerationParams, prefix: str,
                  cancel: threading.Event | None, usage: Usage) -> Iterator[str]:
        torch, transformers = _import()
        tok, model = self._tokenizer, self._model
        raw = raw_prompt(messages)  # a text completion: the prompt as it is, its BOS added
        try:
            prompt = raw if raw is not None else \
                tok.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
        except (ValueError, TypeError) as exc:  # no chat template in the tokenizer
            raise TargetFailed(f"{self.name} has no usable chat template: {exc}") from exc
        inputs = tok(prompt + prefix, return_tensors="pt",
                     add_special_tokens=_adds_bos(tok, raw)).to(model.device)
        prompt_len = usage.prompt_tokens = int(inputs["input_ids"].shape[-1])
        usage.completion_tokens = 0
        streamer = transformers.TextIteratorStreamer(tok, skip_prompt=True, skip_special_tokens=True)
        sample = params.temperature > 0
        # as far as the model's positions reach: a server's limits may be asked of it
        positions = getattr(model.config, "max_position_embeddings", None)
        room = max(positions - prompt_len, 1) if isinstance(positions, int) else params.max_tokens
        options: dict[str, Any] = dict(
            **inputs, streamer=streamer, max_new_tokens=min(params.max_tokens, room), do_sample=sample,
            pad_token_id=tok.pad_token_id)
        if sample:
            options.update(temperature=params.temperature, top_p=params.top_p)
        if params.stop:
            options.update(stop_strings=params.stop, tokenizer=tok)
        if params.seed is not None:
            torch.manual_seed(params.seed)
        stop = threading.Event()  # set when the reader goes away: generation ends early

        class _Abandoned(transformers.StoppingCriteria):  # type: ignore[name-defined]
            """Ends generation when the reader has gone; counts the tokens made so far
            (transformers calls it once per new token, with the whole sequence)."""

            def __call__(self, input_ids: Any, *args: Any, **kwargs: Any) -> bool:
                usage.completion_tokens = int(input_ids.shape[-1]) - prompt_len
                return stop.is_set()

        options["stopping_criteria"] = transformers.StoppingCriteriaList([_Abandoned()])
        failure: list[BaseException] = []

        def run() -> None:
            try:
                with torch.inference_mode():
                    model.generate(**options)
            except BaseException as exc:  # reported to the reader below
                failure.append(exc)
                streamer.end()

        worker = threading.Thread(target=run, daemon=True, name="zwaif-hf-generate")
        worker.start()
        try:
            for text in streamer:
                if cancel is not None and cancel.is_set():
                    break
                if text:
                    yield text
        finally:
            stop.set()
            worker.join()
        if failure:
            raise TargetFailed(f"transformers failed while generating: {failure[0]}") from failure[0]


def _adds_bos(tokenizer: Any, raw: str | None) -> bool:
    """Whether to add the tokenizer's special tokens: for a text completion's prompt
    (``raw``) only, and not to one that begins with the BOS's own text, which would then
    begin with two (text-generation-webui drops the extra one too)."""
    bos = getattr(tokenizer, "bos_token", None)
    return raw is not None and not (isinstance(bos, str) and bos and raw.startswith(bos))
