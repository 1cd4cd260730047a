"""Asking the servers serve stands in front of whether they answer, against real servers on
loopback: what a person setting up the main API is told (``probe``, ``probe_all``)."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest
from servers import (
    DripServer,
    HangServer,
    ScriptedOllama,
    ScriptedServer,
    SlowServer,
    refused_url,
    serve_in_process,
    wait_until,
)

from zwaif_fallback import FallbackSettings
from zwaif_fallback.upstream_probe import probe, probe_all
from zwaif_fallback.upstreams import MAX_IN_FLIGHT, ModelLists, Upstream, at_once


def primary(url: str, *, ollama: bool = False, api_key: str = "") -> Upstream:
    return Upstream(url=url, source="primary", api_key=api_key, ollama=ollama)


def test_a_server_that_lists_its_models_answers_with_their_names() -> None:
    server = ScriptedServer(["Hi."], listed=["qwen2.5", "llama3"])
    try:
        found = probe(primary(server.url), model="llama3")
    finally:
        server.close()
    assert (found.answered, found.status_code, found.models) == (True, 200, ("qwen2.5", "llama3"))
    assert (found.problem, found.advice) == ("", "")


def test_a_refused_connection_says_to_start_the_server() -> None:
    url = refused_url()
    found = probe(primary(url))
    assert (found.answered, found.status_code) == (False, None)
    assert found.problem == f"does not answer: connection refused at {url}"
    assert "Oobabooga listens on 5000 when started with --api" in found.advice


def test_a_server_that_takes_the_connection_and_never_answers_times_out() -> None:
    server = HangServer()
    try:
        found = probe(primary(server.url), timeout_s=0.3)
    finally:
        server.close()
    assert found.problem == f"does not answer: no answer within 0.3 s at {server.url}"
    assert "busy" in found.advice


def test_a_host_name_that_is_unknown_is_named() -> None:
    found = probe(primary("http://no-such-host.invalid:5000/v1"), timeout_s=1)
    assert found.problem.startswith("does not answer: no host named 'no-such-host.invalid' is known")


def test_a_wrong_or_missing_key_is_told_apart_from_a_wrong_url() -> None:
    server = ScriptedServer(["Hi."], listed=["qwen2.5"], key="s3cret")
    try:
        missing = probe(primary(server.url))
        wrong = probe(primary(server.url, api_key="typo"))
        remote = probe(Upstream(url=server.url, source="remote", api_key="", ollama=False))
        right = probe(primary(server.url, api_key="s3cret"))
    finally:
        server.close()
    assert missing.status_code == wrong.status_code == 401
    assert wrong.problem == "answers HTTP 401 (Unauthorized): Invalid API key"
    assert wrong.advice.startswith("the API key is wrong or missing")
    assert remote.advice.startswith("it needs an API key, and serve sends one only to the main API")
    assert right.answered and right.models == ("qwen2.5",)


def test_a_url_without_v1_is_told_to_add_it() -> None:
    server = ScriptedServer(["Hi."], listed=["qwen2.5"])
    root = server.url.removesuffix("/v1")
    try:
        found = probe(primary(root))
    finally:
        server.close()
    assert (found.answered, found.status_code) == (False, 404)
    assert found.problem == "answers HTTP 404 (Not Found)"
    assert found.advice == ("the URL's path is likely wrong: OpenAI-compatible servers answer under "
                            f"/v1 ({root}/v1?)")


def test_an_openai_server_taken_for_ollama_is_told_to_choose_openai() -> None:
    scripted, slow = ScriptedServer(["Hi."], listed=["qwen2.5"]), SlowServer()
    try:
        not_found = probe(primary(scripted.url, ollama=True))
        other_json = probe(primary(slow.url, ollama=True))  # answers any GET with its OpenAI list
    finally:
        scripted.close()
        slow.close()
    assert not_found.status_code == 404 and not other_json.answered
    assert other_json.problem == f"answers, but not with a model list, at {slow.url}"
    for found in (not_found, other_json):
        assert found.advice.startswith("it has no /api/tags, so it is not Ollama's own API"), found


def test_a_model_the_ollama_server_lacks_is_warned_with_the_ones_it_has() -> None:
    server = ScriptedOllama(["Hi."], model="llama3:latest")
    try:
        lacking = probe(primary(server.url, ollama=True), model="qwen2.5")
        tagless = probe(primary(server.url, ollama=True), model="llama3")  # Ollama reads it as :latest
    finally:
        server.close()
    assert lacking.answered and lacking.models == ("llama3:latest",)
    assert lacking.problem == "does not list the model `qwen2.5` it is asked for"
    assert "`ollama pull qwen2.5`: Ollama refuses a model it does not have" in lacking.advice
    assert tagless.answered and tagless.problem == ""


@pytest.mark.parametrize("speaks", ["openai", "ollama"])
def test_serve_itself_as_the_main_api_is_reported_as_such(tmp_path: Path, speaks: str) -> None:
    with serve_in_process(tmp_path, refused_url()) as (served, _):
        url = served.url if speaks == "ollama" else served.url + "/v1"
        found = probe(primary(url, ollama=speaks == "ollama"))
    assert (found.answered, found.status_code) == (False, 508)
    assert found.problem == f"is this zwaif-fallback serve itself ({url})"
    assert "set the server the host used before" in found.advice


def test_all_servers_are_asked_at_once_within_the_deadline() -> None:
    # A server that sends its answer a byte at a time never trips a read timeout: only the
    # deadline ends the wait, and the others' answers are still there.
    drip, hang, lister = DripServer(), HangServer(), ScriptedServer(["Hi."], listed=["qwen2.5"])
    settings = FallbackSettings(primary_url=drip.url, remote_urls=[hang.url, lister.url])
    try:
        started = time.monotonic()
        found = probe_all(settings, deadline_s=1.0)
        took_s = time.monotonic() - started
    finally:
        for server in (drip, hang, lister):
            server.close()
    assert [f.server.url for f in found] == [drip.url, hang.url, lister.url]
    assert found[0].problem == f"does not answer: no answer within 1 s at {drip.url}"
    assert not found[1].answered and found[2].models == ("qwen2.5",)
    assert took_s < 1.9, took_s  # not one after the other, and not the drip's forever


def test_a_trickling_server_asked_again_and_again_holds_a_few_threads_not_one_an_ask() -> None:
    # A host that polls the model list while the main API trickles: each ask goes on past its
    # deadline for as long as the server trickles, and 12 polls held 12 threads and sockets.
    drip = DripServer(lasts_s=60)
    server = Upstream(drip.url, "primary", "", False)
    try:
        for _ in range(12):
            assert at_once(ModelLists().of, [server], deadline_s=0.1, late=lambda _: None) == [None]
        asking = [t for t in threading.enumerate() if t.name == "upstream-ask"]
        assert len(asking) == MAX_IN_FLIGHT
    finally:
        drip.close()
    # once the server hangs up, its asks end and it is asked again
    wait_until(lambda: not [t for t in threading.enumerate() if t.name == "upstream-ask"], timeout_s=10,
               what="the asks to end")
    lister = ScriptedServer(["Hi."], listed=["qwen2.5"])
    try:
        listed = at_once(ModelLists().of, [Upstream(lister.url, "remote", "", False)], deadline_s=5,
                         late=list)
    finally:
        lister.close()
    assert [m["id"] for m in listed[0]] == ["qwen2.5"]


def test_no_servers_are_no_probes() -> None:
    assert probe_all(FallbackSettings()) == []
