"""The host's call path: OpenAI request dicts in, OpenAI response dicts out, never an exception.

The answers come from a real ``llama_cpp.server`` primary and the bundled SmolLM2; each
response is checked with the ``openai`` package's own types, as a host's client would read it.
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

import pytest
from builders import write_gguf
from conftest import ROOT
from servers import FaultProxy, LlamaServer, ScriptedOllama, ScriptedServer, refused_url

from zwaif_fallback import FallbackManager, FallbackSettings
from zwaif_fallback.completions import parse_request

openai_types = pytest.importorskip("openai.types.chat")
ChatCompletion = openai_types.ChatCompletion
ChatCompletionChunk = openai_types.ChatCompletionChunk

SMOL = "SmolLM2-135M-Instruct.Q4_1"
ASK = [{"role": "user", "content": "Name three colours."}]
REQUEST = {"messages": ASK, "max_tokens": 24, "temperature": 0.0, "seed": 1}


@pytest.fixture(scope="module")
def server(smollm2: Path) -> Any:
    srv = LlamaServer(smollm2).start()
    yield srv
    srv.stop()


@pytest.fixture
def proxy(server: LlamaServer) -> Any:
    p = FaultProxy(server.port)
    yield p
    p.close()


def make_manager(root: Path, **settings: Any) -> FallbackManager:
    models = root / "models"
    models.mkdir(exist_ok=True)
    defaults: dict[str, Any] = dict(
        timeout=5, max_retries=2, models_dir=models, scan_system_stores=False, keep_alive=0,
        preferred_model=SMOL, settings_file=root / "settings.json", data_dir=root / "data")
    return FallbackManager(FallbackSettings(**{**defaults, **settings}), background=False)


@pytest.fixture
def manager(isolated: Path) -> Any:
    with make_manager(isolated) as m:
        yield m


@pytest.fixture
def fronted(isolated: Path, proxy: FaultProxy) -> Any:
    """A manager whose primary is the llama.cpp server, behind the fault proxy."""
    with make_manager(isolated, primary_url=proxy.url) as m:
        yield m


def text_of(chunks: list[dict[str, Any]]) -> str:
    return "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks if c.get("choices"))


# -- the whole answer ---------------------------------------------------------------------


def test_a_healthy_primary_answers_as_an_openai_completion(fronted: FallbackManager, proxy: FaultProxy):
    response = fronted.chat_completion({**REQUEST, "model": "the-hosts-model"})
    completion = ChatCompletion.model_validate(response)
    # the model's name as the server gave it back (llama_cpp.server echoes the one asked for);
    # which server answered is in the attempts
    assert completion.model == "the-hosts-model"
    assert [a["target"] for a in response["x_fallback"]["attempts"]] == [proxy.url]
    assert completion.choices[0].message.content == "".join(proxy.forwarded)
    assert json.loads(proxy.last_body or b"{}")["model"] == "the-hosts-model"  # passed on as given
    # llama_cpp.server sends no usage in a stream: nothing is made up in its place.
    assert completion.usage is None


def test_a_server_that_reports_usage_passes_its_counts_on(isolated: Path):
    server = ScriptedServer(["Red, ", "green ", "and blue."], prompt_tokens=17)
    try:
        with make_manager(isolated, primary_url=server.url) as manager:
            completion = ChatCompletion.model_validate(manager.chat_completion(REQUEST))
    finally:
        server.close()
    assert completion.choices[0].message.content == "Red, green and blue."
    assert completion.usage is not None
    assert (completion.usage.prompt_tokens, completion.usage.completion_tokens) == (17, 3)
    assert server.bodies[0]["stream_options"] == {"include_usage": True}


def test_a_server_s_own_model_name_and_finish_reason_are_passed_on(isolated: Path):
    # A server may name the model otherwise than the request did ("llama3" asked, a tag
    # answered), and stop at a limit of its own (llama.cpp's -n) the host never asked for.
    server = ScriptedServer(["Red, ", "green ", "and blue."], model="llama3:latest", finish_reason="length")
    try:
        with make_manager(isolated, primary_url=server.url) as manager:
            whole = manager.chat_completion({**REQUEST, "model": "llama3"})
            chunks = list(manager.stream_chat_completion({**REQUEST, "model": "llama3", "stream": True}))
    finally:
        server.close()
    assert (whole["model"], whole["choices"][0]["finish_reason"]) == ("llama3:latest", "length")
    assert {c["model"] for c in chunks} == {"llama3:latest"}
    assert chunks[0]["x_fallback"]["model"] == "llama3:latest"
    assert [c["choices"][0]["finish_reason"] for c in chunks if c["choices"]][-1] == "length"


@pytest.mark.parametrize("limits, expected", [
    ({"n_predict": 3}, 3),  # llama.cpp's name, which Z-WAIF's pre-release sends
    ({"n_predict": 3, "max_tokens": 5}, 5), ({"max_completion_tokens": 2, "max_tokens": 5}, 2),
    ({"n_predict": -1}, None),  # llama.cpp's "no limit": the chain's own
    ({"n_predict": -2}, None),  # "fill the context", as Ollama's num_predict also says it
])
def test_the_length_limit_is_read_by_any_of_its_names(limits: dict[str, int], expected: int | None):
    assert parse_request({"messages": REQUEST["messages"], **limits}).gen.get("max_tokens") == expected


def test_a_server_is_sent_only_the_sampler_fields_the_host_chose(isolated: Path):
    # Z-WAIF names a text-generation-webui preset and no temperature: a default of ours
    # sent upstream would overrule the preset (and an Ollama Modelfile's, and a length limit).
    server = ScriptedServer(["word "] * 300)
    try:
        with make_manager(isolated, primary_url=server.url) as manager:
            plain = manager.chat_completion({"messages": ASK, "preset": "Z-Waif-ADEF-Standard"})
            chosen = manager.chat_completion({"messages": ASK, "temperature": 0.2, "max_tokens": 300})
    finally:
        server.close()
    sampler = ("max_tokens", "temperature", "top_p")
    assert [{k: body.get(k) for k in sampler} for body in server.bodies] == [
        {"max_tokens": None, "temperature": None, "top_p": None},
        {"max_tokens": 300, "temperature": 0.2, "top_p": None}]
    # 300 pieces are not "length" unless 300 was the limit asked for
    assert [c["choices"][0]["finish_reason"] for c in (plain, chosen)] == ["stop", "length"]


@pytest.mark.slow
def test_a_local_model_answers_as_the_character_a_host_names(isolated: Path):
    # Z-WAIF sends no persona, only the name of a text-generation-webui character.
    characters = isolated / "text-generation-webui" / "user_data" / "characters"
    characters.mkdir(parents=True)
    (characters / "Waifu.yaml").write_text(
        "name: Aria\ncontext: '{{char}} is a fox spirit who teases {{user}}.'\n", encoding="utf-8")
    named = {"messages": ASK, "mode": "chat", "character": "Waifu", "max_tokens": 1}
    spelled = {"messages": [{"role": "system", "content": "Aria is a fox spirit who teases You."}, *ASK],
               "max_tokens": 1}
    with make_manager(isolated, primary_url=refused_url(),
                      characters_dir=str(characters.parent.parent)) as manager:
        answers = [manager.chat_completion(r) for r in (named, spelled, {**named, "mode": "instruct"})]
    assert [a["x_fallback"]["source"] for a in answers] == ["local"] * 3, answers
    # the model read the same prompt as if the host had sent the persona itself
    tokens = [a["usage"]["prompt_tokens"] for a in answers]
    assert tokens[0] == tokens[1] != tokens[2], tokens


def test_a_remote_answers_as_the_character_and_the_primary_reads_it_itself(isolated: Path):
    # The primary is the text-generation-webui the host names the character to; a remote
    # (LM Studio, Ollama) knows no characters and would answer as a generic assistant.
    (isolated / "Waifu.yaml").write_text("name: Aria\ncontext: '{{char}} teases {{user}}.'\n",
                                         encoding="utf-8")
    primary, remote = ScriptedServer(["Hi."]), ScriptedServer(["Hi."])
    request = {"messages": [{"role": "system", "content": "Be brief."}, *ASK], "mode": "chat",
               "character": "Waifu"}
    try:
        answers = []
        for primary_url in (primary.url, refused_url()):
            with make_manager(isolated, primary_url=primary_url, remote_urls=[remote.url],
                              characters_dir=str(isolated)) as manager:
                answers.append(manager.chat_completion(request))
    finally:
        primary.close()
        remote.close()
    assert [a["x_fallback"]["source"] for a in answers] == ["primary", "remote"]
    assert primary.bodies[0]["messages"] == request["messages"]
    assert remote.bodies[0]["messages"] == [
        {"role": "system", "content": "Aria teases You.\n\nBe brief."}, *ASK]
    assert remote.bodies[0]["character"] == "Waifu"  # a text-generation-webui remote reads it itself


def test_an_ollama_primary_answers_as_the_character_too(isolated: Path):
    # only text-generation-webui reads the character a request names; Ollama knows none
    (isolated / "Waifu.yaml").write_text("context: Be Aria.\n", encoding="utf-8")
    primary = ScriptedOllama(["Hi."])
    try:
        with make_manager(isolated, primary_url=primary.url, primary_api="ollama",
                          characters_dir=str(isolated)) as manager:
            answer = manager.chat_completion({"messages": ASK, "mode": "chat", "character": "Waifu"})
    finally:
        primary.close()
    assert answer["x_fallback"]["source"] == "primary"
    assert primary.bodies[0]["messages"] == [{"role": "system", "content": "Be Aria."}, *ASK]


def test_a_server_that_refuses_stream_options_is_asked_again_without_them(isolated: Path):
    server = ScriptedServer(["Red."], refuse_stream_options=True)
    try:
        with make_manager(isolated, primary_url=server.url) as manager:
            first = manager.chat_completion(REQUEST)
            second = manager.chat_completion(REQUEST)
    finally:
        server.close()
    assert first["model"] == second["model"] == server.url and "usage" not in first
    assert ["stream_options" in b for b in server.bodies] == [True, False, False]


def test_a_stopped_primary_falls_back_with_real_token_counts(manager: FallbackManager, smollm2: Path):
    response = manager.chat_completion({**REQUEST, "model": "gpt-4o"})
    completion = ChatCompletion.model_validate(response)
    assert completion.model == SMOL and completion.choices[0].message.content
    assert completion.choices[0].finish_reason == "length"

    import llama_cpp

    llm = llama_cpp.Llama(str(smollm2), n_ctx=512, verbose=False)
    direct = llm.create_chat_completion(ASK, max_tokens=24, temperature=0.0, seed=1)
    assert completion.usage is not None
    assert completion.usage.prompt_tokens == direct["usage"]["prompt_tokens"]
    assert completion.usage.completion_tokens == direct["usage"]["completion_tokens"] == 24
    assert completion.usage.total_tokens == completion.usage.prompt_tokens + 24


def test_nothing_able_to_answer_gives_an_error_object_listing_the_attempts(isolated: Path):
    models = isolated / "models"
    models.mkdir()
    write_gguf(models / "broken.gguf", n_embd=64, n_head=4, n_head_kv=3)  # 64 % 3: bad K/V shape
    with make_manager(isolated, auto_switch=False, preferred_model="broken",
                      primary_url=refused_url()) as manager:
        response = manager.chat_completion(REQUEST)
        chunks = list(manager.stream_chat_completion(REQUEST))
    assert "choices" not in response
    assert response["error"]["code"] == "all_targets_failed"
    error = response["error"]
    assert error["type"] == "server_error" and "connection refused" in error["message"]
    assert [a["ok"] for a in response["attempts"]] == [False, False]
    assert response["attempts"][1]["target"] == "broken"
    assert len(chunks) == 1 and chunks[0]["error"]["code"] == "all_targets_failed"
    # the same attempts; the broken file is not loaded a second time
    assert [a["target"] for a in chunks[0]["attempts"]] == [a["target"] for a in response["attempts"]]
    assert "(an earlier load in this process: a replaced" in chunks[0]["attempts"][1]["error"]


# -- the stream ----------------------------------------------------------------------------


def test_stream_chunks_are_openai_chunks_and_add_up_to_the_completion(manager: FallbackManager):
    request = {**REQUEST, "stream": True, "stream_options": {"include_usage": True}}
    chunks = list(manager.stream_chat_completion(request))
    parsed = [ChatCompletionChunk.model_validate(c) for c in chunks]
    assert parsed[0].choices[0].delta.role == "assistant"
    assert len({c.id for c in parsed}) == 1
    *answer, last, usage = parsed
    assert all(c.choices[0].finish_reason is None for c in answer)
    assert last.choices[0].finish_reason == "length" and chunks[-2]["x_fallback"]["source"] == "local"
    assert usage.choices == [] and usage.usage is not None and usage.usage.completion_tokens == 24
    assert all(c.usage is None for c in parsed[:-1])

    whole = ChatCompletion.model_validate(manager.chat_completion(REQUEST))
    assert text_of(chunks) == whole.choices[0].message.content
    assert whole.usage == usage.usage


def test_without_include_usage_a_stream_has_no_usage_chunk(manager: FallbackManager):
    chunks = list(manager.stream_chat_completion(REQUEST))
    assert chunks[-1]["choices"][0]["finish_reason"] == "length"
    assert all("usage" not in c for c in chunks)


def test_a_stream_cut_mid_answer_is_continued_with_each_piece_named(fronted: FallbackManager,
                                                                    proxy: FaultProxy):
    proxy.mode, proxy.after = "cut", 3
    chunks = list(fronted.stream_chat_completion(REQUEST))
    for chunk in chunks:
        ChatCompletionChunk.model_validate(chunk)
    sources = [c["model"] for c in chunks[:-1]]
    assert sources[:3] == [proxy.url] * 3 and set(sources[3:]) == {SMOL}
    text = text_of(chunks)
    assert text.startswith("".join(proxy.forwarded)) and len(text) > len("".join(proxy.forwarded))
    info = chunks[-1]["x_fallback"]
    assert info["model"] == SMOL and info["fell_back"]
    assert info["switches"] == [{"at_char": len("".join(proxy.forwarded)), "from_target": proxy.url,
                                 "to_target": SMOL}]


def test_the_model_field_picks_a_local_model_first(isolated: Path):
    (isolated / "models").mkdir()
    write_gguf(isolated / "models" / "tiny.gguf")
    with make_manager(isolated) as manager:
        assert manager.chat_completion(REQUEST)["model"] == SMOL  # the preferred model
        assert manager.chat_completion({**REQUEST, "model": "tiny"})["model"] == "tiny"


# -- a host written for Oobabooga -------------------------------------------------------------

#: What Z-WAIF's "Oobabooga" API type sends besides OpenAI's fields (API/api_controller.py).
OOBABOOGA = {"mode": "chat", "character": "Waifu", "truncation_length": 4096,
             "preset": "Z-Waif-ADEF-Standard"}


def test_text_generation_webuis_own_fields_mark_a_request_written_for_oobabooga():
    assert parse_request({**REQUEST, **OOBABOOGA}).oobabooga
    assert parse_request({**REQUEST, "instruction_template": "ChatML"}).oobabooga
    # Samplers that other servers read too say nothing about the host.
    assert not parse_request({**REQUEST, "min_p": 0.05, "top_k": 40, "repetition_penalty": 1.1}).oobabooga


def test_every_chunk_for_oobabooga_has_a_text_and_the_usage_rides_on_the_last(manager: FallbackManager):
    request = {**REQUEST, **OOBABOOGA, "stream": True, "stream_options": {"include_usage": True}}
    chunks = list(manager.stream_chat_completion(request))
    assert all(isinstance(c["choices"][0]["delta"]["content"], str) for c in chunks)
    parsed = [ChatCompletionChunk.model_validate(c) for c in chunks]  # OpenAI's clients read it too
    assert parsed[-1].choices[0].finish_reason == "length"
    assert parsed[-1].usage is not None and parsed[-1].usage.completion_tokens == 24
    assert all(c.usage is None for c in parsed[:-1])
    assert text_of(chunks) == text_of(list(manager.stream_chat_completion(REQUEST)))


def test_a_failed_stream_for_oobabooga_ends_with_an_error_with_an_empty_text(isolated: Path,
                                                                           proxy: FaultProxy):
    models = isolated / "models"
    models.mkdir()
    write_gguf(models / "broken.gguf", n_embd=64, n_head=4, n_head_kv=3)  # 64 % 3: bad K/V shape
    proxy.mode, proxy.after = "cut", 3
    with make_manager(isolated, auto_switch=False, preferred_model="broken",
                      primary_url=proxy.url) as manager:
        chunks = list(manager.stream_chat_completion({**REQUEST, **OOBABOOGA, "stream": True}))
    *answer, failure = chunks
    assert text_of(answer) == "".join(proxy.forwarded)
    assert failure["error"]["code"] == "all_targets_failed"
    assert failure["choices"][0]["delta"]["content"] == ""


# -- bad requests ----------------------------------------------------------------------------

MESSAGE = [{"role": "user", "content": "Hi"}]


@pytest.mark.parametrize(("request_", "param"), [
    (None, "request"),
    ("Hello", "request"),
    ([{"role": "user", "content": "Hi"}], "request"),
    ({}, "messages"),
    ({"messages": "Hello"}, "messages"),
    ({"messages": []}, "messages"),
    ({"messages": [{"role": "wizard", "content": "Hi"}]}, "messages"),
    ({"messages": [{"role": "user", "content": 5}]}, "messages"),
    ({"messages": MESSAGE, "model": 5}, "model"),
    ({"messages": MESSAGE, "max_tokens": -1}, "max_tokens"),
    ({"messages": MESSAGE, "max_completion_tokens": 0}, "max_completion_tokens"),
    ({"messages": MESSAGE, "max_tokens": "many"}, "max_tokens"),
    ({"messages": MESSAGE, "temperature": float("nan")}, "temperature"),
    ({"messages": MESSAGE, "temperature": "hot"}, "temperature"),
    ({"messages": MESSAGE, "top_p": -0.1}, "top_p"),
    ({"messages": MESSAGE, "stop": 5}, "stop"),
    ({"messages": MESSAGE, "seed": "lucky"}, "seed"),
    ({"messages": MESSAGE, "stream_options": "yes"}, "stream_options"),
])
def test_a_bad_request_gets_an_error_naming_the_field(manager: FallbackManager, request_: Any, param: str):
    response = manager.chat_completion(request_)
    assert response["error"]["type"] == "invalid_request_error"
    assert response["error"]["param"] == param and response["error"]["message"]
    assert list(manager.stream_chat_completion(request_)) == [response]


def test_a_local_model_ignores_unknown_fields_with_one_debug_line(manager: FallbackManager, caplog: Any):
    with caplog.at_level(logging.DEBUG, logger="zwaif_fallback"):
        response = manager.chat_completion({**REQUEST, "logit_bias": {"1": 5}, "user": "abc-user",
                                            "presence_penalty": 0.5})
    assert "choices" in response
    lines = [r.getMessage() for r in caplog.records if r.name == "zwaif_fallback.routing"]
    assert lines == [f"local model {SMOL} ignores the request's field(s) logit_bias, presence_penalty, user"]
    assert not any("abc-user" in r.getMessage() for r in caplog.records)  # names, never values


@pytest.mark.parametrize("request_", [
    {**REQUEST, "logit_bias": {"1": float("nan")}},
    {**REQUEST, "user": object()},
])
def test_a_field_that_cannot_be_passed_on_as_json_is_refused(manager: FallbackManager, request_: Any):
    response = manager.chat_completion(request_)
    assert response["error"]["type"] == "invalid_request_error"
    assert response["error"]["param"] == next(k for k in request_ if k not in REQUEST)


# -- try_fallbacks, in a host process ------------------------------------------------------

HOST = """
import json, sys
from zwaif_fallback import try_fallbacks   # the one line a host changes

