"""``serve``'s Ollama API (``ollama_api``), driven by the ``ollama`` package Z-WAIF calls.

Z-WAIF's ``API_TYPE = Ollama`` calls ``ollama.chat`` (API/ollama_api.py on its main branch)
and reads ``event['message']['content']`` of each streamed part; pointed at serve through
``OLLAMA_HOST``, it must get the primary's answer, or a local model's when the primary is
gone, in the shape it reads.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
from servers import DripServer, ScriptedOllama, ScriptedServer, Served, refused_url, serve_settings
from servers import serve_in_process as serve

from zwaif_fallback import FallbackManager
from zwaif_fallback.completion_request import parse_request
from zwaif_fallback.model_info import ModelInfo
from zwaif_fallback.ollama_api import OllamaChunks, chat_request
from zwaif_fallback.ollama_info import running, timestamp
from zwaif_fallback.upstreams import PROBE_DEADLINE_S

ollama = pytest.importorskip("ollama")

SMOL = "SmolLM2-135M-Instruct.Q4_1"
#: Z-WAIF's ``get_temperature_options`` at temp level 0 (Configurables/OllamaModelConfigs.json),
#: with its num_ctx (max_context), stop list and token limit.
ZWAIF_OPTIONS: dict[str, Any] = {
    "temperature": 1.05, "min_p": 0.047, "top_p": 0.89, "top_k": 72, "num_ctx": 4096,
    "repeat_penalty": 1.079, "stop": ["[System", "\nUser:", "---", "<|", "###"], "num_predict": 300,
    "repeat_last_n": 3096, "frequency_penalty": 0.03, "presence_penalty": 0.03}
#: Z-WAIF's ``encode_new_api_ollama``: the character card as a system message, then the chat.
ZWAIF_HISTORY = [{"role": "system", "content": "You are Waifu, a cheerful companion."},
                 {"role": "user", "content": "Name three colours."}]
ZWAIF_MODEL = "leeplenty/lumimaid-v0.2:8b"
TOOL = {"type": "function", "function": {"name": "get_weather", "parameters": {
    "type": "object", "properties": {"city": {"type": "string"}}}}}
PNG = "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR4nGNgYGD4DwABBAEAwS2OUAAAAABJRU5ErkJggg=="


def zwaif_streams(url: str, history: list[dict[str, Any]] = ZWAIF_HISTORY,
                  options: dict[str, Any] = ZWAIF_OPTIONS) -> tuple[str, list[Any]]:
    """What Z-WAIF's stream loop makes of an answer: the reply, and each part it read. Any
    exception here is one that ends Z-WAIF's chat loop."""
    stream = ollama.Client(host=url).chat(model=ZWAIF_MODEL, messages=history, stream=True,
                                          keep_alive="25h", options=options)
    parts, assistant_message = [], ""
    for event in stream:  # Z-WAIF's own loop (api_controller.run_streaming, the "Ollama" branch)
        chunk = event['message']['content']
        assistant_message += chunk
        parts.append(event)
    return assistant_message, parts


def zwaif_through_serve(root: Path, upstream: Any, history: list[dict[str, Any]] = ZWAIF_HISTORY,
                        **settings: Any) -> tuple[str, list[Any]]:
    """``zwaif_streams`` against serve in front of ``upstream``, which is closed after."""
    if isinstance(upstream, ScriptedOllama):
        settings["primary_api"] = "ollama"
    try:
        with serve(root, upstream.url, **settings) as (served, _):
            return zwaif_streams(served.url, history)
    finally:
        upstream.close()


def openai_through_serve(root: Path, upstream: ScriptedOllama, ask: Callable[[openai.OpenAI], Any]) -> Any:
    """What ``ask`` gets from the ``openai`` client against serve in front of ``upstream``, an
    Ollama primary, which is closed after."""
    try:
        with serve(root, upstream.url, primary_api="ollama") as (served, _):
            return ask(openai.OpenAI(base_url=served.url + "/v1", api_key="unused", max_retries=0))
    finally:
        upstream.close()


