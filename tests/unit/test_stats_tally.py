"""What the statistics count for each kind of status change (pure: no store)."""

from __future__ import annotations

import pytest

from conveyor.stats.tally import BUCKETS_S, FoldRow, Tally, bucket_of, quantile


def row(from_status: str | None, to_status: str, at: float, *, prev_at: float | None = None,
        prev_status: str | None = None, detail: str | None = None, eta: float | None = None,
        node: str | None = "n1") -> FoldRow:
    return FoldRow(1, from_status, to_status, at, detail, "q", "t", eta, prev_at, prev_status, node)


def test_a_task_that_runs_once_and_succeeds() -> None:
    tally = Tally()
    tally.add(row(None, "queued", 600.0))
    tally.add(row("queued", "running", 602.0, prev_at=600.0, prev_status="queued"))
    tally.add(row("running", "succeeded", 602.5, prev_at=602.0, prev_status="running"))
    assert {k: v for k, v in tally.counts.items() if v} == {("q", "succeeded"): 1}
    assert tally.totals[("q", "t", "submitted")] == 1
    assert tally.totals[("q", "t", "started")] == 1
    assert tally.totals[("q", "t", "succeeded")] == 1
    assert tally.totals[("q", "t", "queue_wait_seconds_sum")] == pytest.approx(2.0)
    assert tally.totals[("q", "t", "run_seconds_sum")] == pytest.approx(0.5)
    assert tally.buckets[("q", "t", "run_seconds", bucket_of(0.5))] == 1
    assert tally.minutes[(10, "q", "succeeded")] == 1
    assert tally.nodes[("n1", "started")] == 1 and tally.nodes[("n1", "succeeded")] == 1


def test_retries_failures_and_dead_letters_are_counted() -> None:
    tally = Tally()
    tally.add(row("running", "retrying", 10.0, prev_at=9.0, prev_status="running"))
    tally.add(row("running", "failed", 20.0, prev_at=19.0, prev_status="running"))
    tally.add(row("failed", "queued", 30.0, prev_at=20.0, prev_status="failed", node=None))
    tally.add(row("running", "failed", 40.0, prev_at=39.0, prev_status="running", detail="unknown task type"))
    tally.add(row("queued", "cancelled", 50.0, prev_at=45.0, prev_status="queued", node=None))
    totals = {name: n for (_, _, name), n in tally.totals.items()}
    assert totals["retried"] == 2  # one automatic, one manual
    assert totals["failed"] == 2 and totals["dead_lettered"] == 1 and totals["cancelled"] == 1
    assert totals["run_seconds_count"] == 3


def test_queue_wait_starts_at_the_eta_of_a_delayed_task() -> None:
    tally = Tally()
    tally.add(row("scheduled", "running", 100.5, prev_at=10.0, prev_status="scheduled", eta=100.0))
    assert tally.totals[("q", "t", "queue_wait_seconds_sum")] == pytest.approx(0.5)


def test_quantiles_interpolate_inside_a_bucket() -> None:
    buckets = [0.0] * (len(BUCKETS_S) + 1)
    buckets[bucket_of(0.3)] = 10  # (0.25, 0.5]
    assert quantile(buckets, 0.5) == pytest.approx(0.375)
    assert quantile([0.0] * (len(BUCKETS_S) + 1), 0.5) is None
    buckets[-1] = 90  # +Inf: the best known is its lower bound
    assert quantile(buckets, 0.95) == BUCKETS_S[-1]
