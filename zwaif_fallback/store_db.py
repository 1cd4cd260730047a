"""The history database as a file: opened, migrated, recovered, and written off the chat path.

SQLite (stdlib, WAL) in ``data_dir/history.sqlite3``. The schema migrates itself
(``PRAGMA user_version`` counts the migrations applied, store_schema.py lists them). The
database sits beside the host's chat path, so it never raises into it: a locked,
read-only, full or corrupt database is logged and reported by ``problem``, writes are
dropped, reads return nothing. A corrupt file, or one that is not ours (other tables), is
moved aside, a fresh one started, and that is noted in ``notices``; one written by a newer
version (a schema beyond ours) is left alone and refused, in ``problem``.

Nor does it hold the chat path up: a write can be queued for a writer thread
(store_writer), so a database another process holds locked delays no answer; ``close``
(and the interpreter's exit) runs what is queued. Old rows are pruned by that thread too, a
thousand at a time between writes (store_retention.py): reads wait for one step at most.
What the tables hold, and how each is read and written, is store.py's ``Store``, built on
``Database``.
"""

from __future__ import annotations

import atexit
import logging
import os
import sqlite3
import threading
import time
import weakref
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from .store_retention import PRUNE_EVERY_S, prune_step
from .store_schema import INDEXES, MIGRATIONS, ForeignDatabase, check_after, check_before
from .store_writer import RETRY_S, BackgroundWriter, Write

__all__ = ["BUSY_TIMEOUT_S", "FILE_NAME", "READ_WAIT_S", "Database"]

log = logging.getLogger("zwaif_fallback.store")  # its records keep the name they had

FILE_NAME = "history.sqlite3"
# How long a write waits for another process (a second host, the CLI) to finish its own:
# under load (a benchmark, the test suite on 2 cores) 2 s was seen to run out and lose a row.
BUSY_TIMEOUT_S = 10.0
#: how long the writer thread waits for another program's lock before it tries again later
WRITER_WAIT_S = 0.25

#: how long a read waits for this process's queued writes (a locked database: once)
READ_WAIT_S = BUSY_TIMEOUT_S
#: the most the write-ahead log keeps on disk after a checkpoint (it grows with the biggest
#: transaction, and used to keep that size until the process closed the database)
WAL_LIMIT_BYTES = 8 * 2**20


_open_stores: weakref.WeakSet[Database] = weakref.WeakSet()
_exiting = False  # the interpreter is going: no further step of a prune begins


@atexit.register
def _flush_at_exit() -> None:
    """Queued writes of every store still open run before the interpreter goes (a prune
    under way does not: the next process goes on with it)."""
    global _exiting
    _exiting = True
    for store in list(_open_stores):
        store.flush(BUSY_TIMEOUT_S)


def _use_wal(conn: sqlite3.Connection) -> None:
    """Switch the database to WAL, waiting out other processes that open it at the same time.

    On a new database, two processes switching at once make one of them fail at once with
    "database is locked": SQLite does not call the busy handler for this switch (seen in 9
    of 20 races of two fresh processes here). The switch is retried until BUSY_TIMEOUT_S.
    """
    deadline = time.monotonic() + BUSY_TIMEOUT_S
    pause = 0.005
    while True:
        try:
            conn.execute("PRAGMA journal_mode=WAL")
            return
        except sqlite3.OperationalError as exc:
            if "locked" not in str(exc) or time.monotonic() + pause > deadline:
                raise
            time.sleep(pause)
            pause = min(pause * 2, 0.2)