for line in sys.stdin:
    fallback_request = json.loads(line)
    fallback_response = try_fallbacks(fallback_request)
    if isinstance(fallback_response, dict) and "choices" in fallback_response:
        print(json.dumps({"said": fallback_response["choices"][0]["message"]["content"],
                          "by": fallback_response["model"]}), flush=True)
    else:
        print(json.dumps({"failed": fallback_response}), flush=True)
"""


def test_try_fallbacks_answers_a_hosts_request_before_and_after_its_primary_stops(
        isolated: Path, smollm2: Path):
    server = LlamaServer(smollm2).start()
    env = {**os.environ, "PYTHONPATH": str(ROOT), "FALLBACK_PRIMARY_URL": server.url,
           "FALLBACK_TIMEOUT": "10", "FALLBACK_MODELS_DIR": str(isolated / "models"),
           "FALLBACK_SCAN_SYSTEM_STORES": "false", "FALLBACK_DATA_DIR": str(isolated / "data"),
           "FALLBACK_SETTINGS_FILE": str(isolated / "settings.json")}
    # Z-WAIF's own request: messages, max_tokens, temperature and its stopping strings.
    request = json.dumps({"messages": ASK, "max_tokens": 24, "temperature": 0.0,
                          "stop": ["\nUser:", "<|im_end|>"]})
    host = subprocess.Popen([sys.executable, "-c", HOST], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            text=True, env=env, cwd=isolated)
    try:
        assert host.stdin is not None and host.stdout is not None
        host.stdin.write(request + "\n")
        host.stdin.flush()
        first = json.loads(host.stdout.readline())
        server.stop()
        host.stdin.write(request + "\n")
        host.stdin.close()
        second = json.loads(host.stdout.readline())
        assert host.wait(timeout=60) == 0
    finally:
        server.stop()
        host.kill()
    assert first["by"] == server.url and first["said"]
    assert second["by"] == SMOL and second["said"]


def test_a_cancelled_stream_stops_and_frees_the_model(manager: FallbackManager):
    cancel = threading.Event()
    chunks = manager.stream_chat_completion({**REQUEST, "max_tokens": 400}, cancel=cancel)
    assert next(chunks)["choices"][0]["delta"]["content"]
    cancel.set()
    rest = list(chunks)  # ends at once, with no finish_reason and no error: the reader is gone
    assert len(rest) <= 1 and all("error" not in c for c in rest)
    again = manager.chat_completion(REQUEST)
    assert again["choices"][0]["finish_reason"] == "length"
