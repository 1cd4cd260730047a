from __future__ import annotations

import threading

import pytest
from conftest import FakeClock
from servers import wait_until

from zwaif_fallback.breaker import CircuitBreaker, ProbeOutcome


def test_opens_after_the_threshold_and_skips_until_the_cooldown():
    clock = FakeClock()
    breaker = CircuitBreaker(failure_threshold=3, cooldown_s=30, clock=clock)
    assert [breaker.record_failure() for _ in range(3)] == [False, False, True]
    assert breaker.snapshot().state == "open" and not breaker.allow()
    clock.now = 29.9
    assert not breaker.allow() and breaker.snapshot().retry_in_s == 0.1


def test_half_open_lets_one_probe_through():
    clock = FakeClock()
    breaker = CircuitBreaker(failure_threshold=1, cooldown_s=10, clock=clock)
    breaker.record_failure()
    clock.now = 10
    assert breaker.allow() and breaker.snapshot().state == "half_open"
    assert not breaker.allow()  # the probe is in flight


def test_a_successful_probe_closes_and_a_failed_one_reopens():
    clock = FakeClock()
    breaker = CircuitBreaker(failure_threshold=1, cooldown_s=10, clock=clock)
    breaker.record_failure()
    clock.now = 10
    breaker.allow()
    assert breaker.record_failure() is True and breaker.snapshot().state == "open"
    clock.now = 20
    breaker.allow()
    breaker.record_success()
    assert breaker.snapshot().state == "closed" and breaker.snapshot().failures == 0


def test_a_success_resets_the_count():
    breaker = CircuitBreaker(failure_threshold=3)
    breaker.record_failure()
    breaker.record_failure()
    breaker.record_success()
    breaker.record_failure()
    assert breaker.snapshot().state == "closed"


def test_a_hung_target_opens_at_once():
    clock = FakeClock()
    breaker = CircuitBreaker(failure_threshold=3, cooldown_s=30, clock=clock)
    assert breaker.record_failure(hung=True)
    assert not breaker.allow() and breaker.snapshot().state == "open"
    clock.now = 31.0
    assert breaker.allow()  # half-open: the probe goes through as for any open circuit


class Probe:
    """A probe that answers what the test says, when it says, taking ``takes_s`` of the
    breaker's clock."""

    def __init__(self, clock: FakeClock | None = None, takes_s: float = 0.0) -> None:
        self.calls = 0
        self.started = threading.Event()
        self.answer: ProbeOutcome | Exception = "answers"
        self.release = threading.Event()
        self.clock, self.takes_s = clock, takes_s

    def __call__(self) -> ProbeOutcome:
        self.calls += 1
        self.started.set()
        assert self.release.wait(10)
        if self.clock is not None:
            self.clock.now += self.takes_s
        if isinstance(self.answer, Exception):
            raise self.answer
        return self.answer


def settle(breaker: CircuitBreaker) -> None:
    wait_until(lambda: not breaker.snapshot().probing, timeout_s=5, what="the probe to end")


def test_with_a_probe_no_caller_is_sent_to_check_a_target():
    clock, probe = FakeClock(), Probe()
    breaker = CircuitBreaker(failure_threshold=1, cooldown_s=10, clock=clock, probe=probe)
    breaker.record_failure(hung=True)
    clock.now = 10
    assert not breaker.allow()  # the cooldown is over: the probe starts, the caller goes on
    assert probe.started.wait(5)
    assert not breaker.allow() and breaker.snapshot().probing  # one probe at a time
    probe.release.set()
    settle(breaker)
    assert probe.calls == 1 and breaker.snapshot().state == "closed" and breaker.allow()


@pytest.mark.parametrize(("answer", "again_in_s"), [
    ("hangs", 10.0),  # no word by its deadline: a whole cooldown
    ("fails", 2.0),  # nothing listens, or it went away: soon, however long the probe took
    (RuntimeError("boom"), 10.0),  # a probe that breaks: not a tight loop of them
], ids=["hangs", "fails", "raises"])
def test_a_probe_that_gets_no_answer_opens_the_circuit_again(answer, again_in_s):
    # A probe that waited on the target opens it for a whole cooldown; one that failed without
    # waiting (nothing is listening, or a hung server was killed under it) is made again soon.
    clock = FakeClock()
    probe = Probe(clock, takes_s=5.0)
    breaker = CircuitBreaker(failure_threshold=1, cooldown_s=10, clock=clock, probe=probe,
                             probe_again_s=2.0)
    breaker.record_failure()
    probe.answer = answer
    probe.release.set()
    clock.now = 10
    assert not breaker.allow()
    settle(breaker)
    state = breaker.snapshot()
    assert (state.state, state.retry_in_s, probe.calls) == ("open", again_in_s, 1)
    clock.now += again_in_s - 0.01
    assert not breaker.allow() and probe.calls == 1
    clock.now += 0.01
    assert not breaker.allow()
    wait_until(lambda: probe.calls == 2, timeout_s=5, what="the next probe")


def test_the_probe_starts_when_the_cooldown_ends_without_a_chat():
    probe = Probe()
    probe.release.set()
    breaker = CircuitBreaker(failure_threshold=1, cooldown_s=0.2, probe=probe)
    breaker.record_failure()
    assert probe.started.wait(5)  # nobody called allow()
    settle(breaker)
    assert breaker.snapshot().state == "closed"


def test_the_probe_starts_even_when_the_timer_fires_early_by_the_breakers_clock():
    # On Windows before Python 3.13 the timer's clock (monotonic) ticks in 15.6 ms steps,
    # and the breaker's (perf_counter) does not: by the breaker's, the timer can be early.
    import time

    probe = Probe()
    probe.release.set()
    breaker = CircuitBreaker(failure_threshold=1, cooldown_s=0.2, probe=probe,
                             clock=lambda: time.monotonic() * 0.8)  # slower than the timer's
    breaker.record_failure()
    assert probe.started.wait(5)  # nobody called allow()
    settle(breaker)
    assert breaker.snapshot().state == "closed"


def test_a_closed_breaker_starts_no_probe():
    probe = Probe()
    breaker = CircuitBreaker(failure_threshold=1, cooldown_s=0.1, probe=probe)
    breaker.record_failure()
    breaker.close()
    threading.Event().wait(0.3)
    assert probe.calls == 0 and not breaker.allow()
