"""The failover chain against a real llama.cpp server process, real faults, real local models."""

from __future__ import annotations

import asyncio
import json
import logging
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from builders import write_gguf
from conftest import local_models, run_cli
from servers import BodyServer, FaultProxy, HangServer, LlamaServer, ScriptedServer, refused_url, wait_until

from zwaif_fallback import AllTargetsFailed, FallbackManager, FallbackSettings, InvalidSettings
from zwaif_fallback.backends.base import GenerationParams, TargetFailed
from zwaif_fallback.backends.openai import OpenAIBackend
from zwaif_fallback.failover import FailoverChain
from zwaif_fallback.routing import SERVERS_KEPT, Router, _answers_a_chat

SMOL = "SmolLM2-135M-Instruct.Q4_1"
ASK = [{"role": "user", "content": "Name three colours."}]
GEN = {"max_tokens": 24, "temperature": 0.0, "seed": 1}
UNRESOLVABLE = "http://no-such-host.invalid:5000/v1"  # .invalid never resolves (RFC 6761)


@pytest.fixture(scope="module")
def server(smollm2):
    srv = LlamaServer(smollm2).start()
    yield srv
    srv.stop()


@pytest.fixture
def proxy(server):
    p = FaultProxy(server.port)
    yield p
    p.close()


@pytest.fixture
def manager(isolated):
    m = FallbackManager(FallbackSettings(timeout=5, max_retries=3, models_dir=isolated / "models",
                                         scan_system_stores=False, keep_alive=0,
                                         preferred_model=SMOL))
    yield m
    m.close()


def local_answer(manager: FallbackManager) -> str:
    return manager.chat(ASK, **GEN).text


def test_a_healthy_primary_answers(manager, proxy):
    result = manager.chat(ASK, primary=proxy.url, **GEN)
    assert (result.source, result.fell_back, result.model) == ("primary", False, proxy.url)
    assert result.text == "".join(proxy.forwarded) and result.tokens > 0
    assert [a.ok for a in result.attempts] == [True]


def test_a_refused_primary_falls_back_at_once_without_retries(manager):
    result = manager.chat(ASK, primary=refused_url(), **GEN)
    assert (result.source, result.model, result.fell_back) == ("local", SMOL, True)
    first = result.attempts[0]
    assert not first.ok and "connection refused" in first.error
    assert first.tries == 1 and first.latency_s < 1.0  # no waiting on a server that is down
    assert result.text == local_answer(manager)


def test_a_stopped_server_process_is_refused(tmp_path, manager):
    srv = LlamaServer(write_gguf(tmp_path / "m.gguf")).start()
    try:
        assert manager.chat(ASK, primary=srv.url, **GEN).source == "primary"
    finally:
        srv.stop()
    result = manager.chat(ASK, primary=srv.url, **GEN)
    assert result.source == "local" and "refused" in result.attempts[0].error


@pytest.mark.parametrize(("body", "says"), [
    ({"error": {"message": "model not loaded", "type": "invalid_request_error"}},
     "the server reported: model not loaded"),
    ({"id": "x", "object": "chat.completion", "choices": []}, "the server's answer holds no choice"),
    ({"choices": [{"index": 0}]}, "the server's answer holds a choice with no message"),
])
def test_a_primary_that_answers_200_with_no_answer_in_it_is_failed_over(manager, body, says):
    # Some servers and gateways report an error with status 200: it was taken for an empty
    # answer, and the host got "" from the primary while a local model stood ready
    srv = BodyServer(json.dumps(body).encode())
    try:
        result = manager.chat(ASK, primary=srv.url, **GEN)
    finally:
        srv.close()
    first = result.attempts[0]
    assert (result.source, first.ok) == ("local", False) and first.error.startswith(says), first
    assert result.text == local_answer(manager)