def test_zwaifs_ollama_stream_gets_the_primarys_answer(isolated: Path):
    upstream = ScriptedServer(["Red, ", "green ", "and blue."], model=ZWAIF_MODEL)
    reply, parts = zwaif_through_serve(isolated, upstream)
    assert reply == "Red, green and blue."
    assert [p.done for p in parts] == [False] * (len(parts) - 1) + [True]
    assert (parts[-1].done_reason, parts[-1].model, parts[-1].eval_count) == ("stop", ZWAIF_MODEL, 3)
    # Ollama's options, in OpenAI's names where there is one, the other samplers as they are;
    # num_ctx and keep_alive are the Ollama server's own business
    sent = upstream.bodies[0]
    assert (sent["model"], sent["messages"], sent["max_tokens"], sent["temperature"]) == \
        (ZWAIF_MODEL, ZWAIF_HISTORY, 300, 1.05)
    assert {k: sent[k] for k in ("top_k", "min_p", "repeat_penalty", "repeat_last_n")} == \
        {"top_k": 72, "min_p": 0.047, "repeat_penalty": 1.079, "repeat_last_n": 3096}
    assert not {"num_ctx", "keep_alive", "options", "num_predict"} & set(sent)


def test_a_whole_ollama_answer_comes_back_as_ollama_gives_it(isolated: Path):
    upstream = ScriptedServer(["Red, ", "green ", "and blue."], model=ZWAIF_MODEL, prompt_tokens=17)
    try:
        with serve(isolated, upstream.url) as (served, _):
            answer = ollama.Client(host=served.url).chat(model=ZWAIF_MODEL, messages=ZWAIF_HISTORY,
                                                         options={"num_predict": 2})
    finally:
        upstream.close()
    assert (answer.message.role, answer.message.content) == ("assistant", "Red, green ")
    assert (answer.done, answer.done_reason, answer.model) == (True, "length", ZWAIF_MODEL)
    assert (answer.prompt_eval_count, answer.eval_count) == (17, 2)


def test_an_ollama_stream_writes_one_line_at_a_time(isolated: Path):
    # SillyTavern's Ollama reader parses all it has read as one JSON object: two lines in one
    # network read never parse, and the rest of the answer is lost. The primary here sends
    # its whole answer in one write, so serve reads it in one: its pieces make one line.
    upstream = ScriptedServer(["Red, ", "green ", "and blue."])
    sillytavern = {"model": ZWAIF_MODEL, "prompt": "Colours:", "stream": True, "keep_alive": -1,
                   "raw": True, "options": {"num_predict": 300, "temperature": 0.7}}
    try:
        with serve(isolated, upstream.url) as (served, _):
            with httpx.stream("POST", served.url + "/api/generate", json=sillytavern, timeout=30) as response:
                lines = list(response.iter_lines())
    finally:
        upstream.close()
    assert len(served.writes) == len(lines) and all(write.count(b"\n") == 1 for write in served.writes)
    said = [json.loads(write) for write in served.writes]
    assert "".join(line["response"] for line in said) == "Red, green and blue."
    assert [line["done"] for line in said] == [False] * (len(said) - 1) + [True]
    assert said[0]["x_fallback"]["source"] == "primary" and "attempts" in said[-1]["x_fallback"]


def test_the_lines_that_come_together_are_one_but_the_last_and_an_error_take_no_text():
    chunks = OllamaChunks()
    first = {**chunks._line("m", "Red"), "x_fallback": {"source": "primary", "model": "m"}}
    error = {"error": {"message": "cut", "type": "server_error"}}
    assert chunks.joined([first, chunks.text_event("m", ", green"), error, chunks._line("m", " and")]) == [
        {**chunks._line("m", "Red, green"), "x_fallback": {"source": "primary", "model": "m"}},
        error, chunks._line("m", " and")]
    # AnythingLLM and Open WebUI read no content on the last line
    last = {**chunks._line("m", ""), "done": True, "x_fallback": {"attempts": []}}
    assert chunks.joined([chunks.text_event("m", "bl"), chunks.text_event("m", "ue"), last, b""]) == [
        chunks._line("m", "blue"), last]


