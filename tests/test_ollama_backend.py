"""Reading Ollama's own streamed answer (``OllamaLines``): pieces, the end, failures."""

from __future__ import annotations

import json
from typing import Any

import pytest

from zwaif_fallback.backends.base import TargetFailed, ToolCalls, Usage
from zwaif_fallback.backends.ollama import OllamaLines, is_ollama_url, listed_models


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


@pytest.mark.parametrize("url, ollama", [("http://127.0.0.1:11434/api", True), ("http://h:11434/api/", True),
                                         ("http://127.0.0.1:11434/v1", False), ("http://h/apis", False)])
def test_a_url_ending_in_api_is_ollamas_own(url: str, ollama: bool):
    assert is_ollama_url(url) is ollama


def test_model_lists_of_both_kinds_read_as_openais():
    tags = {"models": [{"name": "llama3:latest"}, {"size": 3}, "junk"]}
    assert [m["id"] for m in listed_models("http://h/api", tags)] == ["llama3:latest"]
    assert [m["id"] for m in listed_models("http://h/v1", {"data": [{"id": "m"}, {}]})] == ["m"]
    assert listed_models("http://h/v1", ["not", "an", "object"]) == []