def test_an_empty_answer_is_still_an_answer(manager):
    body = {"choices": [{"index": 0, "message": {"role": "assistant", "content": ""},
                         "finish_reason": "stop"}]}
    srv = BodyServer(json.dumps(body).encode())
    try:
        result = manager.chat(ASK, primary=srv.url, **GEN)
    finally:
        srv.close()
    assert (result.source, result.text, result.fell_back) == ("primary", "", False)


def test_servers_the_settings_no_longer_name_keep_no_breaker_past_the_last_few(manager):
    # a serve up for weeks while its user tries 5000, 5001, 11434...: /metrics showed them all
    urls = [refused_url() for _ in range(SERVERS_KEPT + 3)]
    for url in urls:
        manager.update_settings(primary_url=url)
        assert manager.chat(ASK, max_tokens=1).source == "local"
    assert set(manager.breaker_states()) == set(urls[-1 - SERVERS_KEPT:])  # the primary and the last few


def test_a_hung_primary_yields_at_the_deadline_then_is_skipped(manager):
    hang = HangServer()
    try:
        result = manager.chat(ASK, primary=hang.url, **GEN)
        # Hung, not failing: its circuit opens at once, and the next chat does not wait on it.
        assert manager.breaker_states()[hang.url]["state"] == "open"
        second = manager.chat(ASK, primary=hang.url, **GEN)
    finally:
        hang.close()
    first = result.attempts[0]
    assert result.source == "local" and not first.ok
    assert 5.0 <= first.latency_s < 6.5, first  # timeout=5 covers every retry
    assert "within" in first.error
    assert second.source == "local" and second.attempts[0].tries == 0
    assert second.attempts[0].error.startswith("circuit open: skipped")


def test_a_hung_primary_is_checked_by_a_probe_of_its_own_not_by_a_chat(isolated):
    hang = HangServer()
    url, later = hang.url, [0.0]  # seconds added to the manager's clock: cooldowns pass at once
    settings = FallbackSettings(timeout=5, models_dir=isolated / "models", scan_system_stores=False,
                                keep_alive=0, preferred_model=SMOL)
    # Short answers: on a loaded machine the cooldown's real timer could otherwise fire
    # while the first chat still generates, and a probe go out before this test's own
    short, upstream = {**GEN, "max_tokens": 4}, None
    with FallbackManager(settings, background=False, clock=lambda: time.monotonic() + later[0]) as manager:
        try:
            manager.chat(ASK, primary=url, **short)  # waits out the deadline: the circuit opens
            chats_sent, later[0] = hang.accepted, 31.0
            chatting = ThreadPoolExecutor(1).submit(manager.chat, ASK, primary=url, **short)
            # The chat goes on to the local model at once; a probe of its own asks the server.
            # The server is killed while the probe waits on it (the local answer may still be
            # generating: on a loaded machine, for longer than the probe's deadline).
            wait_until(lambda: hang.accepted > chats_sent and manager.breaker_states()[url]["probing"],
                       timeout_s=10, what="the probe's request")
            hang.close()  # the server goes; one that answers comes up on its port
            upstream = ScriptedServer(["back"], port=int(url.split(":")[2].split("/")[0]))
            # The probe failed at once (its connection closed): the next one follows soon,
            # with no chat and no cooldown to wait for.
            wait_until(lambda: manager.breaker_states()[url]["state"] == "closed", timeout_s=10,
                       what="the next probe to close the circuit")
            after_cooldown = chatting.result(timeout=120)
            back = manager.chat(ASK, primary=url, **short)
        finally:
            hang.close()
            if upstream is not None:
                upstream.close()
    skipped = after_cooldown.attempts[0]
    assert after_cooldown.source == "local" and skipped.tries == 0, after_cooldown.attempts
    assert skipped.error == "circuit open: skipped (a probe is checking whether it answers again)"
    assert (back.source, back.text) == ("primary", "back")
    assert upstream.bodies[0]["max_tokens"] == 1 and len(upstream.bodies) == 2  # the probe, the chat


