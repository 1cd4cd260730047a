from __future__ import annotations

import logging
import re
import signal
import sys
import threading
import time
from collections.abc import Callable

import psutil
import pytest
from conftest import FakeClock

from zwaif_fallback.errors import InvalidSettings
from zwaif_fallback.monitor import (
    BackgroundSampler,
    MonitoringReport,
    MonitorSession,
    Sample,
    session_problems,
    summarize,
)

WALL = 1_700_000_000.0


class FakeWait:
    """Moves the fake clock through each wait at once; after ``end_after`` waits it asks to stop."""

    def __init__(self, clock: FakeClock, *, end_after: int | None = None) -> None:
        self.clock = clock
        self.end_after = end_after
        self.timeouts: list[float] = []

    def __call__(self, timeout: float) -> bool:
        self.timeouts.append(timeout)
        self.clock.now += timeout
        return self.end_after is not None and len(self.timeouts) >= self.end_after


class FakeMachine:
    """A sample function. RAM grows 10 MiB a call; calls in ``fails`` raise.

    Each of the first ``slow_calls`` calls takes ``takes_s`` seconds of the fake clock,
    later calls take none: with the real stop-event wait, the session then parks.
    """

    def __init__(self, clock: FakeClock | None = None, *, takes_s: float = 0.0,
                 slow_calls: int = 10**9, fails: set[int] | frozenset[int] = frozenset()) -> None:
        self.clock = clock
        self.takes_s = takes_s
        self.slow_calls = slow_calls
        self.fails = fails
        self.calls = 0

    def __call__(self) -> dict[str, float | None]:
        self.calls += 1
        if self.clock is not None and self.calls <= self.slow_calls:
            self.clock.now += self.takes_s
        if self.calls in self.fails:
            raise RuntimeError("NVML hiccup")
        return {"vram_used_mb": 2000.0, "ram_used_mb": 8000.0 + 10 * self.calls, "cpu_percent": 12.5,
                "gpu_utilization_pct": None, "tokens_per_s": 0.0}


def psutil_sample() -> dict[str, float | None]:
    memory = psutil.virtual_memory()
    return {"ram_used_mb": (memory.total - memory.available) / 2**20,
            "cpu_percent": psutil.cpu_percent(interval=None)}


def poll(condition, *, deadline_s: float = 5.0, session: MonitorSession | None = None) -> None:
    """Wait until ``condition()`` holds, without sleeping: joining the session's thread briefly."""
    end = time.monotonic() + deadline_s
    pause = threading.Event()
    while not condition():
        assert time.monotonic() < end, "condition not met before the deadline"
        if session is not None:
            session.wait(0.01)
        else:
            pause.wait(0.01)


def run_session(duration_s: float, interval_s: float, machine=None, **kwargs):
    clock = FakeClock()
    finished: list[MonitoringReport] = []
    session = MonitorSession(machine or FakeMachine(), duration_s=duration_s, interval_s=interval_s,
                             clock=clock, wall=lambda: WALL, wait=FakeWait(clock),
                             on_finish=finished.append, **kwargs)
    session.start()
    assert session.wait(timeout=10)
    return session, finished


@pytest.mark.parametrize(("duration_s", "interval_s", "fragment"), [
    (5, 1, "duration_s must be between 10 and 300 seconds; got 5"),
    (301, 1, "duration_s must be between 10 and 300 seconds; got 301"),
    (60, 0.05, "interval_s must be between 0.1 and 60 seconds; got 0.05"),
    (60, 61, "interval_s must be between 0.1 and 60 seconds; got 61"),
    (20, 30, "interval_s (30 s) must not exceed duration_s (20 s)"),
    (float("nan"), 1, "duration_s must be between 10 and 300 seconds; got nan"),
    ("60", 1, "duration_s must be between 10 and 300 seconds; got '60'"),
])
def test_out_of_range_settings_are_refused_with_the_range(duration_s, interval_s, fragment):
    with pytest.raises(InvalidSettings) as info:
        MonitorSession(FakeMachine(), duration_s=duration_s, interval_s=interval_s)
    assert fragment in str(info.value)
    assert info.value.exit_code == 2


