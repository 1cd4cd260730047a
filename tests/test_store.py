from __future__ import annotations

import sqlite3
import subprocess
import sys
import threading
from collections.abc import Iterator
from contextlib import closing, contextmanager
from pathlib import Path

import pytest
from conftest import ROOT, FakeClock
from servers import wait_until

from zwaif_fallback import store_db, store_writer
from zwaif_fallback.bench import BenchmarkResult
from zwaif_fallback.store import KEEP_FAILOVERS_S, MIGRATIONS, PRUNE_EVERY_S, Store
from zwaif_fallback.store_retention import KEEP_BENCHMARKS, KEEP_CALIBRATIONS, KEEP_MONITOR_SESSIONS


def test_the_schema_migrates_itself_once(tmp_path):
    store = Store(tmp_path)
    store.add_benchmark({"model": "m", "ok": True})
    store.close()
    conn = sqlite3.connect(tmp_path / "history.sqlite3")
    assert conn.execute("PRAGMA user_version").fetchone()[0] == len(MIGRATIONS)
    assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    conn.close()
    again = Store(tmp_path)
    assert len(again.benchmarks()) == 1 and again.problem is None


def test_benchmarks_round_trip_newest_first(tmp_path):
    clock = FakeClock(1000.0)
    store = Store(tmp_path, clock=clock)
    store.add_benchmark({"model": "a", "ok": True, "gen_tps": 50.0})
    clock.now = 1001.0
    store.add_benchmark({"model": "b", "ok": False, "error": "no"})
    assert [b["model"] for b in store.benchmarks()] == ["b", "a"]
    assert store.benchmarks("a") == [{"model": "a", "ok": True, "gen_tps": 50.0, "at": 1000.0}]


def test_benchmarks_read_back_as_results_skip_rows_they_cannot_read(tmp_path):
    store = Store(tmp_path)
    store.add_benchmark({"model": "a", "ok": True, "gen_tps": 50.0, "from_a_newer_version": 1})
    store.add_benchmark({"model": "b", "ok": "not a bool"})
    store.add_benchmark({"no model": True})
    results = store.benchmarks_as(BenchmarkResult)
    assert [(r.model, r.ok, r.gen_tps) for r in results] == [("a", True, 50.0)]
    assert store.benchmarks_as(BenchmarkResult, "b") == []


def test_failover_events_can_be_read_by_age(tmp_path):
    clock = FakeClock(1000.0)
    store = Store(tmp_path, clock=clock)
    store.add_attempts([{"target": "http://x/v1", "source": "primary", "ok": False,
                         "error": "refused", "latency_s": 0.01}])
    clock.now = 2000.0
    store.add_attempts([{"target": "smol", "source": "local", "ok": True, "latency_s": 1.5}])
    assert [e["target"] for e in store.failovers()] == ["smol", "http://x/v1"]
    recent = store.failovers(since_s=60)
    assert recent == [{"at": 2000.0, "target": "smol", "source": "local", "ok": True,
                       "error": None, "duration_s": 1.5}]


def test_failover_events_older_than_thirty_days_are_deleted_as_new_ones_come(tmp_path):
    # serve runs for weeks: with the main API down, every chat wrote two rows, and none went
    clock = FakeClock(0.0)
    store = Store(tmp_path, clock=clock)
    event = {"target": "smol", "source": "local", "ok": True, "latency_s": 1.0}
    store.add_attempts([event])
    clock.now = KEEP_FAILOVERS_S - 1.0
    store.add_attempts([event])  # the first is not thirty days old yet: kept
    clock.now = KEEP_FAILOVERS_S + PRUNE_EVERY_S
    store.add_attempts([event])  # the prune goes on after the write, between later ones
    wait_until(lambda: [e["at"] for e in store.failovers()] == [KEEP_FAILOVERS_S + PRUNE_EVERY_S,
                                                                 KEEP_FAILOVERS_S - 1.0],
               timeout_s=30, what="the attempt of thirty days ago to go")


def old_attempts(folder: Path, rows: int, *, at: float = 0.0) -> int:
    """A history holding ``rows`` failover attempts made at ``at`` (a month away after a
    month of failovers leaves a million); returns how many there are."""
    made = Store(folder, clock=lambda: at)
    made.monitor_sessions()  # the file, migrated
    made.close()
    with closing(sqlite3.connect(folder / "history.sqlite3")) as conn, conn:
        conn.executemany("INSERT INTO failovers (at, target, source, ok, error, duration_s) "
                         "VALUES (?, 'smol', 'local', 1, NULL, 1.0)", ((at,) for _ in range(rows)))
        conn.execute("INSERT INTO calibrations (at, model_key, config_key, device, estimated_mb, "
                     "measured_mb) VALUES (?, 'm', 'ctx=4096', 'cpu', 100.0, 120.0)", (at,))
    return rows


