"""Speed, memory and quality of one model, measured.

Like llama-bench it reports prompt processing and generation tokens/s; it adds
what a chatbot feels: load time, time to first token, total response time, and
the memory the model added at its peak (process RSS; per-process VRAM where the
NVIDIA driver reports it). One warm-up, then ``runs`` measured generations: the
figures are means, with their spread. Quality: perplexity on a fixed text
shipped with the package, and a few deterministic instruction checks.
"""

from __future__ import annotations

import logging
import os
import statistics
import threading
import time
from collections.abc import Callable
from typing import Any

import psutil
from pydantic import Field

from ._model import Model
from .backends.base import GenerationParams, LocalBackend
from .errors import FallbackError
from .model_info import ModelInfo

__all__ = ["BenchmarkResult", "benchmark_model"]

log = logging.getLogger(__name__)

MIB = 1024 * 1024
DEFAULT_PROMPT = "Tell me, in a few friendly sentences, how you would spend a rainy afternoon."
Progress = Callable[[float, str], None]


class BenchmarkResult(Model):
    """One model's benchmark. Times in seconds, memory in MiB (growth over the process before load)."""

    model: str
    ok: bool
    error: str | None = None
    load_s: float | None = None
    ttft_s: float | None = None
    prompt_tps: float | None = None
    gen_tps: float | None = None  # decode tokens/s (llama-bench's tg)
    stream_tps: float | None = None  # pieces/s as a reader of the stream sees them
    chars_per_s: float | None = None
    response_time_s: float | None = None
    peak_vram_mb: float | None = None
    peak_ram_mb: float | None = None
    perplexity: float | None = None
    quality_score: float | None = None
    tokens: int = 0
    runs: int = 0
    gen_tps_sd: float | None = None
    ttft_sd_s: float | None = None
    prompt_tokens: int | None = None
    pass_rate: float | None = None
    checks: list[dict[str, Any]] = Field(default_factory=list)


class _PeakMemory:
    """Samples this process's RSS (and VRAM) every few ms while a benchmark runs."""

    def __init__(self, vram: Callable[[int], float | None], interval_s: float = 0.02) -> None:
        self._process = psutil.Process()
        self._vram = vram
        self._interval_s = interval_s
        self._stop = threading.Event()
        self.base_rss = self._process.memory_info().rss
        self.base_vram = vram(os.getpid())
        self.peak_rss = self.base_rss
        self.peak_vram = self.base_vram
        self._thread = threading.Thread(target=self._run, daemon=True, name="zwaif-bench-memory")

    def __enter__(self) -> _PeakMemory:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self._sample()

    def _run(self) -> None:
        while not self._stop.wait(self._interval_s):
            self._sample()

    def _sample(self) -> None:
        self.peak_rss = max(self.peak_rss, self._process.memory_info().rss)
        vram = self._vram(os.getpid())
        if vram is not None:
            self.peak_vram = max(self.peak_vram or 0.0, vram)

    @property
    def ram_mb(self) -> float:
        return (self.peak_rss - self.base_rss) / MIB

    @property
    def vram_mb(self) -> float | None:
        if self.peak_vram is None:
            return None
        return self.peak_vram - (self.base_vram or 0.0)


def benchmark_model(model: ModelInfo, backend: LocalBackend, *, prompt: str | None = None,
                    runs: int = 3, max_tokens: int = 64, quality: bool = True,
                    vram: Callable[[int], float | None] = lambda pid: None,
                    progress: Progress | None = None) -> BenchmarkResult:
    """Benchmark ``model`` on ``backend`` (an unloaded backend this function loads and frees).

    Args:
        prompt: the user message to answer; a fixed default when None.
        runs: measured generations after one warm-up.
        quality: also measure perplexity and the instruction checks.
        vram: per-process VRAM in MiB for a pid (the hardware probe's), None where unknown.
        progress: ``progress(fraction, message)``; it may raise to cancel.

    Returns:
        The result; a failure is a result with ``ok=False`` and the reason, not an exception
        (except a cancel raised by ``progress``).
    """
    report = progress or (lambda fraction, message: None)
    messages = [{"role": "user", "content": prompt or DEFAULT_PROMPT}]
    try:
        backend.import_runtime()  # what the runtime's import holds is not the model's memory
        with _PeakMemory(vram) as memory:
            report(0.05, f"loading {model.name}")
            start = time.perf_counter()
            backend.load()
            load_s = time.perf_counter() - start
            report(0.15, "warming up")
            _generate(backend, messages, 8, seed=0)
            samples = []
            for i in range(runs):
                report(0.2 + 0.5 * i / runs, f"run {i + 1} of {runs}")
                samples.append(_generate(backend, messages, max_tokens, seed=i + 1))
            prompt_tokens = backend.count_tokens(messages)
            checks = pass_rate = None
            if quality:
                report(0.75, "instruction checks")
                checks, pass_rate = _checks(backend)
        result = _summarize(model, samples, load_s, prompt_tokens, memory)
        if quality:
            report(0.85, "perplexity")
            result = _with_quality(result, model, checks or [], pass_rate)
        report(1.0, "done")
        return result
    except FallbackError as exc:
        return BenchmarkResult(model=model.name, ok=False, error=str(exc))
    except (RuntimeError, ValueError, OSError) as exc:
        log.exception("benchmark of %s failed", model.name)
        return BenchmarkResult(model=model.name, ok=False, error=f"{type(exc).__name__}: {exc}")
    finally:
        backend.unload()


