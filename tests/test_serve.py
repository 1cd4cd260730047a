"""``serve``'s OpenAI-compatible API, read by clients nobody here wrote.

The ``openai`` package (sync and async) and ``requests`` + ``sseclient-py`` (the way
Z-WAIF reads its Oobabooga stream) talk to the API served by uvicorn on loopback; the
primary is a real ``llama_cpp.server`` behind a fault proxy, the fallback the bundled SmolLM2.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import signal
import socket
import subprocess
import sys
import threading
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest
import requests
from builders import write_gguf
from conftest import run_cli
from servers import (
    FaultProxy,
    HangServer,
    LlamaServer,
    ScriptedServer,
    Served,
    free_port,
    refused_url,
    serve_settings,
    wait_until,
)

from zwaif_fallback import FallbackManager, FallbackSettings, InvalidSettings
from zwaif_fallback.net import INSTANCE_HEADER, instance_id
from zwaif_fallback.server import MAX_BODY_BYTES, check_bind, listen, serving
from zwaif_fallback.upstreams import Upstream, answers

openai = pytest.importorskip("openai")
uvicorn = pytest.importorskip("uvicorn")

SMOL = "SmolLM2-135M-Instruct.Q4_1"
ASK = [{"role": "user", "content": "Name three colours."}]
GEN: dict[str, Any] = {"max_tokens": 24, "temperature": 0.0, "seed": 1}


@pytest.fixture(scope="module")
def llama(smollm2: Path) -> Iterator[LlamaServer]:
    srv = LlamaServer(smollm2).start()
    yield srv
    srv.stop()


@pytest.fixture
def proxy(llama: LlamaServer) -> Iterator[FaultProxy]:
    p = FaultProxy(llama.port)
    yield p
    p.close()


def make_manager(root: Path, primary_url: str, **settings: Any) -> FallbackManager:
    return FallbackManager(serve_settings(root, primary_url, **settings), background=False)


def unpinned_manager(root: Path) -> FallbackManager:
    """A manager as ``make_manager`` makes it, with no main API yet and none pinned: the test
    sets one with ``update_settings`` once it knows the URL."""
    defaults = serve_settings(root, "").model_dump(include={
        "timeout", "max_retries", "models_dir", "scan_system_stores", "keep_alive", "preferred_model",
        "settings_file", "data_dir"})
    return FallbackManager(FallbackSettings(**defaults), background=False)


@contextmanager
def nothing_local(root: Path, primary_url: str) -> Iterator[Served]:
    """``serve`` whose only local model cannot load, and that may not try another."""
    (root / "models").mkdir(exist_ok=True)
    write_gguf(root / "models" / "broken.gguf", n_embd=64, n_head=4, n_head_kv=3)  # bad K/V shape
    with serve(root, primary_url, auto_switch=False, preferred_model="broken") as served:
        yield served


@contextmanager
def serve(root: Path, primary_url: str, api_key: str | None = None, **settings: Any) -> Iterator[Served]:
    with make_manager(root, primary_url, **settings) as manager:
        served = Served(manager, api_key)
        try:
            yield served
        finally:
            served.close()


@pytest.fixture
def fronting(isolated: Path, proxy: FaultProxy) -> Iterator[Served]:
    """``serve`` in front of the healthy llama.cpp server."""
    with serve(isolated, proxy.url) as served:
        yield served


@pytest.fixture
def orphaned(isolated: Path) -> Iterator[Served]:
    """``serve`` whose primary refuses connections."""
    with serve(isolated, refused_url()) as served:
        yield served


def client(served: Served, **kwargs: Any) -> Any:
    return openai.OpenAI(base_url=served.url + "/v1", api_key="unused", max_retries=0, **kwargs)


# -- the openai package ---------------------------------------------------------------------


def test_a_healthy_primary_answers_through_serve(fronting: Served, proxy: FaultProxy):
    raw = client(fronting).chat.completions.with_raw_response.create(model="local-llm", messages=ASK, **GEN)
    completion = raw.parse()
    assert completion.choices[0].message.content == "".join(proxy.forwarded)
    assert raw.headers["x-fallback-source"] == "primary"
    assert raw.headers["x-fallback-model"] == completion.model == "local-llm"  # as the server echoed it
    assert json.loads(proxy.last_body or b"{}")["model"] == "local-llm"


def test_a_stopped_primary_streams_from_the_local_model(orphaned: Served):
    with client(orphaned).chat.completions.with_streaming_response.create(
            model="local-llm", messages=ASK, stream=True, **GEN) as response:
        assert response.headers["x-fallback-source"] == "local"
        assert response.headers["x-fallback-model"] == SMOL
        chunks = list(response.parse())
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text and chunks[-1].choices[0].finish_reason == "length"
    whole = client(orphaned).chat.completions.create(model="local-llm", messages=ASK, **GEN)
    assert whole.choices[0].message.content == text
    assert whole.usage is not None and whole.usage.completion_tokens == 24


def test_the_async_client_streams_with_usage(orphaned: Served):
    async def ask() -> list[Any]:
        async with openai.AsyncOpenAI(base_url=orphaned.url + "/v1", api_key="unused",
                                      max_retries=0) as aclient:
            stream = await aclient.chat.completions.create(
                model="local-llm", messages=ASK, stream=True, stream_options={"include_usage": True},
                **GEN)
            return [chunk async for chunk in stream]

    chunks = asyncio.run(ask())
    assert chunks[-1].choices == [] and chunks[-1].usage is not None
    assert chunks[-1].usage.completion_tokens == 24 and chunks[-1].usage.prompt_tokens > 0


def test_a_hung_primary_is_answered_for_at_the_deadline(isolated: Path):
    hung = HangServer()
    try:
        with serve(isolated, hung.url) as served:
            completion = client(served, timeout=30).chat.completions.create(
                model="x", messages=ASK, **GEN)
            assert completion.model == SMOL
    finally:
        hung.close()


def test_a_stream_cut_mid_answer_continues_in_one_stream(fronting: Served, proxy: FaultProxy):
    proxy.mode, proxy.after = "cut", 3
    with client(fronting).chat.completions.with_streaming_response.create(
            model="x", messages=ASK, stream=True, **GEN) as response:
        assert response.headers["x-fallback-source"] == "primary"  # who gave the first piece
        chunks = list(response.parse())
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    sent = "".join(proxy.forwarded)
    assert text.startswith(sent) and len(text) > len(sent)
    switch = (chunks[-1].model_extra or {})["x_fallback"]["switches"]
    assert switch == [{"at_char": len(sent), "from_target": proxy.url, "to_target": SMOL}]


def test_nothing_able_to_answer_is_a_503_listing_the_attempts(isolated: Path):
    with nothing_local(isolated, refused_url()) as served:
        for stream in (False, True):
            response = httpx.post(served.url + "/v1/chat/completions", timeout=60,
                                  json={"messages": ASK, "stream": stream, **GEN})
            assert response.status_code == 503
            body = response.json()
            assert body["error"]["code"] == "all_targets_failed"
            assert [a["target"] for a in body["attempts"]][-1] == "broken"
        # with auto_switch off no other model answers for it, and it is not loaded again
        assert "(an earlier load in this process" in body["attempts"][-1]["error"]


def test_a_failure_after_the_first_piece_ends_the_stream_with_an_error_event(isolated: Path,
                                                                            proxy: FaultProxy):
    proxy.mode, proxy.after = "cut", 3
    with nothing_local(isolated, proxy.url) as served:
        with httpx.stream("POST", served.url + "/v1/chat/completions", timeout=60,
                          json={"messages": ASK, "stream": True, **GEN}) as response:
            assert response.status_code == 200
            events = [line[6:] for line in response.iter_lines() if line.startswith("data: ")]
    pieces = [json.loads(e)["choices"][0]["delta"]["content"] for e in events[:-1]]
    assert "".join(pieces) == "".join(proxy.forwarded)
    assert json.loads(events[-1])["error"]["code"] == "all_targets_failed"  # no [DONE] after it


# -- requests + sseclient-py, as Z-WAIF reads a stream --------------------------------------


def test_a_stream_reads_as_z_waif_reads_it(orphaned: Served):
    requests = pytest.importorskip("requests")
    sseclient = pytest.importorskip("sseclient")
    response = requests.post(orphaned.url + "/v1/chat/completions", json={
        "messages": ASK, "mode": "chat", "stream": True, "max_tokens": 24, "temperature": 0.0,
        "seed": 1, "truncation_length": 4096}, stream=True, timeout=60)
    response.raise_for_status()
    message = ""
    for event in sseclient.SSEClient(response).events():  # Z-WAIF's extract_streaming_chunk
        try:
            if event.data:
                payload = json.loads(event.data)
                if payload.get("choices"):
                    message += payload["choices"][0].get("delta", {}).get("content", "")
        except json.JSONDecodeError:
            assert event.data == "[DONE]"
    assert message == client(orphaned).chat.completions.create(
        model="x", messages=ASK, **GEN).choices[0].message.content


# -- the other routes ------------------------------------------------------------------------


def test_models_lists_the_primarys_then_the_local_ones(fronting: Served):
    listed = client(fronting).models.list().data
    sources = [(m.id, (m.model_extra or {})["source"]) for m in listed]
    assert sources[0][1] == "primary" and sources[0][0].endswith(".gguf")
    assert (SMOL, "local") in sources


def test_health_reports_the_chain(orphaned: Served):
    client(orphaned).chat.completions.create(model="x", messages=ASK, **GEN)
    response = httpx.get(orphaned.url + "/health", timeout=10)
    state = response.json()
    assert response.status_code == 200 and state["can_answer"]
    assert state["current_model"] == SMOL and state["local_models"] >= 1
    assert "/v1" in next(iter(state["breakers"]))


def test_startup_events_answers_as_text_generation_webui_so_zwaif_keeps_its_port(orphaned: Served):
    # Z-WAIF's pre-release, at every start (utils/settings.py, auto_detect_oobabooga): any
    # answer but 200 here, and it writes text-generation-webui's own port into its .env
    response = requests.get(orphaned.url + "/startup-events", timeout=2)
    assert response.status_code == 200 and response.json() is True


def test_metrics_are_served(orphaned: Served):
    response = httpx.get(orphaned.url + "/metrics", timeout=10)
    assert response.status_code == 200 and "zwaif_" in response.text


# -- safety -----------------------------------------------------------------------------------


@pytest.mark.parametrize(("body", "status", "param"), [
    (b"{not json", 400, None),
    (b"[1, 2]", 400, None),
    (json.dumps({"model": "x"}).encode(), 400, "messages"),
    (json.dumps({"messages": "hello"}).encode(), 400, "messages"),
    (json.dumps({"messages": ASK, "n": 2}).encode(), 400, "n"),
    (json.dumps({"messages": ASK, "max_tokens": -5}).encode(), 400, "max_tokens"),
    (json.dumps({"messages": ASK, "max_tokens": -5, "stream": True}).encode(), 400, "max_tokens"),
    (b'{"messages": "' + b"a" * (MAX_BODY_BYTES + 1) + b'"}', 413, None),
])
def test_a_bad_request_gets_an_openai_error(orphaned: Served, body: bytes, status: int, param: str | None):
    response = httpx.post(orphaned.url + "/v1/chat/completions", content=body, timeout=30,
                          headers={"Content-Type": "application/json"})
    assert response.status_code == status
    error = response.json()["error"]
    assert error["type"] == "invalid_request_error" and error["message"]
    if param is not None:
        assert error["param"] == param


@pytest.mark.parametrize("route", ["/v1/chat/completions", "/api/chat"])
def test_a_lone_surrogate_from_a_host_reaches_the_main_api_as_a_replacement_character(isolated: Path,
                                                                                      route: str):
    # A JavaScript host that cuts a string in the middle of an emoji sends "\ud83d": every
    # target failed as it encoded the request, and three such chats opened the main API's circuit
    upstream = ScriptedServer(["Hi"])
    body = (b'{"model": "m", "stream": false, "messages": [{"role": "user", "content": '
            b'"smile \\ud83d and \\ud83d\\ude00"}]}')
    try:
        with serve(isolated, upstream.url) as served:
            answers = [httpx.post(served.url + route, content=body, timeout=60) for _ in range(3)]
    finally:
        upstream.close()
    assert [a.status_code for a in answers] == [200] * 3
    assert {a.headers["X-Fallback-Source"] for a in answers} == {"primary"}
    assert upstream.bodies[-1]["messages"] == [{"role": "user", "content": "smile \ufffd and \U0001f600"}]


def test_a_key_is_required_when_set(isolated: Path):
    with serve(isolated, refused_url(), api_key="s3cret") as served:
        with pytest.raises(openai.AuthenticationError):
            openai.OpenAI(base_url=served.url + "/v1", api_key="wrong", max_retries=0).models.list()
        response = httpx.post(served.url + "/v1/chat/completions", json={"messages": ASK}, timeout=10)
        assert response.status_code == 401 and response.json()["error"]["code"] == "invalid_api_key"
        keyed = openai.OpenAI(base_url=served.url + "/v1", api_key="s3cret", max_retries=0)
        assert keyed.chat.completions.create(model="x", messages=ASK, **GEN).choices[0].message.content
        assert httpx.get(served.url + "/health", timeout=10).status_code == 200  # for load balancers


@pytest.mark.parametrize("speaks", ["openai", "ollama"])
def test_a_main_api_url_that_points_at_serve_itself_is_refused_not_looped(isolated: Path, speaks: str):
    # The UI is on serve's port: its own address is an easy slip for the main API's. Each
    # chat then went to serve again, thousands of connections, and never came back.
    with unpinned_manager(isolated) as manager:
        served = Served(manager)
        try:
            root = served.url if speaks == "ollama" else served.url + "/v1"
            manager.update_settings(primary_url=root, primary_api=speaks, remote_urls=[served.url + "/v1"])
            answer = client(served, timeout=60).chat.completions.create(model="x", messages=ASK, **GEN)
            streamed = [c.choices[0].delta.content or "" for c in client(served, timeout=60).chat.completions
                        .create(model="x", messages=ASK, stream=True, **GEN) if c.choices]
            models = httpx.get(served.url + "/v1/models", timeout=30).json()["data"]
            foreign = httpx.get(served.url + "/v1/models", headers={INSTANCE_HEADER: uuid.uuid4().hex},
                                timeout=30)
            # /health asks a server only when no local model could answer: ask as it does
            reachable = answers(Upstream(url=root, source="primary", api_key="", ollama=speaks == "ollama"))
        finally:
            served.close()
    attempts = answer.model_extra["x_fallback"]["attempts"]
    assert [(a["source"], a["ok"]) for a in attempts] == [
        ("primary", False), ("remote", False), ("local", True)]
    assert all("came from this serve itself" in a["error"] for a in attempts[:2]), attempts
    assert all(a["tries"] == 1 for a in attempts[:2])  # refused at once, not retried
    assert [m["source"] for m in models] == ["local"]
    assert reachable is False  # the 508 is not a server that answers
    assert "".join(streamed) and foreign.status_code == 200  # another serve process's id is let in


@pytest.mark.parametrize("through", ["primary", "remote"])
def test_a_chat_sent_on_for_another_serve_says_it_came_through_it(isolated: Path, through: str):
    upstream, other = ScriptedServer(["Red."]), uuid.uuid4().hex
    urls = (upstream.url, []) if through == "primary" else (refused_url(), [upstream.url])
    try:
        with serve(isolated, urls[0], remote_urls=urls[1]) as served:
            for stream in (False, True):
                httpx.post(served.url + "/v1/chat/completions", json={"messages": ASK, "stream": stream},
                           headers={INSTANCE_HEADER: other}, timeout=30).raise_for_status()
    finally:
        upstream.close()
    assert [h[INSTANCE_HEADER.lower()] for h in upstream.headers] == [f"{other}, {instance_id()}"] * 2


def test_two_serves_that_name_each_other_as_main_api_answer_instead_of_looping(isolated: Path):
    # Each serve lets another serve's requests in. Before, a chat sent round between two
    # went on until the deadline, a connection more each time; now it comes back to where it
    # began and is refused there, and the other serve answers with its local model.
    (isolated / "a").mkdir()
    with unpinned_manager(isolated / "a") as manager:
        a = Served(manager)
        try:
            process, b = serve_with_a_local_model(isolated, primary_url=a.url + "/v1")
            try:
                manager.update_settings(primary_url=b + "/v1")
                answer = client(a, timeout=60).chat.completions.create(model="x", messages=ASK, **GEN)
                raw = client(a, timeout=60).chat.completions.with_raw_response.create(
                    model="x", messages=ASK, stream=True, **GEN)
                streamed = [c.choices[0].delta.content or "" for c in raw.parse() if c.choices]
            finally:
                process.terminate()
                process.wait(timeout=30)
        finally:
            a.close()
    attempts = answer.model_extra["x_fallback"]["attempts"]
    assert [(x["source"], x["ok"]) for x in attempts] == [("primary", True)], attempts
    assert answer.model == SMOL and answer.choices[0].message.content  # b's local model
    assert raw.headers["x-fallback-source"] == "primary" and "".join(streamed)


def test_a_network_address_needs_a_key():
    with pytest.raises(InvalidSettings, match="FALLBACK_API_KEY"):
        check_bind("0.0.0.0", None)
    check_bind("0.0.0.0", "s3cret")
    check_bind("127.0.0.1", None)
    check_bind("::1", None)


def test_a_client_that_disconnects_stops_the_local_generation(orphaned: Served):
    body = {"messages": ASK, "stream": True, "max_tokens": 400, "temperature": 0.0, "seed": 1}
    with httpx.stream("POST", orphaned.url + "/v1/chat/completions", json=body, timeout=60) as response:
        lines = response.iter_lines()
        assert next(lines).startswith("data: {")  # the local model is generating
    # The connection is closed: the chain is told, the generation ends and counts as cancelled.
    wait_until(lambda: "zwaif_cancelled_total 1.0" in httpx.get(orphaned.url + "/metrics").text,
               timeout_s=10, what="the stream to be cancelled")
    answer = client(orphaned).chat.completions.create(model="x", messages=ASK, **GEN)
    assert answer.choices[0].finish_reason == "length"  # the model was free again


def test_a_client_that_gives_up_before_the_first_piece_is_no_error_in_the_log(isolated: Path, caplog):
    # A host whose own timeout is shorter than serve's left an ERROR "failed unexpectedly"
    # (with "NoneType: None") in the log for every chat while the main API hung
    hang = HangServer()
    body = {"messages": ASK, "stream": True, "max_tokens": 4}
    try:
        with serve(isolated, hang.url) as served:
            with pytest.raises(httpx.ReadTimeout), httpx.stream(
                    "POST", served.url + "/v1/chat/completions", json=body, timeout=0.5) as response:
                response.read()
            wait_until(lambda: "zwaif_cancelled_total 1.0" in httpx.get(served.url + "/metrics").text,
                       timeout_s=20, what="the chat to count as cancelled")
    finally:
        hang.close()
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR], caplog.text


# -- the command --------------------------------------------------------------------------------


def test_the_serve_command_answers_with_the_tabs_beside_the_api(isolated: Path):
    port, primary = free_port(), refused_url()
    env = {**os.environ, "FALLBACK_PRIMARY_URL": primary, "FALLBACK_SCAN_SYSTEM_STORES": "false",
           "FALLBACK_VRAM_MONITORING": "false"}
    process = subprocess.Popen([sys.executable, "-m", "zwaif_fallback", "serve", "--port", str(port)],
                               cwd=isolated, env=env, stdout=subprocess.PIPE, text=True)
    try:
        assert process.stdout is not None
        line = process.stdout.readline()
        assert f"point your host's OpenAI-compatible URL at http://127.0.0.1:{port}/v1" in line
        assert process.stdout.readline() == (
            f"chats go to {primary} (OpenAI-compatible) first, then the local models\n")
        base = f"http://127.0.0.1:{port}"
        wait_until(lambda: httpx.get(base + "/health", timeout=2).status_code == 200, timeout_s=30,
                   what="serve to answer")
        page = httpx.get(base + "/", timeout=10)
        assert page.status_code == 200 and "gradio" in page.text.lower()
        host = openai.OpenAI(base_url=base + "/v1", api_key="unused", max_retries=0)
        answer = host.chat.completions.create(model="x", messages=ASK, **GEN)
        assert answer.model == SMOL and answer.choices[0].message.content
    finally:
        process.terminate()
        process.wait(timeout=30)


def test_serve_on_port_0_names_the_port_the_system_picked(isolated: Path):
    env = {**os.environ, "FALLBACK_SCAN_SYSTEM_STORES": "false", "FALLBACK_VRAM_MONITORING": "false"}
    process = subprocess.Popen([sys.executable, "-m", "zwaif_fallback", "serve", "--no-ui", "--port", "0"],
                               cwd=isolated, env=env, stdout=subprocess.PIPE, text=True)
    try:
        assert process.stdout is not None
        line = process.stdout.readline()
        base = line.split(" at ", 1)[1].split("/v1", 1)[0]
        assert not base.endswith(":0"), line
        assert process.stdout.readline() == ("no main API is set: chats go to the local models; "
                                             "set the main API with FALLBACK_PRIMARY_URL\n")
        wait_until(lambda: httpx.get(base + "/health", timeout=2).status_code == 200, timeout_s=30,
                   what="serve to answer at the URL it printed")
    finally:
        process.terminate()
        process.wait(timeout=30)


COUNT = {"messages": [{"role": "user", "content": "Count from 1 to 2000, one number per line."}],
         "max_tokens": 3000, "temperature": 0.0, "seed": 1}


def serve_with_a_local_model(root: Path, primary_url: str | None = None) -> tuple[subprocess.Popen[str], str]:
    """``zwaif-fallback serve`` in a process of its own, its primary ``primary_url`` (by default
    one that is down): the process and its URL."""
    port = free_port()
    env = {**os.environ, "FALLBACK_PRIMARY_URL": primary_url or refused_url(),
           "FALLBACK_SCAN_SYSTEM_STORES": "false", "FALLBACK_VRAM_MONITORING": "false"}
    process = subprocess.Popen([sys.executable, "-m", "zwaif_fallback", "serve", "--no-ui", "--port",
                                str(port)], cwd=root, env=env, stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True)
    assert process.stdout is not None
    assert "point your host's OpenAI-compatible URL" in process.stdout.readline()
    base = f"http://127.0.0.1:{port}"
    wait_until(lambda: httpx.get(base + "/health", timeout=2).status_code == 200, timeout_s=30,
               what="serve to answer")
    return process, base


@pytest.mark.slow
def test_ctrl_c_stops_a_whole_local_answer_in_flight_saying_why(isolated: Path):
    process, base = serve_with_a_local_model(isolated)
    try:
        answer: list[httpx.Response] = []
        asking = threading.Thread(target=lambda: answer.append(
            httpx.post(base + "/v1/chat/completions", json=COUNT, timeout=60)))
        asking.start()
        # Loaded, it generates a 3000-token answer: tens of seconds on this machine.
        wait_until(lambda: httpx.get(base + "/health", timeout=5).json()["current_model"],
                   timeout_s=30, what="the local model to load")
        process.send_signal(signal.SIGINT)
        asking.join(30)
        _, stderr = process.communicate(timeout=30)
    finally:
        process.kill()
    assert answer and answer[0].status_code == 503, answer
    assert "serve is shutting down" in answer[0].json()["error"]["message"]
    assert "Traceback" not in stderr and "graceful shutdown exceeded" not in stderr, stderr[-2000:]


@pytest.mark.slow
@pytest.mark.parametrize("stop", [signal.SIGINT, signal.SIGHUP], ids=["ctrl-c", "hangup"])
def test_ctrl_c_stops_a_local_answer_in_flight_without_a_traceback(isolated: Path, stop: int):
    """Ctrl-C while the local model streams a long answer: the generation is stopped at
    once, so uvicorn's graceful shutdown does not run out of time and cancel it (which
    printed a traceback), and the model is not freed under a running decode. A closed
    terminal's hangup does the same (it was a KeyboardInterrupt inside the event loop)."""
    process, base = serve_with_a_local_model(isolated)
    try:
        with httpx.stream("POST", base + "/v1/chat/completions", json={**COUNT, "stream": True},
                          timeout=60) as response:
            lines = response.iter_lines()
            assert next(lines).startswith("data: {")  # the local model is generating
            process.send_signal(stop)
            rest = list(lines)  # the stream ends: the answer was stopped, not left to run
        _, stderr = process.communicate(timeout=30)
    finally:
        process.kill()
    assert "data: [DONE]" not in rest  # stopped, not finished, and the client is told why
    errors = [json.loads(line[len("data: "):]) for line in rest if line.startswith('data: {"error"')]
    assert len(errors) == 1 and "serve is shutting down" in errors[0]["error"]["message"], rest[-3:]
    assert "Traceback" not in stderr and "graceful shutdown exceeded" not in stderr, stderr[-2000:]


