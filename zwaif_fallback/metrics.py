"""Prometheus metrics: what the fallback did, and what the machine has right now.

``Metrics`` owns its own ``CollectorRegistry`` (never prometheus_client's global
one), so two managers in one process, or a host with metrics of its own, never
collide. Two kinds of numbers:

* **Read at scrape time** from the callables given to the constructor: VRAM per
  GPU, RAM, CPU and each circuit breaker. Nothing is sampled in between, so a
  scrape always sees the present; a callable that raises only drops its metrics
  from that scrape.
* **Counted** by ``record_chat`` and ``record_failed_chat``: requests, failures, breaker
  skips, failovers, mid-stream switches, chats no target could answer and generated
  tokens, plus the generation speed gauge; by ``record_embeddings``, the embedding
  requests serve passed on.

Labels hold only target names (URLs, model names), sources and GPU names and
indices, never prompt or answer text: a scrape endpoint is often less guarded
than the chat itself, and text in labels would also make every series unique.
prometheus_client is imported inside the methods, so importing zwaif_fallback stays cheap.
"""

from __future__ import annotations

import logging
import math
import threading
from collections.abc import Callable, Iterator, Sequence
from typing import TYPE_CHECKING, Any

from .breaker import BreakerState
from .errors import InvalidSettings, PortUnavailable
from .net import is_loopback

if TYPE_CHECKING:
    from prometheus_client.metrics_core import Metric
    from prometheus_client.registry import Collector as _CollectorBase

    from .hardware import SystemStatus
    from .results import Attempt, ChatResult
else:
    _CollectorBase = object

__all__ = ["Metrics"]

log = logging.getLogger(__name__)

#: ``zwaif_breaker_state`` values: a higher number is a less available target.
BREAKER_STATE_VALUES = {"closed": 0, "half_open": 1, "open": 2}


class _ScrapeCollector(_CollectorBase):
    """Gauges built from the callables at each scrape."""

    def __init__(self, status: Callable[[], SystemStatus] | None,
                 breakers: Callable[[], dict[str, BreakerState]] | None) -> None:
        self._status = status
        self._breakers = breakers

    def describe(self) -> Iterator[Metric]:
        # Lets the registry check for name clashes without calling the probes.
        yield from self._status_families()
        yield from self._breaker_families()

    def collect(self) -> Iterator[Metric]:
        if self._status is not None:
            try:
                yield from self._status_families(self._status())
            except Exception as exc:  # one broken probe must not fail the whole scrape
                log.warning("metrics: system status skipped in this scrape: %s: %s",
                            type(exc).__name__, exc)
        if self._breakers is not None:
            try:
                yield from self._breaker_families(self._breakers())
            except Exception as exc:
                log.warning("metrics: breaker states skipped in this scrape: %s: %s",
                            type(exc).__name__, exc)

    @staticmethod
    def _status_families(status: SystemStatus | None = None) -> list[Metric]:
        from prometheus_client.core import GaugeMetricFamily

        gpu_labels = ["gpu", "name"]
        vram = {
            key: GaugeMetricFamily(f"zwaif_{key}", f"{what} VRAM of the GPU, in MiB", labels=gpu_labels)
            for key, what in (("vram_total_mb", "Total"), ("vram_used_mb", "Used"),
                              ("vram_free_mb", "Free"))
        }
        ram_total = GaugeMetricFamily("zwaif_ram_total_mb", "Total system RAM, in MiB")
        ram_available = GaugeMetricFamily("zwaif_ram_available_mb", "Available system RAM, in MiB")
        cpu = GaugeMetricFamily("zwaif_cpu_percent", "System-wide CPU use, in percent")
        if status is not None:
            for gpu in status.gpus:
                labels = [str(gpu.index), gpu.name]
                vram["vram_total_mb"].add_metric(labels, gpu.vram_total_mb)
                vram["vram_used_mb"].add_metric(labels, gpu.vram_used_mb)
                vram["vram_free_mb"].add_metric(labels, gpu.vram_free_mb)
            ram_total.add_metric([], status.ram_total_mb)
            ram_available.add_metric([], status.ram_available_mb)
            cpu.add_metric([], status.cpu_percent)
        return [*vram.values(), ram_total, ram_available, cpu]

    @staticmethod
    def _breaker_families(states: dict[str, BreakerState] | None = None) -> list[Metric]:
        from prometheus_client.core import GaugeMetricFamily

        state = GaugeMetricFamily("zwaif_breaker_state",
                                  "Circuit breaker of the target: 0 closed, 1 half-open, 2 open",
                                  labels=["target"])
        failures = GaugeMetricFamily("zwaif_breaker_failures",
                                     "Failures the breaker of the target has counted", labels=["target"])
        for target, value in (states or {}).items():
            # FallbackManager.breaker_states() hands out plain dicts; accept those too.
            snap = value if isinstance(value, BreakerState) else BreakerState.model_validate(value)
            state.add_metric([target], BREAKER_STATE_VALUES[snap.state])
            failures.add_metric([target], snap.failures)
        return [state, failures]


