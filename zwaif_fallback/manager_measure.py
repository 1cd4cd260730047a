"""What ``FallbackManager`` measures and steers by: benchmarks and their jobs, the ranking
and the switch to the best model, health, monitoring sessions, the history they leave in
SQLite and the Prometheus metrics. A base class of the facade, so that these methods and
their docstrings sit together apart from the settings, the models and the chats; it works
through ``Measuring``, which makes each part on first use.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .bench import BenchmarkResult
    from .bench_jobs import BenchmarkJob
    from .health import HealthReport, Optimization, PerformanceStats
    from .measuring import Measuring
    from .metrics import Metrics
    from .monitor import MonitoringReport, Sample

__all__ = ["STORE_WAIT_S", "MeasureAndSteer"]

#: how long store_problem waits for the history writes queued before it (a locked database:
#: the busy timeout, once)
STORE_WAIT_S = 15.0


class MeasureAndSteer:
    """``FallbackManager``'s benchmarks, optimizer, health and monitoring (see the module)."""

    _measuring: Measuring

    def benchmark(self, name: str, prompt: str | None = None,
                  progress: Callable[[float, str], None] | None = None) -> BenchmarkResult:
        """Measure one model's speed, memory and quality (it loads its own copy), and save it.

        Raises:
            ModelNotFound, InvalidModelFile, IncompatibleModel: before anything is loaded.
        """
        return self._measuring.benchmarks.benchmark(name, prompt, progress)

    def benchmark_all(self, prompt: str | None = None,
                      progress: Callable[[float, str], None] | None = None) -> list[BenchmarkResult]:
        """Benchmark every compatible model; incompatible and invalid ones come back as skipped."""
        return self._measuring.benchmarks.benchmark_all(prompt, progress)

    def start_benchmark(self, name: str | None = None, prompt: str | None = None) -> BenchmarkJob:
        """Run ``benchmark`` (or ``benchmark_all`` when name is None) as a background job
        with progress and cancel. Raises ModelNotFound at once for an unknown name."""
        return self._measuring.benchmarks.start(name, prompt)

    def job(self, job_id: str) -> BenchmarkJob:
        """A background job by id. Raises JobNotFound for an unknown id."""
        return self._measuring.benchmarks.job(job_id)

    def jobs(self) -> list[BenchmarkJob]:
        """The background jobs still kept (running ones, and the last finished), oldest first."""
        return self._measuring.benchmarks.jobs()

    def benchmark_history(self, model: str | None = None, *, limit: int = 100) -> list[dict[str, Any]]:
        """Saved benchmark results, newest first."""
        return self._measuring.telemetry.store.benchmarks(model, limit=limit)

    def failover_history(self, *, since_s: float | None = None) -> list[dict[str, Any]]:
        """Saved attempts of chats that did not go straight through, newest first."""
        return self._measuring.telemetry.store.failovers(since_s=since_s)

    def optimize(self, apply: bool = True) -> Optimization:
        """Rank the local models (quality first, then speed and headroom) and, with ``apply``,
        switch to the best one."""
        return self._measuring.optimizer.optimize(apply)

    def health(self) -> HealthReport:
        """The system's health, 0-100, with its factors and recommendations. Changes nothing."""
        return self._measuring.optimizer.health()

    def performance_stats(self) -> PerformanceStats:
        """The current model's newest benchmark, how many runs are saved, the last hour's
        failover attempts, the background samples' summary, and the health report's advice."""
        return self._measuring.optimizer.performance_stats()

    def start_monitoring(self, duration_s: float, interval_s: float = 1.0) -> None:
        """Sample VRAM, RAM, CPU, GPU use and tokens/s for ``duration_s`` (10-300 s), in the
        background.

        Raises:
            InvalidSettings: a duration or interval out of range.
            Busy: a session is already running.
        """
        self._measuring.telemetry.start_monitoring(duration_s, interval_s)

    def stop_monitoring(self) -> MonitoringReport:
        """End the running session early (or read the finished one): its report.
        Raises NotStarted when no session was started."""
        return self._measuring.telemetry.stop_monitoring()

    def monitoring_report(self) -> MonitoringReport:
        """The live view of the running (or last) session. Raises NotStarted when no
        session was started."""
        return self._measuring.telemetry.monitoring_report()

    def wait_monitoring(self, timeout: float | None = None) -> bool:
        """Block until the monitoring session ends; True when it has."""
        return self._measuring.telemetry.wait_monitoring(timeout)

    def monitor_history(self, *, limit: int = 20) -> list[dict[str, Any]]:
        """Saved monitoring sessions (without their samples), newest first."""
        return self._measuring.telemetry.store.monitor_sessions(limit=limit)

    @property
    def metrics(self) -> Metrics:
        """Prometheus metrics (``metrics.wsgi_app()``, ``metrics.serve(port)``); no prompt text."""
        return self._measuring.telemetry.metrics

    @property
    def background_samples(self) -> list[Sample]:
        """The VRAM sampler's recent samples, oldest first (empty while it is off)."""
        return self._measuring.telemetry.background_samples()

    def background_work(self) -> list[str]:
        """What runs in the background now: "vram_sampler", "auto_optimizer"."""
        return self._measuring.background_work()

    def store_problem(self) -> str | None:
        """Why the history database cannot be used right now (after the queued writes
        have run, or failed), or None."""
        store = self._measuring.telemetry.store
        store.flush(STORE_WAIT_S)
        return store.problem

    def store_notices(self) -> list[str]:
        """What happened to the history database in this process (a file moved aside)."""
        return list(self._measuring.telemetry.store.notices)
