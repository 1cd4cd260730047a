"""Reading Ollama's own streamed answer (``OllamaLines``): pieces, the end, failures."""

from __future__ import annotations

import json
from typing import Any

import pytest
from servers import ScriptedOllama

from zwaif_fallback.backends.base import ALIVE, TargetFailed, ToolCalls, Usage
from zwaif_fallback.backends.ollama import OllamaBackend, OllamaLines, listed_models, models_url, ollama_root
from zwaif_fallback.routing import _answers_a_chat, _as_loaded


def ndjson(*parts: dict[str, Any]) -> bytes:
    return b"".join(json.dumps(p).encode() + b"\n" for p in parts)


def part(text: str, **extra: Any) -> dict[str, Any]:
    return {"model": "llama3:latest", "message": {"role": "assistant", "content": text}, "done": False,
            **extra}


def test_an_answer_split_anywhere_by_the_network_reads_the_same():
    body = ndjson(part("Red, "), part("green"), part("", done=True, done_reason="length",
                                                      prompt_eval_count=9, eval_count=2))
    for cut in range(1, len(body)):
        usage = Usage()
        lines = OllamaLines(usage)
        pieces = lines.feed(body[:cut]) + lines.feed(body[cut:])
        lines.check()
        assert pieces + lines.end() == ["Red, ", "green"]
        assert (usage.model, usage.finish_reason, usage.prompt_tokens, usage.completion_tokens) == \
            ("llama3:latest", "length", 9, 2)


def test_a_stream_that_stops_before_done_is_an_unfinished_answer():
    lines = OllamaLines(Usage())
    assert lines.feed(ndjson(part("Red, "))) == ["Red, "]
    with pytest.raises(TargetFailed, match="ended before the answer was finished") as failed:
        lines.end()
    assert failed.value.retryable


def test_an_error_line_fails_the_answer_after_the_pieces_before_it():
    lines = OllamaLines(Usage())
    assert lines.feed(ndjson(part("Red, "), {"error": "model runner has unexpectedly stopped"})) == ["Red, "]
    with pytest.raises(TargetFailed, match="unexpectedly stopped"):
        lines.check()


def test_tool_calls_come_as_openai_deltas_each_with_its_own_index():
    calls = [{"function": {"name": "a", "arguments": {"x": 1}}}, {"function": {"name": "b", "arguments": {}}}]
    lines = OllamaLines(Usage())
    pieces = lines.feed(ndjson(part("", done=True, done_reason="stop", message={"role": "assistant",
                                                                                 "content": "",
                                                                                 "tool_calls": calls})))
    assert pieces == [ToolCalls(({"index": 0, "id": "call_0", "type": "function",
                                  "function": {"name": "a", "arguments": '{"x": 1}'}},
                                 {"index": 1, "id": "call_1", "type": "function",
                                  "function": {"name": "b", "arguments": "{}"}}))]


def test_malformed_json_fails_the_answer_saying_so():
    lines = OllamaLines(Usage())
    lines.feed(b"{not json\n")
    with pytest.raises(TargetFailed, match="malformed JSON"):
        lines.check()


@pytest.mark.parametrize("url", ["http://127.0.0.1:11434", "http://127.0.0.1:11434/", "http://127.0.0.1:11434/api",
                                 "http://127.0.0.1:11434/v1/"])
def test_ollamas_own_api_is_at_the_servers_root(url: str):
    assert ollama_root(url) == "http://127.0.0.1:11434"
    assert models_url(url, ollama=True) == "http://127.0.0.1:11434/api/tags"


def test_model_lists_of_both_kinds_read_as_openais():
    tags = {"models": [{"name": "llama3:latest", "size": 5}, {"size": 3}, "junk"]}
    assert listed_models(tags, ollama=True) == [{"id": "llama3:latest", "object": "model", "created": 0,
                                                 "owned_by": "ollama", "x_ollama": tags["models"][0]}]
    assert [m["id"] for m in listed_models({"data": [{"id": "m"}, {}]}, ollama=False)] == ["m"]
    assert listed_models(["not", "an", "object"], ollama=False) == []
    assert models_url("http://h/v1/", ollama=False) == "http://h/v1/models"


def test_a_breaker_probe_asks_ollama_for_the_model_as_the_last_chat_loaded_it():
    # Ollama reloads a model asked for with another context or keep_alive: a probe that
    # did so would cost the next chat a reload, at the wrong context, after every outage.
    upstream = ScriptedOllama(["Hi"])
    last_chat = {"options": {"num_ctx": 8192, "top_k": 3}, "keep_alive": "25h", "think": False}
    try:
        answered = _answers_a_chat(OllamaBackend(upstream.url), "llama3", 5.0, _as_loaded(last_chat))
    finally:
        upstream.close()
    assert answered == "answers"
    sent = upstream.bodies[0]
    assert (sent["model"], sent["keep_alive"]) == ("llama3", "25h")
    assert sent["options"] == {"num_ctx": 8192, "num_predict": 1}


def test_ollamas_thinking_lines_are_a_sign_of_life_not_text():
    thinking = {"model": "m", "done": False,
                "message": {"role": "assistant", "content": "", "thinking": "Hmm."}}
    lines = OllamaLines(Usage())
    assert lines.feed(ndjson(thinking, part("Blue."))) == [ALIVE, "Blue."]


def test_a_raw_generations_thinking_is_a_sign_of_life_too():
    # /api/generate gives a thinking model's reasoning at the top level, not in a message
    lines = OllamaLines(Usage())
    thinking = {"model": "m", "response": "", "thinking": "Hmm.", "done": False}
    answer = {"model": "m", "response": "Blue.", "done": False}
    assert lines.feed(ndjson(thinking, answer)) == [ALIVE, "Blue."]
