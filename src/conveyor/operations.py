"""Operations: what an operator does beyond one task at a time, on top of ``TaskService``.

The dashboard, the HTTP API and the operator CLI all call this, so each action exists once:
search and id prefixes, bulk retry and cancel of the tasks matching a filter, the overview and
per-queue figures (from ``conveyor.stats``), dead letters (list, replay, delete), purge, and
the scheduler leader's maintenance (fold statistics, retention).

Bulk actions go task by task through ``TaskService.retry`` / ``cancel`` (the one place their
rules live) and stop after ``limit`` tasks; the result says whether more remain.
"""

from __future__ import annotations

import logging
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from conveyor.broker.dead_letters import DeadLetter, DeadLetters, dead_letters_of
from conveyor.config import Settings
from conveyor.errors import ConcurrentUpdate, ConveyorError, InvalidTransition, TaskNotFound
from conveyor.model import FINAL_STATUSES, NodeInfo, Page, TaskStatus, now
from conveyor.service import TaskService
from conveyor.stats import StatsStore, open_stats, quantile
from conveyor.stats.tally import BUCKETS_S
from conveyor.store.queries import TaskQueries, TaskSearch, open_queries, resolve_id

log = logging.getLogger(__name__)

BULK_LIMIT = 1000
PRUNE_BATCH = 500
RECONCILE_EVERY_S = 3600.0
RETENTION_EVERY_S = 60.0
RATE_WINDOW_S = 60.0
WAITING = (TaskStatus.QUEUED.value, TaskStatus.SCHEDULED.value, TaskStatus.RETRYING.value)


@dataclass
class BulkResult:
    done: list[str] = field(default_factory=list)  # task ids changed
    skipped: int = 0  # matched, but their status did not allow it (or they changed meanwhile)
    more: bool = False  # stopped at the limit: more tasks may match

    def to_dict(self) -> dict[str, Any]:
        return {"done": len(self.done), "ids": self.done, "skipped": self.skipped, "more": self.more}