def test_a_breakers_probe_tells_a_hung_server_from_one_that_is_not_there_or_went_away():
    # A hung server earns a whole cooldown; one that is not running, or was killed while the
    # probe waited on it, is probed again within seconds: it is being restarted
    assert _answers_a_chat(OpenAIBackend(refused_url()), None, 5.0) == "fails"
    hang = HangServer()
    try:
        # as the chain makes it: a silence longer than the deadline ends the request
        assert _answers_a_chat(OpenAIBackend(hang.url, read_timeout_s=1.0), None, 0.5) == "hangs"
        probing = ThreadPoolExecutor(1).submit(_answers_a_chat, OpenAIBackend(hang.url), None, 30.0)
        wait_until(lambda: hang.accepted == 2, timeout_s=5, what="the probe's request")
    finally:
        hang.close()  # killed while the probe waits on it
    assert probing.result(timeout=10) == "fails"


def test_a_server_that_stays_down_is_logged_once_per_reason_not_once_per_probe(caplog):
    # probed every 2 s, a main API down over a weekend filled the rotating logs with one line
    answering = ScriptedServer(["Hi"])
    proxy, said = FaultProxy(answering.server.server_address[1]), {}
    backend = OpenAIBackend(proxy.url)
    outcomes = []
    try:
        with caplog.at_level(logging.INFO, logger="zwaif_fallback"):
            for mode in ["500"] * 4 + ["400"] * 2 + ["pass"] + ["500"] * 2:
                proxy.mode = mode
                outcomes.append(_answers_a_chat(backend, None, 5.0, said=said))
    finally:
        proxy.close()
        answering.close()
    assert outcomes == ["fails"] * 6 + ["answers"] + ["fails"] * 2
    lines = [r.getMessage() for r in caplog.records if r.levelno >= logging.INFO]
    # the first 500, the first 400 (another reason), the answer, and the 500 after it
    assert [("answers again" if "answers again" in line else "still does not answer" in line)
            for line in lines] == [True, True, "answers again", True], lines


def test_a_probe_or_a_read_that_ends_leaves_no_thread_behind():
    # Each probe that got an answer (an error status, or the answer that closes the circuit)
    # left a watchdog thread waiting for good: 1,800 an hour while a main API answered 500
    def watchers() -> int:
        return sum(t.name == "zwaif-http-cancel" and t.is_alive() for t in threading.enumerate())

    before = watchers()
    failing, answering = FaultProxy(upstream_port=0), ScriptedServer(["Hi"])
    failing.mode = "500"
    try:
        for _ in range(5):
            assert _answers_a_chat(OpenAIBackend(failing.url), None, 5.0) == "fails"
            assert _answers_a_chat(OpenAIBackend(answering.url), None, 5.0) == "answers"
        # a plain event from a host, never set: watched only while the answer is read
        pieces = list(OpenAIBackend(answering.url).stream(ASK, GenerationParams(), cancel=threading.Event()))
    finally:
        failing.close()
        answering.close()
    assert pieces == ["Hi"]
    wait_until(lambda: watchers() == before, timeout_s=5, what="the watchdog threads to end")


def test_500s_are_retried_then_fall_back(manager, proxy):
    proxy.mode = "500"
    result = manager.chat(ASK, primary=proxy.url, **GEN)
    assert result.source == "local"
    assert result.attempts[0].tries == 3 and proxy.requests == 3
    assert "HTTP 500" in result.attempts[0].error


def test_a_transient_500_is_retried_to_success(manager, proxy):
    proxy.fail_first = 2
    result = manager.chat(ASK, primary=proxy.url, **GEN)
    assert result.source == "primary" and result.attempts[0].tries == 3
    assert not result.fell_back


def test_a_client_error_is_not_retried(manager, proxy):
    proxy.mode = "400"
    result = manager.chat(ASK, primary=proxy.url, **GEN)
    assert result.source == "local" and result.attempts[0].tries == 1 and proxy.requests == 1


