"""History on disk: benchmark results, failover events, monitor samples, fit calibrations.

What each table holds, and how it is written and read. The file itself (opening,
migrating, recovering a corrupt one, the writer thread, never raising into the chat
path) is store_db.py's ``Database``: every method here swallows database errors into
``problem``. What a chat writes (its attempts, a load's calibration) is queued for the
writer thread; reads wait for the queued writes first, so a process reads what it wrote.
"""

from __future__ import annotations

import json
import logging
import sqlite3
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, TypeVar

from pydantic import BaseModel, ValidationError

from .store_db import READ_WAIT_S, Database
from .store_retention import KEEP_FAILOVERS_S, PRUNE_EVERY_S
from .store_schema import MIGRATIONS

__all__ = ["KEEP_FAILOVERS_S", "MIGRATIONS", "PRUNE_EVERY_S", "Store"]

log = logging.getLogger(__name__)

R = TypeVar("R", bound=BaseModel)


class Store(Database):
    """Thread-safe; every public method swallows database errors (see ``problem``)."""

    def __init__(self, data_dir: str | Path, *, clock: Callable[[], float] = time.time) -> None:
        super().__init__(data_dir, clock=clock)
        # (model, config, device) -> measured / estimated of the loads made in this process; a
        # lock of its own: the store's is held while the writer waits on another program
        self._calibrated: dict[tuple[str, str, str], float] = {}
        self._calibrated_lock = threading.Lock()

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
        """Queued (a load writes it, on the chat path): it returns at once; ``calibration``
        reads it at once too."""
        row = (self._clock(), model_key, config_key, device, estimated_mb, measured_mb)
        if estimated_mb > 0:
            with self._calibrated_lock:
                self._calibrated[(model_key, config_key, device)] = measured_mb / estimated_mb

        def write(db: sqlite3.Connection) -> None:
            db.execute("INSERT INTO calibrations (at, model_key, config_key, device, "
                       "estimated_mb, measured_mb) VALUES (?, ?, ?, ?, ?, ?)", row)

        self._queue("saving a calibration", write)

    def calibration(self, model_key: str, config_key: str, device: str) -> float | None:
        """measured / estimated of the latest calibration for this model, config and device.

        Read on the chat path (every fit): it waits for no queued write. A calibration this
        process made is known without the database; another process's is read from it."""
        with self._calibrated_lock:
            here = self._calibrated.get((model_key, config_key, device))
        if here is not None:
            return here
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

