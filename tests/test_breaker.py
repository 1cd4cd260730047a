from __future__ import annotations

from conftest import FakeClock

from zwaif_fallback.breaker import CircuitBreaker


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