def test_the_breaker_opens_and_then_no_request_is_sent(manager, proxy):
    proxy.mode = "500"
    for _ in range(3):
        manager.chat(ASK, primary=proxy.url, **GEN)
    assert manager.breaker_states()[proxy.url]["state"] == "open"
    sent = proxy.requests
    result = manager.chat(ASK, primary=proxy.url, **GEN)
    assert proxy.requests == sent  # skipped: no request, no time lost
    skipped = result.attempts[0]
    assert skipped.latency_s == 0.0 and skipped.error.startswith("circuit open")
    assert skipped.tries == 0  # nothing was sent


def test_the_breaker_opening_calls_for_a_preload():
    opened = []
    router = Router(local_stream=lambda *a, **k: iter(()), current=lambda: None, ranked=list,
                    on_primary_down=lambda: opened.append(True))
    target = next(router.targets(FallbackSettings(), refused_url()))
    chain = FailoverChain(timeout_s=5, max_retries=3)
    for _ in range(3):
        with pytest.raises(AllTargetsFailed):
            list(chain.stream(ASK, GenerationParams(), [target], lambda result: None))
    assert opened == [True]  # once, when it opened


def test_a_preload_loads_the_best_local_model(isolated):
    settings = FallbackSettings(models_dir=isolated / "models", scan_system_stores=False,
                                keep_alive=0, preferred_model=SMOL)
    with local_models(settings) as local:
        assert local.current is None
        local.preload_async()
        wait_until(lambda: local.loaded, timeout_s=60, what="the preload")
        assert local.current.name == SMOL


def test_a_refused_connection_is_known_by_its_type_not_its_text():
    import httpx

    from zwaif_fallback.backends.openai import _transport_error

    try:
        httpx.get(refused_url() + "/models", timeout=5)
    except httpx.ConnectError as exc:
        refused = _transport_error(exc, "u", "primary_url")
    assert refused.fast and not refused.retryable  # down for sure: no retries, no waiting
    worded = httpx.ConnectError("the proxy said: connection refused")  # text only, no OS error
    assert not _transport_error(worded, "u", "primary_url").fast


def test_a_server_that_lets_a_timeout_pass_without_a_word_is_hung_not_down():
    # A host that drops the connection attempt (a PC switched off, a firewall's DROP) times out
    # at connect: taken as down, its breaker's probe was made again every 12 s, for good
    import httpx

    from zwaif_fallback.backends.openai import _transport_error

    for timeout in (httpx.ConnectTimeout("timed out"), httpx.ReadTimeout("timed out")):
        failure = _transport_error(timeout, "u", "primary_url")
        assert failure.hung and failure.retryable and not failure.fast


def test_a_primary_whose_host_name_does_not_resolve_falls_back_at_once_without_retries(manager):
    result = manager.chat(ASK, primary=UNRESOLVABLE, **GEN)
    first = result.attempts[0]
    assert result.source == "local" and first.tries == 1  # a wrong name stays wrong: no retries
    assert "does not resolve" in first.error and first.error.endswith("check primary_url")


def test_a_host_name_that_does_not_resolve_is_not_retried_on_an_event_loop_either():
    backend = OpenAIBackend(UNRESOLVABLE, source="remote")

    async def ask() -> None:
        async for _ in backend.astream(ASK, GenerationParams()):
            pass

    with pytest.raises(TargetFailed) as err:
        asyncio.run(ask())
    assert err.value.fast and not err.value.retryable
    assert "does not resolve" in str(err.value) and str(err.value).endswith("check remote_urls")


def test_a_local_answer_in_japanese_cut_by_max_tokens_says_length_and_counts_tokens(manager):
    # A piece is a whole character, 2-3 tokens of Japanese: counted as tokens, 12 pieces were
    # never reached, and the answer said "stop" with a third of its tokens
    ask = [{"role": "user", "content": "日本の首都について日本語で説明してください。"}]
    result = manager.chat(ask, primary=refused_url(), max_tokens=12, temperature=0.0)
    assert (result.source, result.finish_reason) == ("local", "length")
    # tokens, not pieces: the attempt's count too, which /metrics adds up
    assert result.tokens == result.completion_tokens == result.attempts[-1].tokens > 12 // 3


