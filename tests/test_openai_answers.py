"""Reading a server's event stream: the text-only events read by their frame (``Events``)
give exactly what parsing each event whole gives. What an error status says (``status_error``)."""

from __future__ import annotations

import json
from typing import Any

import pytest

from zwaif_fallback.backends.base import ALIVE, TargetFailed, ToolCalls, Usage, well_formed
from zwaif_fallback.backends.openai_answers import SAID_CHARS, Events, status_error

TEXTS = ["Hello", ' "quoted" ', "back\\slash", "line\nbreak", "caf\u00e9", "\U0001F600 emoji",
         "\u2028", "</script>", "\\u0041 not an escape", "a", "\t"]


def chunk(text: str | None, *, created: int = 1700000000, finish: str | None = None,
          **extra: Any) -> dict[str, Any]:
    delta = {} if text is None else {"content": text}
    return {"id": "chatcmpl-1", "object": "chat.completion.chunk", "created": created,
            "model": "m", "choices": [{"index": 0, "delta": delta, "finish_reason": finish}], **extra}


def sse(*events: dict[str, Any] | str, ensure_ascii: bool = True) -> bytes:
    lines = [e if isinstance(e, str) else json.dumps(e, ensure_ascii=ensure_ascii) for e in events]
    return b"".join(b"data: " + line.encode() + b"\n\n" for line in lines)


def read(body: bytes) -> list[str | ToolCalls]:
    events = Events(Usage())
    pieces = events.feed(body)
    events.check()
    return pieces


@pytest.mark.parametrize("ensure_ascii", [True, False])
def test_text_events_read_by_their_frame_give_every_text_as_sent(ensure_ascii):
    assert read(sse(*(chunk(t) for t in TEXTS), ensure_ascii=ensure_ascii)) == TEXTS


def test_an_emoji_whose_halves_come_in_two_events_is_one_character_and_a_lone_half_a_replacement():
    # A server writing JSON's \\u escapes may split a surrogate pair between events: the
    # halves reached the host as text UTF-8 cannot hold, and a whole answer ended in a 500
    body = sse(chunk("smile "), '{"choices": [{"delta": {"content": "\\ud83d"}}]}',
               '{"choices": [{"delta": {"content": "\\ude00 ok"}}]}',
               '{"choices": [{"delta": {"content": "lone \\ude00"}}]}',
               '{"choices": [{"delta": {"content": "\\ud83d"}, "finish_reason": "stop"}]}')
    events = Events(Usage())
    pieces = events.feed(body) + events.end()
    assert pieces == ["smile ", "\U0001f600 ok", "lone \ufffd", "\ufffd"]
    assert "".join(p for p in pieces if isinstance(p, str)).encode("utf-8")


def test_a_request_is_made_well_formed_in_its_keys_and_tuples_too():
    assert well_formed({"k\ud83d": ("\ud83d", "ok"), "n": 1}) == {"k\ufffd": ["\ufffd", "ok"], "n": 1}