def test_every_problem_is_listed():
    with pytest.raises(InvalidSettings) as info:
        MonitorSession(FakeMachine(), duration_s=1, interval_s=0)
    assert [p.split(" ")[0] for p in info.value.problems] == ["duration_s", "interval_s"]


def test_session_problems_name_the_values_as_the_caller_does():
    cli = ("--duration", "--interval")
    assert session_problems(5, 0, names=cli) == [
        "--duration must be between 10 and 300 seconds; got 5",
        "--interval must be between 0.1 and 60 seconds; got 0"]
    assert session_problems(20, 30, names=cli) == ["--interval (30 s) must not exceed --duration (20 s)"]
    assert session_problems(20.0, 0.5, names=cli) == []


@pytest.mark.parametrize(("duration_s", "interval_s", "count"), [(10, 1, 11), (10, 0.1, 101), (300, 60, 6),
                                                                   (10, 3, 4)])
def test_a_full_session_takes_one_sample_per_interval_plus_the_first(duration_s, interval_s, count):
    session, finished = run_session(duration_s, interval_s)
    report = session.report()
    assert len(report.samples) == count
    assert [s.t_s for s in report.samples] == pytest.approx([k * interval_s for k in range(count)])
    assert (report.running, report.stopped_early, report.started_at) == (False, False, WALL)
    assert (report.duration_s, report.interval_s) == (duration_s, interval_s)
    assert finished == [report]
    assert not session.running


def test_slow_samples_do_not_drift_the_schedule():
    clock = FakeClock()
    wait = FakeWait(clock)
    session = MonitorSession(FakeMachine(clock, takes_s=0.25), duration_s=10, clock=clock, wait=wait)
    session.start()
    assert session.wait(timeout=10)
    assert [s.t_s for s in session.report().samples] == [float(k) for k in range(11)]
    assert wait.timeouts == [0.75] * 10  # each wait is shortened by the time the sample took


def test_a_sample_later_than_a_whole_interval_is_skipped_not_repeated():
    clock = FakeClock()
    session = MonitorSession(FakeMachine(clock, takes_s=2.5, slow_calls=1), duration_s=10, clock=clock,
                             wait=FakeWait(clock))
    session.start()
    assert session.wait(timeout=10)
    assert [s.t_s for s in session.report().samples] == [0.0, 2.5, 3.0, 4.0, 5.0, 6.0, 7.0, 8.0, 9.0, 10.0]


def parked_session(**kwargs) -> tuple[MonitorSession, list[MonitoringReport]]:
    """A session with 3 samples (t = 0, 30, 60 s), then parked in the real stop-event wait."""
    clock = FakeClock()
    finished: list[MonitoringReport] = []
    session = MonitorSession(FakeMachine(clock, takes_s=30, slow_calls=2), duration_s=300, interval_s=30,
                             clock=clock, wall=lambda: WALL, on_finish=finished.append, **kwargs)
    session.start()
    poll(lambda: len(session.report().samples) == 3, session=session)
    return session, finished


def test_stop_ends_the_session_early_and_promptly():
    session, finished = parked_session()
    begun = time.monotonic()
    report = session.stop()
    assert time.monotonic() - begun < 5  # the 30 s wait was interrupted, not waited out
    assert not session.running and session.wait(timeout=0)
    assert report.stopped_early and not report.running
    assert [s.t_s for s in report.samples] == [0.0, 30.0, 60.0]
    assert finished == [report]
    assert session.stop() == report and len(finished) == 1  # a second stop changes nothing


def ctrl_c_once_the_main_thread_blocks_in(function: Callable[..., object]) -> None:
    """Send SIGINT to the main thread once it blocks inside ``threading`` under ``function``."""
    main = threading.main_thread()
    end = time.monotonic() + 5
    pause = threading.Event()
    while time.monotonic() < end:
        frame = sys._current_frames().get(main.ident)
        if frame is not None and frame.f_code.co_filename == threading.__file__:
            callers = []
            while frame is not None:
                callers.append(frame.f_code)
                frame = frame.f_back
            if function.__code__ in callers:
                signal.pthread_kill(main.ident, signal.SIGINT)
                return
        pause.wait(0.001)


