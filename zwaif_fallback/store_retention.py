"""How long the history keeps what, and its prune: a thousand rows at a time.

Every table is pruned: failover attempts and request counts after 30 days, monitoring
sessions after 90 (the newest few always stay), benchmarks after a year (a model's newest
few always stay: they are its speed in the ranking), calibrations down to the newest few per
model, config and device (a fit reads only the newest). A month away after a month of
failovers leaves a million rows to delete; one DELETE of them held the database for a
minute, every read (the fit's calibration, on the chat path) waiting. So ``prune_step``
deletes at most ``CHUNK_ROWS`` in one transaction, and the writer thread runs one step at a
time while nothing else waits (store_db.py): reads and writes go between steps, and a
process that exits leaves the rest for the next one.
"""

from __future__ import annotations

import sqlite3

__all__ = ["CHUNK_PAGES", "CHUNK_ROWS", "KEEP_BENCHMARKS", "KEEP_BENCHMARKS_S", "KEEP_CALIBRATIONS",
           "KEEP_FAILOVERS_S", "KEEP_MONITOR_S", "KEEP_MONITOR_SESSIONS", "PRUNE_EVERY_S", "prune_step"]

#: How long failover attempts (and per-minute request counts) are kept. A bot that chats
#: every 10 s while its main API is down writes two rows a chat (the skipped main API, the
#: answer): about 1.8 MB a day, for as long as serve runs. Health reads the last hour; the
#: UI, the last day.
KEEP_FAILOVERS_S = 30 * 86400
#: How long monitoring sessions are kept (one of 300 s at 0.1 s is 3000 samples, ~170 KiB) ...
KEEP_MONITOR_S = 90 * 86400
#: ... though the newest ones stay whatever their age (the UI lists 20)
KEEP_MONITOR_SESSIONS = 20
#: How long benchmarks are kept (the speed history of the Health tab) ...
KEEP_BENCHMARKS_S = 365 * 86400
#: ... though a model's newest ones stay whatever their age (the ranking reads 5 a model)
KEEP_BENCHMARKS = 5
#: Calibrations kept per model, config and device (every load writes one; a fit reads the newest)
KEEP_CALIBRATIONS = 5
#: How often a long-running process prunes, at most.
PRUNE_EVERY_S = 3600.0
#: Rows deleted in one transaction: tens of milliseconds holding the database, not a minute.
CHUNK_ROWS = 1000
#: Free pages handed back to the file system in one step (a database made with incremental
#: auto_vacuum, store_db.py; 4 KiB each): as long a step as CHUNK_ROWS
CHUNK_PAGES = 1000

_NEWEST_SESSIONS = "SELECT id FROM monitor_sessions ORDER BY started DESC, id DESC LIMIT :keep_sessions"
_OLD_SESSIONS = ("SELECT id FROM monitor_sessions WHERE started < :monitor_cutoff "
                 f"AND id NOT IN ({_NEWEST_SESSIONS})")

#: The deletes, in order, each of at most :limit rows. A session's samples go before it (its
#: ON DELETE CASCADE would delete them all in one step).
_DELETES = (
    "DELETE FROM failovers WHERE id IN (SELECT id FROM failovers WHERE at < :failover_cutoff LIMIT :limit)",
    "DELETE FROM requests WHERE rowid IN "
    "(SELECT rowid FROM requests WHERE minute < :minute_cutoff LIMIT :limit)",
    "DELETE FROM monitor_samples WHERE rowid IN "
    f"(SELECT rowid FROM monitor_samples WHERE session IN ({_OLD_SESSIONS}) LIMIT :limit)",
    f"DELETE FROM monitor_sessions WHERE id IN ({_OLD_SESSIONS} LIMIT :limit)",
    "DELETE FROM benchmarks WHERE id IN (SELECT id FROM benchmarks AS old WHERE at < :bench_cutoff "
    "AND id NOT IN (SELECT id FROM benchmarks WHERE model = old.model "
    "ORDER BY at DESC, id DESC LIMIT :keep_benchmarks) LIMIT :limit)",
    "DELETE FROM calibrations WHERE id IN (SELECT id FROM calibrations AS old WHERE id NOT IN "
    "(SELECT id FROM calibrations WHERE model_key = old.model_key AND config_key = old.config_key "
    "AND device = old.device ORDER BY at DESC, id DESC LIMIT :keep_calibrations) LIMIT :limit)",
)


def prune_step(db: sqlite3.Connection, now: float) -> bool:
    """Delete at most ``CHUNK_ROWS`` rows past their keeping (as of ``now``), or once they are
    gone hand back at most ``CHUNK_PAGES`` free pages; a transaction of its own (``db`` in
    autocommit). True when more may be left to do."""
    left = CHUNK_ROWS
    args = {"failover_cutoff": now - KEEP_FAILOVERS_S, "minute_cutoff": (now - KEEP_FAILOVERS_S) // 60,
            "monitor_cutoff": now - KEEP_MONITOR_S, "keep_sessions": KEEP_MONITOR_SESSIONS,
            "bench_cutoff": now - KEEP_BENCHMARKS_S, "keep_benchmarks": KEEP_BENCHMARKS,
            "keep_calibrations": KEEP_CALIBRATIONS}
    db.execute("BEGIN IMMEDIATE")
    try:
        for delete in _DELETES:
            left -= db.execute(delete, args | {"limit": left}).rowcount
            if left <= 0:
                break
        db.execute("COMMIT")
    finally:
        if db.in_transaction:
            db.execute("ROLLBACK")
    if left < CHUNK_ROWS:
        return True  # more rows, or the pages they leave free
    if db.execute("PRAGMA auto_vacuum").fetchone()[0] != 2:  # not INCREMENTAL: pages are reused
        return False
    if not db.execute("PRAGMA freelist_count").fetchone()[0]:
        return False
    # a script: execute() would free one page (it steps the pragma once)
    db.executescript(f"BEGIN IMMEDIATE; PRAGMA incremental_vacuum({CHUNK_PAGES}); COMMIT;")
    return bool(db.execute("PRAGMA freelist_count").fetchone()[0])
