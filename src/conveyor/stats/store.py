"""Where the statistics live and how they are kept current: fold, reconcile, prune.

Tables beside the task store's (SQLite: created here; PostgreSQL: migration 0004)::

    stats_state    name -> value; "watermark" is the last task_events.seq folded
    stats_counts   tasks now, by (queue, status)
    stats_totals   cumulative counters and histogram sums/counts, by (queue, type, name)
    stats_buckets  cumulative histogram buckets, by (queue, type, name, bucket)
    stats_minutes  per-minute counters and run-time buckets, by (minute, queue, name); 24 h kept
    stats_nodes    per node: attempts started, outcomes recorded, by (node, name)

``fold()`` reads the events after the watermark (with each one's task and previous event: from
the batch itself where it holds both, else one index probe),
tallies them (``tally.py``) and adds the deltas and the new watermark in ONE transaction, so a
crash never counts an event twice or loses one. Folds are serialized (SQLite: the write lock;
PostgreSQL: an advisory lock), so any process may fold; the scheduler leader does it every
second. Readers (``/metrics``, the overview) read the small tables: O(queues x types).

PostgreSQL hands out ``seq`` values when a transaction inserts, and a concurrent transaction
may commit a lower seq after a higher one is visible. A fold therefore stops at a gap in the
seqs and waits for it; a gap still open after ``GAP_WAIT_S`` is a rolled-back transaction that
will never fill, and is passed. (SQLite has one writer at a time: no gaps.)

``reconcile()`` recounts ``stats_counts`` from the tasks table at a consistent point (after the
fold caught up, in one snapshot). The first fold of a store does it and starts the counters at
zero; the leader repeats it hourly, so a status change made without its event (none is known)
could not skew the counts for long.

``prune()`` deletes a batch of tasks that finished before a cutoff, with their events, and
takes them off ``stats_counts`` in the same transaction (short: one batch per call).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any

from conveyor.stats.tally import FoldRow, Tally

log = logging.getLogger(__name__)

GAP_WAIT_S = 30.0
FOLD_BATCH = 5000
MINUTES_KEPT = 24 * 60
_ADVISORY_KEY = 0x636F6E73  # "cons"

# One statement in each dialect; "?" becomes "%s" on PostgreSQL.
_FOLD_SQL = """
WITH b AS (
    SELECT seq, task_id, from_status, to_status, at, detail, node,
        lag(at) OVER w AS prev_at, lag(to_status) OVER w AS prev_status
    FROM (SELECT * FROM task_events WHERE seq > ? ORDER BY seq LIMIT ?) e
    WINDOW w AS (PARTITION BY task_id ORDER BY seq)
)
SELECT b.seq, b.from_status, b.to_status, b.at, b.detail, t.queue, t.type, t.eta, b.node,
    CASE WHEN b.from_status IS NULL THEN NULL ELSE coalesce(b.prev_at, (
        SELECT p.at FROM task_events p WHERE p.task_id = b.task_id AND p.seq < b.seq ORDER BY p.seq DESC LIMIT 1)) END,
    CASE WHEN b.from_status IS NULL THEN NULL ELSE coalesce(b.prev_status, (
        SELECT p.to_status FROM task_events p WHERE p.task_id = b.task_id AND p.seq < b.seq
        ORDER BY p.seq DESC LIMIT 1)) END
