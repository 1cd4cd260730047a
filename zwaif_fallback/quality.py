"""How good a model's text is: perplexity on a fixed text, a few instruction checks, one score.

Perplexity is measured on the same shipped English text for every model
(``data/perplexity.txt``), so two models are compared on equal terms; the
instruction checks are short prompts with a deterministic answer that a plain
function can grade. ``quality_score`` folds both into one number in [0, 1].
Measuring loads models; scoring is a pure function.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

from ._model import Model
from .backends.base import GenerationParams
from .errors import InvalidSettings, ModelLoadError

__all__ = [
    "INSTRUCTION_CHECKS",
    "CheckResult",
    "InstructionCheck",
    "llama_cpp_perplexity",
    "pass_rate_of",
    "perplexity_text",
    "quality_score",
    "run_instruction_checks",
    "transformers_perplexity",
]

CHECK_SEED = 1234
_ANSWER_CHARS = 200
_TOO_SHORT = "the text is too short to measure perplexity: give it two tokens or more"
_ROWS_PER_CHUNK = 128  # log-softmax in float64 a slice at a time: 1024 x 49152 at once is 400 MB


def perplexity_text() -> str:
    """The fixed English text (about 400 words) every model's perplexity is measured on."""
    return resources.files("zwaif_fallback").joinpath("data/perplexity.txt").read_text(encoding="utf-8")


def _require(path: str) -> Path:
    if not Path(path).exists():
        raise ModelLoadError(f"no model at {path}: check the path")
    return Path(path)


def _mean_nll(logits: Any, targets: Sequence[int]) -> float:
    """Mean negative log-likelihood of ``targets[i]`` under the logits row ``i``."""
    import numpy as np

    target = np.asarray(targets, dtype=np.int64)
    total = 0.0
    for start in range(0, len(target), _ROWS_PER_CHUNK):
        rows = np.asarray(logits[start:start + _ROWS_PER_CHUNK], dtype=np.float64)
        picked = target[start:start + _ROWS_PER_CHUNK]
        top = rows.max(axis=1)
        log_z = top + np.log(np.exp(rows - top[:, None]).sum(axis=1))
        total += float((log_z - rows[np.arange(len(picked)), picked]).sum())
    return total / len(target)


def llama_cpp_perplexity(path: str, text: str, *, n_ctx: int = 1024, n_threads: int | None = None,
                         safe_load: bool = True) -> tuple[float, int]:
    """Perplexity of a GGUF model on ``text``, evaluated in one pass on the CPU.

    Args:
        path: the GGUF file.
        text: the text to score; tokens past ``n_ctx`` are dropped.
        n_ctx: the context (and batch) size the model is loaded with.
        n_threads: llama.cpp's threads (None: its default).
        safe_load: load the file in a child process first, as ``LlamaCppBackend`` does,
            so a malformed file raises instead of aborting this process.

    Returns:
        (perplexity, number of scored tokens): every token after the first is scored.

    Raises:
        ModelLoadError: llama.cpp could not load the file.
        InvalidSettings: the text is shorter than two tokens.
        BackendUnavailable: llama-cpp-python is not installed.
    """
    from .backends.llama_preflight import import_llama, preflight

    _require(path)
    llama_cpp = import_llama()
    if safe_load:
        preflight(path)
    try:
        llm = llama_cpp.Llama(path, n_ctx=n_ctx, n_batch=n_ctx, logits_all=True, n_gpu_layers=0,
                              n_threads=n_threads, verbose=False)
    except (ValueError, RuntimeError, OSError) as exc:
        raise ModelLoadError(f"llama.cpp could not load {Path(path).name}: {exc}") from exc
    try:
        try:
            tokens = llm.tokenize(text.encode("utf-8"), add_bos=True)[:n_ctx]
            if len(tokens) >= 2:
                llm.eval(tokens)
        except (ValueError, RuntimeError) as exc:
            raise ModelLoadError(f"llama.cpp failed to evaluate {Path(path).name}: {exc}") from exc
        if len(tokens) < 2:
            raise InvalidSettings(_TOO_SHORT)
        # The logits row i predicts token i + 1.
        nll = _mean_nll(llm.scores[:len(tokens) - 1], tokens[1:])
    finally:
        llm.close()
    return math.exp(nll), len(tokens) - 1


