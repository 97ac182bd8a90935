"""The worker's batch writes on every store: claim_many (with the attempt fence), finish_many
(fenced outcomes) and the outbox."""

from __future__ import annotations

from conveyor.model import Task, TaskStatus
from conveyor.store.base import Outcome, Store

S = TaskStatus


def _claim(store: Store, task: Task, node: str = "node-1", attempt: int | None = None) -> Task | None:
    return store.claim_many([(task.id, task.attempts + 1 if attempt is None else attempt)], node, 30.0)[0]


def test_a_queued_task_starts_as_the_attempt_its_message_is_for(store: Store) -> None:
    task, _ = store.create(Task(type="t"))
    before = store.now()
    started = _claim(store, task)
    assert started is not None
    assert (started.status, started.node, started.attempts) == (S.RUNNING, "node-1", 1)
    assert started.lease_until is not None and before + 29 < started.lease_until < store.now() + 31
    assert started == store.get(task.id)
    last = store.events(task.id)[-1]
    assert (last.from_status, last.to_status, last.node, last.detail) == (S.QUEUED, S.RUNNING, "node-1", "attempt 1")


def test_a_batch_claims_each_task_once_and_leaves_the_rest(store: Store) -> None:
    a, _ = store.create(Task(type="t"))
    b, _ = store.create(Task(type="t"))
    running, _ = store.create(Task(type="t"))
    assert _claim(store, running, "other") is not None

    out = store.claim_many([(a.id, 1), (b.id, 1), (a.id, 1), (running.id, 1), (Task(type="t").id, 1)], "me", 30.0)

    assert [t.id if t else None for t in out] == [a.id, b.id, None, None, None]
    assert store.get(running.id).node == "other"


def test_a_stale_copy_of_an_older_attempt_never_starts(store: Store) -> None:
    task, _ = store.create(Task(type="t"))
    first = _claim(store, task)
    assert first is not None
    [retrying] = store.finish_many([Outcome(task.id, 1, S.RETRYING, error={"type": "E", "message": "m"},
                                            retry_in_s=0.0, publish=True)], "node-1")
    assert retrying is not None and retrying.status is S.RETRYING

    assert _claim(store, retrying, "node-2", attempt=1) is None  # the redelivered attempt-1 message
    started = _claim(store, retrying, "node-2", attempt=2)  # the retry's own message
    assert started is not None and started.attempts == 2


def test_a_task_not_yet_due_is_left_alone(store: Store) -> None:
    task, _ = store.create(Task(type="t", status=S.SCHEDULED, eta=store.now() + 60))
    assert _claim(store, task) is None
    assert store.get(task.id).status is S.SCHEDULED


def test_finish_is_fenced_on_the_node_and_the_attempt(store: Store) -> None:
    task, _ = store.create(Task(type="t"))
    started = _claim(store, task)
    assert started is not None

    wrong_node = store.finish_many([Outcome(task.id, 1, S.SUCCEEDED, result=1)], "node-2")
    wrong_attempt = store.finish_many([Outcome(task.id, 2, S.SUCCEEDED, result=1)], "node-1")
    done = store.finish_many([Outcome(task.id, 1, S.SUCCEEDED, result={"ok": True})], "node-1")
    again = store.finish_many([Outcome(task.id, 1, S.FAILED, error={"type": "E", "message": "m"})], "node-1")

    assert wrong_node == [None] and wrong_attempt == [None] and again == [None]
    stored = store.get(task.id)
    assert done == [stored]
    assert (stored.status, stored.result, stored.lease_until) == (S.SUCCEEDED, {"ok": True}, None)
    assert stored.finished_at is not None
    assert [e.to_status for e in store.events(task.id)] == [S.QUEUED, S.RUNNING, S.SUCCEEDED]


def test_a_cancelled_task_fences_off_its_late_outcome(store: Store) -> None:
    task, _ = store.create(Task(type="t"))
    started = _claim(store, task)
    assert started is not None
    store.update(started, S.CANCELLED)

    assert store.finish_many([Outcome(task.id, 1, S.SUCCEEDED, result=1)], "node-1") == [None]
    assert store.get(task.id).status is S.CANCELLED


def test_a_retry_is_written_with_its_backoff_and_an_outbox_intent(store: Store) -> None:
    task, _ = store.create(Task(type="t"), publish=False)
    assert _claim(store, task) is not None
    before = store.now()

    [retrying] = store.finish_many([Outcome(task.id, 1, S.RETRYING, error={"type": "E", "message": "m"},
                                            retry_in_s=5.0, detail="E: retry in 5.00 s", publish=True)], "node-1")

    assert retrying is not None and retrying.eta is not None
    assert before + 4.9 < retrying.eta < store.now() + 5.1
    assert store.unpublished(-60.0) == [retrying]
    store.mark_published([retrying])
    assert store.unpublished(-60.0) == []


def test_a_task_given_back_does_not_count_the_interrupted_attempt(store: Store) -> None:
    task, _ = store.create(Task(type="t"))
    assert _claim(store, task) is not None

    [back] = store.finish_many([Outcome(task.id, 1, S.QUEUED, detail="returned on worker shutdown")], "node-1")

    assert back is not None and (back.status, back.attempts, back.lease_until) == (S.QUEUED, 0, None)
    assert _claim(store, back, attempt=1) is not None, "its requeued message runs it"


def test_the_outbox_keeps_a_submit_until_it_is_marked_published(store: Store) -> None:
    task, _ = store.create(Task(type="t"))
    quiet, _ = store.create(Task(type="t"), publish=False)

    assert [t.id for t in store.unpublished(-60.0)] == [task.id]
    assert store.unpublished(60.0) == [], "younger than the grace period"
    store.mark_published([task])
    assert store.unpublished(-60.0) == []
    assert store.get(quiet.id).status is S.QUEUED


def test_an_older_publish_does_not_clear_a_newer_intent(store: Store) -> None:
    task, _ = store.create(Task(type="t"))
    newer = store.update(task, None, publish=True, priority=3)

    store.mark_published([task])  # the first message, for the version before

    assert [t.id for t in store.unpublished(-60.0)] == [newer.id]


def test_a_repeated_id_inserts_nothing_and_returns_the_first(store: Store) -> None:
    task, created = store.create(Task(type="t", params={"a": 1}))
    again, created_again = store.create(task.replace(params={"a": 2}))
    assert created and not created_again
    assert again.params == {"a": 1}
