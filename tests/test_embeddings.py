"""Embeddings through serve (``embeddings``): passed on, as sent, to the one server that makes
them, and its answer given back as it came; against real llama.cpp servers (one started
with --embedding, one without, which answers them with a 500) and scripted ones."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from servers import LlamaServer, ScriptedOllama, ScriptedServer, refused_url
from servers import serve_in_process as serve

openai = pytest.importorskip("openai")
ollama = pytest.importorskip("ollama")

TEXTS = ["a red apple", "the sea at night"]
ASK = {"model": "nomic-embed-text", "input": TEXTS}


@pytest.fixture(scope="module")
def embedder(smollm2: Path) -> Iterator[LlamaServer]:
    server = LlamaServer(smollm2, n_ctx=512, embedding=True).start()
    httpx.post(server.url + "/embeddings", json=ASK, timeout=120).raise_for_status()  # warm
    yield server
    server.stop()


@pytest.fixture(scope="module")
def chat_only(smollm2: Path) -> Iterator[LlamaServer]:
    """A main API that chats and makes no embeddings (it answers them with a 500)."""
    server = LlamaServer(smollm2, n_ctx=512).start()
    yield server
    server.stop()


@pytest.fixture
def scripted() -> Iterator[ScriptedServer]:
    server = ScriptedServer(["x"])
    yield server
    server.close()


def embedded(base_url: str) -> tuple[list[Any], str | None]:
    """The embeddings of TEXTS as the openai package asks for them (base64, its default), and
    who made them. SmolLM2 has no pooling: llama.cpp gives it a vector a token."""
    client = openai.OpenAI(base_url=base_url, api_key="unused", max_retries=0, timeout=120)
    raw = client.embeddings.with_raw_response.create(model="x", input=TEXTS)
    made = [e.embedding for e in raw.parse().data]
    assert len(made) == len(TEXTS) and all(made)
    return made, raw.headers.get("x-fallback-source")


def test_the_main_api_makes_the_embeddings(isolated: Path, embedder: LlamaServer):
    with serve(isolated, embedder.url) as (served, _):
        through, source = embedded(served.url + "/v1")
    assert through == embedded(embedder.url)[0] and source == "primary"


def test_with_no_main_api_the_first_remote_makes_them(isolated: Path, embedder: LlamaServer):
    with serve(isolated, "", remote_urls=[embedder.url, refused_url()]) as (served, _):
        through, source = embedded(served.url + "/v1")
    assert through == embedded(embedder.url)[0] and source == "remote"


def test_a_main_api_that_fails_them_is_not_replaced_by_another_server(
        isolated: Path, chat_only: LlamaServer, scripted: ScriptedServer):
    # Another server's vectors would not compare with those the host stored: no fallback.
    direct = httpx.post(chat_only.url + "/embeddings", json=ASK, timeout=60)
    with serve(isolated, chat_only.url, remote_urls=[scripted.url]) as (served, _):
        through = httpx.post(served.url + "/v1/embeddings", json=ASK, timeout=60)
    assert direct.status_code == 500 and "embedding=True" in direct.text
    assert (through.status_code, through.json()) == (500, direct.json())  # as it came
    assert scripted.bodies == []


def test_a_main_api_that_gives_no_answer_is_a_503_that_says_so(isolated: Path, scripted: ScriptedServer):
    primary = refused_url()
    with serve(isolated, primary, remote_urls=[scripted.url]) as (served, _):
        answer = httpx.post(served.url + "/v1/embeddings", json=ASK, timeout=60)
        metrics = httpx.get(served.url + "/metrics", timeout=60).text
    assert answer.status_code == 503 and answer.headers["x-fallback-source"] == "primary"
    assert f'zwaif_embeddings_total{{code="503",target="{primary}"}} 1.0' in metrics
    message = answer.json()["error"]["message"]
    assert f"the primary server {primary} gave no answer (ConnectError" in message
    assert "nor asks another server" in message and scripted.bodies == []


def test_a_request_the_main_api_refuses_comes_back_as_it_said(isolated: Path, scripted: ScriptedServer):
    bad = {"model": "x", "input": {"not": "text"}}
    direct = httpx.post(scripted.url + "/embeddings", json=bad, timeout=60)
    with serve(isolated, scripted.url) as (served, _):
        through = httpx.post(served.url + "/v1/embeddings", json=bad, timeout=60)
        good = httpx.post(served.url + "/v1/embeddings", content='{"input": "grün", "model": "x"}',
                          timeout=60)
        metrics = httpx.get(served.url + "/metrics", timeout=60).text
    assert direct.status_code == 422 and (through.status_code, through.json()) == (422, direct.json())
    for code in (422, 200):  # counted by the server asked and the status the host got
        assert f'zwaif_embeddings_total{{code="{code}",target="{scripted.url}"}} 1.0' in metrics
    assert good.json()["data"][0]["embedding"] == [4.0, 0.5]
    assert scripted.bodies[-1] == {"input": "grün", "model": "x"}  # as it was sent


def test_a_key_the_main_api_refuses_is_a_502_that_names_the_setting(isolated: Path):
    primary = ScriptedServer(["x"], key="right")
    try:
        with serve(isolated, primary.url) as (served, manager):  # no key yet
            refused = httpx.post(served.url + "/v1/embeddings", json=ASK, timeout=60)
            manager.update_settings(primary_api_key="right")
            taken = httpx.post(served.url + "/v1/embeddings", json=ASK, timeout=60)
    finally:
        primary.close()
    assert refused.status_code == 502 and "primary_api_key" in refused.json()["error"]["message"]
    assert taken.status_code == 200 and primary.headers[-1]["authorization"] == "Bearer right"


def test_with_no_server_set_serve_says_it_makes_none(isolated: Path):
    with serve(isolated, "") as (served, _):
        answer = httpx.post(served.url + "/v1/embeddings", json=ASK, timeout=60)
    assert answer.status_code == 503
    assert "serve makes no embeddings itself" in answer.json()["error"]["message"]


def test_ollamas_embed_goes_to_an_ollama_main_api(isolated: Path):
    upstream = ScriptedOllama(["x"])
    try:
        with serve(isolated, upstream.url, primary_api="ollama") as (served, _):
            answer = ollama.Client(host=served.url).embed(model="nomic-embed-text", input=TEXTS)
    finally:
        upstream.close()
    assert answer.embeddings == [[float(len(t)), 0.5] for t in TEXTS]
    assert upstream.bodies == [{"model": "nomic-embed-text", "input": TEXTS}]


def test_ollamas_embed_with_an_openai_main_api_says_to_ask_v1(isolated: Path, scripted: ScriptedServer):
    with serve(isolated, scripted.url) as (served, _):
        with pytest.raises(ollama.ResponseError) as refused:
            ollama.Client(host=served.url).embed(model="x", input=TEXTS)
    assert refused.value.status_code == 404 and "/v1/embeddings" in refused.value.error
