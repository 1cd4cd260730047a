"""Quality measurement: the shipped text, perplexity, the instruction checks, the score.

The slow tests load the bundled SmolLM2 and random-weight models; their numbers are
printed (run with ``-s`` to see them).
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Iterator
from pathlib import Path

import pytest
from builders import byte_level_vocab, write_hf_chat_model

from zwaif_fallback.backends.base import GenerationParams
from zwaif_fallback.backends.llama_cpp import LlamaCppBackend
from zwaif_fallback.backends.transformers import TransformersBackend
from zwaif_fallback.errors import InvalidSettings, ModelLoadError
from zwaif_fallback.gguf_header import read_gguf_header
from zwaif_fallback.quality import (
    INSTRUCTION_CHECKS,
    CheckResult,
    llama_cpp_perplexity,
    pass_rate_of,
    perplexity_text,
    quality_score,
    run_instruction_checks,
    transformers_perplexity,
)

CHECKS = {check.name: check for check in INSTRUCTION_CHECKS}
TINY_VOCAB = len(byte_level_vocab()[0])


@pytest.fixture(scope="module")
def smollm2_perplexity(smollm2: Path) -> tuple[float, int]:
    return llama_cpp_perplexity(str(smollm2), perplexity_text())


@pytest.fixture(scope="module")
def tiny_perplexity(tiny_gguf: Path) -> tuple[float, int]:
    return llama_cpp_perplexity(str(tiny_gguf), perplexity_text())


@pytest.fixture(scope="module")
def smollm2_checks(smollm2: Path) -> Iterator[tuple[list[CheckResult], list[CheckResult]]]:
    # llama-cpp-python generates on half the cores unless told otherwise
    backend = LlamaCppBackend("smollm2", str(smollm2), n_ctx=1024, n_threads=os.cpu_count())
    try:
        yield run_instruction_checks(backend.stream), run_instruction_checks(backend.stream)
    finally:
        backend.close()


@pytest.fixture(scope="module")
def random_hf(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_hf_chat_model(tmp_path_factory.mktemp("hf-chat") / "random-chat")


def test_perplexity_text_ships_with_250_words_or_more():
    text = perplexity_text()
    assert len(text.split()) >= 250
    assert text.isascii()


@pytest.mark.parametrize(("name", "answer", "passed"), [
    ("capital", "Paris.", True),
    ("capital", "The capital of France is PARIS!", True),
    ("capital", "Lyon", False),
    ("capital", "Parisian food is good.", False),
    ("arithmetic", "5", True),
    ("arithmetic", "2 + 3 = 5.", True),
    ("arithmetic", "Five", True),
    ("arithmetic", "15", False),
    ("arithmetic", "6", False),
    ("repeat", "The blue kettle sings on the stove.", True),
    ("repeat", "the blue kettle sings on the stove", True),
    ("repeat", "The blue kettle sings.", False),
    ("repeat", "The red kettle sings on the stove.", False),
    ("yes_no", "Yes.", True),
    ("yes_no", "yes", True),
    ("yes_no", "No.", False),
    ("yes_no", "Yes and no.", False),
    ("uppercase", "GARDEN", True),
    ("uppercase", "Here it is: GARDEN.", True),
    ("uppercase", "garden", False),
    ("uppercase", "Garden", False),
    ("colours", "red, green, blue", True),
    ("colours", "Red, Yellow and Grey.", True),
    ("colours", "red, red, red", False),
    ("colours", "apple, banana, cherry", False),
    ("opposite", "Cold.", True),
    ("opposite", "The opposite of hot is cold.", True),
    ("opposite", "Warm", False),
    ("opposite", "Not cold", False),
    ("counting", "1 2 3 4 5", True),
    ("counting", "1, 2, 3, 4, 5.", True),
    ("counting", "1 2 3 5", False),
    ("counting", "5 4 3 2 1", False),
])
def test_check_grades_a_hand_written_answer(name: str, answer: str, passed: bool):
    assert CHECKS[name].check(answer) is passed


def test_there_are_six_to_eight_checks_with_distinct_names():
    assert 6 <= len(INSTRUCTION_CHECKS) <= 8
    assert len(CHECKS) == len(INSTRUCTION_CHECKS)


def test_run_instruction_checks_asks_greedily_with_a_seed_and_grades_each_answer():
    right = {"capital": "Paris", "arithmetic": "5", "repeat": "The blue kettle sings on the stove.",
             "yes_no": "Yes", "uppercase": "GARDEN", "colours": "red, green, blue", "opposite": "cold",
             "counting": "1 2 3 4 5"}
    by_prompt = {check.prompt: right[check.name] for check in INSTRUCTION_CHECKS}
    seen: list[GenerationParams] = []

    def stream(messages: list[dict[str, str]], params: GenerationParams) -> Iterator[str]:
        seen.append(params)
        answer = by_prompt[messages[-1]["content"]]
        yield from (answer[:2], answer[2:])

    results = run_instruction_checks(stream, max_tokens=16)
    assert [r.name for r in results] == list(CHECKS)
    assert pass_rate_of(results) == 1.0
    assert {(p.temperature, p.seed, p.max_tokens) for p in seen} == {(0.0, seen[0].seed, 16)}
    assert seen[0].seed is not None


def test_run_instruction_checks_cuts_long_answers_to_200_characters():
    results = run_instruction_checks(lambda messages, params: iter(["word " * 100]))
    assert all(len(r.answer) == 200 and not r.passed for r in results)
    assert pass_rate_of(results) == 0.0
    assert pass_rate_of([]) is None


def test_a_uniform_guesser_has_no_fluency():
    assert quality_score(264.0, 264, None) == 0.0
    assert quality_score(1000.0, 264, None) == 0.0  # worse than uniform is clamped


def test_a_perfect_predictor_has_full_fluency():
    assert quality_score(1.0, 49152, None) == 1.0


def test_quality_score_weighs_fluency_and_pass_rate_equally():
    half_fluent = math.sqrt(10_000)  # ln(100) / ln(10000) = 0.5
    assert quality_score(half_fluent, 10_000, 1.0) == pytest.approx(0.75)
    assert quality_score(half_fluent, 10_000, 0.0) == pytest.approx(0.25)


def test_quality_score_uses_the_known_part_when_the_other_is_missing():
    assert quality_score(None, 49152, 0.6) == pytest.approx(0.6)
    assert quality_score(100.0, None, 0.6) == pytest.approx(0.6)
    assert quality_score(float("nan"), 49152, 0.6) == pytest.approx(0.6)
    assert quality_score(100.0, 10_000, None) == pytest.approx(0.5)
    assert quality_score(None, None, None) == 0.0


def test_quality_score_stays_in_zero_to_one():
    assert quality_score(float("inf"), 100, 1.5) == pytest.approx(0.5)
    assert quality_score(0.5, 100, -1.0) == pytest.approx(0.5)


def test_perplexity_of_a_missing_file_raises_model_load_error(tmp_path: Path):
    with pytest.raises(ModelLoadError, match="check the path"):
        llama_cpp_perplexity(str(tmp_path / "nothing.gguf"), "some text")
    with pytest.raises(ModelLoadError, match="check the path"):
        transformers_perplexity(str(tmp_path / "no-folder"), "some text")


def test_perplexity_of_a_one_token_text_raises_invalid_settings(tiny_gguf: Path):
    with pytest.raises(InvalidSettings, match="too short"):
        llama_cpp_perplexity(str(tiny_gguf), "")


@pytest.mark.slow
def test_smollm2_perplexity_is_far_below_the_random_models(smollm2_perplexity, tiny_perplexity):
    (smol, smol_n), (tiny, tiny_n) = smollm2_perplexity, tiny_perplexity
    print(f"\nllama.cpp perplexity: SmolLM2 {smol:.2f} ({smol_n} tokens), "
          f"random {tiny:.2f} ({tiny_n} tokens)")
    assert 1.0 < smol < 40.0
    assert tiny > 10 * smol
    assert tiny_n == 1023  # the byte-level text is longer than n_ctx: cut to 1024 tokens


@pytest.mark.slow
def test_a_random_model_is_about_as_perplexed_as_a_uniform_guesser(tiny_perplexity):
    assert tiny_perplexity[0] == pytest.approx(TINY_VOCAB, rel=0.1)


@pytest.mark.slow
def test_instruction_checks_on_smollm2_are_deterministic(smollm2_checks):
    first, second = smollm2_checks
    print(f"\nSmolLM2 pass rate {pass_rate_of(first):.3f}: "
          + ", ".join(f"{r.name}={'pass' if r.passed else 'fail'}" for r in first))
    assert first == second
    assert CHECKS["capital"].check(first[0].answer)


@pytest.mark.slow
def test_smollm2_quality_is_clearly_above_random_models(smollm2, smollm2_perplexity, smollm2_checks,
                                                         tiny_perplexity, random_hf):
    vocab = read_gguf_header(smollm2).metadata["tokenizer.ggml.tokens"].count
    smol = quality_score(smollm2_perplexity[0], vocab, pass_rate_of(smollm2_checks[0]))
    # The random GGUF's checks cannot run: llama-cpp-python streams past max_tokens while a
    # model emits broken UTF-8, which random bytes always are. It is scored on perplexity alone.
    tiny = quality_score(tiny_perplexity[0], TINY_VOCAB, None)
    backend = TransformersBackend("random", str(random_hf))
    try:
        random_checks = run_instruction_checks(backend.stream)
    finally:
        backend.close()
    hf_vocab = json.loads((random_hf / "config.json").read_text())["vocab_size"]
    random_ppl, _ = transformers_perplexity(str(random_hf), perplexity_text())
    random = quality_score(random_ppl, hf_vocab, pass_rate_of(random_checks))
    print(f"\nquality: SmolLM2 {smol:.3f}, random GGUF {tiny:.3f}, random HF {random:.3f} "
          f"(pass rate {pass_rate_of(random_checks):.3f}, perplexity {random_ppl:.2f}, vocab {hf_vocab})")
    assert smol - tiny >= 0.2
    assert smol - random >= 0.2


@pytest.mark.slow
def test_transformers_perplexity_of_a_tiny_hf_chat_model(random_hf):
    perplexity, n_scored = transformers_perplexity(str(random_hf), perplexity_text(), max_tokens=256)
    print(f"\ntransformers perplexity: random HF chat model {perplexity:.2f} ({n_scored} tokens)")
    assert n_scored == 255
    assert math.isfinite(perplexity) and perplexity > 50


@pytest.mark.slow
def test_transformers_perplexity_of_smollm2_gguf_matches_llama_cpp(smollm2, smollm2_perplexity):
    perplexity, n_scored = transformers_perplexity(str(smollm2), perplexity_text())
    print(f"\nSmolLM2 perplexity: transformers {perplexity:.2f} ({n_scored} tokens), "
          f"llama.cpp {smollm2_perplexity[0]:.2f} ({smollm2_perplexity[1]} tokens)")
    assert n_scored == smollm2_perplexity[1]
    assert perplexity == pytest.approx(smollm2_perplexity[0], rel=0.05)
