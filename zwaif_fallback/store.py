"""History on disk: benchmark results, failover events, monitor samples, fit calibrations.

SQLite (stdlib, WAL) in ``data_dir/history.sqlite3``. The schema migrates itself
(``PRAGMA user_version`` counts the migrations applied). The store sits beside
the host's chat path, so it never raises into it: a locked, read-only, full or
corrupt database is logged and reported by ``problem``, writes are dropped, reads
return nothing. A corrupt file, or one that is not ours (other tables), is moved
aside, a fresh one started, and that is noted in ``notices``; one written by a newer
version (a schema beyond ours) is left alone and refused, in ``problem``.

Nor does it hold the chat path up: what a chat writes (its attempts, a load's
calibration) is queued for a writer thread (store_writer), so a database another
process holds locked delays no answer. Reads wait for the queued writes first, so a
process reads what it wrote; ``close`` (and the interpreter's exit) runs what is queued.
"""

from __future__ import annotations

import atexit
import json
import logging
import os
import sqlite3
import threading
import time
import weakref
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypeVar

from pydantic import BaseModel, ValidationError

from .store_schema import MIGRATIONS, ForeignDatabase, check_after, check_before
from .store_writer import BackgroundWriter, Write

__all__ = ["MIGRATIONS", "Store"]

log = logging.getLogger(__name__)

FILE_NAME = "history.sqlite3"
# How long a write waits for another process (a second host, the CLI) to finish its own:
# under load (a benchmark, the test suite on 2 cores) 2 s was seen to run out and lose a row.
BUSY_TIMEOUT_S = 10.0
#: How long failover attempts are kept. A bot that chats every 10 s while its main API is
#: down writes two rows a chat (the skipped main API, the answer): about 1.8 MB a day, for as
#: long as serve runs. Health reads the last hour; the UI, the last day.
KEEP_FAILOVERS_S = 30 * 86400
#: How often a long-running process deletes the attempts older than that, at most.
PRUNE_EVERY_S = 3600.0
R = TypeVar("R", bound=BaseModel)

#: how long a read waits for this process's queued writes (a locked database: once)
READ_WAIT_S = BUSY_TIMEOUT_S


_open_stores: weakref.WeakSet[Store] = weakref.WeakSet()


@atexit.register
def _flush_at_exit() -> None:
    """Queued writes of every store still open run before the interpreter goes."""
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


