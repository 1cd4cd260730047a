"""llama.cpp's backend, on the bundled SmolLM2: what a cancel does to a generation.

A cancel used to be seen only between pieces, so a long prompt was evaluated to its end
(seconds on a CPU, with the model locked) after the reader had gone. serve's ``Cancel``
now aborts the decode in progress. The proof is llama-cpp-python's count of the prompt
tokens it has evaluated, not a timing.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from zwaif_fallback.backends.base import RAW_ROLE, Cancel, GenerationParams, TargetFailed, Usage
from zwaif_fallback.backends.llama_cpp import LlamaCppBackend

pytestmark = pytest.mark.slow

#: about 2,700 tokens: several seconds of prompt evaluation on two cores
LONG = [{"role": "user", "content": "Summarise: " + " ".join(f"w{i % 97}" for i in range(900))}]
HELLO = [{"role": "user", "content": "Say hello."}]
GREEDY = GenerationParams(max_tokens=12, temperature=0.0, seed=1)


def loaded(path: Path, n_ctx: int) -> Iterator[LlamaCppBackend]:
    backend = LlamaCppBackend("smollm2", str(path), n_ctx=n_ctx, safe_load=False)
    backend.load()
    yield backend
    backend.unload()


@pytest.fixture(scope="module")
def backend(smollm2: Path):
    yield from loaded(smollm2, 4096)


def evaluated(backend: LlamaCppBackend) -> int:
    """Tokens the context holds now: llama-cpp-python counts only whole batches it decoded."""
    return int(backend._llm.n_tokens)


def generate_in_thread(backend: LlamaCppBackend,
                       cancel: threading.Event) -> tuple[threading.Thread, list[str]]:
    pieces: list[str] = []
    thread = threading.Thread(target=lambda: pieces.extend(backend.stream(LONG, GREEDY, cancel=cancel)),
                              daemon=True)
    thread.start()
    return thread, pieces


def test_a_cancel_during_the_prompt_stops_its_evaluation(backend: LlamaCppBackend):
    prompt_tokens = backend.count_tokens(LONG)
    assert prompt_tokens is not None and prompt_tokens > 2000
    cancel = Cancel()
    thread, pieces = generate_in_thread(backend, cancel)
    while not backend._lock.locked() and thread.is_alive():  # the generation holds the model
        pass
    cancel.set()
    thread.join(timeout=60)
    assert not thread.is_alive()
    assert pieces == []
    assert evaluated(backend) < prompt_tokens  # stopped inside the prompt, not after it


def test_a_plain_event_is_seen_between_pieces(backend: LlamaCppBackend):
    """Any threading.Event still works as a cancel: the prompt runs to its end, then it stops."""
    cancel = threading.Event()
    cancel.set()
    assert list(backend.stream(LONG, GREEDY, cancel=cancel)) == []
    assert evaluated(backend) == backend.count_tokens(LONG)


def test_the_model_answers_as_before_after_an_aborted_prompt(backend: LlamaCppBackend):
    before = "".join(backend.stream(HELLO, GREEDY))
    cancel = Cancel()
    cancel.set()  # set before the generation: the first decode aborts at once
    assert list(backend.stream(LONG, GREEDY, cancel=cancel)) == []
    after = "".join(backend.stream(HELLO, GREEDY))
    assert before and after == before


def test_a_cancel_set_after_the_answer_does_not_touch_the_next_one(backend: LlamaCppBackend):
    cancel = Cancel()
    first = "".join(backend.stream(HELLO, GREEDY, cancel=cancel))
    cancel.set()  # the reader went away late: its hook was removed with the generation
    assert "".join(backend.stream(HELLO, GREEDY, cancel=Cancel())) == first


def test_cancel_runs_its_callbacks_once_when_set():
    cancel, calls = Cancel(), []
    cancel.on_set(lambda: calls.append("a"))
    remove = cancel.on_set(lambda: calls.append("removed"))
    remove()
    cancel.set()
    cancel.set()
    assert calls == ["a"]
    cancel.on_set(lambda: calls.append("late"))  # set already: runs at once
    assert calls == ["a", "late"]
    assert cancel.is_set()


# -- a chat longer than the context ----------------------------------------------------------

SYSTEM = {"role": "system", "content": "You are Ava, a cheerful assistant."}


def chat_of(pairs: int) -> list[dict[str, str]]:
    turns = []
    for i in range(pairs):
        turns += [{"role": "user", "content": f"Message {i}: tell me about the weather in town {i}."},
                  {"role": "assistant", "content": f"Town {i} is sunny and warm, with a light breeze."}]
    return [SYSTEM, *turns, {"role": "user", "content": "And what is your name?"}]


@pytest.fixture(scope="module")
def small_context(smollm2: Path):
    yield from loaded(smollm2, 512)


def test_a_chat_longer_than_the_context_loses_its_oldest_turns_not_the_answer(
        small_context: LlamaCppBackend):
    chat = chat_of(30)
    whole = small_context.count_tokens(chat)
    assert whole is not None and whole > 512
    usage = Usage()
    answer = "".join(small_context.stream(chat, GenerationParams(max_tokens=64, temperature=0.0),
                                          usage=usage))
    assert answer
    assert usage.prompt_tokens is not None and usage.prompt_tokens <= 512 - 64
    # what was kept: the system message, the newest turns from a user turn on, the question
    kept = small_context.count_tokens([SYSTEM, *chat[-(2 * 8 + 1):]])
    assert kept is not None and usage.prompt_tokens >= kept


def test_a_chat_that_fits_is_sent_whole(small_context: LlamaCppBackend):
    chat = chat_of(3)
    usage = Usage()
    list(small_context.stream(chat, GenerationParams(max_tokens=16, temperature=0.0), usage=usage))
    assert usage.prompt_tokens == small_context.count_tokens(chat)


def test_a_text_completion_longer_than_the_context_loses_its_first_tokens_not_the_answer(
        small_context: LlamaCppBackend):
    # as text-generation-webui cuts a prompt to its truncation_length: SillyTavern's text
    # completions send the whole story and rely on it
    story = "".join(f"Day {i}: the town of Ilo was sunny and warm.\n" for i in range(80)) + "Day 80:"
    usage = Usage()
    answer = "".join(small_context.stream([{"role": RAW_ROLE, "content": story}],
                                          GenerationParams(max_tokens=8, temperature=0.0), usage=usage))
    assert answer and usage.prompt_tokens is not None and 400 < usage.prompt_tokens <= 512 - 8


def test_a_last_message_longer_than_the_context_is_refused_with_what_to_do(
        small_context: LlamaCppBackend):
    chat = [SYSTEM, {"role": "user", "content": "word " * 800}]
    with pytest.raises(TargetFailed, match="shorten the history or raise n_ctx"):
        list(small_context.stream(chat, GenerationParams(max_tokens=16)))



#: an answer in Japanese: llama-cpp-python gives a piece per whole character, 2-3 tokens each
JAPANESE = [{"role": "user", "content": "日本の首都について日本語で説明してください。"}]


def test_an_answer_in_japanese_cut_by_max_tokens_ends_for_length(backend: LlamaCppBackend):
    usage = Usage()
    pieces = list(backend.stream(JAPANESE, GenerationParams(max_tokens=12, temperature=0.0), usage=usage))
    assert len(pieces) < 12  # so pieces counted against max_tokens would have said "stop"
    assert usage.finish_reason == "length"
    assert usage.completion_tokens is not None and usage.completion_tokens > len(pieces)


def test_an_answer_that_ends_of_itself_ends_for_stop(backend: LlamaCppBackend):
    usage = Usage()
    pieces = list(backend.stream(HELLO, GenerationParams(max_tokens=200, temperature=0.0), usage=usage))
    assert pieces and usage.finish_reason == "stop"
    assert usage.completion_tokens is not None and usage.completion_tokens < 200


def test_llama_cpps_own_lines_after_a_load_go_to_the_log_not_to_stderr(backend: LlamaCppBackend,
                                                                        capsys, caplog):
    # llama-cpp-python reads the levels of the ggml it ships by their old numbers: with
    # verbose=False it printed a warning on stderr whenever a new prompt reused part of the
    # cache, one more line on serve's console for every answer a host stopped
    caplog.set_level(logging.DEBUG, logger="zwaif_fallback.backends.llama_log")
    cancel = Cancel()
    for i, _ in enumerate(backend.stream(HELLO, GenerationParams(max_tokens=40, temperature=0.0),
                                         cancel=cancel)):
        if i == 3:
            cancel.set()
    list(backend.stream([{"role": "user", "content": "Say goodbye."}], GREEDY))
    assert capsys.readouterr().err == ""
    assert any(r.getMessage().startswith("llama.cpp: ") for r in caplog.records)