def test_a_frame_that_changes_is_learned_again():
    # llama.cpp's server stamps each chunk with the second it was made
    body = sse(*(chunk(t, created=1700000000 + i // 3) for i, t in enumerate(TEXTS)))
    assert read(body) == TEXTS


def test_what_is_more_than_a_text_in_a_known_frame_is_parsed_whole():
    frame = json.dumps(chunk("X"))
    head, tail = frame.split('"X"')
    usage = Usage()
    events = Events(usage)
    pieces = events.feed(sse(
        chunk("a"),
        head + '"b", "content": "B"' + tail,  # two strings where the text was: JSON keeps the last
        head + '""' + tail,  # an empty text
        head + "null" + tail,  # not a string
        chunk("c", usage={"prompt_tokens": 3, "completion_tokens": 2}),
        chunk("d", finish="stop"),
    ))
    assert pieces == ["a", "B", "c", "d"]
    assert (usage.prompt_tokens, usage.completion_tokens) == (3, 2)
    assert events.end() == []  # finished: the "stop" was seen


def test_a_tool_call_beside_a_text_is_not_lost():
    call = {"index": 0, "id": "c1", "type": "function", "function": {"name": "f", "arguments": ""}}
    with_call = chunk("x")
    with_call["choices"][0]["delta"]["tool_calls"] = [call]
    pieces = read(sse(chunk("a"), with_call, chunk("b")))
    assert pieces[:2] == ["a", "x"] and isinstance(pieces[2], ToolCalls) and pieces[3] == "b"


def test_a_control_character_in_a_known_frame_is_malformed_json_as_before():
    frame = json.dumps(chunk("X"))
    head, tail = frame.split('"X"')
    events = Events(Usage())
    assert events.feed(sse(chunk("a"), head + '"bad\x01"' + tail, chunk("never"))) == ["a"]
    with pytest.raises(TargetFailed, match="malformed JSON"):
        events.check()


def test_a_field_named_content_before_the_text_is_not_taken_for_it():
    # another "content" first, equal to the text once, then changing while the text stays:
    # the frame must be the text's, proven by what the event parses to
    def event(decoy: str) -> dict[str, Any]:
        return {"meta": {"content": decoy}, **chunk("same", model="content")}

    assert read(sse(*(event(d) for d in ["same", *TEXTS]))) == ["same"] * (len(TEXTS) + 1)


def test_an_answer_of_text_events_is_parsed_whole_once(monkeypatch):
    import zwaif_fallback.backends.openai_answers as answers

    parsed: list[object] = []
    loads = json.loads
    monkeypatch.setattr(answers.json, "loads", lambda s, **kw: parsed.append(s) or loads(s, **kw))
    assert read(sse(*(chunk(t) for t in TEXTS * 20))) == TEXTS * 20
    assert len(parsed) == 2  # the first event, and the proof of its frame


def test_a_thinking_models_reasoning_is_a_sign_of_life_not_text():
    # llama.cpp's server sends a reasoning model's thinking as reasoning_content: hosts are
    # not shown it, but the server is at work, not hung.
    thinking = chunk(None)
    thinking["choices"][0]["delta"] = {"reasoning_content": "Let me see."}
    assert read(sse(thinking, chunk("Blue."))) == [ALIVE, "Blue."]


#: Python's http.server answers an unsupported method with this page, a 501
ERROR_PAGE = b"""<!DOCTYPE HTML>
<html lang="en">
    <head>
        <meta charset="utf-8">
        <title>Error response</title>
    </head>
    <body>
        <h1>Error response</h1>
        <p>Error code: 501</p>
        <p>Message: Unsupported method (&#x27;POST&#x27;).</p>
    </body>
</html>
"""


@pytest.mark.parametrize(("status", "body", "says"), [
    (400, b'{"error": {"message": "bad temperature", "type": "invalid_request_error"}}',
     "HTTP 400 Bad Request: bad temperature"),
    (500, b'{"error": "out of memory"}', "HTTP 500 Internal Server Error: out of memory"),
    (500, b'{"detail": "CUDA error"}', "HTTP 500 Internal Server Error: CUDA error"),
    (422, b'{"detail": [{"loc": ["body", "top_p"], "msg": "Input should be a number"}]}',
     ": body.top_p: Input should be a number"),
    (503, b'{"object": "error", "message": "loading"}', "HTTP 503 Service Unavailable: loading"),
    (502, b"upstream\n  timed out\n", "HTTP 502 Bad Gateway: upstream timed out"),
    (502, b"<html><head><title>502 Bad Gateway</title></head><body></body></html>",
     "HTTP 502 Bad Gateway"),
    (501, ERROR_PAGE, "HTTP 501 Not Implemented: Error response Error code: 501 "
                      "Message: Unsupported method ('POST')."),
])
def test_an_error_status_says_the_message_of_its_body_in_any_usual_shape(status, body, says):
    assert str(status_error(status, body)).endswith(says)


def test_a_404_says_the_url_should_end_in_v1():
    # FastAPI's 404 (a URL without /v1 on text-generation-webui) read as "HTTP 404: None"
    assert str(status_error(404, b'{"detail": "Not Found"}')) == (
        "HTTP 404 Not Found (check primary_url: it should end in /v1, e.g. http://127.0.0.1:5000/v1)")


def test_a_404_for_an_unknown_model_says_so_not_to_check_the_url():
    said = str(status_error(404, b'{"error": "model \\"llama3\\" not found, try pulling it first"}'))
    assert said == ('HTTP 404 Not Found: model "llama3" not found, try pulling it first '
                    "(the server knows no model by that name: check primary_model)")


def test_a_remote_or_an_ollama_primary_is_told_what_fits_it():
    from zwaif_fallback.backends.ollama import OllamaBackend

    ollama = OllamaBackend("http://127.0.0.1:11434", source="primary")._status_error(
        404, b"404 page not found")
    assert str(ollama).endswith("(check primary_url: Ollama's own API is at its root, with no /v1, "
                                "e.g. http://127.0.0.1:11434)")  # not "it should end in /v1"
    assert str(status_error(404, b"", primary=False)).startswith("HTTP 404 Not Found (check remote_urls: ")
    assert str(status_error(401, b"", primary=False)).endswith("(it wants an API key, and only the main "
                                                              "API is sent one)")


def test_a_long_error_page_is_one_bounded_line():
    said = str(status_error(500, b"<html><body>" + b"<p>Traceback line</p>\n" * 2000 + b"</body></html>"))
    assert "\n" not in said and "<" not in said
    assert len(said) <= len("HTTP 500 Internal Server Error: ") + SAID_CHARS