def test_an_answer_cut_inside_a_character_counts_every_token_generated(manager):
    # the last tokens of an unfinished emoji are never delivered, but were generated
    ask = [{"role": "user", "content": "Reply with only emoji: 😊🌍🎉🐱"}]
    result = manager.chat(ask, primary=refused_url(), max_tokens=8, seed=7)
    assert result.finish_reason == "length"
    assert result.tokens == result.completion_tokens == 8


def test_a_cut_stream_is_continued_by_the_next_target(manager, proxy):
    proxy.mode, proxy.after = "cut", 4
    pieces = list(manager.stream_chat(ASK, primary=proxy.url, **GEN))
    result = manager.last_result
    assert "".join(pieces) == result.text
    head = "".join(proxy.forwarded[:4])
    assert len(result.switches) == 1
    switch = result.switches[0]
    assert (switch.from_target, switch.to_target, switch.at_char) == (proxy.url, SMOL, len(head))
    assert result.text.startswith(head) and len(result.text) > len(head)
    assert result.source == "local" and result.attempts[0].tokens == 4
    # max_tokens bounds the whole answer, not each target's part of it
    assert (result.tokens, result.finish_reason) == (GEN["max_tokens"], "length"), result


def test_a_stream_read_from_an_asyncio_hosts_threads_keeps_its_own_result(manager, proxy):
    async def host():
        local = manager.chat(ASK, primary=refused_url(), **GEN)  # the loop thread's last chat
        stream = manager.stream_chat(ASK, primary=proxy.url, **GEN)
        pieces = [piece async for piece in stream]  # read on a thread of its own
        return local, stream, pieces

    local, stream, pieces = asyncio.run(host())
    assert stream.result is not None and stream.result.source == "primary"
    assert stream.result.text == "".join(pieces) and pieces
    assert manager.last_result is local  # this thread's own last chat is left as it was


def test_an_asyncio_host_streams_more_fallbacks_at_once_than_a_thread_pool_holds(manager):
    # asyncio.to_thread(next, stream) (the README's way) waited for good once more streams fell
    # back at once than its pool has threads: each local stream holds the model between pieces
    async def one(i):
        stream = manager.stream_chat([{"role": "user", "content": f"Name a colour. ({i})"}],
                                     primary=refused_url(), max_tokens=4, temperature=0.0)
        return "".join([piece async for piece in stream]), stream.result

    async def host():
        return await asyncio.wait_for(asyncio.gather(*(one(i) for i in range(16))), 300)  # not hung

    answers = asyncio.run(host())
    assert all(text and result.source == "local" and result.text == text for text, result in answers)


def test_leaving_an_async_for_early_stops_the_answer_and_lets_the_model_go(manager):
    async def host():
        stream = manager.stream_chat(ASK, primary=refused_url(), max_tokens=400, temperature=0.0)
        async for _ in stream:
            break
        return stream

    stream = asyncio.run(host())
    # the next chat gets the model: the answer left behind no longer holds it
    after = ThreadPoolExecutor(1).submit(manager.chat, ASK, **GEN).result(timeout=120)
    assert after.source == "local" and stream.result is None  # stopped, not finished


def test_a_stream_is_stopped_from_another_thread_by_its_cancel(manager, proxy):
    cancel = threading.Event()
    stream = manager.stream_chat(ASK, primary=proxy.url, cancel=cancel, max_tokens=200)
    assert next(stream)
    setter = threading.Thread(target=cancel.set)  # an asyncio host's task, say
    setter.start()
    setter.join()
    rest = list(stream)
    assert len(rest) <= 1 and stream.result is None  # cancelled: no answer is reported


def test_a_stalled_stream_is_continued_after_the_stall_limit(manager, proxy):
    proxy.mode, proxy.after = "stall", 3
    result = manager.chat(ASK, primary=proxy.url, **GEN)
    assert result.switches and result.switches[0].at_char == len("".join(proxy.forwarded[:3]))
    assert "no new token within" in result.attempts[0].error


