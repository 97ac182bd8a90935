"""What the statistics count, as pure functions of the task timeline.

Each ``task_events`` row is one status change. Folding a row (with the task's queue and type,
and the task's previous event) into a ``Tally`` gives:

- ``counts``: tasks by (queue, status) now: +1 to the new status, -1 to the old one.
- ``totals``: cumulative counters by (queue, type, name): submitted, started, succeeded,
  failed, cancelled, retried (an automatic retry, or a manual one of a failed/cancelled task),
  dead_lettered (a task failed because no node knows its type: its message is dead-lettered),
  and the ``_sum``/``_count`` of each histogram.
- ``buckets``: cumulative histogram buckets by (queue, type, name, bucket): ``run_seconds`` (an
  attempt's run time: from its ``running`` event to the event that ended it) and
  ``queue_wait_seconds`` (from when a task became due, i.e. its previous event or its eta if
  later, to the start of the attempt).
- ``minutes``: per minute and queue, the same counters and run-time buckets, for the
  dashboard's last-hour chart and percentiles.
- ``nodes``: per node, the attempts it started and the outcomes it recorded (succeeded,
  failed, retried), for the nodes page.
"""

from __future__ import annotations

import bisect
from collections import Counter, defaultdict
from dataclasses import dataclass, field

# Upper bounds (seconds) of the histogram buckets; one more bucket is +Inf.
BUCKETS_S: tuple[float, ...] = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
                                300.0, 1800.0, 3600.0)
COUNTERS = ("submitted", "started", "succeeded", "failed", "cancelled", "retried", "dead_lettered")
HISTOGRAMS = ("run_seconds", "queue_wait_seconds")
MINUTE_COUNTERS = ("started", "succeeded", "failed", "cancelled", "retried")
DEAD_LETTER_DETAIL = "unknown task type"  # the worker's event detail when it dead-letters a task
_NODE_COUNTERS = {"running": "started", "succeeded": "succeeded", "failed": "failed", "retrying": "retried"}


@dataclass(frozen=True, slots=True)
class FoldRow:
    """One event to fold, with what the statistics need from its task and previous event."""

    seq: int
    from_status: str | None
    to_status: str
    at: float
    detail: str | None
    queue: str
    type: str
    eta: float | None
    prev_at: float | None  # the task's event before this one
    prev_status: str | None
    node: str | None = None  # the node that made the change, if one did


def bucket_of(seconds: float) -> int:
    """Index of the histogram bucket ``seconds`` falls in (``len(BUCKETS_S)`` = +Inf)."""
    return bisect.bisect_left(BUCKETS_S, seconds)


@dataclass
class Tally:
    counts: Counter[tuple[str, str]] = field(default_factory=Counter)
    totals: defaultdict[tuple[str, str, str], float] = field(default_factory=lambda: defaultdict(float))
    buckets: Counter[tuple[str, str, str, int]] = field(default_factory=Counter)
    minutes: defaultdict[tuple[int, str, str], float] = field(default_factory=lambda: defaultdict(float))
    nodes: Counter[tuple[str, str]] = field(default_factory=Counter)

    def add(self, row: FoldRow) -> None:
        queue, type_, to = row.queue, row.type, row.to_status
        if row.from_status is not None:
            self.counts[(queue, row.from_status)] -= 1
        self.counts[(queue, to)] += 1
        minute = int(row.at // 60)
        if row.from_status is None:
            self._count(queue, type_, "submitted", minute)
        elif to == "running":
            self._count(queue, type_, "started", minute)
            if row.prev_at is not None:
                due = row.eta if row.eta is not None and row.prev_at < row.eta <= row.at else row.prev_at
                self._observe(queue, type_, "queue_wait_seconds", row.at - due)
        elif to == "queued" and row.from_status in ("failed", "cancelled"):
            self._count(queue, type_, "retried", minute)
        if to in ("succeeded", "failed", "cancelled"):
            self._count(queue, type_, to, minute)
        if to == "retrying":
            self._count(queue, type_, "retried", minute)
        if to == "failed" and row.detail == DEAD_LETTER_DETAIL:
            self._count(queue, type_, "dead_lettered", minute)
        if row.node is not None and row.from_status is not None and to in _NODE_COUNTERS:
            self.nodes[(row.node, _NODE_COUNTERS[to])] += 1
        if row.from_status == "running" and row.prev_status == "running" and row.prev_at is not None \
                and to in ("succeeded", "failed", "retrying"):
            run_s = max(0.0, row.at - row.prev_at)
            self._observe(queue, type_, "run_seconds", run_s)
            self.minutes[(minute, queue, f"run_b{bucket_of(run_s)}")] += 1
            self.minutes[(minute, queue, "run_sum")] += run_s

    def _count(self, queue: str, type_: str, name: str, minute: int) -> None:
        self.totals[(queue, type_, name)] += 1
        if name in MINUTE_COUNTERS:
            self.minutes[(minute, queue, name)] += 1

    def _observe(self, queue: str, type_: str, name: str, seconds: float) -> None:
        seconds = max(0.0, seconds)
        self.buckets[(queue, type_, name, bucket_of(seconds))] += 1
        self.totals[(queue, type_, f"{name}_sum")] += seconds
        self.totals[(queue, type_, f"{name}_count")] += 1

    def __bool__(self) -> bool:
        return bool(self.counts or self.totals or self.buckets or self.minutes or self.nodes)


def quantile(buckets: list[float], q: float) -> float | None:
    """The ``q`` quantile estimated from bucket counts (linear inside a bucket, as Prometheus'
    ``histogram_quantile`` does); None without observations."""
    total = sum(buckets)
    if total <= 0:
        return None
    rank = q * total
    seen = 0.0
    for index, count in enumerate(buckets):
        if count and seen + count >= rank:
            lower = BUCKETS_S[index - 1] if index > 0 else 0.0
            if index >= len(BUCKETS_S):
                return lower  # the +Inf bucket: its lower bound is the best we know
            return lower + (BUCKETS_S[index] - lower) * (rank - seen) / count
        seen += count
    return BUCKETS_S[-1]
