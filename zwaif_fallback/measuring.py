"""The manager's measuring parts, each made the first time something needs it.

Telemetry (the history store, Prometheus metrics, sampling), the benchmark jobs and the
optimizer import sqlite3, prometheus_client, psutil and more: a host that only chats needs
none of them, so a first chat does not pay for them. Two of them also work in the
background when the settings ask for it (``run_background``): the VRAM sampler and the
auto-optimizer.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, TypeVar

if TYPE_CHECKING:
    from .bench_jobs import BenchmarkJobs
    from .breaker import BreakerState
    from .hardware import HardwareProbe
    from .local import LocalModels
    from .model_info import ModelInfo
    from .optimizer import Optimizer
    from .settings import FallbackSettings
    from .telemetry import Telemetry

__all__ = ["Measuring"]

_T = TypeVar("_T")


class Measuring:
    """Telemetry, the benchmark jobs and the optimizer, made on first use. Thread-safe.

    Args:
        local: the local models, which benchmarks measure and the optimizer ranks.
        probe: the hardware probe (samples, the machine now, each process's VRAM).
        settings: the settings now (data_dir, the primary, what runs in the background).
        breakers: each target's circuit breaker.
        host_call: the host's own API call, when it was the latest chat's primary.
        switch: makes a model current by name, and saves it as preferred (the optimizer's).
        clock: seconds, for telemetry.
    """

    def __init__(self, *, local: LocalModels, probe: HardwareProbe,
                 settings: Callable[[], FallbackSettings],
                 breakers: Callable[[], dict[str, BreakerState]], switch: Callable[[str], ModelInfo],
                 host_call: Callable[[], str | None],
                 clock: Callable[[], float] = time.monotonic) -> None:
        self._local = local
        self._probe = probe
        self._settings = settings
        self._breakers = breakers
        self._host_call = host_call
        self._switch = switch
        self._clock = clock
        self._telemetry: Telemetry | None = None
        self._benchmarks: BenchmarkJobs | None = None
        self._optimizer: Optimizer | None = None
        self._lock = threading.Lock()

    @property
    def telemetry(self) -> Telemetry:
        from .telemetry import Telemetry

        return self._built("_telemetry", lambda: Telemetry(
            self._probe, data_dir=lambda: self._settings().data_dir, breakers=self._breakers,
            clock=self._clock))

    @property
    def benchmarks(self) -> BenchmarkJobs:
        from .bench_jobs import BenchmarkJobs

        return self._built("_benchmarks", lambda: BenchmarkJobs(
            local=self._local, vram=self._probe.process_vram_mb, history=lambda: self.telemetry.store))

    @property
    def optimizer(self) -> Optimizer:
        from .optimizer import Optimizer

        return self._built("_optimizer", lambda: Optimizer(
            local=self._local, switch=self._switch, history=lambda: self.telemetry.store,
            status=self._probe.status, breakers=self._breakers,
            primary_url=lambda: self._settings().primary_url,
            primary_api=lambda: self._settings().primary_api, host_call=self._host_call,
            remote_urls=lambda: list(self._settings().remote_urls),
            models_dir=lambda: self._settings().models_dir,
            preferred=lambda: self._settings().preferred_model,
            samples=lambda: self.telemetry.background_samples()))

    def run_background(self) -> None:
        """Start or stop the VRAM sampler and the auto-optimizer as the settings now say."""
        if self._settings().vram_monitoring:
            self.telemetry.start_background()
        elif self._telemetry is not None:
            self._telemetry.stop_background()
        automatic = self._settings().auto_optimize_vram
        if automatic or self._optimizer is not None:
            self.optimizer.run_automatically(automatic)

    def background_work(self) -> list[str]:
        """What runs in the background now: "vram_sampler", "auto_optimizer"."""
        work = []
        if self._telemetry is not None and self._telemetry.sampling:
            work.append("vram_sampler")
        if self._optimizer is not None and self._optimizer.automatic:
            work.append("auto_optimizer")
        return work

    def close(self) -> None:
        """Stop the background work and close what was made (the store among it)."""
        if self._optimizer is not None:
            self._optimizer.close()
        if self._telemetry is not None:
            self._telemetry.close()

    def _built(self, attribute: str, make: Callable[[], _T]) -> _T:
        """The part held in ``attribute``, made by ``make`` the first time."""
        with self._lock:
            if getattr(self, attribute) is None:
                setattr(self, attribute, make())
            built: _T = getattr(self, attribute)
            return built