def test_remote_urls_come_before_local_models(isolated, proxy):
    settings = FallbackSettings(remote_urls=[proxy.url], models_dir=isolated / "models",
                                scan_system_stores=False, keep_alive=0, timeout=5)
    with FallbackManager(settings) as manager:
        result = manager.chat(ASK, primary=refused_url(), **GEN)
    assert (result.source, result.model) == ("remote", proxy.url)


class TestHostCallable:
    def test_a_string_answer(self, manager):
        result = manager.chat(ASK, primary=lambda messages, **gen: "Red, green, blue.", **GEN)
        assert (result.text, result.source) == ("Red, green, blue.", "primary")

    def test_an_iterator_answer_gets_the_generation_options(self, manager):
        seen = {}

        def call(messages, **gen):
            seen.update(gen, messages=messages)
            yield from ["Red", ", ", "green"]

        result = manager.chat(ASK, primary=call, **GEN)
        assert result.text == "Red, green" and result.tokens == 3
        assert seen["max_tokens"] == 24 and seen["messages"] == ASK

    def test_it_gets_only_the_options_the_caller_gave_so_its_own_presets_stay(self, manager):
        seen: list[dict] = []

        def call(messages, **gen):
            seen.append(gen)
            return "Red."

        manager.chat(ASK, primary=call)
        manager.chat(ASK, primary=call, temperature=0.2)
        assert seen == [{}, {"temperature": 0.2}]

    def test_distinct_callables_of_one_name_have_breakers_of_their_own(self, manager):
        def for_user(user: str):
            def call(messages, **gen):
                if user == "down":
                    raise ConnectionError("this bot's API is down")
                return f"Hi from {user}."
            return call

        for _ in range(3):  # a failing bot's breaker opens...
            assert manager.chat(ASK, primary=for_user("down"), **GEN).source == "local"
        result = manager.chat(ASK, primary=for_user("up"), **GEN)  # ...and another bot's call still answers
        assert (result.source, result.text) == ("primary", "Hi from up.")
        assert result.attempts[0].target.endswith("call#2")
        again = manager.chat(ASK, primary=for_user("down"), **GEN)  # a new closure for the same bot
        assert "circuit open" in again.attempts[0].error

    def test_a_lambda_made_anew_for_each_chat_is_one_target_with_one_breaker(self, manager):
        def down(messages, **gen):
            raise ConnectionError("the host's API is down")

        results = [manager.chat(ASK, primary=lambda messages, **gen: down(messages, **gen), **GEN)
                   for _ in range(4)]
        assert "circuit open" in results[-1].attempts[0].error  # opened by the three before

    def test_a_lambda_over_each_chats_own_list_is_one_target_too(self, manager):
        # a list cannot be hashed: told apart by its identity, each chat made a new target
        def over(history):  # the host's call, closing over its per-chat copy of the messages
            def call(messages, **gen):
                raise ConnectionError(f"the host's API is down ({len(history)} messages lost)")
            return call

        results = [manager.chat(ASK, primary=over([dict(m) for m in ASK]), **GEN) for _ in range(4)]
        assert "circuit open" in results[-1].attempts[0].error

    def test_connection_errors_are_retried(self, manager):
        calls = []

        def flaky(messages, **gen):
            calls.append(1)
            if len(calls) < 3:
                raise ConnectionError("the host's API is restarting")
            return "back"

        assert manager.chat(ASK, primary=flaky, **GEN).text == "back" and len(calls) == 3

    def test_other_errors_fall_back_without_retry(self, manager):
        calls = []

        def broken(messages, **gen):
            calls.append(1)
            raise KeyError("bad response shape")

        result = manager.chat(ASK, primary=broken, **GEN)
        assert result.source == "local" and len(calls) == 1
        assert "KeyError" in result.attempts[0].error