def attempts_left(folder: Path) -> int:
    with closing(sqlite3.connect(folder / "history.sqlite3")) as conn:
        return int(conn.execute("SELECT COUNT(*) FROM failovers WHERE at < 1").fetchone()[0])


def pruning(folder: Path) -> Store:
    """A store whose first write began the prune of a month's backlog of old attempts."""
    backlog = old_attempts(folder, 200_000)
    store = Store(folder, clock=lambda: KEEP_FAILOVERS_S + 10.0)
    store.add_attempts([{"target": "smol", "source": "local", "ok": True, "latency_s": 1.0}])
    wait_until(lambda: attempts_left(folder) < backlog, timeout_s=30, what="the prune to begin",
               interval_s=0.001)
    return store


def test_a_fit_reads_its_calibration_while_a_large_backlog_is_pruned(tmp_path):
    # one DELETE of them all held the store for a minute: the fit's read, on the chat path, waited
    store = pruning(tmp_path)
    assert store.calibration("m", "ctx=4096", "cpu") == 1.2  # another process's, from the file
    assert attempts_left(tmp_path) > 0  # read between two steps of the prune
    assert [e["at"] for e in store.failovers()][:1] == [KEEP_FAILOVERS_S + 10.0]
    wait_until(lambda: attempts_left(tmp_path) == 0, timeout_s=120, what="the prune to end")
    assert store.problem is None


def test_a_process_that_closes_leaves_the_rest_of_a_prune_to_the_next(tmp_path):
    store = pruning(tmp_path)
    store.close()  # waits for one step of the prune, not for the backlog
    assert attempts_left(tmp_path) > 0
    again = Store(tmp_path, clock=lambda: KEEP_FAILOVERS_S + 20.0)
    again.add_attempts([{"target": "smol", "source": "local", "ok": True, "latency_s": 1.0}])
    wait_until(lambda: attempts_left(tmp_path) == 0, timeout_s=120, what="the next prune to end")
    assert len(again.failovers()) == 2


def test_a_new_database_hands_the_space_a_prune_frees_back(tmp_path):
    old_attempts(tmp_path, 50_000)
    before = (tmp_path / "history.sqlite3").stat().st_size
    store = Store(tmp_path, clock=lambda: KEEP_FAILOVERS_S + 10.0)
    store.add_attempts([{"target": "smol", "source": "local", "ok": True, "latency_s": 1.0}])

    def free_pages() -> int:
        with closing(sqlite3.connect(tmp_path / "history.sqlite3")) as conn:
            return int(conn.execute("PRAGMA freelist_count").fetchone()[0])

    wait_until(lambda: attempts_left(tmp_path) == 0 and free_pages() == 0, timeout_s=120,
               what="the prune to end and hand its pages back")
    store.close()  # checkpoints the write-ahead log into the file
    assert (tmp_path / "history.sqlite3").stat().st_size < before / 4


def test_every_table_keeps_its_rows_only_so_long_and_the_newest_that_are_read(tmp_path):
    old = FakeClock(0.0)  # a process 400 days ago wrote these
    store = Store(tmp_path, clock=old)
    for i in range(8):  # model a benchmarked 8 times, b once, all of it a year ago and more
        old.now = float(i)
        store.add_benchmark({"model": "a", "ok": True, "gen_tps": float(i)})
        store.add_calibration("m", "ctx=4096", "cpu", estimated_mb=100.0, measured_mb=100.0 + i)
    store.add_benchmark({"model": "b", "ok": True, "gen_tps": 1.0})
    for i in range(KEEP_MONITOR_SESSIONS + 5):
        store.add_monitor_session({"started": float(i), "duration_s": 3, "interval_s": 1,
                                   "samples": [{"t_s": float(t)} for t in range(3)]})
    store.add_attempts([{"target": "smol", "source": "local", "ok": True, "latency_s": 1.0}])
    store.close()
    store = Store(tmp_path, clock=lambda: 400 * 86400.0)  # its first write prunes
    store.add_attempts([{"target": "smol", "source": "local", "ok": True, "latency_s": 1.0}])

    def counts() -> dict[str, int]:
        with closing(sqlite3.connect(tmp_path / "history.sqlite3")) as conn:
            return {t: conn.execute(f"SELECT COUNT(*) FROM {t}").fetchone()[0] for t in
                    ("failovers", "requests", "monitor_sessions", "monitor_samples", "calibrations")}

    wait_until(lambda: counts() == {"failovers": 1, "requests": 1,
                                    "monitor_sessions": KEEP_MONITOR_SESSIONS,
                                    "monitor_samples": 3 * KEEP_MONITOR_SESSIONS,
                                    "calibrations": KEEP_CALIBRATIONS},
               timeout_s=30, what=f"the prune to leave only what is kept (now {counts()})")
    assert [s["started"] for s in store.monitor_sessions(limit=100)][-1] == 5.0  # the newest stay
    assert [b["gen_tps"] for b in store.benchmarks("a")] == [7.0, 6.0, 5.0, 4.0, 3.0][:KEEP_BENCHMARKS]
    assert [b["model"] for b in store.benchmarks("b")] == ["b"]  # a model's newest, however old
    assert store.calibration("m", "ctx=4096", "cpu") == 1.07