def test_sigterm_stops_serve_as_ctrl_c_does(isolated: Path):
    # A service manager (systemd, Docker) stops serve with SIGTERM: it must unwind and close
    # its manager, not die by the signal's default action (exit -15, nothing closed).
    process, _ = serve_with_a_local_model(isolated)
    try:
        process.send_signal(signal.SIGTERM)
        _, stderr = process.communicate(timeout=30)
    finally:
        process.kill()
    assert process.returncode == 0 and "stopping" in stderr, (process.returncode, stderr[-2000:])
    assert "Traceback" not in stderr


def test_serve_without_fastapi_says_what_to_install(isolated: Path):
    # The README's install by hand without the ui extra has no FastAPI: that was "unexpected
    # failure (ModuleNotFoundError: No module named 'fastapi')"
    blocked = ("import sys; sys.modules['fastapi'] = None; from zwaif_fallback.cli import main; "
               "sys.exit(main(['serve', '--no-ui', '--port', '0']))")
    result = subprocess.run([sys.executable, "-c", blocked], capture_output=True, text=True, cwd=isolated,
                            timeout=60)
    assert result.returncode == 1, result.stderr
    assert 'pip install "zwaif-fallback[serve]"' in result.stderr
    assert "unexpected" not in result.stderr and len(result.stderr.strip().splitlines()) == 1


