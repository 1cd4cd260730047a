"""Sampling over time: VRAM, RAM, CPU, GPU load and the token rate.

``MonitorSession`` is a bounded session (10-300 s) that a person starts from the UI or
the CLI; ``BackgroundSampler`` is always on and keeps the last samples for health and
the UI. Both call a ``sample()`` function (the process edge: the manager builds one over
``HardwareProbe``) on a daemon thread, with ticks due at ``start + k * interval`` so
that slow samples do not add up into drift. ``clock`` and ``wait`` are injectable:
a fake clock plus a fake wait drive the loop in tests without sleeping.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from pydantic import ConfigDict, Field

from ._model import Model
from .errors import InvalidSettings

__all__ = ["DURATION_RANGE_S", "INTERVAL_RANGE_S", "BackgroundSampler", "MetricSummary", "MonitorSession",
           "MonitoringReport", "Sample", "saved_session_heading", "session_problems", "summarize"]

log = logging.getLogger(__name__)

SampleFn = Callable[[], Mapping[str, float | None]]
Wait = Callable[[float], bool]  # wait(timeout_s) blocks up to timeout_s seconds; True: "stop now"

METRICS = ("vram_used_mb", "ram_used_mb", "cpu_percent", "gpu_utilization_pct", "tokens_per_s")
_EPSILON = 1e-9  # 0.3 / 0.1 is 2.9999999999999996 in floats; a tick due then is still due


class Sample(Model):
    """The machine at ``t_s`` seconds after the sampler started. Sizes in MiB."""

    model_config = ConfigDict(frozen=True, allow_inf_nan=False)

    t_s: float
    vram_used_mb: float | None = Field(None, description="None without a GPU")
    ram_used_mb: float
    cpu_percent: float
    gpu_utilization_pct: float | None = Field(None, description="None where the GPU does not report it")
    tokens_per_s: float | None = Field(
        None, description="the rate of this process's generations in flight; 0 when idle, None in a "
        "process that has generated nothing (a CLI monitor beside serve: serve's rate is on its /metrics)")


class MetricSummary(Model):
    min: float
    mean: float
    max: float
    p95: float = Field(description="nearest-rank 95th percentile")


class MonitoringReport(Model):
    """A session as it stands: live while ``running``, final afterwards."""

    duration_s: float
    interval_s: float
    stopped_early: bool = False
    running: bool = False
    started_at: float | None = Field(None, description="Unix time of start(); None before it")
    samples: list[Sample] = Field(default_factory=list)
    summary: dict[str, MetricSummary] = Field(default_factory=dict)


def summarize(samples: Iterable[Sample]) -> dict[str, MetricSummary]:
    """Min, mean, max and p95 of each metric, from samples in any order.

    Returns:
        metric name -> summary, in ``METRICS`` order; metrics None in every sample (no GPU) are left out.
    """
    samples = list(samples)
    summary: dict[str, MetricSummary] = {}
    for name in METRICS:
        values = sorted(v for s in samples if (v := getattr(s, name)) is not None)
        if values:
            rank = -(-95 * len(values) // 100)  # ceil(0.95 n) in integers: nearest rank, 1-based
            summary[name] = MetricSummary(min=values[0], mean=math.fsum(values) / len(values),
                                          max=values[-1], p95=values[rank - 1])
    return summary


def saved_session_heading(session: Mapping[str, Any]) -> tuple[str, str]:
    """A saved session's (``monitor_history()``'s) start in local time and how it ended, as
    the CLI and the Health tab list them."""
    return (time.strftime("%Y-%m-%d %H:%M", time.localtime(session["started"])),
            "stopped early" if session["stopped_early"] else "finished")


class _Sampling:
    """What both samplers share: the sample function, the clock, and the samples under a lock."""

    def __init__(self, sample: SampleFn, clock: Callable[[], float],
                 samples: list[Sample] | deque[Sample]) -> None:
        self._sample = sample
        self._clock = clock
        self._lock = threading.Lock()
        self._samples = samples
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def _halt(self, timeout_s: float | None) -> None:
        self._stop.set()
        thread = self._thread
        if thread is not None and thread is not threading.current_thread():  # on_finish may stop
            if not self._join(thread, timeout_s):
                log.warning("a monitor sample still runs after %s s; it ends when that returns", timeout_s)

    def _join(self, thread: threading.Thread, timeout_s: float | None) -> bool:
        """Wait up to ``timeout_s`` for the sampling thread to end; True once it has."""
        thread.join(timeout_s)
        return not thread.is_alive()

    def _tick(self, t_s: float) -> None:
        try:  # a failing probe costs a tick, never the sampler
            sample = Sample.model_validate({**self._sample(), "t_s": round(t_s, 3)})
        except Exception as exc:
            log.warning("monitor sample at t=%.3f s skipped: %s", t_s, exc)
            return
        with self._lock:
            self._samples.append(sample)


def _run_schedule(tick: Callable[[float], None], *, clock: Callable[[], float], wait: Wait,
                  stop: threading.Event, start: float, interval_s: float, ticks: int | None) -> bool:
    """Call ``tick(now)`` when each tick is due; True when all ``ticks`` ran, False when stopped."""
    k = 0
    while ticks is None or k < ticks:
        due = start + k * interval_s
        # A loop, not one wait: a wait may return early, and a fake clock may not have moved.
        while (remaining := due - clock()) > 0:
            if wait(remaining) or stop.is_set():
                return False
        if stop.is_set():
            return False
        tick(clock())
        # A tick a whole interval late (slow probe, suspended laptop) is skipped, not taken in a burst.
        # The last tick is still taken, so that a late session ends with a sample near its end.
        late = math.floor((clock() - start) / interval_s + _EPSILON)
        k = max(k + 1, late if ticks is None else min(late, ticks - 1))
    return True


#: the range of a MonitorSession's duration_s and interval_s, seconds
DURATION_RANGE_S = (10, 300)
INTERVAL_RANGE_S = (0.1, 60)


def _check(name: str, value: float, low: float, high: float) -> str | None:
    if isinstance(value, bool) or not isinstance(value, int | float) or not low <= value <= high:
        shown = f"{value:g}" if isinstance(value, float) else repr(value)
        return f"{name} must be between {low:g} and {high:g} seconds; got {shown}"
    return None


def session_problems(duration_s: float, interval_s: float, *,
                     names: tuple[str, str] = ("duration_s", "interval_s")) -> list[str]:
    """What is wrong with a session of ``duration_s`` sampled every ``interval_s``.

    Args:
        names: what to call the two values in the messages: the CLI passes its options'
            names (``--duration``, ``--interval``), since a person typed those.

    Returns:
        one message per problem, each naming its value and the range; empty when both are fine.
    """
    duration_name, interval_name = names
    problems = [p for p in (_check(duration_name, duration_s, *DURATION_RANGE_S),
                            _check(interval_name, interval_s, *INTERVAL_RANGE_S)) if p]
    if not problems and interval_s > duration_s:
        problems.append(f"{interval_name} ({interval_s:g} s) must not exceed "
                        f"{duration_name} ({duration_s:g} s)")
    return problems


class MonitorSession(_Sampling):
    """One bounded monitoring session on a daemon thread. Thread-safe.

    Args:
        sample: returns the metrics of ``Sample`` (all but ``t_s``) as a dict; it may raise.
        duration_s: 10-300 seconds.
        interval_s: 0.1-60 seconds, not longer than ``duration_s``.
        clock: monotonic seconds; schedules the ticks and gives ``t_s``.
        wall: Unix time, read once for ``started_at``.
        wait: ``wait(timeout_s) -> bool`` blocks until the next tick, True to stop.
            Default: the stop event's wait, which ``stop()`` interrupts at once.
        on_finish: called exactly once, on the session's thread, with the final report,
            whether the session ran its course or was stopped.

    Raises:
        InvalidSettings: a duration or interval out of range.
    """

    def __init__(self, sample: SampleFn, *, duration_s: float, interval_s: float = 1.0,
                 clock: Callable[[], float] = time.monotonic, wall: Callable[[], float] = time.time,
                 wait: Wait | None = None,
                 on_finish: Callable[[MonitoringReport], None] | None = None) -> None:
        problems = session_problems(duration_s, interval_s)
        if problems:
            raise InvalidSettings("; ".join(problems), problems=problems)
        super().__init__(sample, clock, [])
        self.duration_s = float(duration_s)
        self.interval_s = float(interval_s)
        self._wall = wall
        self._wait = wait or self._stop.wait
        self._on_finish = on_finish
        self._running = False
        self._stopped_early = False
        self._started_at: float | None = None
        # Set once _run has ended and on_finish returned. Not Thread.join: on Python 3.11, a
        # Ctrl-C that interrupts a join marks the thread as ended while it still runs
        # (bpo-45274), and every later join returns before its final report is made.
        self._finished = threading.Event()
        #: samples a session that runs its course takes: one at 0 s, then one per interval
        self.ticks = math.floor(self.duration_s / self.interval_s + _EPSILON) + 1

    @property
    def running(self) -> bool:
        with self._lock:
            return self._running

    def start(self) -> None:
        """Take the first sample now, then one every ``interval_s``; a second start() is a RuntimeError."""
        with self._lock:
            if self._thread is not None or self._stop.is_set():
                raise RuntimeError("a monitoring session runs once; create a new MonitorSession")
            self._started_at = self._wall()
            self._running = True
            self._thread = threading.Thread(target=self._run, args=(self._clock(),),
                                            name="zwaif-monitor", daemon=True)
            self._thread.start()

    def stop(self, *, timeout_s: float | None = 10.0) -> MonitoringReport:
        """End the session now if it still runs; waits up to ``timeout_s`` for a sample in progress."""
        self._halt(timeout_s)
        return self.report()

    def wait(self, timeout: float | None = None) -> bool:
        """Wait for the session to end; True once it has ended and ``on_finish`` has returned."""
        return self._thread is None or self._finished.wait(timeout)

    def report(self) -> MonitoringReport:
        """The session so far (a copy: later samples do not change it)."""
        with self._lock:
            samples = list(self._samples)
            running, stopped_early, started_at = self._running, self._stopped_early, self._started_at
        return MonitoringReport(duration_s=self.duration_s, interval_s=self.interval_s,
                                stopped_early=stopped_early, running=running, started_at=started_at,
                                samples=samples, summary=summarize(samples))

    def _run(self, start: float) -> None:
        completed = False
        try:
            completed = _run_schedule(lambda now: self._tick(now - start), clock=self._clock,
                                      wait=self._wait, stop=self._stop, start=start,
                                      interval_s=self.interval_s, ticks=self.ticks)
        except Exception:  # a broken clock or wait; the session still ends and reports
            log.exception("monitoring session failed")
        finally:
            with self._lock:
                self._running = False
                self._stopped_early = not completed
            try:
                if self._on_finish is not None:
                    self._on_finish(self.report())
            except Exception:
                log.exception("monitoring on_finish callback failed")
            finally:
                self._finished.set()

    def _join(self, thread: threading.Thread, timeout_s: float | None) -> bool:
        return self._finished.wait(timeout_s)


class BackgroundSampler(_Sampling):
    """Samples every ``interval_s`` until stopped, keeping the last ``keep`` samples. Thread-safe.

    ``t_s`` counts from the first ``start()``, so the history of a restarted sampler stays in
    order. ``clock`` and ``wait`` as in ``MonitorSession``. Raises ``InvalidSettings`` for an
    interval outside 0.1-3600 s or ``keep`` below 1.
    """

    def __init__(self, sample: SampleFn, *, interval_s: float = 5.0, keep: int = 720,
                 clock: Callable[[], float] = time.monotonic, wait: Wait | None = None) -> None:
        problems = [p for p in (_check("interval_s", interval_s, 0.1, 3600),) if p]
        if isinstance(keep, bool) or not isinstance(keep, int) or keep < 1:
            problems.append(f"keep must be a whole number of samples, at least 1; got {keep!r}")
        if problems:
            raise InvalidSettings("; ".join(problems), problems=problems)
        super().__init__(sample, clock, deque(maxlen=keep))
        self.interval_s = float(interval_s)
        self.keep = keep
        self._wait = wait
        self._origin: float | None = None

    @property
    def running(self) -> bool:
        thread = self._thread
        return thread is not None and thread.is_alive()

    def start(self) -> None:
        """Start sampling (a first sample at once); does nothing while it already runs."""
        with self._lock:
            if self._thread is not None and self._thread.is_alive():
                return
            start = self._clock()
            if self._origin is None:
                self._origin = start
            self._stop = threading.Event()
            self._thread = threading.Thread(target=self._run, args=(start, self._origin, self._stop),
                                            name="zwaif-background-sampler", daemon=True)
            self._thread.start()

    def stop(self, *, timeout_s: float | None = 10.0) -> None:
        """Stop sampling; the history stays."""
        self._halt(timeout_s)

    def latest(self) -> Sample | None:
        with self._lock:
            return self._samples[-1] if self._samples else None

    def history(self) -> list[Sample]:
        """The kept samples, oldest first."""
        with self._lock:
            return list(self._samples)

    def _run(self, start: float, origin: float, stop: threading.Event) -> None:
        try:
            _run_schedule(lambda now: self._tick(now - origin), clock=self._clock,
                          wait=self._wait or stop.wait, stop=stop, start=start,
                          interval_s=self.interval_s, ticks=None)
        except Exception:
            log.exception("background sampler failed")