@pytest.mark.slow
def test_zwaifs_ollama_stream_gets_a_local_answer_when_the_primary_is_down(isolated: Path):
    with serve(isolated, refused_url()) as (served, _):
        reply, parts = zwaif_streams(served.url)
    last = parts[-1]
    assert reply.strip()
    assert (last.done, last.model) == (True, SMOL)  # the local model's name: it answered
    assert last.done_reason in ("stop", "length") and last.eval_count > 0


@pytest.mark.slow
def test_a_local_model_is_told_of_an_image_it_cannot_see(isolated: Path):
    # Z-WAIF's camera: "describe this image". A text-only model that reads only the words
    # describes a picture it never saw; told an image is there, it can say it cannot see it.
    ask = [{"role": "user", "content": "Describe this image."}]
    with serve(isolated, refused_url()) as (served, _):
        counts = [zwaif_streams(served.url, history, {"num_predict": 4})[1][-1].prompt_eval_count
                  for history in (ask, [{**ask[0], "images": [PNG]}], [{"role": "user", "content": "",
                                                                         "images": [PNG]}])]
    assert counts[1] > counts[0]  # the note took its place in the prompt
    assert counts[2] > 0  # an image alone is something to answer, not a bad request


def test_an_image_reaches_the_primary_as_an_openai_image_part(isolated: Path):
    upstream = ScriptedServer(["A dot."])
    history = [{"role": "user", "content": "What is this?", "images": [PNG]}]
    reply, _ = zwaif_through_serve(isolated, upstream, history)
    assert reply == "A dot."
    assert upstream.bodies[0]["messages"] == [{"role": "user", "content": [
        {"type": "text", "text": "What is this?"},
        {"type": "image_url", "image_url": {"url": f"data:image/png;base64,{PNG}"}}]}]


def test_a_servers_tool_call_reaches_the_host_as_ollama_gives_it(isolated: Path):
    upstream = ScriptedServer([], tool_calls=[{"id": "call_1", "name": "get_weather",
                                               "arguments": json.dumps({"city": "Paris"})}])
    try:
        with serve(isolated, upstream.url) as (served, _):
            client = ollama.Client(host=served.url)
            whole = client.chat(model=ZWAIF_MODEL, messages=ZWAIF_HISTORY, tools=[TOOL])
            streamed = list(client.chat(model=ZWAIF_MODEL, messages=ZWAIF_HISTORY, tools=[TOOL], stream=True))
    finally:
        upstream.close()
    for message in (whole.message, streamed[-1].message):
        assert [(c.function.name, dict(c.function.arguments)) for c in message.tool_calls or []] == \
            [("get_weather", {"city": "Paris"})]
    assert upstream.bodies[0]["tools"][0]["function"]["name"] == "get_weather"


def test_a_tool_result_from_an_ollama_client_answers_its_call_by_id(isolated: Path):
    # Ollama's clients name the tool a result is from, or nothing; OpenAI's servers match a
    # result to its call by id.
    history = [{"role": "user", "content": "Weather in Paris?"},
               {"role": "assistant", "content": "", "tool_calls": [
                   {"function": {"name": "get_time", "arguments": {}}},
                   {"function": {"name": "get_weather", "arguments": {"city": "Paris"}}}]},
               {"role": "tool", "content": "sunny", "tool_name": "get_weather"},
               {"role": "tool", "content": "noon"}]
    upstream = ScriptedServer(["Sunny at noon."])
    try:
        with serve(isolated, upstream.url) as (served, _):
            # as Ollama's API takes it (the ollama package 0.5.1 does not send tool_name)
            answer = httpx.post(served.url + "/api/chat", timeout=30, json={
                "model": ZWAIF_MODEL, "messages": history, "stream": False}).json()
    finally:
        upstream.close()
    reply, sent = answer["message"]["content"], upstream.bodies[0]["messages"]
    ids = [call["id"] for call in sent[1]["tool_calls"]]
    assert reply == "Sunny at noon."
    assert len(set(ids)) == 2 and [sent[2]["tool_call_id"], sent[3]["tool_call_id"]] == [ids[1], ids[0]]
    assert json.loads(sent[1]["tool_calls"][1]["function"]["arguments"]) == {"city": "Paris"}