class Metrics:
    """The fallback's Prometheus metrics, in a registry of their own.

    Labels carry target names (URLs, model names), sources ("primary", "remote",
    "local") and GPU indices and names only: never prompt or answer text.

    Args:
        status: called at each scrape for the VRAM, RAM and CPU gauges
            (``HardwareProbe.status`` or ``FallbackManager.system_status``).
        breakers: called at each scrape for the breaker gauges: target name -> state.
    """

    def __init__(self, *, status: Callable[[], SystemStatus] | None = None,
                 breakers: Callable[[], dict[str, BreakerState]] | None = None) -> None:
        from prometheus_client import CollectorRegistry, Counter, Gauge

        self.registry = CollectorRegistry()
        self.registry.register(_ScrapeCollector(status, breakers))
        by_target = ["target", "source"]
        self._requests = Counter("zwaif_requests", "Attempts on a failover target",
                                 by_target, registry=self.registry)
        self._failures = Counter("zwaif_failures", "Failed attempts on a failover target",
                                 by_target, registry=self.registry)
        self._skips = Counter("zwaif_breaker_skips", "Attempts not sent because the target's "
                              "circuit breaker was open", by_target, registry=self.registry)
        self._failovers = Counter("zwaif_failovers", "Chats answered after a target failed, "
                                  "by the first target that failed", ["from_target"], registry=self.registry)
        self._switches = Counter("zwaif_switches", "Streamed answers continued by another target",
                                 registry=self.registry)
        self._unanswered = Counter("zwaif_unanswered_chats", "Chats that no target could answer "
                                   "(the host got an error)", registry=self.registry)
        self._cancelled = Counter("zwaif_cancelled", "Chats whose reader went away before the answer "
                                  "ended (a client disconnected): not failures", registry=self.registry)
        self._tokens = Counter("zwaif_generated_tokens", "Tokens generated, by source of the target",
                               ["source"], registry=self.registry)
        self._embeddings = Counter("zwaif_embeddings", "Embedding requests passed on, by the server "
                                   "asked and the status the host got (serve's own 503 when it gave no "
                                   "answer)", ["target", "code"], registry=self.registry)
        self._tokens_per_s = Gauge("zwaif_generation_tokens_per_second",
                                   "Generation speed: the live rate, or that of the last chat",
                                   registry=self.registry)

    def record_chat(self, result: ChatResult) -> None:
        """Count one finished chat: its attempts, failures, failover, switches and tokens.

        Args:
            result: the chat's result, as ``FallbackManager.chat`` returns it.
        """
        counted = self._count_attempts(result.attempts)
        # Tokens no attempt accounts for (a result built outside the chain) go to the answering source.
        if result.tokens > counted:
            self._tokens.labels(result.source).inc(result.tokens - counted)
        if result.fell_back:
            failed = next((a.target for a in result.attempts if not a.ok), None)
            self._failovers.labels(failed or "unknown").inc()
        if result.switches:
            self._switches.inc(len(result.switches))
        if result.ttft_s is not None and result.tokens > 0:
            generating_s = result.latency_s - result.ttft_s
            if generating_s > 0:
                self._tokens_per_s.set(result.tokens / generating_s)

    def record_failed_chat(self, attempts: Sequence[Attempt]) -> None:
        """Count one chat that no target could answer: its attempts, each a failure."""
        self._count_attempts(attempts)
        self._unanswered.inc()

    def _count_attempts(self, attempts: Sequence[Attempt]) -> int:
        """Count requests, failures, breaker skips and tokens; the tokens counted."""
        counted = 0
        for attempt in attempts:
            if attempt.tries == 0:  # skipped by an open breaker: nothing was sent, nothing failed
                self._skips.labels(attempt.target, attempt.source).inc()
                continue
            self._requests.labels(attempt.target, attempt.source).inc()
            if not attempt.ok:
                self._failures.labels(attempt.target, attempt.source).inc()
            if attempt.tokens:
                self._tokens.labels(attempt.source).inc(attempt.tokens)
                counted += attempt.tokens
        return counted

    def record_embeddings(self, target: str, code: int) -> None:
        """Count one embedding request: the server it went to ("" when none was set) and the
        HTTP status of the answer the host got."""
        self._embeddings.labels(target or "none", str(code)).inc()

    def record_cancelled(self) -> None:
        """Count one chat given up by its reader (it counts as no failure)."""
        self._cancelled.inc()

    def set_tokens_per_s(self, value: float) -> None:
        """Set the generation speed gauge to the live rate of the generations in flight.

        Raises:
            InvalidSettings: ``value`` is negative or not a finite number.
        """
        if not math.isfinite(value) or value < 0:
            raise InvalidSettings(f"tokens per second must be a finite number >= 0, got {value!r}")
        self._tokens_per_s.set(value)

    def render(self) -> tuple[bytes, str]:
        """The metrics in Prometheus text format: ``(body, content_type)``."""
        from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

        return generate_latest(self.registry), CONTENT_TYPE_LATEST

    def wsgi_app(self) -> Callable[..., Any]:
        """A WSGI app serving the metrics, to mount in a host's own web server."""
        from prometheus_client import make_wsgi_app

        return make_wsgi_app(self.registry)

    def serve(self, port: int, host: str = "127.0.0.1", *, allow_remote: bool = False) -> Callable[[], None]:
        """Serve the metrics over HTTP in a daemon thread.

        Args:
            port: the TCP port to listen on.
            host: the address to listen on; loopback unless ``allow_remote``.
            allow_remote: permit a non-loopback ``host`` (the metrics name your
                servers and models, and the endpoint has no authentication).

        Returns:
            A function that stops the server; calling it again does nothing.

        Raises:
            InvalidSettings: ``host`` is not loopback and ``allow_remote`` is false.
            PortUnavailable: the address cannot be listened on (the port is in use).
        """
        host = host.strip()
        if not allow_remote and not is_loopback(host):
            raise InvalidSettings(
                f"metrics host {host!r} is not loopback: use 127.0.0.1, ::1 or localhost, "
                "or pass allow_remote=True to expose the metrics on the network")
        from prometheus_client import start_http_server

        try:
            server, thread = start_http_server(port, addr=host, registry=self.registry)
        except OSError as exc:
            raise PortUnavailable(f"cannot serve metrics on {host}:{port}: {exc}; "
                                  "pick another port") from exc
        lock = threading.Lock()
        stopped = False

        def stop() -> None:
            nonlocal stopped
            with lock:
                if stopped:
                    return
                stopped = True
            server.shutdown()
            server.server_close()
            thread.join(timeout=5.0)

        return stop
