"""What the manager records and samples: history, metrics, live rates, monitoring.

Everything here sits beside the chat path and must never break it: recording
swallows and logs its errors, and the history store reports its own problems.
"""

from __future__ import annotations

import collections
import itertools
import logging
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from .breaker import BreakerState
from .errors import Busy, NotStarted
from .hardware import HardwareProbe
from .monitor import BackgroundSampler, MonitoringReport, MonitorSession, Sample
from .results import Attempt, ChatResult
from .store import Store

if TYPE_CHECKING:
    from .metrics import Metrics

__all__ = ["Telemetry", "TokenMeter"]

log = logging.getLogger(__name__)


class TokenMeter:
    """Pieces streamed per second over a short window: the rate of generations in flight."""

    def __init__(self, *, window_s: float = 2.0, clock: Callable[[], float] = time.monotonic) -> None:
        self._window_s = window_s
        self._clock = clock
        self._times: collections.deque[float] = collections.deque()
        self._lock = threading.Lock()
        self.used = False  # whether this process has streamed any piece: a rate means something


    def add(self, count: int = 1) -> None:
        """Count pieces that came now. Every stream calls this per piece (or per network
        read's pieces): the append needs no lock (a deque's append is atomic), and the trim,
        which keeps the deque to the window, is left to whoever holds the lock already."""
        now = self._clock()
        self.used = True
        if count == 1:
            self._times.append(now)
        else:
            self._times.extend(itertools.repeat(now, count))
        if self._lock.acquire(blocking=False):
            try:
                self._trim(now)
            finally:
                self._lock.release()

    def rate(self) -> float:
        now = self._clock()
        with self._lock:
            self._trim(now)
            return len(self._times) / self._window_s

    def _trim(self, now: float) -> None:
        while self._times and now - self._times[0] > self._window_s:
            self._times.popleft()


class Telemetry:
    """Owns the history store, the Prometheus metrics, the token meter and the samplers."""

    def __init__(self, probe: HardwareProbe, *, data_dir: Callable[[], Path],
                 breakers: Callable[[], dict[str, BreakerState]],
                 clock: Callable[[], float] = time.monotonic) -> None:
        self._probe = probe
        self._data_dir = data_dir
        self._breakers = breakers
        self._clock = clock
        self.meter = TokenMeter(clock=clock)
        self._lock = threading.Lock()
        self._store: Store | None = None
        self._metrics: Metrics | None = None
        self._sampler: BackgroundSampler | None = None
        self._session: MonitorSession | None = None

    # -- history ---------------------------------------------------------------

    @property
    def store(self) -> Store:
        with self._lock:
            path = Path(self._data_dir())
            if self._store is None or self._store.path.parent != path:
                if self._store is not None:
                    self._store.close()
                self._store = Store(path)
            return self._store

    @property
    def metrics(self) -> Metrics:
        """The Prometheus metrics (built on first use: prometheus_client loads then)."""
        with self._lock:
            if self._metrics is None:
                from .metrics import Metrics

                self._metrics = Metrics(status=self._probe.status, breakers=self._breakers)
            return self._metrics

    def record_piece(self, count: int = 1) -> None:
        """Pieces of an answer were streamed (the live tokens/s)."""
        self.meter.add(count)

    def record_chat(self, result: ChatResult) -> None:
        self._record(result.attempts, result)

    def record_cancelled(self) -> None:
        if self._metrics is not None:
            self._metrics.record_cancelled()

    def record_failure(self, attempts: list[Attempt]) -> None:
        self._record(attempts, None)

    def _record(self, attempts: list[Attempt], result: ChatResult | None) -> None:
        try:
            # every chat is counted (a failure rate needs the successes); only those that
            # did not go straight through are kept as failover events. Queued: no wait here.
            straight = len(attempts) == 1 and attempts[0].ok
            self.store.add_attempts([a.model_dump() for a in attempts], events=not straight)
            if self._metrics is not None:
                if result is not None:
                    self._metrics.record_chat(result)
                else:
                    self._metrics.record_failed_chat(attempts)
        except Exception as exc:  # history and metrics must never break an answer
            log.warning("could not record a chat: %s", exc)

    # -- sampling ----------------------------------------------------------------

    def sample(self) -> dict[str, float | None]:
        """One monitoring sample: VRAM, RAM, CPU, GPU utilisation, tokens/s in flight (None
        in a process that has generated nothing: a CLI ``monitor`` cannot see serve's)."""
        status = self._probe.status()
        utilisation = [g.utilization_pct for g in status.gpus if g.utilization_pct is not None]
        rate = self.meter.rate() if self.meter.used else None
        if self._metrics is not None and rate is not None:
            self._metrics.set_tokens_per_s(rate)
        return {
            "vram_used_mb": float(sum(g.vram_used_mb for g in status.gpus)) if status.gpus else None,
            "ram_used_mb": float(status.ram_total_mb - status.ram_available_mb),
            "cpu_percent": status.cpu_percent,
            "gpu_utilization_pct": sum(utilisation) / len(utilisation) if utilisation else None,
            "tokens_per_s": rate,
        }

    def start_background(self, interval_s: float = 5.0) -> None:
        with self._lock:
            if self._sampler is None:
                self._sampler = BackgroundSampler(self.sample, interval_s=interval_s)
                self._sampler.start()

    def stop_background(self) -> None:
        with self._lock:
            sampler, self._sampler = self._sampler, None
        if sampler is not None:
            sampler.stop()

    @property
    def sampling(self) -> bool:
        """Whether the background sampler runs."""
        return self._sampler is not None

    def background_samples(self) -> list[Sample]:
        sampler = self._sampler
        return sampler.history() if sampler is not None else []

    def start_monitoring(self, duration_s: float, interval_s: float) -> None:
        with self._lock:
            if self._session is not None and self._session.running:
                raise Busy("a monitoring session is already running; stop it first")
            session = MonitorSession(self.sample, duration_s=duration_s, interval_s=interval_s,
                                     on_finish=self._save_session)
            session.start()
            self._session = session

    def _save_session(self, report: MonitoringReport) -> None:
        try:
            self.store.add_monitor_session(report.model_dump() | {"started": report.started_at})
        except Exception as exc:
            log.warning("could not save a monitoring session: %s", exc)

    def stop_monitoring(self) -> MonitoringReport:
        with self._lock:
            session = self._session
        if session is None:
            raise NotStarted("no monitoring session was started")
        return session.stop()  # waits for the session to end: the report is its final one

    def monitoring_report(self) -> MonitoringReport:
        with self._lock:
            session = self._session
        if session is None:
            raise NotStarted("no monitoring session was started")
        return session.report()

    def wait_monitoring(self, timeout: float | None = None) -> bool:
        with self._lock:
            session = self._session
        return session.wait(timeout) if session is not None else True

    def close(self) -> None:
        with self._lock:
            sampler, session, store = self._sampler, self._session, self._store
            self._sampler = None
        if session is not None and session.running:
            session.stop()
        if sampler is not None:
            sampler.stop()
        if store is not None:
            store.close()