@pytest.mark.parametrize("num_predict, limit", [(300, 300), (-1, None), (-2, None)])
def test_ollamas_num_predict_is_the_length_limit_and_negative_is_none(num_predict: int, limit: int | None):
    # -1: no limit, -2: fill the context; the chain's own limit then, as for llama.cpp's n_predict
    asked = chat_request({"model": "m", "messages": ZWAIF_HISTORY, "options": {"num_predict": num_predict}})
    assert parse_request(asked).gen.get("max_tokens") == limit


@pytest.mark.parametrize("body, field", [
    ({"messages": ZWAIF_HISTORY}, "model"),
    ({"model": "m", "messages": "hi"}, "messages"),
    ({"model": "m", "messages": ZWAIF_HISTORY, "options": [1]}, "options"),
    ({"model": "m", "messages": [{"role": "user", "content": "x", "images": [1]}]}, "images"),
    ({"model": "m", "messages": ZWAIF_HISTORY, "options": {"temperature": -1}}, "temperature"),
])
def test_a_bad_ollama_request_is_refused_naming_the_field(isolated: Path, body: dict[str, Any], field: str):
    with serve(isolated, refused_url()) as (served, _):
        for stream in (False, True):
            response = httpx.post(served.url + "/api/chat", json={**body, "stream": stream}, timeout=30)
            assert response.status_code == 400
            assert field in response.json()["error"]  # Ollama's shape: the error as text


def test_a_chat_with_no_messages_is_a_load_as_ollama_answers_it(isolated: Path):
    with serve(isolated, refused_url()) as (served, _):
        client = ollama.Client(host=served.url)
        answers = [client.chat(model=ZWAIF_MODEL), client.chat(model=ZWAIF_MODEL, messages=[])]
        shouted = client.chat(model=ZWAIF_MODEL, messages=[{"role": "USER", "content": "hi"}],
                              options={"num_predict": 1.0})
    assert [(a.done, a.done_reason, a.model) for a in answers] == [(True, "load", ZWAIF_MODEL)] * 2
    assert shouted.done and shouted.model == SMOL  # roles are read as Ollama reads them


def test_generate_is_answered_as_a_chat_of_one_turn(isolated: Path):
    upstream = ScriptedServer(["Red, ", "green ", "and blue."], model=ZWAIF_MODEL)
    try:
        with serve(isolated, upstream.url) as (served, _):
            client = ollama.Client(host=served.url)
            streamed = list(client.generate(model=ZWAIF_MODEL, prompt="Name three colours.", stream=True,
                                            system="You are Waifu.", options={"num_predict": 9}))
            whole = client.generate(model=ZWAIF_MODEL, prompt="Name three colours.")
            loaded = client.generate(model=ZWAIF_MODEL)
    finally:
        upstream.close()
    assert "".join(part.response for part in streamed) == whole.response == "Red, green and blue."
    assert (streamed[-1].done, whole.done_reason, whole.model) == (True, "stop", ZWAIF_MODEL)
    assert (loaded.done_reason, loaded.response) == ("load", "")
    assert upstream.bodies[0]["messages"] == [{"role": "system", "content": "You are Waifu."},
                                              {"role": "user", "content": "Name three colours."}]
    assert upstream.bodies[0]["max_tokens"] == 9 and len(upstream.bodies) == 2  # the load asked nothing