class Store:
    """Thread-safe; every public method swallows database errors (see ``problem``)."""

    def __init__(self, data_dir: str | Path, *, clock: Callable[[], float] = time.time) -> None:
        self.path = Path(data_dir) / FILE_NAME
        self._clock = clock
        self._lock = threading.Lock()
        self._conn: sqlite3.Connection | None = None
        self.problem: str | None = None  # what keeps the store from working now
        self._write_failed = False  # the problem is a failed write: only a saved one clears it
        self._pruned_at: float | None = None  # when old failover attempts were last deleted
        self.notices: list[str] = []  # what happened to it (a corrupt file moved aside)
        self._writer = BackgroundWriter(self._write_batch)

    # -- connection -------------------------------------------------------------

    def _connect(self) -> sqlite3.Connection:
        if self._conn is not None:
            return self._conn
        if self.path.parent.exists() and not self.path.parent.is_dir():
            raise NotADirectoryError(f"data_dir {self.path.parent} is a file, not a folder")
        self.path.parent.mkdir(parents=True, exist_ok=True)
        conn = sqlite3.connect(self.path, timeout=BUSY_TIMEOUT_S, check_same_thread=False,
                               isolation_level=None)
        try:
            conn.execute(f"PRAGMA busy_timeout={int(BUSY_TIMEOUT_S * 1000)}")
            check_before(conn)
            _use_wal(conn)
            conn.execute("PRAGMA foreign_keys=ON")
            self._migrate(conn)
            check_after(conn)
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

    def _write_batch(self, batch: list[Write]) -> None:
        """The writer thread's work: the batch in one transaction, so a locked database is
        waited out once; when it cannot be written, the batch is lost and ``problem`` says why."""
        what = " and ".join(dict.fromkeys(w.what for w in batch))
        with self._db(what) as db:
            if db is None:
                return
            db.execute("BEGIN IMMEDIATE")
            try:
                for write in batch:
                    write.run(db)
                db.execute("COMMIT")
            except BaseException:
                if db.in_transaction:
                    db.execute("ROLLBACK")
                raise

    # -- benchmarks ----------------------------------------------------------------

    def add_benchmark(self, result: dict[str, Any]) -> None:
        with self._db("saving a benchmark") as db:
            if db is not None:
                db.execute("INSERT INTO benchmarks (at, model, ok, gen_tps, quality_score, data) "
                           "VALUES (?, ?, ?, ?, ?, ?)",
                           (self._clock(), result.get("model", "?"), int(bool(result.get("ok"))),
                            result.get("gen_tps"), result.get("quality_score"),
                            json.dumps(result, default=str)))

    def benchmarks(self, model: str | None = None, *, limit: int = 100) -> list[dict[str, Any]]:
        """Newest first; each is the saved result plus ``at`` (Unix time)."""
        self.flush(READ_WAIT_S)
        with self._db("reading benchmarks") as db:
            if db is None:
                return []
            query = "SELECT at, data FROM benchmarks"
            args: Sequence[Any] = ()
            if model is not None:
                query, args = query + " WHERE model = ?", (model,)
            rows = db.execute(query + " ORDER BY at DESC, id DESC LIMIT ?", (*args, limit))
            return [json.loads(data) | {"at": at} for at, data in rows.fetchall()]
        return []

    def benchmarks_as(self, result_type: type[R], model: str | None = None, *,
                      limit: int = 100) -> list[R]:
        """Like ``benchmarks``, each row read as ``result_type`` (``BenchmarkResult``: the
        store stays below the modules that define results); a row it cannot read (an older
        or a damaged one) is left out."""
        results = []
        for row in self.benchmarks(model, limit=limit):
            try:
                results.append(result_type.model_validate(row))
            except ValidationError as exc:
                log.warning("skipped a saved benchmark of %r: %s", row.get("model"),
                            exc.errors()[0].get("msg", exc))
        return results

    # -- failovers -------------------------------------------------------------------

    def add_attempts(self, attempts: Sequence[dict[str, Any]], *, events: bool = True) -> None:
        """Every attempt of one chat (target, source, ok, error, latency_s): counted in
        ``request_counts``, and kept as failover events unless ``events`` is False (a chat
        that went straight through). Queued: it returns at once."""
        if not attempts:
            return
        now = self._clock()
        rows = [(now, a["target"], a["source"], int(bool(a["ok"])), a.get("error"),
                 float(a.get("latency_s") or 0.0)) for a in attempts]

        def write(db: sqlite3.Connection) -> None:
            db.executemany(
                "INSERT INTO requests (minute, target, source, ok, failed) VALUES (?, ?, ?, ?, ?) "
                "ON CONFLICT (minute, target, source) DO UPDATE SET ok = ok + excluded.ok, "
                "failed = failed + excluded.failed",
                [(int(at // 60), target, source, ok, 1 - ok) for at, target, source, ok, *_ in rows])
            if events:
                db.executemany("INSERT INTO failovers (at, target, source, ok, error, duration_s) "
                               "VALUES (?, ?, ?, ?, ?, ?)", rows)
            if self._pruned_at is None or now - self._pruned_at >= PRUNE_EVERY_S:
                db.execute("DELETE FROM failovers WHERE at < ?", (now - KEEP_FAILOVERS_S,))
                db.execute("DELETE FROM requests WHERE minute < ?", ((now - KEEP_FAILOVERS_S) // 60,))
                self._pruned_at = now

        self._queue("saving failover events", write)

    def request_counts(self, *, since_s: float) -> dict[tuple[str, str], tuple[int, int]]:
        """(target, source) -> (ok, failed) requests of the last ``since_s`` seconds (to the
        minute), every chat's, those that went straight through included."""
        self.flush(READ_WAIT_S)
        with self._db("reading request counts") as db:
            if db is None:
                return {}
            rows = db.execute("SELECT target, source, SUM(ok), SUM(failed) FROM requests "
                              "WHERE minute >= ? GROUP BY target, source",
                              (int((self._clock() - since_s) // 60),)).fetchall()
            return {(target, source): (int(ok), int(failed)) for target, source, ok, failed in rows}
        return {}

    def failovers(self, *, since_s: float | None = None, limit: int = 1000) -> list[dict[str, Any]]:
        """Attempts newest first, optionally only those of the last ``since_s`` seconds."""
        self.flush(READ_WAIT_S)
        with self._db("reading failover events") as db:
            if db is None:
                return []
            cutoff = self._clock() - since_s if since_s is not None else 0.0
            rows = db.execute("SELECT at, target, source, ok, error, duration_s FROM failovers "
                              "WHERE at >= ? ORDER BY at DESC, id DESC LIMIT ?", (cutoff, limit))
            keys = ("at", "target", "source", "ok", "error", "duration_s")
            return [dict(zip(keys, row, strict=True)) | {"ok": bool(row[3])} for row in rows]
        return []

    # -- monitoring ---------------------------------------------------------------------

    def add_monitor_session(self, report: dict[str, Any]) -> int | None:
        """Save a finished session and its samples; returns its id."""
        with self._db("saving a monitoring session") as db:
            if db is None:
                return None
            db.execute("BEGIN")
            try:
                cursor = db.execute(
                    "INSERT INTO monitor_sessions (started, duration_s, interval_s, stopped_early, "
                    "summary) VALUES (?, ?, ?, ?, ?)",
                    (report.get("started", self._clock()), report["duration_s"],
                     report["interval_s"], int(bool(report.get("stopped_early"))),
                     json.dumps(report.get("summary", {}))))
                session = cursor.lastrowid
                db.executemany(
                    "INSERT INTO monitor_samples (session, t_s, vram_used_mb, ram_used_mb, "
                    "cpu_percent, gpu_utilization_pct, tokens_per_s) VALUES (?, ?, ?, ?, ?, ?, ?)",
                    [(session, s["t_s"], s.get("vram_used_mb"), s.get("ram_used_mb"),
                      s.get("cpu_percent"), s.get("gpu_utilization_pct"), s.get("tokens_per_s"))
                     for s in report.get("samples", [])])
                db.execute("COMMIT")
            except BaseException:
                db.execute("ROLLBACK")
                raise
            return int(session) if session is not None else None
        return None

    def monitor_sessions(self, *, limit: int = 20) -> list[dict[str, Any]]:
        self.flush(READ_WAIT_S)
        with self._db("reading monitoring sessions") as db:
            if db is None:
                return []
            rows = db.execute("SELECT id, started, duration_s, interval_s, stopped_early, summary "
                              "FROM monitor_sessions ORDER BY started DESC, id DESC LIMIT ?",
                              (limit,)).fetchall()
            return [{"id": r[0], "started": r[1], "duration_s": r[2], "interval_s": r[3],
                     "stopped_early": bool(r[4]), "summary": json.loads(r[5] or "{}")} for r in rows]
        return []

    def monitor_samples(self, session: int) -> list[dict[str, Any]]:
        self.flush(READ_WAIT_S)
        with self._db("reading monitoring samples") as db:
            if db is None:
                return []
            keys = ("t_s", "vram_used_mb", "ram_used_mb", "cpu_percent", "gpu_utilization_pct",
                    "tokens_per_s")
            rows = db.execute(f"SELECT {', '.join(keys)} FROM monitor_samples WHERE session = ? "
                              "ORDER BY t_s", (session,)).fetchall()
            return [dict(zip(keys, row, strict=True)) for row in rows]
        return []

    # -- calibrations ---------------------------------------------------------------------

    def add_calibration(self, model_key: str, config_key: str, device: str, *,
                        estimated_mb: float, measured_mb: float) -> None:
        """Queued (a load writes it, on the chat path): it returns at once."""
        row = (self._clock(), model_key, config_key, device, estimated_mb, measured_mb)

        def write(db: sqlite3.Connection) -> None:
            db.execute("INSERT INTO calibrations (at, model_key, config_key, device, "
                       "estimated_mb, measured_mb) VALUES (?, ?, ?, ?, ?, ?)", row)

        self._queue("saving a calibration", write)

    def calibration(self, model_key: str, config_key: str, device: str) -> float | None:
        """measured / estimated of the latest calibration for this model, config and device."""
        self.flush(READ_WAIT_S)
        with self._db("reading calibrations") as db:
            if db is None:
                return None
            row = db.execute("SELECT estimated_mb, measured_mb FROM calibrations WHERE model_key = ? "
                             "AND config_key = ? AND device = ? ORDER BY at DESC, id DESC LIMIT 1",
                             (model_key, config_key, device)).fetchone()
            if row is None or row[0] <= 0:
                return None
            return float(row[1]) / float(row[0])
        return None


def _is_corrupt(exc: Exception) -> bool:
    if isinstance(exc, ForeignDatabase):
        return True
    text = str(exc).lower()
    return "not a database" in text or "malformed" in text or "corrupt" in text