class Operations:
    def __init__(self, service: TaskService, settings: Settings | None = None) -> None:
        self.service = service
        self.settings = settings or Settings()
        self._lock = threading.Lock()
        self._queries: TaskQueries | None = None
        self._stats: StatsStore | None = None
        self._dead: DeadLetters | None = None
        self._next_reconcile = 0.0
        self._next_retention = 0.0

    # -- lazily opened helpers ------------------------------------------------------------
    @property
    def queries(self) -> TaskQueries:
        if self._queries is None:
            with self._lock:
                self._queries = self._queries or open_queries(self.service.store)
        return self._queries

    @property
    def stats(self) -> StatsStore:
        if self._stats is None:
            with self._lock:
                self._stats = self._stats or open_stats(self.service.store)
        return self._stats

    @property
    def dead(self) -> DeadLetters:
        if self._dead is None:
            with self._lock:
                self._dead = self._dead or dead_letters_of(self.service.broker)
        return self._dead

    def close(self) -> None:
        if self._stats is not None:
            self._stats.close()
            self._stats = None

    # -- tasks ----------------------------------------------------------------------------
    def resolve(self, text: str) -> uuid.UUID:
        """A task id from a full id or a unique prefix (TaskNotFound, AmbiguousId, ValueError)."""
        return resolve_id(self.queries, text)

    def search(self, search: TaskSearch, *, limit: int = 50, cursor: uuid.UUID | None = None) -> Page:
        return self.queries.search(search, limit=limit, cursor=cursor)

    def retry_matching(self, search: TaskSearch, limit: int = BULK_LIMIT) -> BulkResult:
        """Retry every failed or cancelled task matching ``search`` (at most ``limit``)."""
        if search.status not in (None, TaskStatus.FAILED, TaskStatus.CANCELLED):
            raise ValueError("only failed or cancelled tasks can be retried")
        statuses = [search.status] if search.status else [TaskStatus.FAILED, TaskStatus.CANCELLED]
        result = BulkResult()
        for status in statuses:
            self._each(search.with_(status=status), limit, result, self.service.retry)
        return result

    def cancel_matching(self, search: TaskSearch, limit: int = BULK_LIMIT) -> BulkResult:
        """Cancel every unfinished task matching ``search`` (at most ``limit``)."""
        if search.status is not None and search.status in FINAL_STATUSES:
            raise ValueError("finished tasks cannot be cancelled")
        statuses = [search.status] if search.status else [s for s in TaskStatus if s not in FINAL_STATUSES]
        result = BulkResult()
        for status in statuses:
            self._each(search.with_(status=status), limit, result, self.service.cancel)
        return result

    def _each(self, search: TaskSearch, limit: int, result: BulkResult, action: Callable[[uuid.UUID], Any]) -> None:
        cursor: uuid.UUID | None = None
        while len(result.done) < limit:
            page = self.queries.search(search, limit=min(200, limit - len(result.done) + 1), cursor=cursor)
            for task in page.tasks:
                if len(result.done) >= limit:
                    result.more = True
                    return
                try:
                    action(task.id)
                    result.done.append(str(task.id))
                except (InvalidTransition, ConcurrentUpdate, TaskNotFound):
                    result.skipped += 1
            if page.next_cursor is None:
                return
            cursor = page.next_cursor
        result.more = True

    def apply_to_ids(self, ids: list[str], action: str) -> BulkResult:
        """``retry`` or ``cancel`` the tasks named by ``ids`` (full ids or prefixes)."""
        do = self.service.retry if action == "retry" else self.service.cancel
        result = BulkResult()
        for text in ids[:BULK_LIMIT]:
            try:
                task_id = self.resolve(text)
                do(task_id)
                result.done.append(str(task_id))
            except (InvalidTransition, ConcurrentUpdate, TaskNotFound):
                result.skipped += 1
        result.more = len(ids) > BULK_LIMIT
        return result

    # -- overview -------------------------------------------------------------------------
    def refresh(self) -> None:
        """Fold new events (one batch) if there are any: readers see current figures even where
        no scheduler leader folds (an API without one, tests). A cheap read when there are none."""
        if self.stats.has_pending():
            self.stats.fold()

    def counts(self) -> dict[str, int]:
        """Tasks by status, every status listed (from the statistics, as of the last fold)."""
        self.refresh()
        totals = {s.value: 0 for s in TaskStatus}
        for by_status in self.stats.counts().values():
            for status, n in by_status.items():
                totals[status] = totals.get(status, 0) + n
        return totals

    def queues(self) -> list[dict[str, Any]]:
        """Per queue: depth (waiting), in flight, oldest waiting age, consumers (live nodes
        serving it and their slots), counts by status, finished in the last 60 s."""
        self.refresh()
        at = now()
        counts = self.stats.counts()
        oldest = self.queries.oldest_waiting()
        consumers: dict[str, list[NodeInfo]] = {}
        for node in self.service.nodes():
            if node.status == "live" and not node.is_silent(at, self.settings.heartbeat_s):
                for name in node.queues:
                    if not name.startswith("_node."):  # a node's own queue (routing) is no queue to show
                        consumers.setdefault(name, []).append(node)
        finished = self.queries.finished_since(at - RATE_WINDOW_S)
        rows = []
        for name in sorted(set(counts) | set(consumers) | set(oldest)):
            by_status = {s.value: counts.get(name, {}).get(s.value, 0) for s in TaskStatus}
            serving = consumers.get(name, [])
            rows.append({
                "name": name,
                "depth": sum(by_status[s] for s in WAITING),
                "queued": by_status["queued"],
                "in_flight": by_status["running"],
                "oldest_waiting_s": round(at - oldest[name], 3) if name in oldest else None,
                "consumers": len(serving),
                "slots": sum(n.concurrency for n in serving),
                "succeeded": by_status["succeeded"],
                "failed": by_status["failed"],
                "cancelled": by_status["cancelled"],
                "finished_last_60s": finished.get(name, 0),
                "rate_per_s": round(finished.get(name, 0) / RATE_WINDOW_S, 3),
                "counts": by_status,
            })
        return rows

    def series(self, window_s: float = 3600.0) -> dict[str, Any]:
        """Per minute over the window: started, succeeded, failed, retried, p50/p95 run time;
        and the same over the whole window."""
        self.refresh()
        last = int(now() // 60)
        first = last - int(window_s // 60) + 1
        per_minute: dict[int, dict[str, float]] = {m: {} for m in range(first, last + 1)}
        for minute, _queue, name, n in self.stats.minutes(first):
            if minute in per_minute:
                per_minute[minute][name] = per_minute[minute].get(name, 0.0) + n
        buckets_total = [0.0] * (len(BUCKETS_S) + 1)
        rows: list[dict[str, Any]] = []
        for minute in range(first, last + 1):
            values = per_minute[minute]
            buckets = [values.get(f"run_b{i}", 0.0) for i in range(len(BUCKETS_S) + 1)]
            buckets_total = [a + b for a, b in zip(buckets_total, buckets, strict=True)]
            rows.append({"minute": minute * 60, **{k: int(values.get(k, 0)) for k in
                                                   ("started", "succeeded", "failed", "retried")},
                         "p50_s": quantile(buckets, 0.5), "p95_s": quantile(buckets, 0.95)})
        succeeded = sum(r["succeeded"] for r in rows)
        failed = sum(r["failed"] for r in rows)
        return {
            "window_s": window_s, "minutes": rows,
            "succeeded": succeeded, "failed": failed,
            "throughput_per_min": round((succeeded + failed) / max(1, len(rows)), 2),
            "failure_rate": round(failed / (succeeded + failed), 4) if succeeded + failed else 0.0,
            "p50_s": quantile(buckets_total, 0.5), "p95_s": quantile(buckets_total, 0.95),
        }

    def overview(self) -> dict[str, Any]:
        at = now()
        by_state: dict[str, int] = {"live": 0, "lost": 0}
        for node in self.service.nodes():
            state = "lost" if node.is_silent(at, self.settings.heartbeat_s) else node.status
            if state != "stopped":
                by_state[state] = by_state.get(state, 0) + 1
        return {"at": at, "counts": self.counts(), "queues": self.queues(), "series": self.series(),
                "nodes": by_state, "pending_events": self.stats.pending()}

    # -- dead letters ---------------------------------------------------------------------
    def dead_letters(self, limit: int = 100) -> list[DeadLetter]:
        return self.dead.peek(limit)

    def replay_dead(self, ids: list[str] | None) -> int:
        """Send dead letters back. One whose task is stored as failed or cancelled is retried
        (its task runs again, under the same id); others go back to their queue as they are."""
        return self.dead.replay(ids, publish=self._retry_task_of)

    def _retry_task_of(self, letter: DeadLetter) -> bool:
        if letter.task_id is None:
            return False
        try:
            task = self.service.get(uuid.UUID(letter.task_id))
        except (TaskNotFound, ValueError):
            return False
        if task.status not in (TaskStatus.FAILED, TaskStatus.CANCELLED):
            return False  # sent back as it is; the claim decides (a finished task is dropped)
        self.service.retry(task.id)
        return True

    def delete_dead(self, ids: list[str] | None) -> int:
        return self.dead.delete(ids)

    # -- retention and maintenance --------------------------------------------------------
    def purge(self, finished_before: float, *, max_batches: int = 10_000) -> int:
        """Delete every task finished before ``finished_before``, in short batches."""
        total = 0
        for _ in range(max_batches):
            deleted = self.stats.prune(finished_before, PRUNE_BATCH)
            total += deleted
            if deleted < PRUNE_BATCH:
                break
        return total

    def maintain(self, *, max_prune_batches: int = 20) -> dict[str, int]:
        """The leader's periodic work (every second): fold new events; every minute, or sooner
        while a backlog remains, delete past retention in short batches (no lock held long) and
        forget old nodes; hourly, reconcile the counts."""
        done = {"folded": 0, "pruned": 0, "nodes": 0}
        try:
            done["folded"] = self.stats.fold_all(max_batches=20)
            mono = time.monotonic()
            if mono >= self._next_retention:
                cutoff = now() - self.settings.retention_s
                backlog = False
                for _ in range(max_prune_batches):
                    deleted = self.stats.prune(cutoff, PRUNE_BATCH)
                    done["pruned"] += deleted
                    backlog = deleted == PRUNE_BATCH
                    if not backlog:
                        break
                done["nodes"] = self.stats.prune_nodes(now() - self.settings.node_retention_s)
                self._next_retention = mono if backlog else mono + RETENTION_EVERY_S
            if mono >= self._next_reconcile and self.stats.reconcile():
                self._next_reconcile = time.monotonic() + RECONCILE_EVERY_S
        except ConveyorError as exc:
            log.warning("maintenance failed: %s", exc, extra={"action": "maintenance"})
        if done["pruned"] or done["nodes"]:
            log.info("retention: deleted %d finished task(s) and %d old node(s)", done["pruned"], done["nodes"],
                     extra={"action": "retention"})
        return done
