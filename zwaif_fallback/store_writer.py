"""The history store's writer thread: writes leave the chat path and run one batch at a time.

A database another process holds in a write transaction makes each write wait out the
busy timeout (10 s). Done on the chat path, every answer waited that long, and answers
queued behind each other; here only this thread waits, and a batch of writes waits once.
A batch the database stayed locked for (a program that keeps its transaction open for
minutes: DB Browser for SQLite with unsaved edits) is kept and tried again every
``RETRY_S``, so that nothing is lost to a lock that ends. The queue is bounded: when it is
full (the database has been stuck for a long while), a write is dropped and counted rather
than kept in memory without end. Work that may be long (the history's prune) is ``idle``
work, done one short step at a time while no write waits: a write, a read and a close wait
for one step at most.
"""

from __future__ import annotations

import collections
import logging
import threading
from collections.abc import Callable
from typing import NamedTuple

__all__ = ["BackgroundWriter", "Write"]

log = logging.getLogger(__name__)

#: writes waiting at most; a chat writes one or two, so this is minutes of a stuck database
CAPACITY = 2000
#: seconds between tries of a batch the database was locked for
RETRY_S = 2.0
#: seconds between steps of idle work: the store's lock goes to readers, and new writes go first
IDLE_PAUSE_S = 0.02


class Write(NamedTuple):
    """One write: what it saves (for messages) and what it does."""

    what: str
    run: Callable[..., None]


class BackgroundWriter:
    """Runs writes on one daemon thread, in order, handing ``run_batch`` all that waits;
    ``run_batch`` returns False to have the batch kept and tried again (a locked database).
    ``idle`` does one step of background work, and says whether more is left: it is called
    after each batch, then again while it says so and no write waits, and once at a close."""

    def __init__(self, run_batch: Callable[[list[Write]], bool], *, capacity: int = CAPACITY,
                 name: str = "history-writer", idle: Callable[[], bool] | None = None) -> None:
        self._run_batch = run_batch
        self._idle = idle
        self._capacity = capacity
        self._name = name
        self._queue: collections.deque[Write] = collections.deque()
        self._busy = 0  # writes taken from the queue and not finished yet
        self._cond = threading.Condition()
        self._thread: threading.Thread | None = None
        self._closed = False
        self._stalled = False  # the last batch was held back by another program's lock
        self.dropped = 0  # writes dropped because the queue was full

    def put(self, write: Write) -> bool:
        """Queue a write; False when it was dropped (the queue is full)."""
        with self._cond:
            if len(self._queue) >= self._capacity:
                self.dropped += 1
                if self.dropped == 1 or self.dropped % 100 == 0:
                    log.warning("history writes are falling behind: %d dropped so far (%s)",
                                self.dropped, write.what)
                return False
            self._queue.append(write)
            if self._thread is None:  # the first write, or the first since close()
                self._closed = False
                self._thread = threading.Thread(target=self._loop, name=self._name, daemon=True)
                self._thread.start()
            self._cond.notify_all()
            return True

    def flush(self, timeout: float | None = None) -> bool:
        """Wait until every queued write has run; False when ``timeout`` ran out first, or at
        once while another program's lock holds them back (``stalled``): a read then sees
        what is written, and waits for no lock of minutes."""
        with self._cond:
            self._cond.wait_for(lambda: self._stalled or (not self._queue and not self._busy), timeout)
            return not self._queue and not self._busy

    def close(self, timeout: float | None = None) -> bool:
        """Run what is queued, then stop the thread (a later write starts another)."""
        done = self.flush(timeout)
        with self._cond:
            self._closed = True
            self._cond.notify_all()
            thread, self._thread = self._thread, None
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout)
        return done

    def _loop(self) -> None:
        me = threading.current_thread()
        idle_left = False  # idle work is left: its next step comes after a pause
        while True:
            with self._cond:
                self._cond.wait_for(lambda: self._queue or self._closed or self._thread is not me,
                                    IDLE_PAUSE_S if idle_left else None)
                if self._thread is not me and not self._closed:
                    return  # a write after a close started a new writer
                drained = not self._queue and self._closed
                batch = list(self._queue)
                self._queue.clear()
                self._busy = len(batch)
            if drained:  # closed: one step of idle work, the rest is done next time
                if idle_left:
                    self._idle_step()
                return
            if not batch:
                idle_left = self._idle_step()
                continue
            done = True
            try:
                done = self._run_batch(batch)
            except Exception:  # the store reports its own errors; anything else must not kill us
                log.exception("history writer failed on %d write(s)", len(batch))
            finally:
                with self._cond:
                    if not done and not self._closed:  # first again, the newer writes after it
                        kept = batch[:max(self._capacity - len(self._queue), 0)]
                        self.dropped += len(batch) - len(kept)
                        self._queue.extendleft(reversed(kept))
                    self._stalled = not done
                    self._busy = 0
                    self._cond.notify_all()
            if not done:  # a close ends the wait: the batch then has one last try
                with self._cond:
                    self._cond.wait_for(lambda: self._closed or self._thread is not me, RETRY_S)
            idle_left = done and self._idle is not None

    def _idle_step(self) -> bool:
        if self._idle is None:
            return False
        try:
            return self._idle()
        except Exception:  # as a batch's: the thread must go on writing
            log.exception("history writer's background work failed")
            return False
