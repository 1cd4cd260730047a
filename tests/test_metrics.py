"""Metrics served over real HTTP, scraped with urllib, parsed with prometheus_client's parser."""

from __future__ import annotations

import socket
import subprocess
import sys
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager

import pytest
from prometheus_client.parser import text_string_to_metric_families
from servers import free_port

from zwaif_fallback import GPUInfo, InvalidSettings, SystemStatus
from zwaif_fallback.backends.base import GenerationParams, TargetFailed
from zwaif_fallback.breaker import BreakerState, CircuitBreaker
from zwaif_fallback.chat_run import Target
from zwaif_fallback.failover import FailoverChain
from zwaif_fallback.metrics import Metrics
from zwaif_fallback.results import Attempt, ChatResult, Switch

PRIMARY = "http://127.0.0.1:5000/v1"
REMOTE = "http://10.0.0.7:8080/v1"
LOCAL = "SmolLM2-135M-Instruct.Q4_1"

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


@contextmanager
def served(metrics: Metrics) -> Iterator[str]:
    """Serve ``metrics`` on a free loopback port; yield the URL; stop the server after."""
    port = free_port()
    stop = metrics.serve(port)
    try:
        yield f"http://127.0.0.1:{port}/metrics"
    finally:
        stop()


def ipv6_loopback() -> bool:
    try:
        with socket.socket(socket.AF_INET6) as s:
            s.bind(("::1", 0))
        return True
    except OSError:
        return False


def scrape_text(url: str) -> str:
    with urllib.request.urlopen(url, timeout=5) as response:
        assert response.status == 200
        return response.read().decode()