def test_serve_refuses_a_network_address_without_a_key_and_a_taken_port(isolated: Path):
    refused = run_cli("serve", "--host", "0.0.0.0", "--port", str(free_port()), cwd=isolated)
    assert refused.returncode == 2 and "FALLBACK_API_KEY" in refused.stderr
    assert len(refused.stderr.strip().splitlines()) == 1
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        busy = run_cli("serve", "--no-ui", "--port", str(taken.getsockname()[1]), cwd=isolated)
    assert busy.returncode == 1 and "choose another port" in busy.stderr


@pytest.mark.parametrize("made", ["by listen", "as Windows' proactor loop accepts"])
def test_every_connection_has_nagle_off(made: str):
    """With Nagle's algorithm on, an answer's first body write waited for the client's
    delayed acknowledgement of the headers (40 ms more to every first token)."""
    if made == "by listen":
        listener = listen("127.0.0.1", 0)
    else:  # protocol 0, for which asyncio leaves Nagle on
        listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        listener.bind(("127.0.0.1", 0))
        listener.listen()

    async def app(scope: Any, receive: Any, send: Any) -> None:  # answers nothing: never asked
        pass

    server = serving(app)
    thread = threading.Thread(target=server.run, kwargs={"sockets": [listener]}, daemon=True)
    thread.start()
    try:
        wait_until(lambda: server.started, timeout_s=20, what="uvicorn to start")
        with socket.create_connection(listener.getsockname()):
            wait_until(lambda: server.server_state.connections, timeout_s=10, what="the connection")
            (connection,) = server.server_state.connections
            accepted = connection.transport.get_extra_info("socket")
            assert accepted.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY)
    finally:
        server.should_exit = True
        thread.join(timeout=20)


def test_health_answers_while_whole_answers_queue_for_the_local_model(orphaned: Served):
    body = {"messages": ASK, "max_tokens": 64, "temperature": 0.0, "seed": 1}
    answers: list[int] = []

    def ask() -> None:
        answers.append(httpx.post(orphaned.url + "/v1/chat/completions", json=body, timeout=120).status_code)

    askers = [threading.Thread(target=ask) for _ in range(8)]  # more than the loop's default executor
    for asker in askers:
        asker.start()
    wait_until(lambda: "zwaif_generated_tokens_total" in httpx.get(orphaned.url + "/metrics").text,
               timeout_s=60, what="the local model to start answering")
    assert httpx.get(orphaned.url + "/health", timeout=60).status_code == 200
    assert len(answers) <= 2  # /health did not wait for the queued generations
    for asker in askers:
        asker.join(timeout=120)
    assert answers == [200] * 8
