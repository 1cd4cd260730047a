"""Background jobs (benchmarks) that report progress and can be cancelled.

The UI polls ``Job.status()``; nothing long runs inside a request handler.
"""

from __future__ import annotations

import logging
import threading
import time
import uuid
from collections.abc import Callable
from typing import Any, Generic, Literal, TypeVar

from ._model import Model

__all__ = ["Cancelled", "Job", "JobStatus", "Progress"]

log = logging.getLogger(__name__)

T = TypeVar("T")
State = Literal["running", "done", "failed", "cancelled"]


class Cancelled(Exception):
    """Raised inside a job's work when its cancel was asked for."""


class JobStatus(Model):
    id: str
    name: str
    state: State
    progress: float  # 0 to 1
    message: str
    elapsed_s: float
    error: str | None = None


class Progress:
    """Handed to the work: ``progress(fraction, message)``; raises Cancelled when cancelled."""

    def __init__(self, job: Job[Any]) -> None:
        self._job = job

    def __call__(self, fraction: float, message: str = "") -> None:
        self._job._update(fraction, message)
        if self._job.cancel_event.is_set():
            raise Cancelled(f"{self._job.name} was cancelled")

    @property
    def cancelled(self) -> bool:
        return self._job.cancel_event.is_set()

    @property
    def cancel_event(self) -> threading.Event:
        """The job's cancel, for work that checks it itself (a download between its chunks)."""
        return self._job.cancel_event


class Job(Generic[T]):
    """Runs ``work(progress)`` in a daemon thread."""

    def __init__(self, name: str, work: Callable[[Progress], T],
                 *, clock: Callable[[], float] = time.monotonic) -> None:
        self.id = uuid.uuid4().hex[:12]
        self.name = name
        self.cancel_event = threading.Event()
        self._work = work
        self._clock = clock
        self._lock = threading.Lock()
        self._state: State = "running"
        self._progress = 0.0
        self._message = "starting"
        self._error: str | None = None
        self._result: T | None = None
        self._started = clock()
        self._ended: float | None = None
        self._thread = threading.Thread(target=self._run, daemon=True, name=f"zwaif-job-{name}")
        self._thread.start()

    def _run(self) -> None:
        try:
            result = self._work(Progress(self))
            with self._lock:
                self._result, self._state, self._progress = result, "done", 1.0
                self._message = "done"
        except Cancelled:
            with self._lock:
                self._state, self._message = "cancelled", "cancelled"
        except Exception as exc:  # reported through status(); the thread must not die silently
            log.exception("job %s failed", self.name)
            with self._lock:
                self._state, self._error, self._message = "failed", str(exc), "failed"
        finally:
            with self._lock:
                self._ended = self._clock()

    def _update(self, fraction: float, message: str) -> None:
        with self._lock:
            self._progress = min(max(fraction, 0.0), 1.0)
            if message:
                self._message = message

    def cancel(self) -> None:
        """Ask the job to stop at its next progress report."""
        self.cancel_event.set()

    def wait(self, timeout: float | None = None) -> bool:
        self._thread.join(timeout)
        return not self._thread.is_alive()

    def result(self) -> T | None:
        with self._lock:
            return self._result

    def status(self) -> JobStatus:
        with self._lock:
            end = self._ended if self._ended is not None else self._clock()
            return JobStatus(id=self.id, name=self.name, state=self._state,
                             progress=round(self._progress, 3), message=self._message,
                             elapsed_s=round(end - self._started, 3), error=self._error)