def test_show_describes_an_ollama_primarys_model_and_a_local_one(isolated: Path):
    # Z-WAIF's pre-release takes a model as ready when /api/show gives its parameters.
    upstream = ScriptedOllama(["x"], model="llama3:latest")
    try:
        with serve(isolated, upstream.url, primary_api="ollama") as (served, _):
            client = ollama.Client(host=served.url)
            primary, local = client.show("llama3:latest"), client.show(SMOL)
            asked_by_get = httpx.request("GET", served.url + "/api/show", json={"name": SMOL}, timeout=30)
            with pytest.raises(ollama.ResponseError) as unknown:
                client.show("no-such-model")
    finally:
        upstream.close()
    assert (primary.parameters, primary.details.family) == ("num_ctx 8192", "llama")
    assert local.parameters and (local.details.format, local.details.family) == ("gguf", "llama")
    assert local.details.quantization_level == "Q4_1" and local.details.parameter_size.endswith("M")
    assert asked_by_get.status_code == 200 and asked_by_get.json()["parameters"] == local.parameters
    assert unknown.value.status_code == 404 and "no-such-model" in unknown.value.error


def test_show_answers_within_its_deadline_while_the_ollama_primary_trickles(isolated: Path):
    # AnythingLLM shows every listed model; a trickling primary held each card as long as it trickled.
    drip = DripServer(lasts_s=60)
    try:
        with serve(isolated, drip.url.removesuffix("/v1"), primary_api="ollama") as (served, _):
            started = time.monotonic()
            card = ollama.Client(host=served.url).show(SMOL)
            took_s = time.monotonic() - started
    finally:
        drip.close()
    assert card.details.format == "gguf"  # the local model's own card
    assert took_s < PROBE_DEADLINE_S + 12, took_s  # far from the drip's 60 s


def test_a_raw_generation_is_a_text_completion_of_the_prompt_as_it_is(isolated: Path):
    prompt = "### Instruction:\nName three colours.\n\n### Response:\n"  # a template already
    upstream = ScriptedServer(["Red, ", "green ", "and blue."], model=ZWAIF_MODEL)
    try:
        with serve(isolated, upstream.url) as (served, _):
            client = ollama.Client(host=served.url)
            whole = client.generate(model=ZWAIF_MODEL, prompt=prompt, raw=True, system="ignored")
            streamed = list(client.generate(model=ZWAIF_MODEL, prompt=prompt, raw=True, stream=True))
    finally:
        upstream.close()
    assert whole.response == "".join(part.response for part in streamed) == "Red, green and blue."
    assert upstream.paths == ["/v1/completions"] * 2
    assert upstream.bodies[0]["prompt"] == prompt and "messages" not in upstream.bodies[0]


def test_a_refused_request_is_an_error_in_ollamas_words(isolated: Path):
    with FallbackManager(serve_settings(isolated, refused_url()), background=False) as manager:
        served = Served(manager, api_key="secret")
        try:
            no_key = httpx.post(served.url + "/api/chat", json={"model": "m", "messages": ZWAIF_HISTORY})
            not_json = httpx.post(served.url + "/api/chat", content=b"{not json",
                                  headers={"Authorization": "Bearer secret"})
            described = [httpx.request(method, served.url + path) for method, path in (
                ("GET", "/api/tags"), ("GET", "/api/ps"), ("GET", "/api/version"), ("POST", "/api/pull"))]
        finally:
            served.close()
    for response, status, words in ((no_key, 401, "API key"), (not_json, 400, "not JSON"),
                                     *((answer, 401, "API key") for answer in described)):
        assert response.status_code == status
        assert words in response.json()["error"]  # text, as Ollama's clients show it