def test_ctrl_c_while_waiting_for_the_session_still_reports_it_stopped_early():
    session, finished = parked_session()
    threading.Thread(target=ctrl_c_once_the_main_thread_blocks_in, args=(MonitorSession.wait,),
                     daemon=True).start()
    with pytest.raises(KeyboardInterrupt):
        session.wait(timeout=10)  # where `zwaif-fallback monitor` is when Ctrl-C comes
    report = session.stop()
    assert report.stopped_early and not report.running
    assert finished == [report]


def test_stop_after_the_session_ran_its_course_is_not_early():
    session, finished = run_session(10, 1)
    report = session.stop()
    assert not report.stopped_early and len(report.samples) == 11
    assert len(finished) == 1


def test_report_while_running_is_a_live_copy():
    session, finished = parked_session()
    report = session.report()
    assert report.running and not report.stopped_early and report.started_at == WALL
    assert [s.t_s for s in report.samples] == [0.0, 30.0, 60.0]
    assert report.summary == summarize(report.samples)
    assert report.summary["ram_used_mb"].max == 8030.0
    report.samples.clear()
    assert len(session.report().samples) == 3
    assert finished == []
    session.stop()


def test_reports_stay_consistent_while_samples_arrive():
    clock = FakeClock()
    session = MonitorSession(FakeMachine(), duration_s=300, interval_s=0.1, clock=clock, wait=FakeWait(clock))
    session.start()
    seen = 0
    end = time.monotonic() + 10
    while time.monotonic() < end:
        report = session.report()
        assert len(report.samples) >= seen
        seen = len(report.samples)
        assert report.summary == summarize(report.samples)
        assert [s.t_s for s in report.samples] == sorted(s.t_s for s in report.samples)
        if not report.running:
            break
    assert seen == 3001 and not report.stopped_early


def test_summarize_gives_min_mean_max_and_nearest_rank_p95():
    samples = [Sample(t_s=i, ram_used_mb=1000 + 10 * i, cpu_percent=float(i), vram_used_mb=None,
                      tokens_per_s=0.0 if i % 2 else 20.0) for i in range(20, 0, -1)]
    summary = summarize(samples)
    assert list(summary) == ["ram_used_mb", "cpu_percent", "tokens_per_s"]  # no GPU: no vram, no gpu load
    cpu = summary["cpu_percent"]
    assert (cpu.min, cpu.max, cpu.p95) == (1.0, 20.0, 19.0)  # rank ceil(0.95 * 20) = 19
    assert cpu.mean == pytest.approx(10.5)
    assert summary["tokens_per_s"].mean == 10.0
    assert summary["tokens_per_s"].p95 == 20.0


def test_summarize_p95_rounds_the_rank_up():
    samples = [Sample(t_s=0, ram_used_mb=v, cpu_percent=0) for v in (5, 1, 4, 2, 3)]
    assert summarize(samples)["ram_used_mb"].p95 == 5.0  # rank ceil(4.75) = 5
    assert summarize([]) == {}


def test_a_failing_sample_costs_its_tick_only(caplog):
    caplog.set_level(logging.WARNING, logger="zwaif_fallback.monitor")
    session, finished = run_session(10, 1, FakeMachine(fails={2, 5}))
    report = session.report()
    assert [s.t_s for s in report.samples] == [0.0, 2.0, 3.0, 5.0, 6.0, 7.0, 8.0, 9.0, 10.0]
    assert not report.stopped_early and finished == [report]
    skipped = [r.getMessage() for r in caplog.records if "skipped" in r.getMessage()]
    assert len(skipped) == 2 and "NVML hiccup" in skipped[0]