def _generate(backend: LocalBackend, messages: list[dict[str, str]], max_tokens: int,
              *, seed: int) -> tuple[int, int, float, float, float, tuple[int, float] | None]:
    """(pieces, chars, ttft, seconds from first to last piece, total seconds, the runtime's
    own decode counters) of one generation."""
    params = GenerationParams(max_tokens=max_tokens, temperature=0.0, seed=seed)
    backend.reset_decode_stats()
    start = time.perf_counter()
    first = last = start
    tokens = chars = 0
    for piece in backend.stream(messages, params):
        last = time.perf_counter()
        if tokens == 0:
            first = last
        tokens += 1
        chars += len(piece)
    return tokens, chars, first - start, last - first, last - start, backend.decode_stats()


def _summarize(model: ModelInfo, samples: list[Any], load_s: float, prompt_tokens: int | None,
               memory: _PeakMemory) -> BenchmarkResult:
    ttfts = [s[2] for s in samples if s[0]]
    streamed = [(s[0] - 1) / s[3] for s in samples if s[0] > 1 and s[3] > 0]
    # Generation speed as llama-bench's tg counts it: the runtime's own decode time, when it
    # keeps one; else the pace at which pieces reached the reader.
    decoded = [n / t for n, t in (s[5] for s in samples if s[5]) if n > 0 and t > 0]
    rates = decoded if len(decoded) == len(samples) else streamed
    totals = [s[4] for s in samples]
    chars = sum(s[1] for s in samples)
    ttft = statistics.mean(ttfts) if ttfts else None
    return BenchmarkResult(
        model=model.name,
        ok=bool(rates),
        error=None if rates else "the model produced fewer than two tokens",
        load_s=round(load_s, 3),
        ttft_s=_round(ttft, 4),
        prompt_tps=_round(prompt_tokens / ttft if prompt_tokens and ttft else None, 1),
        gen_tps=_round(statistics.mean(rates) if rates else None, 2),
        stream_tps=_round(statistics.mean(streamed) if streamed else None, 2),
        chars_per_s=_round(chars / sum(totals) if sum(totals) > 0 else None, 1),
        response_time_s=_round(statistics.mean(totals) if totals else None, 3),
        peak_vram_mb=_round(memory.vram_mb, 1),
        peak_ram_mb=round(memory.ram_mb, 1),
        tokens=sum(s[0] for s in samples),
        runs=len(samples),
        gen_tps_sd=_round(statistics.stdev(rates) if len(rates) > 1 else None, 2),
        ttft_sd_s=_round(statistics.stdev(ttfts) if len(ttfts) > 1 else None, 4),
        prompt_tokens=prompt_tokens,
    )


def _checks(backend: LocalBackend) -> tuple[list[dict[str, Any]], float]:
    from .quality import run_instruction_checks

    results = run_instruction_checks(backend.stream)
    passed = sum(1 for r in results if r.passed)
    return [r.model_dump() for r in results], passed / len(results) if results else 0.0


def _with_quality(result: BenchmarkResult, model: ModelInfo, checks: list[dict[str, Any]],
                  pass_rate: float | None) -> BenchmarkResult:
    from .quality import llama_cpp_perplexity, perplexity_text, quality_score, transformers_perplexity

    try:
        measure = llama_cpp_perplexity if model.format == "gguf" else transformers_perplexity
        perplexity, _ = measure(model.path, perplexity_text())
    except (FallbackError, RuntimeError, ValueError, OSError) as exc:
        log.warning("perplexity of %s failed: %s", model.name, exc)
        perplexity = None
    vocab = model.shape.vocab_size if model.shape else None
    return result.model_copy(update={
        "perplexity": _round(perplexity, 3),
        "pass_rate": _round(pass_rate, 3),
        "checks": checks,
        "quality_score": round(quality_score(perplexity, vocab, pass_rate), 4),
    })


def _round(value: float | None, digits: int) -> float | None:
    return None if value is None else round(value, digits)