def test_monitor_sessions_keep_their_samples(tmp_path):
    store = Store(tmp_path)
    samples = [{"t_s": float(i), "vram_used_mb": 0.0, "ram_used_mb": 100.0 + i,
                "cpu_percent": 5.0, "gpu_utilization_pct": None} for i in range(3)]
    session = store.add_monitor_session({"duration_s": 10, "interval_s": 1, "stopped_early": True,
                                         "samples": samples, "summary": {"ram_used_mb": {"max": 102}}})
    assert store.monitor_sessions()[0]["summary"] == {"ram_used_mb": {"max": 102}}
    assert [s["ram_used_mb"] for s in store.monitor_samples(session)] == [100.0, 101.0, 102.0]


def test_the_latest_calibration_gives_the_correction(tmp_path):
    clock = FakeClock(1.0)
    store = Store(tmp_path, clock=clock)
    store.add_calibration("m", "ctx=4096", "cpu", estimated_mb=100.0, measured_mb=90.0)
    clock.now = 2.0
    store.add_calibration("m", "ctx=4096", "cpu", estimated_mb=100.0, measured_mb=110.0)
    assert store.calibration("m", "ctx=4096", "cpu") == 1.1
    assert store.calibration("m", "ctx=2048", "cpu") is None


def test_the_health_tabs_history_reads_benchmarks_in_order_of_an_index(tmp_path):
    # the newest 500 of every model's: sorting a year of benchmarks took 0.2 s a read
    store = Store(tmp_path)
    store.add_benchmark({"model": "a", "ok": True})
    store.close()
    with closing(sqlite3.connect(tmp_path / "history.sqlite3")) as conn:
        plan = conn.execute("EXPLAIN QUERY PLAN SELECT at, data FROM benchmarks "
                            "ORDER BY at DESC, id DESC LIMIT 500").fetchall()
    assert "benchmarks_at" in str(plan) and "TEMP B-TREE" not in str(plan)


@contextmanager
def another_program_holds(folder: Path, how: str = "IMMEDIATE") -> Iterator[None]:
    """The history database held in a write transaction by another program (DB Browser for
    SQLite with unsaved edits) while inside."""
    holder = sqlite3.connect(folder / "history.sqlite3", isolation_level=None)
    holder.execute(f"BEGIN {how}")
    try:
        yield
    finally:
        holder.execute("ROLLBACK")
        holder.close()


WRITER = """
import sys
import threading
from zwaif_fallback.store import Store
store = Store(sys.argv[1])
for i in range(50):
    store.add_benchmark({"model": sys.argv[2], "ok": True, "n": i})
assert store.problem is None, store.problem
"""


@pytest.mark.parametrize("round_", range(4))  # two processes creating it at once raced 1 in 2
def test_history_is_shared_between_processes(tmp_path, round_):
    writers = [subprocess.Popen([sys.executable, "-c", WRITER, str(tmp_path), name], cwd=ROOT)
               for name in ("one", "two")]
    assert [w.wait(60) for w in writers] == [0, 0]
    rows = Store(tmp_path).benchmarks(limit=1000)
    assert len(rows) == 100 and {r["model"] for r in rows} == {"one", "two"}