def scrape(metrics: Metrics) -> Samples:
    with served(metrics) as url:
        text = scrape_text(url)
    return {(s.name, frozenset(s.labels.items())): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def value(samples: Samples, metric: str, /, **labels: str) -> float:
    return samples[(metric, frozenset(labels.items()))]


def attempt(target: str, source: str, ok: bool, tokens: int = 0) -> Attempt:
    return Attempt(target=target, source=source, ok=ok, error=None if ok else "connection refused",
                   latency_s=0.1, tokens=tokens)


def fell_back_chat() -> ChatResult:
    return ChatResult(text="Red, green, blue.", model=REMOTE, source="remote", fell_back=True,
                      attempts=[attempt(PRIMARY, "primary", False), attempt(REMOTE, "remote", True, 8)],
                      ttft_s=0.5, latency_s=2.5, tokens=8)


def direct_chat(tokens: int = 4) -> ChatResult:
    return ChatResult(text="Hi.", model=PRIMARY, source="primary", fell_back=False,
                      attempts=[attempt(PRIMARY, "primary", True, tokens)],
                      ttft_s=0.2, latency_s=1.2, tokens=tokens)


def two_gpus() -> SystemStatus:
    return SystemStatus(
        gpus=[GPUInfo(index=0, name="NVIDIA GeForce RTX 3060", vram_total_mb=12288, vram_used_mb=4096,
                      vram_free_mb=8192),
              GPUInfo(index=1, name="NVIDIA GeForce GTX 1650", vram_total_mb=4096, vram_used_mb=3584,
                      vram_free_mb=512)],
        vram_source="nvml", ram_total_mb=32768, ram_available_mb=20480, cpu_count=8,
        cpu_percent=37.5, platform="Linux")


def test_requests_and_failures_are_counted_per_attempt_and_target():
    metrics = Metrics()
    metrics.record_chat(fell_back_chat())
    metrics.record_chat(direct_chat())
    samples = scrape(metrics)
    assert value(samples, "zwaif_requests_total", target=PRIMARY, source="primary") == 2
    assert value(samples, "zwaif_requests_total", target=REMOTE, source="remote") == 1
    assert value(samples, "zwaif_failures_total", target=PRIMARY, source="primary") == 1
    assert ("zwaif_failures_total", frozenset({"target": REMOTE, "source": "remote"}.items())) \
        not in samples


def test_a_chat_no_target_answered_counts_its_failures_and_itself():
    metrics = Metrics()
    skipped = Attempt(target=REMOTE, source="remote", ok=False, latency_s=0.0, tries=0,
                      error="circuit open: skipped (retry in 25 s)")
    metrics.record_failed_chat([attempt(PRIMARY, "primary", False, 3), skipped])
    samples = scrape(metrics)
    assert value(samples, "zwaif_unanswered_chats_total") == 1
    assert value(samples, "zwaif_failures_total", target=PRIMARY, source="primary") == 1
    assert value(samples, "zwaif_generated_tokens_total", source="primary") == 3
    assert value(samples, "zwaif_breaker_skips_total", target=REMOTE, source="remote") == 1
    assert ("zwaif_failures_total", frozenset({"target": REMOTE, "source": "remote"}.items())) \
        not in samples


def test_a_target_skipped_by_its_open_breaker_counts_a_skip_not_a_request():
    skipped = Attempt(target=PRIMARY, source="primary", ok=False, latency_s=0.0, tries=0,
                      error="circuit open: skipped (retry in 25 s)")
    chat = ChatResult(text="Hi.", model=REMOTE, source="remote", fell_back=True,
                      attempts=[skipped, attempt(REMOTE, "remote", True, 2)],
                      ttft_s=0.1, latency_s=0.3, tokens=2)
    metrics = Metrics()
    metrics.record_chat(chat)
    samples = scrape(metrics)
    assert value(samples, "zwaif_breaker_skips_total", target=PRIMARY, source="primary") == 1
    for name in ("zwaif_requests_total", "zwaif_failures_total"):
        assert (name, frozenset({"target": PRIMARY, "source": "primary"}.items())) not in samples
    assert value(samples, "zwaif_requests_total", target=REMOTE, source="remote") == 1


def test_a_fallback_counts_one_failover_from_the_first_failed_target():
    metrics = Metrics()
    metrics.record_chat(fell_back_chat())
    metrics.record_chat(direct_chat())
    samples = scrape(metrics)
    assert value(samples, "zwaif_failovers_total", from_target=PRIMARY) == 1
    assert sum(v for (name, _), v in samples.items() if name == "zwaif_failovers_total") == 1


def test_generated_tokens_are_counted_by_source():
    metrics = Metrics()
    metrics.record_chat(fell_back_chat())
    metrics.record_chat(direct_chat(tokens=4))
    samples = scrape(metrics)
    assert value(samples, "zwaif_generated_tokens_total", source="remote") == 8
    assert value(samples, "zwaif_generated_tokens_total", source="primary") == 4


def test_mid_stream_switches_are_counted_and_tokens_split_by_the_source_that_made_them():
    result = ChatResult(
        text="Red, green and blue.", model=LOCAL, source="local", fell_back=True,
        attempts=[attempt(PRIMARY, "primary", False, tokens=3), attempt(LOCAL, "local", True, tokens=5)],
        switches=[Switch(at_char=10, from_target=PRIMARY, to_target=LOCAL)],
        ttft_s=0.1, latency_s=1.1, tokens=8)
    metrics = Metrics()
    metrics.record_chat(result)
    samples = scrape(metrics)
    assert value(samples, "zwaif_switches_total") == 1
    assert value(samples, "zwaif_generated_tokens_total", source="primary") == 3
    assert value(samples, "zwaif_generated_tokens_total", source="local") == 5


def test_tokens_per_second_comes_from_the_last_chat_then_from_the_live_rate():
    metrics = Metrics()
    metrics.record_chat(fell_back_chat())  # 8 tokens in 2.5 - 0.5 s
    assert value(scrape(metrics), "zwaif_generation_tokens_per_second") == pytest.approx(4.0)
    metrics.set_tokens_per_s(42.5)
    assert value(scrape(metrics), "zwaif_generation_tokens_per_second") == 42.5


def test_a_chat_without_a_first_token_time_leaves_tokens_per_second_alone():
    metrics = Metrics()
    metrics.set_tokens_per_s(12.0)
    metrics.record_chat(direct_chat().model_copy(update={"ttft_s": None}))
    assert value(scrape(metrics), "zwaif_generation_tokens_per_second") == 12.0


def test_a_negative_tokens_per_second_is_refused():
    with pytest.raises(InvalidSettings, match="finite number >= 0"):
        Metrics().set_tokens_per_s(-1.0)


def test_vram_of_each_gpu_ram_and_cpu_are_read_at_scrape_time():
    metrics = Metrics(status=two_gpus)
    samples = scrape(metrics)
    rtx = {"gpu": "0", "name": "NVIDIA GeForce RTX 3060"}
    gtx = {"gpu": "1", "name": "NVIDIA GeForce GTX 1650"}
    assert value(samples, "zwaif_vram_total_mb", **rtx) == 12288
    assert value(samples, "zwaif_vram_used_mb", **rtx) == 4096
    assert value(samples, "zwaif_vram_free_mb", **rtx) == 8192
    assert value(samples, "zwaif_vram_total_mb", **gtx) == 4096
    assert value(samples, "zwaif_vram_used_mb", **gtx) == 3584
    assert value(samples, "zwaif_vram_free_mb", **gtx) == 512
    assert value(samples, "zwaif_ram_total_mb") == 32768
    assert value(samples, "zwaif_ram_available_mb") == 20480
    assert value(samples, "zwaif_cpu_percent") == 37.5


def test_each_scrape_sees_the_status_of_that_moment():
    status = two_gpus()
    metrics = Metrics(status=lambda: status)
    with served(metrics) as url:
        assert "zwaif_ram_available_mb 20480.0" in scrape_text(url)
        status = status.model_copy(update={"ram_available_mb": 1024})
        assert "zwaif_ram_available_mb 1024.0" in scrape_text(url)


def test_breaker_states_and_failures_are_exported_per_target():
    breaker = CircuitBreaker(failure_threshold=2)
    breaker.record_failure()
    breaker.record_failure()  # opens it
    metrics = Metrics(breakers=lambda: {PRIMARY: breaker.snapshot(),
                                        REMOTE: BreakerState(state="half_open", failures=3),
                                        LOCAL: BreakerState(state="closed", failures=0)})
    samples = scrape(metrics)
    assert value(samples, "zwaif_breaker_state", target=PRIMARY) == 2
    assert value(samples, "zwaif_breaker_failures", target=PRIMARY) == 2
    assert value(samples, "zwaif_breaker_state", target=REMOTE) == 1
    assert value(samples, "zwaif_breaker_failures", target=REMOTE) == 3
    assert value(samples, "zwaif_breaker_state", target=LOCAL) == 0


def test_breaker_states_as_plain_dicts_are_accepted():
    # FallbackManager.breaker_states() returns model_dump()s, so it can be passed as is.
    metrics = Metrics(breakers=lambda: {PRIMARY: {"state": "open", "failures": 4, "retry_in_s": 9.0}})
    assert value(scrape(metrics), "zwaif_breaker_state", target=PRIMARY) == 2


def test_prompt_and_answer_text_never_reach_the_scrape():
    messages = [{"role": "system", "content": "SECRET-SYSTEM-PERSONA"},
                {"role": "user", "content": "SECRET-USER-QUESTION"}]

    def primary(messages, params, *, prefix="", **_):
        raise TargetFailed(f"server echoed {messages[-1]['content']}")

    def local(messages, params, *, prefix="", **_):
        yield "SECRET-PROMPT-TEXT"

    results: list[ChatResult] = []
    chain = FailoverChain(timeout_s=5, max_retries=1)
    pieces = list(chain.stream(messages, GenerationParams(), [
        Target(name=PRIMARY, source="primary", stream=primary, guarded=False),
        Target(name=LOCAL, source="local", stream=local, guarded=False),
    ], results.append))
    assert pieces == ["SECRET-PROMPT-TEXT"] and results[0].fell_back
    assert "SECRET-USER-QUESTION" in (results[0].attempts[0].error or "")
    metrics = Metrics()
    metrics.record_chat(results[0])
    with served(metrics) as url:
        text = scrape_text(url)
    assert PRIMARY in text and LOCAL in text
    assert "SECRET" not in text


def test_a_raising_callable_drops_only_its_own_metrics(caplog):
    def broken_probe() -> SystemStatus:
        raise RuntimeError("NVML driver went away")

    metrics = Metrics(status=broken_probe,
                      breakers=lambda: {PRIMARY: BreakerState(state="open", failures=5)})
    metrics.record_chat(direct_chat())
    samples = scrape(metrics)
    assert value(samples, "zwaif_breaker_state", target=PRIMARY) == 2
    assert value(samples, "zwaif_requests_total", target=PRIMARY, source="primary") == 1
    assert not any(name.startswith(("zwaif_vram", "zwaif_ram")) for name, _ in samples)
    assert "NVML driver went away" in caplog.text


def test_serve_refuses_a_non_loopback_host_without_allow_remote():
    metrics = Metrics()
    for host in ("0.0.0.0", "::", "192.168.1.20", "example.com"):
        with pytest.raises(InvalidSettings, match="allow_remote=True"):
            metrics.serve(free_port(), host)


@pytest.mark.parametrize("host", ["localhost", "::1"])
def test_serve_accepts_loopback_names(host):
    if host == "::1" and not ipv6_loopback():
        pytest.skip("this machine has no IPv6 loopback")
    port = free_port()
    stop = Metrics().serve(port, host)
    try:
        url_host = f"[{host}]" if ":" in host else host
        assert "zwaif_requests" in scrape_text(f"http://{url_host}:{port}/metrics")
    finally:
        stop()


def test_stop_closes_the_port_and_may_be_called_twice():
    metrics = Metrics()
    port = free_port()
    stop = metrics.serve(port)
    assert "zwaif_requests" in scrape_text(f"http://127.0.0.1:{port}/metrics")
    stop()
    stop()
    with pytest.raises(urllib.error.URLError):
        urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5)


def test_two_instances_keep_separate_registries():
    first, second = Metrics(), Metrics()
    first.record_chat(direct_chat())
    assert value(scrape(first), "zwaif_requests_total", target=PRIMARY, source="primary") == 1
    assert ("zwaif_requests_total", frozenset({"target": PRIMARY, "source": "primary"}.items())) \
        not in scrape(second)


def test_render_and_wsgi_app_give_the_text_format():
    metrics = Metrics(status=two_gpus)
    body, content_type = metrics.render()
    assert content_type.startswith("text/plain") and b"zwaif_ram_total_mb 32768.0" in body
    seen: list[str] = []
    out = b"".join(metrics.wsgi_app()({"REQUEST_METHOD": "GET", "PATH_INFO": "/metrics",
                                       "QUERY_STRING": ""}, lambda status, headers: seen.append(status)))
    assert seen == ["200 OK"] and b"zwaif_vram_free_mb" in out


def test_importing_the_module_does_not_import_prometheus_client():
    code = "import zwaif_fallback.metrics, sys; print('prometheus_client' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
