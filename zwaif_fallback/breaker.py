"""A circuit breaker per failover target.

closed -> (``failure_threshold`` failures in a row) -> open: the target is skipped,
no request is sent, no time is lost -> (after ``cooldown_s``) -> half-open: one
request probes it -> success closes the breaker, failure opens it again.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Literal

from ._model import Model

__all__ = ["BreakerState", "CircuitBreaker"]

State = Literal["closed", "open", "half_open"]


class BreakerState(Model):
    """What health and the UI show of a breaker."""

    state: State
    failures: int
    retry_in_s: float = 0.0


class CircuitBreaker:
    """Thread-safe; ``clock`` is injectable so tests need no sleeps."""

    def __init__(self, *, failure_threshold: int = 3, cooldown_s: float = 30.0,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.failure_threshold = failure_threshold
        self.cooldown_s = cooldown_s
        self._clock = clock
        self._lock = threading.Lock()
        self._state: State = "closed"
        self._failures = 0
        self._opened_at = 0.0
        self._probing = False

    def allow(self) -> bool:
        """May a request go to the target now? In half-open state, only one may."""
        with self._lock:
            if self._state == "closed":
                return True
            if self._state == "open":
                if self._clock() - self._opened_at < self.cooldown_s:
                    return False
                self._state = "half_open"
                self._probing = False
            if self._probing:
                return False
            self._probing = True
            return True

    def record_success(self) -> None:
        with self._lock:
            self._state, self._failures, self._probing = "closed", 0, False

    def record_failure(self, *, hung: bool = False) -> bool:
        """Count a failed request; True when this failure opened the breaker.

        A ``hung`` target (it let a whole deadline pass without a word) opens the breaker at
        once: every chat sent to it until the threshold would wait out the deadline too.
        """
        with self._lock:
            self._failures += 1
            self._probing = False
            if self._state == "half_open" or (self._state == "closed" and (
                    hung or self._failures >= self.failure_threshold)):
                self._state, self._opened_at = "open", self._clock()
                return True
            return False

    def snapshot(self) -> BreakerState:
        with self._lock:
            retry_in = 0.0
            if self._state == "open":
                retry_in = max(self.cooldown_s - (self._clock() - self._opened_at), 0.0)
            return BreakerState(state=self._state, failures=self._failures,
                                retry_in_s=round(retry_in, 3))