def test_a_sample_with_a_missing_metric_is_skipped():
    answers = iter([{"ram_used_mb": 1.0, "cpu_percent": 2.0}, {"cpu_percent": 2.0}])
    session, _ = run_session(10, 5, lambda: next(answers, {"ram_used_mb": 3.0, "cpu_percent": 4.0,
                                                                "tokens_per_s": None}))
    report = session.report()
    assert [(s.t_s, s.ram_used_mb, s.tokens_per_s) for s in report.samples] == [(0.0, 1.0, None),
                                                                              (10.0, 3.0, None)]


def test_a_failing_on_finish_is_logged_and_the_session_still_ends(caplog):
    clock = FakeClock()

    def on_finish(report: MonitoringReport) -> None:
        raise ValueError("store is gone")

    session = MonitorSession(FakeMachine(), duration_s=10, clock=clock, wait=FakeWait(clock),
                             on_finish=on_finish)
    session.start()
    assert session.wait(timeout=10)
    assert not session.running and "on_finish" in caplog.text


def test_a_session_runs_once():
    session, _ = run_session(10, 1)
    with pytest.raises(RuntimeError, match="create a new MonitorSession"):
        session.start()


def test_a_real_session_with_psutil_can_be_stopped_after_three_samples():
    finished: list[MonitoringReport] = []
    session = MonitorSession(psutil_sample, duration_s=10, interval_s=0.1, on_finish=finished.append)
    session.start()
    poll(lambda: len(session.report().samples) >= 3, session=session)
    report = session.stop()
    assert report.stopped_early and not session.running and finished == [report]
    times = [s.t_s for s in report.samples]
    assert len(times) >= 3 and times == sorted(times) and times[0] < 1
    assert all(t >= k * 0.1 - 0.001 for k, t in enumerate(times))  # never ahead of the schedule
    assert all(s.ram_used_mb > 0 and 0 <= s.cpu_percent <= 100 for s in report.samples)
    assert abs(report.started_at - time.time()) < 60
    assert set(report.summary) == {"ram_used_mb", "cpu_percent"}  # no tokens/s asked for


def test_background_sampler_keeps_only_the_last_samples():
    clock = FakeClock()
    sampler = BackgroundSampler(FakeMachine(), interval_s=5, keep=3, clock=clock,
                                wait=FakeWait(clock, end_after=5))
    assert sampler.latest() is None and sampler.history() == []
    sampler.start()
    poll(lambda: not sampler.running)  # the fifth wait asks it to stop
    assert [s.t_s for s in sampler.history()] == [10.0, 15.0, 20.0]
    latest = sampler.latest()
    assert latest is not None and latest.t_s == 20.0 and latest.ram_used_mb == 8050.0


def test_background_sampler_survives_failing_samples():
    clock = FakeClock()
    sampler = BackgroundSampler(FakeMachine(fails={1, 3}), interval_s=5, clock=clock,
                                wait=FakeWait(clock, end_after=4))
    sampler.start()
    poll(lambda: not sampler.running)
    assert [s.t_s for s in sampler.history()] == [5.0, 15.0]


def test_background_sampler_stops_at_once_and_can_restart():
    clock = FakeClock()
    machine = FakeMachine()
    sampler = BackgroundSampler(machine, interval_s=3600, clock=clock)
    sampler.start()
    poll(lambda: sampler.latest() is not None)
    begun = time.monotonic()
    sampler.stop()
    assert time.monotonic() - begun < 5 and not sampler.running
    clock.now = 100.0
    sampler.start()
    poll(lambda: len(sampler.history()) == 2)
    sampler.stop()
    assert [s.t_s for s in sampler.history()] == [0.0, 100.0]  # t_s counts from the first start


@pytest.mark.parametrize(("kwargs", "fragment"), [
    ({"interval_s": 0}, "interval_s must be between 0.1 and 3600 seconds; got 0"),
    ({"keep": 0}, "keep must be a whole number of samples, at least 1; got 0"),
])
def test_background_sampler_refuses_bad_settings(kwargs, fragment):
    with pytest.raises(InvalidSettings, match=re.escape(fragment)):
        BackgroundSampler(FakeMachine(), **kwargs)