FROM b LEFT JOIN tasks t ON t.id = b.task_id
ORDER BY b.seq
"""
_UPSERTS = {
    "counts": "INSERT INTO stats_counts (queue, status, n) VALUES (?, ?, ?)"
              " ON CONFLICT (queue, status) DO UPDATE SET n = stats_counts.n + excluded.n",
    "totals": "INSERT INTO stats_totals (queue, type, name, n) VALUES (?, ?, ?, ?)"
              " ON CONFLICT (queue, type, name) DO UPDATE SET n = stats_totals.n + excluded.n",
    "buckets": "INSERT INTO stats_buckets (queue, type, name, bucket, n) VALUES (?, ?, ?, ?, ?)"
               " ON CONFLICT (queue, type, name, bucket) DO UPDATE SET n = stats_buckets.n + excluded.n",
    "nodes": "INSERT INTO stats_nodes (node, name, n) VALUES (?, ?, ?)"
             " ON CONFLICT (node, name) DO UPDATE SET n = stats_nodes.n + excluded.n",
    "minutes": "INSERT INTO stats_minutes (minute, queue, name, n) VALUES (?, ?, ?, ?)"
               " ON CONFLICT (minute, queue, name) DO UPDATE SET n = stats_minutes.n + excluded.n",
}
_SET_STATE = ("INSERT INTO stats_state (name, value) VALUES (?, ?)"
              " ON CONFLICT (name) DO UPDATE SET value = excluded.value")

SQLITE_DDL = """
CREATE TABLE IF NOT EXISTS stats_state (name TEXT PRIMARY KEY, value REAL NOT NULL);
CREATE TABLE IF NOT EXISTS stats_counts (queue TEXT NOT NULL, status TEXT NOT NULL, n INTEGER NOT NULL,
    PRIMARY KEY (queue, status));
CREATE TABLE IF NOT EXISTS stats_totals (queue TEXT NOT NULL, type TEXT NOT NULL, name TEXT NOT NULL,
    n REAL NOT NULL, PRIMARY KEY (queue, type, name));
CREATE TABLE IF NOT EXISTS stats_buckets (queue TEXT NOT NULL, type TEXT NOT NULL, name TEXT NOT NULL,
    bucket INTEGER NOT NULL, n INTEGER NOT NULL, PRIMARY KEY (queue, type, name, bucket));
CREATE TABLE IF NOT EXISTS stats_minutes (minute INTEGER NOT NULL, queue TEXT NOT NULL, name TEXT NOT NULL,
    n REAL NOT NULL, PRIMARY KEY (minute, queue, name));
CREATE TABLE IF NOT EXISTS stats_nodes (node TEXT NOT NULL, name TEXT NOT NULL, n INTEGER NOT NULL,
    PRIMARY KEY (node, name));