def test_a_keep_alive_or_a_context_ollama_would_refuse_is_refused_here(isolated: Path):
    # "banana" was passed on: an Ollama main API's 400 counted against it and fell back
    asked = {"model": "m", "messages": ZWAIF_HISTORY, "stream": False}
    with serve(isolated, refused_url()) as (served, _):
        refused = [httpx.post(served.url + "/api/chat", json=asked | extra, timeout=30) for extra in (
            {"keep_alive": "banana"}, {"keep_alive": True}, {"options": {"num_ctx": "big"}})]
    assert [r.status_code for r in refused] == [400, 400, 400]
    said = [r.json()["error"].split("=")[0] for r in refused]
    assert said == ["keep_alive", "keep_alive", "options.num_ctx"]
    for keep in ("25h", "1h30m", "0", -1, 300, 2.5):  # Ollama's durations and seconds
        parse_request({"messages": ZWAIF_HISTORY, "keep_alive": keep, "options": {"num_ctx": 8192}})


def test_a_chat_no_target_can_answer_is_an_ollama_error_saying_why(isolated: Path):
    # The primary is down, and a local model cannot call the tools the request needs.
    with serve(isolated, refused_url()) as (served, _):
        with pytest.raises(ollama.ResponseError) as failed:
            list(ollama.Client(host=served.url).chat(model=ZWAIF_MODEL, messages=ZWAIF_HISTORY,
                                                     tools=[TOOL], stream=True))
    assert failed.value.status_code == 503
    assert "cannot call tools" in failed.value.error


def test_every_model_is_listed_shown_and_asked_for_by_ollamas_name(isolated: Path):
    # Open WebUI adds ":latest" to a name without a tag, then looks it up in /api/tags: a
    # model listed bare could not be chosen. AnythingLLM asks /api/show of every listed model,
    # and drops them all when one is missing; Open WebUI's "verify" asks /api/version.
    upstream = ScriptedServer(["Red."], listed=["gpt-4o-mini"])
    try:
        with serve(isolated, upstream.url) as (served, _):
            client = ollama.Client(host=served.url)
            names = [m.model for m in client.list().models]
            cards = [client.show(name) for name in names]
            answer = client.chat(model="gpt-4o-mini:latest", messages=ZWAIF_HISTORY)
            client.chat(model="mistral:latest", messages=ZWAIF_HISTORY)  # a name serve never gave
            version = httpx.get(served.url + "/api/version", timeout=10).json()["version"]
    finally:
        upstream.close()
    assert names == ["gpt-4o-mini:latest", f"{SMOL}:latest"]
    assert cards[0].capabilities == ["completion"] and cards[1].details.format == "gguf"
    assert answer.message.content == "Red."
    # asked for by its own name; a name serve did not tag goes on as it was given
    assert [body["model"] for body in upstream.bodies] == ["gpt-4o-mini", "mistral:latest"]
    assert all(part.isdigit() for part in version.split("."))  # Open WebUI reads it as integers


def test_the_primarys_models_stay_listed_while_it_is_down(isolated: Path):
    # Z-WAIF's pre-release picks its model from /api/tags at every start and writes it into
    # its .env: started while Ollama was down, it picked the local model and kept asking for
    # it once Ollama was back
    upstream = ScriptedOllama(["x"], model="llama3:latest")
    try:
        with serve(isolated, upstream.url, primary_api="ollama") as (served, _):
            client = ollama.Client(host=served.url)
            up = [m.model for m in client.list().models]
            upstream.close()
            down = [m.model for m in client.list().models]
            answer = client.chat(model="llama3:latest", messages=ZWAIF_HISTORY, options={"num_predict": 2})
    finally:
        upstream.close()
    assert up == down == ["llama3:latest", f"{SMOL}:latest"]
    assert answer.model == SMOL  # asked for by the primary's name, answered by the fallback


def test_ps_lists_the_local_model_in_memory(isolated: Path):
    with serve(isolated, refused_url()) as (served, _):
        client = ollama.Client(host=served.url)
        before = client.ps()
        client.chat(model="x", messages=ZWAIF_HISTORY, options={"num_predict": 2})
        after = client.ps()
    assert before.models == []
    (held,) = after.models
    assert held.model == f"{SMOL}:latest" and held.size and held.details.quantization_level == "Q4_1"
    assert held.expires_at.year > 2300  # keep_alive 0: kept for good, as Ollama says it