def test_a_corrupt_database_is_moved_aside_and_replaced(tmp_path):
    (tmp_path / "history.sqlite3").write_bytes(b"this is not a database" * 100)
    store = Store(tmp_path)
    store.add_benchmark({"model": "m", "ok": True})
    assert "corrupt" in store.notices[0] and store.problem is None
    assert len(list(tmp_path.glob("history.sqlite3.corrupt-*"))) == 1
    assert [b["model"] for b in store.benchmarks()] == ["m"]


def test_a_locked_database_is_reported_not_raised(tmp_path):
    store = Store(tmp_path)
    store.add_benchmark({"model": "m", "ok": True})
    with another_program_holds(tmp_path, "EXCLUSIVE"):
        store.add_benchmark({"model": "n", "ok": True})
        assert "locked" in store.problem
    store.add_benchmark({"model": "n", "ok": True})
    assert store.problem is None and len(store.benchmarks()) == 2


def test_an_unusable_folder_is_reported_not_raised(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("")
    store = Store(Path(blocker) / "data")
    store.add_benchmark({"model": "m", "ok": True})
    assert store.benchmarks() == [] and store.problem


def test_a_write_waits_for_no_lock_and_is_saved_once_the_lock_goes(tmp_path):
    # another program (DB Browser with unsaved edits) holds the database in a write
    # transaction: a chat's attempts used to wait out the 10 s busy timeout on the chat
    # path, and were lost after it
    store = Store(tmp_path)
    store.add_benchmark({"model": "m", "ok": True})
    with another_program_holds(tmp_path):
        store.add_attempts([{"target": "smol", "source": "local", "ok": True, "latency_s": 1.0}])
        store.add_calibration("m", "ctx=4096", "cpu", estimated_mb=100.0, measured_mb=110.0)
        assert store.problem is None  # returned before any wait on the database
        # every fit reads calibrations, on the chat path: this one's is known at once, with
        # no wait for the writes queued behind the lock (it waited the busy timeout)
        assert store.calibration("m", "ctx=4096", "cpu") == 1.1
        assert store._writer.flush(0) is False  # the write is still queued behind the lock
    assert store.flush(60)
    assert [e["target"] for e in store.failovers()] == ["smol"]
    assert store.calibration("m", "ctx=4096", "cpu") == 1.1 and store.problem is None
    assert Store(tmp_path).calibration("m", "ctx=4096", "cpu") == 1.1  # another process reads it


def test_writes_a_lock_holds_past_the_busy_timeout_are_kept_and_saved_once_it_ends(tmp_path,
                                                                                 monkeypatch):
    # DB Browser for SQLite with unsaved edits holds the database for minutes: the writes
    # queued meanwhile were lost after the busy timeout (10 s; shortened here)
    monkeypatch.setattr(store_db, "BUSY_TIMEOUT_S", 0.2)
    monkeypatch.setattr(store_writer, "RETRY_S", 0.05)
    store = Store(tmp_path)
    store.add_benchmark({"model": "m", "ok": True})  # the database exists, as after any use
    with another_program_holds(tmp_path):
        store.add_attempts([{"target": "smol", "source": "local", "ok": True, "latency_s": 1.0}])
        wait_until(lambda: store.problem and "kept: 1 write(s)" in store.problem, timeout_s=30,
                   what="the write to be kept")
    # a read in the meantime waited for no lock; once it ends, the kept write is saved
    wait_until(lambda: store.flush(1), timeout_s=30, what="the kept write to be saved")
    assert [e["target"] for e in store.failovers()] == ["smol"] and store.problem is None


def test_a_write_sqlite_refuses_costs_only_itself_in_its_batch(tmp_path, monkeypatch):
    # one refused row rolled back the whole batch: the other chats' attempts written with it
    monkeypatch.setattr(store_db, "BUSY_TIMEOUT_S", 0.2)
    monkeypatch.setattr(store_writer, "RETRY_S", 0.05)
    store = Store(tmp_path)
    store.add_benchmark({"model": "m", "ok": True})
    with another_program_holds(tmp_path):  # so that both writes wait, and go in one batch
        store._queue("saving a refused row", lambda db: db.execute(
            "INSERT INTO calibrations (id, at) VALUES (1, 0), (1, 0)"))
        store.add_attempts([{"target": "smol", "source": "local", "ok": True, "latency_s": 1.0}])
        wait_until(lambda: store.problem and "kept: 2 write(s)" in store.problem, timeout_s=30,
                   what="both writes to wait together")
    wait_until(lambda: store.flush(1), timeout_s=30, what="the batch to be written")
    assert [e["target"] for e in store.failovers()] == ["smol"]


def test_queued_writes_are_saved_when_the_store_closes_and_it_still_works_after(tmp_path):
    store = Store(tmp_path)
    for _ in range(20):
        store.add_attempts([{"target": "smol", "source": "local", "ok": False, "error": "x"}])
    store.close()
    assert len(Store(tmp_path).failovers()) == 20
    store.add_attempts([{"target": "smol", "source": "local", "ok": True}])  # as before: reopens
    assert len(store.failovers()) == 21 and store.problem is None


QUEUE_AT_EXIT = """
import sys
import threading
from zwaif_fallback.store import Store
store = Store(sys.argv[1])
for _ in range(30):
    store.add_attempts([{"target": "smol", "source": "local", "ok": False, "error": "x"}])
"""


def test_queued_writes_are_saved_when_the_process_exits_without_closing(tmp_path):
    writer = subprocess.run([sys.executable, "-c", QUEUE_AT_EXIT, str(tmp_path)], cwd=ROOT, timeout=60)
    assert writer.returncode == 0
    assert len(Store(tmp_path).failovers()) == 30


def test_every_request_is_counted_straight_through_ones_too(tmp_path):
    store = Store(tmp_path)
    ok = {"target": "http://x/v1", "source": "primary", "ok": True, "latency_s": 0.1}
    for _ in range(11):
        store.add_attempts([ok], events=False)  # answered straight away: no failover event
    store.add_attempts([ok | {"ok": False, "error": "refused"},
                        {"target": "smol", "source": "local", "ok": True}])
    assert store.request_counts(since_s=3600) == {("http://x/v1", "primary"): (11, 1),
                                                  ("smol", "local"): (1, 0)}
    assert len(store.failovers()) == 2


def test_a_full_queue_drops_writes_and_says_how_many(tmp_path):
    from zwaif_fallback.store_writer import BackgroundWriter, Write

    release = threading.Event()
    ran: list[str] = []
    writer = BackgroundWriter(lambda batch: (release.wait(60), ran.extend(w.what for w in batch)),
                              capacity=2)
    assert writer.put(Write("first", print))  # taken by the thread, which then waits
    while not writer.put(Write("queued", print)):
        pass
    results = [writer.put(Write(f"more {i}", print)) for i in range(5)]
    release.set()
    assert writer.flush(60) and writer.dropped == results.count(False) >= 4
    assert ran[0] == "first" and "queued" in ran


def test_another_programs_database_is_moved_aside_and_replaced(tmp_path):
    conn = sqlite3.connect(tmp_path / "history.sqlite3")
    conn.execute("CREATE TABLE benchmarks (name TEXT, score REAL)")
    conn.execute("INSERT INTO benchmarks VALUES ('theirs', 1.0)")
    conn.commit()
    conn.close()
    store = Store(tmp_path)
    store.add_benchmark({"model": "m", "ok": True})
    assert [b["model"] for b in store.benchmarks()] == ["m"] and store.problem is None
    assert "not zwaif-fallback's" in store.notices[0]
    (aside,) = tmp_path.glob("history.sqlite3.foreign-*")
    assert sqlite3.connect(aside).execute("SELECT name FROM benchmarks").fetchall() == [("theirs",)]


def test_an_index_added_later_leaves_the_schema_version_an_older_copy_reads(tmp_path):
    # schema 2 is what the released copies know: one of them (a host's pinned version) sharing
    # the file refused it as "written by a newer zwaif-fallback" when an index took version 3
    Store(tmp_path).add_benchmark({"model": "m", "ok": True})
    conn = sqlite3.connect(tmp_path / "history.sqlite3")
    assert conn.execute("PRAGMA user_version").fetchone()[0] == len(MIGRATIONS) == 2
    indexes = conn.execute("SELECT name FROM sqlite_master WHERE type = 'index'").fetchall()
    assert ("benchmarks_at",) in indexes


def test_a_database_from_a_newer_version_is_refused_and_left_alone(tmp_path):
    conn = sqlite3.connect(tmp_path / "history.sqlite3")
    conn.execute("PRAGMA user_version = 99")
    conn.close()
    store = Store(tmp_path)
    session = store.add_monitor_session({"duration_s": 1, "interval_s": 1, "samples": []})
    assert session is None and "newer zwaif-fallback" in (store.problem or "")
    assert "move the file aside" in (store.problem or "")
    assert list(tmp_path.glob("history.sqlite3.*")) == []
