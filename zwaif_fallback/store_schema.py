"""The history database's schema: its migrations, and the checks that the file is ours.

``PRAGMA user_version`` counts the migrations applied. A file with tables but no migration
of ours is another program's (ForeignDatabase: the store moves it aside); one whose version
is beyond ours was written by a newer zwaif-fallback (NewerDatabase: refused, left alone).
"""

from __future__ import annotations

import functools
import sqlite3

__all__ = ["INDEXES", "MIGRATIONS", "ForeignDatabase", "NewerDatabase", "check_after", "check_before",
           "our_tables", "tables"]

MIGRATIONS: list[str] = [
    # 1: the first schema
    """
    CREATE TABLE benchmarks (
        id INTEGER PRIMARY KEY, at REAL NOT NULL, model TEXT NOT NULL, ok INTEGER NOT NULL,
        gen_tps REAL, quality_score REAL, data TEXT NOT NULL);
    CREATE INDEX benchmarks_model ON benchmarks (model, at);
    CREATE TABLE failovers (
        id INTEGER PRIMARY KEY, at REAL NOT NULL, target TEXT NOT NULL, source TEXT NOT NULL,
        ok INTEGER NOT NULL, error TEXT, duration_s REAL NOT NULL);
    CREATE INDEX failovers_at ON failovers (at);
    CREATE TABLE monitor_sessions (
        id INTEGER PRIMARY KEY, started REAL NOT NULL, duration_s REAL NOT NULL,
        interval_s REAL NOT NULL, stopped_early INTEGER, summary TEXT);
    CREATE TABLE monitor_samples (
        session INTEGER NOT NULL REFERENCES monitor_sessions (id) ON DELETE CASCADE,
        t_s REAL NOT NULL, vram_used_mb REAL, ram_used_mb REAL, cpu_percent REAL,
        gpu_utilization_pct REAL, tokens_per_s REAL);
    CREATE INDEX monitor_samples_session ON monitor_samples (session, t_s);
    CREATE TABLE calibrations (
        id INTEGER PRIMARY KEY, at REAL NOT NULL, model_key TEXT NOT NULL,
        config_key TEXT NOT NULL, device TEXT NOT NULL, estimated_mb REAL NOT NULL,
        measured_mb REAL NOT NULL);
    CREATE INDEX calibrations_key ON calibrations (model_key, config_key, device, at);
    """,
    # 2: every chat's requests counted per minute and target, those that went straight
    # through included: a failure rate needs them (failovers holds only the chats that
    # did not go straight through)
    """
    CREATE TABLE requests (
        minute INTEGER NOT NULL, target TEXT NOT NULL, source TEXT NOT NULL,
        ok INTEGER NOT NULL DEFAULT 0, failed INTEGER NOT NULL DEFAULT 0,
        PRIMARY KEY (minute, target, source));
    """,
]

#: Indexes made after the migrations, if not there: an index changes no table, so it needs
#: no schema version, and an older zwaif-fallback sharing the file (a host's pinned copy)
#: still opens it. A version for it would have made that copy refuse the file as newer.
INDEXES: list[str] = [
    # the Health tab's history (the newest benchmarks of every model) and the prune of old
    # ones read benchmarks by age: without it, each read sorted the whole table
    "CREATE INDEX IF NOT EXISTS benchmarks_at ON benchmarks (at)",
]


class ForeignDatabase(sqlite3.DatabaseError):
    """The file is a SQLite database, but not a zwaif-fallback history (moved aside)."""


class NewerDatabase(sqlite3.DatabaseError):
    """The file was written by a newer version: its schema is beyond ours (refused)."""


def tables(conn: sqlite3.Connection) -> dict[str, set[str]]:
    names = [row[0] for row in conn.execute(
        "SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite_%'")]
    return {name: {row[1] for row in conn.execute(f'PRAGMA table_info("{name}")')}
            for name in names}


@functools.cache
def our_tables() -> dict[str, set[str]]:
    """Our tables and their columns, as the migrations make them."""
    conn = sqlite3.connect(":memory:")
    try:
        for script in MIGRATIONS:
            conn.executescript(script)
        return tables(conn)
    finally:
        conn.close()


def check_before(conn: sqlite3.Connection) -> None:
    """Refuse a file that a migration would break or misread: a newer one, or another
    program's (tables but no migration of ours). Version and tables are read in one
    snapshot: another process may be migrating the same new file just now."""
    conn.execute("BEGIN")
    try:
        version = conn.execute("PRAGMA user_version").fetchone()[0]
        found = tables(conn)
    finally:
        conn.execute("COMMIT")
    if version > len(MIGRATIONS):
        raise NewerDatabase(
            f"it was written by a newer zwaif-fallback (schema {version}; this one knows up to "
            f"{len(MIGRATIONS)}), so history is not saved: upgrade zwaif-fallback, or move the file aside")
    if version == 0 and found:
        raise ForeignDatabase(f"it holds tables that are not zwaif-fallback's ({', '.join(sorted(found))})")


def check_after(conn: sqlite3.Connection) -> None:
    found, ours = tables(conn), our_tables()
    if found != ours:
        odd = sorted(set(found) ^ set(ours)) or sorted(t for t in ours if found[t] != ours[t])
        raise ForeignDatabase(f"its tables are not zwaif-fallback's (differing: {', '.join(odd)})")