def transformers_perplexity(path: str, text: str, *, max_tokens: int = 1024) -> tuple[float, int]:
    """Perplexity of an HF model (a folder, or a ``.gguf`` file) on ``text``, in float32 on the CPU.

    Args:
        path: a model folder with safetensors weights, or a GGUF file that transformers dequantizes.
        text: the text to score; tokens past ``max_tokens`` are dropped.
        max_tokens: the most tokens evaluated.

    Returns:
        (perplexity, number of scored tokens): every token after the first is scored.

    Raises:
        ModelLoadError: transformers could not load the model.
        InvalidSettings: the text is shorter than two tokens.
        BackendUnavailable: transformers or torch is not installed.
    """
    from .backends.transformers import _import

    source = _require(path)
    torch, transformers = _import()
    is_gguf = source.suffix.lower() == ".gguf"
    folder = str(source.parent if is_gguf else source)
    gguf = {"gguf_file": source.name} if is_gguf else {}
    try:
        tokenizer = transformers.AutoTokenizer.from_pretrained(folder, local_files_only=True, **gguf)
        # Pickled weights can run code when loaded: a folder must hold safetensors.
        model = transformers.AutoModelForCausalLM.from_pretrained(
            folder, local_files_only=True, dtype=torch.float32, use_safetensors=None if is_gguf else True,
            **gguf)
    except (OSError, ValueError, RuntimeError, ImportError, KeyError) as exc:
        raise ModelLoadError(f"transformers could not load {source.name}: {exc}") from exc
    model.eval()
    limit = min(max_tokens, getattr(model.config, "max_position_embeddings", None) or max_tokens)
    input_ids = tokenizer(text, return_tensors="pt").input_ids[:, :limit]
    n_tokens = int(input_ids.shape[1])
    if n_tokens < 2:
        raise InvalidSettings(_TOO_SHORT)
    try:
        with torch.no_grad():
            loss = model(input_ids=input_ids, labels=input_ids).loss  # mean NLL of tokens[1:]
    except (RuntimeError, ValueError, IndexError) as exc:
        raise ModelLoadError(f"transformers failed to evaluate {source.name}: {exc}") from exc
    return math.exp(float(loss)), n_tokens - 1


def _words(text: str) -> list[str]:
    """Lower-case words and numbers, punctuation dropped."""
    return re.findall(r"[a-z0-9]+", text.lower())


def _says_capital(text: str) -> bool:
    return "paris" in _words(text)


def _says_five(text: str) -> bool:
    # "5", "5.", "five" pass; "15", "2.5" and "6" do not.
    return "five" in _words(text) or "5" in re.findall(r"\d+(?:\.\d+)?", text)


def _repeats_sentence(text: str) -> bool:
    return "the blue kettle sings on the stove" in " ".join(_words(text))


def _says_yes(text: str) -> bool:
    words = _words(text)
    return "yes" in words and "no" not in words


def _shouts_garden(text: str) -> bool:
    return "GARDEN" in re.findall(r"[A-Za-z]+", text)


_COLOURS = {"red", "orange", "yellow", "green", "blue", "indigo", "violet", "purple", "pink", "brown",
            "black", "white", "gray", "grey", "cyan", "magenta", "gold", "silver", "beige", "teal"}


def _lists_colours(text: str) -> bool:
    # Lenient about the separator: a bulleted list of three colours names three colours.
    return len(_COLOURS.intersection(_words(text))) >= 3


def _says_cold(text: str) -> bool:
    words = _words(text)
    return "cold" in words and "not" not in words


def _counts_to_five(text: str) -> bool:
    return "1 2 3 4 5" in " ".join(re.findall(r"\d+", text))


@dataclass(frozen=True)
class InstructionCheck:
    """One prompt with a deterministic answer; ``check(answer)`` says whether the answer is right."""

    name: str
    prompt: str
    check: Callable[[str], bool]