def test_a_model_that_fails_to_load_is_skipped_with_auto_switch(isolated, tmp_path):
    models = isolated / "models"
    models.mkdir()
    write_gguf(models / "broken.gguf", n_embd=64, n_head=4, n_head_kv=3)  # 64 % 3: bad K/V shape
    settings = FallbackSettings(models_dir=models, scan_system_stores=False, keep_alive=0,
                                preferred_model="broken")
    with FallbackManager(settings) as manager:
        result = manager.chat(ASK, **GEN)
        assert result.model == SMOL and result.attempts[0].target == "broken"
        assert not result.attempts[0].ok and "damaged or unsupported" in result.attempts[0].error
        # the model that answered is kept; the broken file is not loaded again
        loads = manager._local.pool.loads
        assert [a.target for a in manager.chat(ASK, **GEN).attempts] == [SMOL]
        assert manager._local.pool.loads == loads
    with FallbackManager(settings.model_copy(update={"auto_switch": False})) as manager:
        with pytest.raises(AllTargetsFailed) as err:
            manager.chat(ASK, **GEN)
        assert [a.target for a in err.value.attempts] == ["broken"]


def test_a_vocabulary_that_aborts_llama_cpp_does_not_kill_the_host(isolated):
    models = isolated / "models"
    models.mkdir()
    tokens = [f"t{i}" for i in range(300)] + ["dup", "dup", "<|endoftext|>", "<|im_start|>",
                                             "<|im_end|>"]
    write_gguf(models / "dupes.gguf", tokens=tokens, merges=[])
    settings = FallbackSettings(models_dir=models, scan_system_stores=False, keep_alive=0,
                                preferred_model="dupes")
    with FallbackManager(settings) as manager:
        result = manager.chat(ASK, **GEN)
    assert result.model == SMOL
    assert "damaged or unsupported" in result.attempts[0].error


def test_all_targets_failed_lists_every_attempt(isolated):
    settings = FallbackSettings(models_dir=isolated / "models", scan_system_stores=False,
                                keep_alive=0, n_ctx=512)
    long = [{"role": "user", "content": "word " * 2000}]  # more than the 512-token context
    with FallbackManager(settings) as manager, pytest.raises(AllTargetsFailed) as err:
        manager.chat(long, primary=refused_url(), **GEN)
    attempts = err.value.attempts
    assert [a.source for a in attempts] == ["primary", "local"]
    assert "refused" in attempts[0].error and "n_ctx=512" in attempts[1].error
    assert "no target could answer" in str(err.value)


def test_bad_input_is_refused_before_anything_is_sent(manager, proxy):
    for messages in ([], "hello", [{"role": "wizard", "content": "x"}], [{"role": "user"}]):
        with pytest.raises(InvalidSettings):
            manager.chat(messages, primary=proxy.url)
    for gen in ({"max_tokens": 0}, {"temperature": float("nan")}, {"top_k": 3}):
        with pytest.raises(InvalidSettings):
            manager.chat(ASK, primary=proxy.url, **gen)
    with pytest.raises(InvalidSettings):
        manager.chat(ASK, primary="ftp://example")
    assert proxy.requests == 0


def test_to_openai_is_a_chat_completion(manager):
    data = manager.chat(ASK, **GEN).to_openai()
    assert data["object"] == "chat.completion" and data["model"] == SMOL
    assert data["choices"][0]["message"]["role"] == "assistant"
    assert data["usage"]["completion_tokens"] > 0
    json.dumps(data)


def test_cli_chat_falls_back_and_reports_json(isolated):
    result = run_cli("chat", "Say hi.", "--json", "--max-tokens", "8", cwd=isolated,
                     env={"FALLBACK_PRIMARY_URL": refused_url(), "FALLBACK_KEEP_ALIVE": "0"})
    assert result.returncode == 0, result.stderr
    data = json.loads(result.stdout)
    assert (data["source"], data["fell_back"], data["model"]) == ("local", True, SMOL)
    assert set(data) >= {"text", "model", "source", "fell_back", "attempts", "ttft_s", "latency_s",
                         "tokens"}
    assert not Path(isolated / "fallback_settings.json").exists()  # --model-less chat saves nothing