CREATE INDEX IF NOT EXISTS tasks_queued_by_queue ON tasks (queue, queued_at) WHERE status = 'queued';
"""

Run = Callable[[str, Sequence[Any]], list[tuple[Any, ...]]]
RunMany = Callable[[str, Sequence[Sequence[Any]]], None]


class StatsStore:
    """The shared logic; ``SqliteStats`` and ``PostgresStats`` supply ``_transaction`` (yielding
    (run, run_many) inside one serialized transaction) and ``_read``."""

    _mark = "?"
    _gapless = True  # True when seqs become visible in order (one writer at a time)

    def __init__(self) -> None:
        self._gaps: dict[int, float] = {}  # first seq of an open gap -> monotonic time first seen

    @contextmanager
    def _transaction(self, snapshot: bool = False) -> Iterator[tuple[Run, RunMany]]:
        raise NotImplementedError
        yield  # pragma: no cover

    def _read(self, sql: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        raise NotImplementedError

    def _sql(self, sql: str) -> str:
        return sql if self._mark == "?" else sql.replace("?", self._mark)

    # -- folding -------------------------------------------------------------------------
    def fold(self, limit: int = FOLD_BATCH) -> int:
        """Fold up to ``limit`` new events; returns how many (0: caught up, or waiting on a gap)."""
        with self._transaction() as (run, run_many):
            watermark = self._watermark(run)
            if watermark is None:
                self._initialize(run, run_many)
                return 0
            folded, _, _ = self._fold_batch(run, run_many, watermark, limit)
        return folded

    def fold_all(self, max_batches: int = 100) -> int:
        total = 0
        for _ in range(max_batches):
            folded = self.fold()
            total += folded
            if folded == 0:
                break
        return total

    def _watermark(self, run: Run) -> int | None:
        rows = run(self._sql("SELECT value FROM stats_state WHERE name = 'watermark'"), ())
        return int(rows[0][0]) if rows else None

    def _fold_batch(self, run: Run, run_many: RunMany, watermark: int, limit: int) -> tuple[int, int, bool]:
        """Fold one batch after ``watermark``; returns (events folded, new watermark, caught up)."""
        rows = run(self._sql(_FOLD_SQL), (watermark, limit))
        usable = self._contiguous(watermark, rows)
        tally = Tally()
        for row in usable:
            seq, from_status, to_status, at, detail, queue, type_, eta, node, prev_at, prev_status = row
            if queue is not None:  # an event whose task is gone (SQLite keeps the newest row)
                tally.add(FoldRow(seq, from_status, to_status, at, detail, queue, type_, eta, prev_at, prev_status,
                                  node))
        if usable:
            self._apply(run_many, tally)
            run(self._sql(_SET_STATE), ("watermark", usable[-1][0]))
        caught_up = len(rows) < limit and len(usable) == len(rows)
        return len(usable), (usable[-1][0] if usable else watermark), caught_up

    def _contiguous(self, watermark: int, rows: list[tuple[Any, ...]]) -> list[tuple[Any, ...]]:
        """The rows up to the first gap that may still fill (see the module docstring)."""
        if self._gapless:
            return rows
        expected, now = watermark + 1, time.monotonic()
        for index, row in enumerate(rows):
            if row[0] != expected:
                first_seen = self._gaps.setdefault(expected, now)
                if now - first_seen < GAP_WAIT_S:
                    return rows[:index]
                log.info("stats: events %d-%d never appeared (rolled back); passing them", expected, row[0] - 1)
                self._gaps.pop(expected, None)
            expected = row[0] + 1
        return rows

    def _apply(self, run_many: RunMany, tally: Tally) -> None:
        if tally.counts:
            run_many(self._sql(_UPSERTS["counts"]), [(q, s, n) for (q, s), n in tally.counts.items() if n])
        if tally.totals:
            run_many(self._sql(_UPSERTS["totals"]), [(q, t, name, n) for (q, t, name), n in tally.totals.items()])
        if tally.buckets:
            run_many(self._sql(_UPSERTS["buckets"]),
                     [(q, t, name, b, n) for (q, t, name, b), n in tally.buckets.items()])
        if tally.nodes:
            run_many(self._sql(_UPSERTS["nodes"]), [(node, name, n) for (node, name), n in tally.nodes.items()])
        if tally.minutes:
            run_many(self._sql(_UPSERTS["minutes"]), [(m, q, name, n) for (m, q, name), n in tally.minutes.items()])

    def _initialize(self, run: Run, run_many: RunMany) -> None:
        """First fold of this store: counters start at zero from the newest event; counts from
        the tasks table, in the same snapshot."""
        newest = run("SELECT max(seq) FROM task_events", ())[0][0] or 0
        self._recount(run, run_many)
        run(self._sql(_SET_STATE), ("watermark", newest))
        log.info("stats: started counting at event %d", newest)

    def _recount(self, run: Run, run_many: RunMany) -> None:
        counts = run("SELECT queue, status, count(*) FROM tasks GROUP BY queue, status", ())
        run("DELETE FROM stats_counts", ())
        if counts:
            run_many(self._sql("INSERT INTO stats_counts (queue, status, n) VALUES (?, ?, ?)"), counts)

    def reconcile(self) -> bool:
        """Fold everything pending and recount ``stats_counts`` in one snapshot; False when a
        fresh gap kept the fold from catching up (try again later)."""
        with self._transaction(snapshot=True) as (run, run_many):
            watermark = self._watermark(run)
            if watermark is None:
                self._initialize(run, run_many)
                return True
            for _ in range(1000):
                folded, watermark, caught_up = self._fold_batch(run, run_many, watermark, FOLD_BATCH)
                if caught_up:
                    self._recount(run, run_many)
                    return True
                if folded == 0:
                    return False
        return False

    # -- retention -----------------------------------------------------------------------
    def prune(self, finished_before: float, limit: int = 500) -> int:
        """Delete up to ``limit`` tasks finished before ``finished_before`` (with their events)
        and take them off the counts; returns how many. Their events are folded first."""
        with self._transaction() as (run, run_many):
            watermark = self._watermark(run)
            if watermark is not None:
                self._fold_batch(run, run_many, watermark, FOLD_BATCH)
            gone = self._delete_finished(run, finished_before, limit)
            by_status: dict[tuple[str, str], int] = {}
            for queue, status in gone:
                by_status[(queue, status)] = by_status.get((queue, status), 0) + 1
            if by_status and watermark is not None:
                run_many(self._sql(_UPSERTS["counts"]), [(q, s, -n) for (q, s), n in by_status.items()])
            run(self._sql("DELETE FROM stats_minutes WHERE minute < ?"), (int(time.time() // 60) - MINUTES_KEPT,))
        return len(gone)

    def _delete_finished(self, run: Run, finished_before: float, limit: int) -> list[tuple[str, str]]:
        raise NotImplementedError

    def prune_nodes(self, heartbeat_before: float) -> int:
        """Forget nodes whose last heartbeat is older than ``heartbeat_before`` (lost or stopped
        long ago; a live node heartbeats every few seconds)."""
        with self._transaction() as (run, _):
            gone = run(self._sql("DELETE FROM nodes WHERE last_heartbeat < ? RETURNING id"), (heartbeat_before,))
            if gone:
                run("DELETE FROM stats_nodes WHERE node NOT IN (SELECT id FROM nodes)", ())
            return len(gone)

    # -- reading -------------------------------------------------------------------------
    def counts(self) -> dict[str, dict[str, int]]:
        """Tasks now by queue, then status (as of the last fold)."""
        result: dict[str, dict[str, int]] = {}
        for queue, status, n in self._read("SELECT queue, status, n FROM stats_counts"):
            if n:
                result.setdefault(queue, {})[status] = int(n)
        return result

    def totals(self) -> list[tuple[str, str, str, float]]:
        return [(q, t, name, float(n)) for q, t, name, n in
                self._read("SELECT queue, type, name, n FROM stats_totals ORDER BY queue, type, name")]

    def buckets(self) -> list[tuple[str, str, str, int, int]]:
        return [(q, t, name, int(b), int(n)) for q, t, name, b, n in self._read(
            "SELECT queue, type, name, bucket, n FROM stats_buckets ORDER BY queue, type, name, bucket")]

    def node_totals(self) -> dict[str, dict[str, int]]:
        """Per node: started, succeeded, failed, retried (attempts and outcomes it recorded)."""
        result: dict[str, dict[str, int]] = {}
        for node, name, n in self._read("SELECT node, name, n FROM stats_nodes"):
            result.setdefault(node, {})[name] = int(n)
        return result

    def minutes(self, since_minute: int) -> list[tuple[int, str, str, float]]:
        return [(int(m), q, name, float(n)) for m, q, name, n in self._read(
            self._sql("SELECT minute, queue, name, n FROM stats_minutes WHERE minute >= ? ORDER BY minute"),
            (since_minute,))]

    def has_pending(self) -> bool:
        """Whether a fold has anything to do (a cheap read; never takes the write lock)."""
        rows = self._read("SELECT value FROM stats_state WHERE name = 'watermark'")
        if not rows:
            return True
        # ORDER BY seq: an index probe even under a generic plan (without it PostgreSQL's generic
        # plan may scan the whole table to find that nothing is newer).
        return bool(self._read(self._sql("SELECT seq FROM task_events WHERE seq > ? ORDER BY seq LIMIT 1"),
                               (int(rows[0][0]),)))

    def pending(self) -> int:
        """Events not folded yet (how far behind the statistics are)."""
        rows = self._read("SELECT value FROM stats_state WHERE name = 'watermark'")
        if not rows:
            return -1
        newest = self._read("SELECT max(seq) FROM task_events")[0][0] or 0
        return max(0, int(newest) - int(rows[0][0]))

    def close(self) -> None:
        """Nothing of its own to close by default (it borrows the store's connection)."""
