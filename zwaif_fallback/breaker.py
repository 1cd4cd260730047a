"""A circuit breaker per failover target.

closed -> (``failure_threshold`` failures in a row) -> open: the target is skipped,
no request is sent, no time is lost -> (after ``cooldown_s``) -> half-open: one
request probes it -> success closes the breaker, failure opens it again.

A breaker with a ``probe`` (a server's: a one-token chat) sends no caller's request as
the probe. The probe runs on a thread of its own as soon as the cooldown ends, and the
callers keep skipping the target until it has answered. A server that hangs would
otherwise hold one chat for the whole deadline after each cooldown (30 s by default, as
long as some hosts wait for an answer at all); one that came back is in use again
without a chat being spent on finding out. A probe that fails without being kept
waiting to its deadline (a refused connection: the server is not running; one closed
when a hung server was killed; an error status) costs nothing, so the next one follows
after ``probe_again_s``, not a whole cooldown: a main LLM that a person restarts, hung
or not, is back in use within seconds of answering.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import Literal

from ._model import Model

__all__ = ["BreakerState", "CircuitBreaker", "ProbeOutcome"]

log = logging.getLogger(__name__)

#: What a probe found: the target answers; it fails without keeping the probe waiting
#: (``probe_again_s`` until the next); it hangs, with no word by the probe's deadline (a
#: whole cooldown).
ProbeOutcome = Literal["answers", "fails", "hangs"]

State = Literal["closed", "open", "half_open"]
#: The states from the best to the worst (where a health report looks at several breakers).
SEVERITY: tuple[State, ...] = ("closed", "half_open", "open")


class BreakerState(Model):
    """What health and the UI show of a breaker."""

    state: State
    failures: int
    retry_in_s: float = 0.0
    #: a background probe is finding out whether the target answers again
    probing: bool = False


class CircuitBreaker:
    """Thread-safe; ``clock`` is injectable so tests need no sleeps.

    ``probe``: finds out whether the target answers (it may take as long as a request
    would); set it to have the half-open check made off the callers' path. One that
    ``fails`` is made again after ``probe_again_s``, one that ``hangs`` after a cooldown.
    """

    def __init__(self, *, failure_threshold: int = 3, cooldown_s: float = 30.0,
                 clock: Callable[[], float] = time.monotonic,
                 probe: Callable[[], ProbeOutcome] | None = None, probe_again_s: float = 2.0) -> None:
        self.failure_threshold = failure_threshold
        self.cooldown_s = cooldown_s
        self.probe = probe
        self.probe_again_s = probe_again_s
        self._clock = clock
        self._lock = threading.Lock()
        self._state: State = "closed"
        self._failures = 0
        self._opened_at = 0.0
        self._wait_s = cooldown_s  # the current open spell's length
        self._probing = False  # half-open: the one request (or the background probe) is out
        self._timer: threading.Timer | None = None
        self._closed = False

    def allow(self) -> bool:
        """May a request go to the target now? In half-open state, only one may, and none
        when the breaker has a ``probe``: that starts instead."""
        with self._lock:
            if self._state == "closed":
                return True
            due = self._due()
            if due is None:
                return False
        if due is True:
            return True  # this caller's request is the probe
        self._start(due)
        return False

    def record_success(self) -> None:
        with self._lock:
            self._state, self._failures, self._probing = "closed", 0, False

    def record_failure(self, *, hung: bool = False) -> bool:
        """Count a failed request; True when this failure opened the breaker.

        A ``hung`` target (it let a whole deadline pass without a word) opens the breaker at
        once: every chat sent to it until the threshold would wait out the deadline too.
        """
        return self._failed(hung=hung, wait_s=self.cooldown_s)

    def snapshot(self) -> BreakerState:
        with self._lock:
            retry_in = 0.0
            if self._state == "open":
                retry_in = max(self._wait_s - (self._clock() - self._opened_at), 0.0)
            return BreakerState(state=self._state, failures=self._failures,
                                retry_in_s=round(retry_in, 3),
                                probing=self._probing and self.probe is not None)

    def close(self) -> None:
        """Start no more probes (the target's owner is closing)."""
        with self._lock:
            self._closed = True
            if self._timer is not None:
                self._timer.cancel()

    # -- the half-open check -----------------------------------------------------------

    def _due(self) -> Callable[[], ProbeOutcome] | Literal[True] | None:
        """Under the lock: move to half-open when the cooldown is over, and claim the one
        check; what makes it (``self.probe``, or True for the caller), or None."""
        if self._state == "open":
            if self._clock() - self._opened_at < self._wait_s:
                return None
            self._state = "half_open"
            self._probing = False
        if self._probing or self._closed:
            return None
        self._probing = True
        return self.probe or True

    def _failed(self, *, hung: bool, wait_s: float) -> bool:
        with self._lock:
            self._failures += 1
            self._probing = False
            if self._state == "half_open" or (self._state == "closed" and (
                    hung or self._failures >= self.failure_threshold)):
                self._state, self._opened_at, self._wait_s = "open", self._clock(), wait_s
                self._schedule()
                return True
            return False

    def _schedule(self, wait_s: float | None = None) -> None:
        """Under the lock: probe when the spell ends, whether or not a chat comes then."""
        if self.probe is None or self._closed:
            return
        if self._timer is not None:
            self._timer.cancel()
        self._timer = threading.Timer(self._wait_s if wait_s is None else wait_s, self._when_due)
        self._timer.daemon = True
        self._timer.start()

    def _when_due(self) -> None:
        with self._lock:
            probe = self._due() if self._state == "open" else None
            if probe is None and self._state == "open":
                # The timer waits on the monotonic clock, which ticks in 15.6 ms steps on
                # Windows before Python 3.13: by ``self._clock`` it may fire a little early.
                self._schedule(max(self._wait_s - (self._clock() - self._opened_at), 0.001))
        if callable(probe):
            self._start(probe)

    def _start(self, probe: Callable[[], ProbeOutcome]) -> None:
        threading.Thread(target=self._run, args=(probe,), name="zwaif-breaker-probe", daemon=True).start()

    def _run(self, probe: Callable[[], ProbeOutcome]) -> None:
        try:
            outcome = probe()
        except Exception:  # a probe that breaks: wait a whole cooldown, not a tight loop of them
            log.exception("a circuit breaker's probe failed")
            outcome = "hangs"
        if outcome == "answers":
            self.record_success()
            return
        self._failed(hung=False, wait_s=self.probe_again_s if outcome == "fails" else self.cooldown_s)