class Database:
    """One history database file. Thread-safe; nothing it does raises a database error
    (see ``problem``)."""

    def __init__(self, data_dir: str | Path, *, clock: Callable[[], float] = time.time) -> None:
        self.path = Path(data_dir) / FILE_NAME
        self._clock = clock
        self._lock = threading.Lock()
        self._conn: sqlite3.Connection | None = None
        self.problem: str | None = None  # what keeps the store from working now
        self._write_failed = False  # the problem is a failed write: only a saved one clears it
        self._pruned_at: float | None = None  # when the last prune began
        self._pruning: float | None = None  # the time of the prune under way: rows older go
        self.notices: list[str] = []  # what happened to it (a corrupt file moved aside)
        self._writer = BackgroundWriter(self._write_batch, idle=self._prune_step)

    # -- connection -------------------------------------------------------------

    def _connect(self) -> sqlite3.Connection:
        if self._conn is not None:
            return self._conn
        if self.path.parent.exists() and not self.path.parent.is_dir():
            raise NotADirectoryError(f"data_dir {self.path.parent} is a file, not a folder: set "
                                     "data_dir (FALLBACK_DATA_DIR) to a folder")
        self.path.parent.mkdir(parents=True, exist_ok=True)
        conn = sqlite3.connect(self.path, timeout=BUSY_TIMEOUT_S, check_same_thread=False,
                               isolation_level=None)
        try:
            conn.execute(f"PRAGMA busy_timeout={int(BUSY_TIMEOUT_S * 1000)}")
            check_before(conn)
            if conn.execute("PRAGMA user_version").fetchone()[0] == 0:
                # a new file: what a prune frees can be handed back (only before WAL and tables)
                conn.execute("PRAGMA auto_vacuum=INCREMENTAL")
            _use_wal(conn)
            conn.execute(f"PRAGMA journal_size_limit={WAL_LIMIT_BYTES}")
            conn.execute("PRAGMA foreign_keys=ON")
            self._migrate(conn)
            check_after(conn)
            _add_indexes(conn)
        except sqlite3.DatabaseError:
            conn.close()
            raise
        self._conn = conn
        return conn

    @staticmethod
    def _migrate(conn: sqlite3.Connection) -> None:
        version = conn.execute("PRAGMA user_version").fetchone()[0]
        for number, script in enumerate(MIGRATIONS[version:], start=version + 1):
            conn.execute("BEGIN IMMEDIATE")
            try:
                if conn.execute("PRAGMA user_version").fetchone()[0] >= number:
                    conn.execute("ROLLBACK")  # another process migrated meanwhile
                    continue
                for statement in script.split(";"):
                    if statement.strip():
                        conn.execute(statement)
                conn.execute(f"PRAGMA user_version = {number}")
                conn.execute("COMMIT")
            except BaseException:
                conn.execute("ROLLBACK")
                raise
            log.info("history database migrated to version %d", number)

    @contextmanager
    def _db(self, what: str) -> Iterator[sqlite3.Connection | None]:
        """The connection, or None when the database cannot be used (reported, not raised).
        ``what`` starting with "saving" is a write: a read that works does not clear the
        problem of a write that failed (a full disk still reads)."""
        writing = what.startswith("saving")
        with self._lock:
            conn: sqlite3.Connection | None
            try:
                conn = self._connect()
            except sqlite3.DatabaseError as exc:
                if _is_corrupt(exc):
                    conn = self._recover(exc)
                else:
                    self._report(what, exc)
                    conn = None
            except OSError as exc:
                self._report(what, exc)
                conn = None
            if conn is None:
                yield None
                return
            try:
                yield conn
                if writing or not self._write_failed:
                    self.problem, self._write_failed = None, False
            except sqlite3.DatabaseError as exc:
                self._report(what, exc)
                if _is_corrupt(exc):
                    self._close()

    def _recover(self, exc: Exception) -> sqlite3.Connection | None:
        self._close()
        kind = "foreign" if isinstance(exc, ForeignDatabase) else "corrupt"
        aside = self.path.with_name(f"{self.path.name}.{kind}-{int(self._clock())}")
        try:
            os.replace(self.path, aside)
            for suffix in ("-wal", "-shm"):
                Path(str(self.path) + suffix).unlink(missing_ok=True)
            conn = self._connect()
        except (OSError, sqlite3.DatabaseError) as again:
            self._report("recovering the history database", again)
            return None
        what = ("was not zwaif-fallback's" if kind == "foreign" else "was corrupt")
        notice = f"the history database {what} ({exc}); moved it to {aside.name} and started a new one"
        self.notices.append(notice)
        log.error("%s", notice)
        return conn

    def _report(self, what: str, exc: Exception) -> None:
        self.problem = f"history database unavailable while {what}: {exc}"
        self._write_failed = what.startswith("saving")
        log.warning("%s", self.problem)

    def _close(self) -> None:
        if self._conn is not None:
            try:
                self._conn.close()
            except sqlite3.Error:
                pass
            self._conn = None

    def close(self) -> None:
        """Run the queued writes (waiting out a locked database once), then close."""
        self._writer.close(BUSY_TIMEOUT_S * 2)
        _open_stores.discard(self)
        with self._lock:
            self._close()

    def flush(self, timeout: float | None = None) -> bool:
        """Wait until the queued writes have run (or failed, in ``problem``); False when
        ``timeout`` ran out first."""
        return self._writer.flush(timeout)

    def _queue(self, what: str, run: Callable[[sqlite3.Connection], None]) -> None:
        _open_stores.add(self)  # flushed at exit (again, after a close)
        if not self._writer.put(Write(what, run)):
            self._write_failed = True
            self.problem = (f"history is not being saved fast enough: {self._writer.dropped} "
                            f"write(s) dropped (while {what}); is another program holding "
                            f"{self.path} open?")

    def _write_batch(self, batch: list[Write]) -> bool:
        """The writer thread's work: the batch in one transaction, so a locked database is
        waited out once. False when another program still held it then: the writer keeps the
        batch and tries again. When it cannot be written, it is lost and ``problem`` says why."""
        what = " and ".join(dict.fromkeys(w.what for w in batch))
        try:
            with self._db(what) as db:
                if db is None:
                    return True
                # A short wait: the batch is tried again, and the store's lock, which reads
                # on the chat path take too, is held while SQLite waits
                db.execute(f"PRAGMA busy_timeout={int(WRITER_WAIT_S * 1000)}")
                try:
                    db.execute("BEGIN IMMEDIATE")
                except sqlite3.OperationalError as exc:
                    if "locked" in str(exc) or "busy" in str(exc):
                        raise _Locked(exc) from exc  # past _db, which would report it lost
                    raise
                finally:
                    db.execute(f"PRAGMA busy_timeout={int(BUSY_TIMEOUT_S * 1000)}")
                self._run_all(db, batch)
            now = self._clock()
            if self._pruned_at is None or now - self._pruned_at >= PRUNE_EVERY_S:
                self._pruned_at = self._pruning = now  # begun by the writer's idle steps
        except _Locked as locked:
            self._report(f"{what} (kept: {len(batch)} write(s), tried again every {RETRY_S:g} s "
                         f"while another program holds {self.path.name})", locked.error)
            return False
        return True

    def _prune_step(self) -> bool:
        """The writer thread's idle work: one step of the prune under way (store_retention),
        a transaction of its own; True while more is left. Another program's lock, or an
        exit, stops it: the next prune (an hour later, or the next process) goes on."""
        now = self._pruning
        if now is None or _exiting:
            return False
        more = False
        with self._db("pruning old history") as db:
            if db is not None:
                db.execute(f"PRAGMA busy_timeout={int(WRITER_WAIT_S * 1000)}")
                try:
                    more = prune_step(db, now)
                except sqlite3.OperationalError as exc:
                    if db.in_transaction:
                        db.execute("ROLLBACK")
                    if "locked" not in str(exc) and "busy" not in str(exc):
                        raise
                    log.info("pruning the history waits for another program's lock: %s", exc)
                finally:
                    db.execute(f"PRAGMA busy_timeout={int(BUSY_TIMEOUT_S * 1000)}")
        if not more:
            self._pruning = None
        return more

    def _run_all(self, db: sqlite3.Connection, batch: list[Write]) -> None:
        """The batch's writes, in the transaction begun, then committed (or rolled back). One
        that fails alone (a value SQLite refuses) is undone alone: the other chats' stay."""
        try:
            for write in batch:
                db.execute("SAVEPOINT one_write")
                try:
                    write.run(db)
                except sqlite3.IntegrityError as exc:  # this write's own data, not the database
                    db.execute("ROLLBACK TO one_write")
                    log.warning("history write refused while %s: %s", write.what, exc)
                db.execute("RELEASE one_write")
            db.execute("COMMIT")
        except BaseException:
            if db.in_transaction:
                db.execute("ROLLBACK")
            raise


class _Locked(Exception):
    """Another program held the database through the busy timeout (its ``error``)."""

    def __init__(self, error: sqlite3.OperationalError) -> None:
        super().__init__(str(error))
        self.error = error


def _is_corrupt(exc: Exception) -> bool:
    if isinstance(exc, ForeignDatabase):
        return True
    text = str(exc).lower()
    return "not a database" in text or "malformed" in text or "corrupt" in text


def _add_indexes(conn: sqlite3.Connection) -> None:
    """``INDEXES`` the file lacks. Only speed hangs on them: one that cannot be made now
    (another program holds the file locked) is made at the next open."""
    have = {row[0] for row in conn.execute("SELECT sql FROM sqlite_master WHERE type = 'index'")}
    for index in INDEXES:
        if index.replace(" IF NOT EXISTS", "") not in have:
            try:
                conn.execute(index)
            except sqlite3.OperationalError as exc:
                log.info("history index not made now (%s): %s", exc, index)
