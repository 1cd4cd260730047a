"""Embeddings through serve (``embeddings``): passed on to the main API, then the remotes,
against real llama.cpp servers, one that makes embeddings and one that cannot."""

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


@pytest.fixture(scope="module")
def embedder(smollm2: Path) -> Iterator[LlamaServer]:
    server = LlamaServer(smollm2, n_ctx=512, embedding=True).start()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def chat_only(smollm2: Path) -> Iterator[LlamaServer]:
    """A main API that chats and makes no embeddings (it answers them with a 500)."""
    server = LlamaServer(smollm2, n_ctx=512).start()
    yield server
    server.stop()


def embedded(base_url: str) -> tuple[list[Any], str | None]:
    """The embeddings of TEXTS, as the openai package asks for them, and who made them (SmolLM2
    has no pooling: llama.cpp gives a vector a token)."""
    client = openai.OpenAI(base_url=base_url, api_key="unused", max_retries=0, timeout=60)
    raw = client.embeddings.with_raw_response.create(model="x", input=TEXTS, encoding_format="float")
    made = [e.embedding for e in raw.parse().data]
    assert len(made) == len(TEXTS) and all(made)
    return made, raw.headers.get("x-fallback-source")


def test_the_main_api_makes_the_embeddings(isolated: Path, embedder: LlamaServer):
    with serve(isolated, embedder.url) as (served, _):
        through, source = embedded(served.url + "/v1")
    assert through == embedded(embedder.url)[0] and source == "primary"


def test_a_main_api_that_makes_none_passes_them_to_a_remote(isolated: Path, embedder: LlamaServer,
                                                             chat_only: LlamaServer):
    with serve(isolated, chat_only.url, remote_urls=[embedder.url]) as (served, _):
        through, source = embedded(served.url + "/v1")
    assert through == embedded(embedder.url)[0] and source == "remote"


def test_with_no_server_that_makes_them_serve_says_it_makes_none(isolated: Path, chat_only: LlamaServer):
    primary = refused_url()
    with serve(isolated, primary, remote_urls=[chat_only.url]) as (served, _):
        answer = httpx.post(served.url + "/v1/embeddings", json={"model": "x", "input": TEXTS}, timeout=60)
    assert answer.status_code == 503
    assert "makes no embeddings itself" in answer.json()["error"]["message"]
    assert [(a["target"], a["ok"]) for a in answer.json()["attempts"]] == [
        (primary, False), (chat_only.url, False)]
    assert "embedding=True" in answer.json()["attempts"][1]["error"]  # the server's own reason


def test_a_request_every_server_refuses_comes_back_as_they_said(isolated: Path):
    # The request's fault (input that is not text), not the servers': theirs to say, not a 503.
    bad = {"model": "x", "input": {"not": "text"}}
    primary, remote = ScriptedServer(["x"]), ScriptedServer(["x"])
    try:
        direct = httpx.post(remote.url + "/embeddings", json=bad, timeout=60)
        with serve(isolated, primary.url, remote_urls=[remote.url]) as (served, _):
            through = httpx.post(served.url + "/v1/embeddings", json=bad, timeout=60)
            good = httpx.post(served.url + "/v1/embeddings", json={"model": "x", "input": "hi"}, timeout=60)
    finally:
        primary.close()
        remote.close()
    assert direct.status_code == 422 and (through.status_code, through.json()) == (422, direct.json())
    # the remote: asked directly, then the refused request; the good one stopped at the primary
    assert [len(primary.bodies), len(remote.bodies)] == [2, 2]
    assert good.json()["data"][0]["embedding"] == [2.0, 0.5]


def test_a_server_that_fails_makes_it_a_503_naming_each_attempt(isolated: Path, chat_only: LlamaServer):
    # llama.cpp's server without --embedding answers 500: that server fails, not the request.
    bad = {"model": "x", "input": {"not": "text"}}
    remote = ScriptedServer(["x"])
    try:
        with serve(isolated, chat_only.url, remote_urls=[remote.url]) as (served, _):
            answer = httpx.post(served.url + "/v1/embeddings", json=bad, timeout=60)
    finally:
        remote.close()
    assert answer.status_code == 503
    assert [a["error"][:3] for a in answer.json()["attempts"]] == ["500", "422"]


def test_ollamas_embed_goes_to_an_ollama_main_api(isolated: Path):
    upstream = ScriptedOllama(["x"])
    try:
        with serve(isolated, upstream.url, primary_api="ollama") as (served, _):
            answer = ollama.Client(host=served.url).embed(model="nomic-embed-text", input=TEXTS)
    finally:
        upstream.close()
    assert answer.embeddings == [[float(len(t)), 0.5] for t in TEXTS]
    assert upstream.bodies == [{"model": "nomic-embed-text", "input": TEXTS}]


def test_ollamas_embed_with_an_openai_main_api_says_to_ask_v1(isolated: Path, embedder: LlamaServer):
    with serve(isolated, embedder.url) as (served, _):
        with pytest.raises(ollama.ResponseError) as refused:
            ollama.Client(host=served.url).embed(model="x", input=TEXTS)
    assert refused.value.status_code == 404 and "/v1/embeddings" in refused.value.error