def test_a_model_idle_for_a_while_expires_keep_alive_after_its_last_use():
    model = ModelInfo(name="m", path="m.gguf", format="gguf", source="models_dir", context_length=2048)
    shown = running(model, n_ctx=4096, idle_s=10.0, keep_alive_s=300.0, now=1_000_000.0)
    assert shown["expires_at"] == timestamp(1_000_290.0) and shown["context_length"] == 2048


def test_ollamas_routes_serve_does_not_answer_say_so_in_ollamas_words(isolated: Path):
    with serve(isolated, refused_url()) as (served, _):
        with pytest.raises(ollama.ResponseError) as pulled:
            ollama.Client(host=served.url).pull("llama3")
        created = httpx.post(served.url + "/api/create", json={"model": "x", "from": "y"}, timeout=10)
    assert pulled.value.status_code == 404 and "does not answer POST /api/pull" in pulled.value.error
    assert created.status_code == 404 and "/api/chat" in created.json()["error"]


# -- an Ollama primary, through its own API ---------------------------------------------------


def test_zwaifs_options_reach_an_ollama_primary_as_they_came(isolated: Path):
    # Through Ollama's /v1 num_ctx, min_p, top_k and keep_alive would be lost; through its
    # own API they reach the model, as when Z-WAIF talks to Ollama directly.
    upstream = ScriptedOllama(["Red, ", "green ", "and blue."], model=ZWAIF_MODEL)
    reply, parts = zwaif_through_serve(isolated, upstream)
    assert reply == "Red, green and blue."
    assert (parts[-1].done_reason, parts[-1].model, parts[-1].eval_count) == ("stop", ZWAIF_MODEL, 3)
    sent = upstream.bodies[0]
    assert (sent["model"], sent["messages"], sent["keep_alive"]) == (ZWAIF_MODEL, ZWAIF_HISTORY, "25h")
    assert sent["options"] == ZWAIF_OPTIONS


def test_zwaifs_image_reaches_an_ollama_primary_as_it_came(isolated: Path):
    history = [{"role": "user", "content": "What is this?", "images": [PNG]}]
    upstream = ScriptedOllama(["A dot."])
    reply, _ = zwaif_through_serve(isolated, upstream, history)
    assert reply == "A dot."
    assert upstream.bodies[0]["messages"] == history


def test_an_openai_request_reaches_an_ollama_primary_in_ollamas_names(isolated: Path):
    upstream = ScriptedOllama(["Red, ", "green ", "and blue."], prompt_tokens=17)
    history = [{"role": "user", "content": [
        {"type": "text", "text": "What is this?"},
        {"type": "image_url", "image_url": {"url": f"data:image/png;base64,{PNG}"}}]}]
    answer = openai_through_serve(isolated, upstream, lambda client: client.chat.completions.create(
        model="llama3", messages=history, max_tokens=2, temperature=0.3, extra_body={"top_k": 20}))
    assert (answer.choices[0].message.content, answer.choices[0].finish_reason) == ("Red, green ", "length")
    assert (answer.model, answer.usage.prompt_tokens, answer.usage.completion_tokens) == \
        ("llama3:latest", 17, 2)
    sent = upstream.bodies[0]
    assert sent["options"] == {"num_predict": 2, "temperature": 0.3, "top_k": 20}
    assert sent["messages"] == [{"role": "user", "content": "What is this?", "images": [PNG]}]


def test_an_ollama_primarys_tool_call_reaches_an_openai_client(isolated: Path):
    upstream = ScriptedOllama([], tool_calls=[{"name": "get_weather", "arguments": {"city": "Paris"}}])
    answer = openai_through_serve(isolated, upstream, lambda client: client.chat.completions.create(
        model="llama3", messages=ZWAIF_HISTORY, tools=[TOOL]))
    call = answer.choices[0].message.tool_calls[0]
    assert (answer.choices[0].finish_reason, call.function.name, json.loads(call.function.arguments)) == \
        ("tool_calls", "get_weather", {"city": "Paris"})
    assert upstream.bodies[0]["tools"] == [TOOL]


