"""llama.cpp's backend, on the bundled SmolLM2: what a cancel does to a generation.

A cancel used to be seen only between pieces, so a long prompt was evaluated to its end
(seconds on a CPU, with the model locked) after the reader had gone. serve's ``Cancel``
now aborts the decode in progress. The proof is llama-cpp-python's count of the prompt
tokens it has evaluated, not a timing.
"""

from __future__ import annotations

import threading
from pathlib import Path

import pytest

from zwaif_fallback.backends.base import Cancel, GenerationParams
from zwaif_fallback.backends.llama_cpp import LlamaCppBackend

pytestmark = pytest.mark.slow

#: about 2,700 tokens: several seconds of prompt evaluation on two cores
LONG = [{"role": "user", "content": "Summarise: " + " ".join(f"w{i % 97}" for i in range(900))}]
HELLO = [{"role": "user", "content": "Say hello."}]
GREEDY = GenerationParams(max_tokens=12, temperature=0.0, seed=1)


@pytest.fixture(scope="module")
def backend(smollm2: Path):
    backend = LlamaCppBackend("smollm2", str(smollm2), n_ctx=4096, safe_load=False)
    backend.load()
    yield backend
    backend.unload()


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