INSTRUCTION_CHECKS: tuple[InstructionCheck, ...] = (
    InstructionCheck("capital", "What is the capital of France? Answer with one word.", _says_capital),
    InstructionCheck("arithmetic", "What is 2 + 3? Answer with a number only.", _says_five),
    InstructionCheck("repeat", "Repeat this sentence exactly: The blue kettle sings on the stove.",
                     _repeats_sentence),
    InstructionCheck("yes_no", "Is fire hot? Answer with yes or no only.", _says_yes),
    InstructionCheck("uppercase", "Write the word garden in capital letters.", _shouts_garden),
    InstructionCheck("colours", "Name three colours, separated by commas.", _lists_colours),
    InstructionCheck("opposite", "What is the opposite of hot? Answer with one word.", _says_cold),
    InstructionCheck("counting", "Count from 1 to 5, with the numbers separated by spaces.",
                     _counts_to_five),
)


class CheckResult(Model):
    """How a model did on one instruction check."""

    name: str
    passed: bool
    answer: str  # the model's answer, cut to 200 characters


Stream = Callable[[list[dict[str, str]], GenerationParams], Iterable[str]]


def run_instruction_checks(stream: Stream, *, max_tokens: int = 48,
                           checks: Sequence[InstructionCheck] = INSTRUCTION_CHECKS) -> list[CheckResult]:
    """Ask each check's prompt greedily (temperature 0, a fixed seed) and grade the answer.

    Args:
        stream: ``stream(messages, params)`` yielding text pieces, such as a ``Backend.stream``.
        max_tokens: the longest answer asked for; every check's answer is short.
        checks: the checks to run.

    Returns:
        One result per check, in order.

    Raises:
        Whatever ``stream`` raises (``TargetFailed``): a model that cannot answer has no pass rate.
    """
    params = GenerationParams(max_tokens=max_tokens, temperature=0.0, top_p=1.0, seed=CHECK_SEED)
    results = []
    for check in checks:
        answer = "".join(stream([{"role": "user", "content": check.prompt}], params)).strip()
        results.append(CheckResult(name=check.name, passed=check.check(answer),
                                   answer=answer[:_ANSWER_CHARS]))
    return results


def pass_rate_of(results: Sequence[CheckResult]) -> float | None:
    """The share of passed checks, or None when none ran."""
    return sum(r.passed for r in results) / len(results) if results else None


def quality_score(perplexity: float | None, vocab_size: int | None, pass_rate: float | None) -> float:
    """One quality number in [0, 1] from perplexity and the instruction checks' pass rate.

    ``fluency = clamp(1 - ln(perplexity) / ln(vocab_size), 0, 1)``: a model that guesses
    uniformly over its vocabulary has perplexity == vocab_size and scores 0; a perfect
    predictor (perplexity 1) scores 1. Dividing by ln(vocab_size) puts models with
    different tokenizers roughly on one scale (a coarser tokenizer still has a higher
    perplexity per token on the same text).

    ``score = 0.5 * fluency + 0.5 * clamp(pass_rate, 0, 1)``; when one part is unknown
    (None, NaN, or a vocabulary under 2 tokens) the other is the score, and 0.0 when both are.

    Args:
        perplexity: measured on ``perplexity_text()``; infinity counts as the worst.
        vocab_size: the model's vocabulary size.
        pass_rate: the share of passed instruction checks, in [0, 1].

    Returns:
        The score, in [0, 1]; higher is better.
    """
    parts = []
    if perplexity is not None and not math.isnan(perplexity) and vocab_size is not None and vocab_size >= 2:
        fluency = 0.0 if math.isinf(perplexity) else 1 - math.log(max(perplexity, 1.0)) / math.log(vocab_size)
        parts.append(min(max(fluency, 0.0), 1.0))
    if pass_rate is not None and not math.isnan(pass_rate):
        parts.append(min(max(pass_rate, 0.0), 1.0))
    return sum(parts) / len(parts) if parts else 0.0