def test_an_openai_tool_result_reaches_an_ollama_primary_named_by_its_tool(isolated: Path):
    history = [{"role": "user", "content": "Weather in Paris?"},
               {"role": "assistant", "content": None, "tool_calls": [
                   {"id": "call_abc", "type": "function",
                    "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'}}]},
               {"role": "tool", "tool_call_id": "call_abc", "content": "sunny"}]
    upstream = ScriptedOllama(["Sunny."])
    answer = openai_through_serve(isolated, upstream, lambda client: client.chat.completions.create(
        model="llama3", messages=history, tools=[TOOL]))
    assert answer.choices[0].message.content == "Sunny."
    assert upstream.bodies[0]["messages"][1:] == [
        {"role": "assistant", "content": "", "tool_calls": [
            {"id": "call_abc", "function": {"name": "get_weather", "arguments": {"city": "Paris"}}}]},
        {"role": "tool", "tool_call_id": "call_abc", "content": "sunny", "tool_name": "get_weather"}]


def test_an_ollama_primary_that_thinks_past_the_deadline_is_not_taken_for_hung(isolated: Path):
    # Ollama has a thinking model reason before it answers, for longer than the 5 s deadline
    # for the first piece here; its thinking lines are the server at work, not silence.
    upstream = ScriptedOllama(["Red, ", "green ", "and blue."], model=ZWAIF_MODEL, think_s=6.0)
    reply, parts = zwaif_through_serve(isolated, upstream)
    assert (reply, parts[-1].model) == ("Red, green and blue.", ZWAIF_MODEL)
    assert parts[0].message.content.startswith("Red, ")  # the thinking is not shown, as Z-WAIF reads it


def test_a_text_completion_reaches_an_ollama_primary_as_a_raw_generation(isolated: Path):
    upstream = ScriptedOllama(["Red, ", "green ", "and blue."])
    answer = openai_through_serve(isolated, upstream, lambda client: client.completions.create(
        model="llama3", prompt="Three colours:", max_tokens=9))
    assert answer.choices[0].text == "Red, green and blue."
    sent = upstream.bodies[0]
    assert (sent["prompt"], sent["raw"], sent["options"], "messages" in sent) == \
        ("Three colours:", True, {"num_predict": 9}, False)


@pytest.mark.slow
def test_an_ollama_primary_cut_mid_answer_is_continued_by_the_local_model(isolated: Path):
    upstream = ScriptedOllama(["Red, ", "green ", "and blue."], cut_after=2)
    reply, parts = zwaif_through_serve(isolated, upstream)
    assert reply.startswith("Red, green ") and len(reply) > len("Red, green ")
    assert (parts[-1].done, parts[-1].model) == (True, SMOL)


def test_an_ollama_primary_is_listed_and_counts_as_up(isolated: Path):
    upstream = ScriptedOllama(["x"], model="llama3:latest")
    try:
        with serve(isolated, upstream.url, primary_api="ollama") as (served, _):
            listed = httpx.get(served.url + "/v1/models", timeout=30).json()["data"]
            tags = ollama.Client(host=served.url).list().models
            health = httpx.get(served.url + "/health", timeout=30)
    finally:
        upstream.close()
    assert {"id": "llama3:latest", "source": "primary"}.items() <= listed[0].items()
    assert "x_ollama" not in listed[0]
    # the primary's own entries first, as it gave them: a host that picks a model from this
    # list (Z-WAIF's pre-release does) picks one the primary has
    assert (tags[0].model, tags[0].size, tags[0].digest) == ("llama3:latest", 1, "0")
    assert f"{SMOL}:latest" in [t.model for t in tags[1:]]
    assert health.status_code == 200
