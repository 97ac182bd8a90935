"""Flow control on every store (docs/flow-control.md): unique tasks, concurrency and rate limits
decided in the store on its clock, workflow steps released with their parents' outcomes, and
routing pins moved off dead nodes. Each runs on SQLite and PostgreSQL."""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Sequence

import pytest

from conveyor.flow import limits as lim
from conveyor.flow import routing, workflows
from conveyor.flow.limits import Held, LimitDef, LimitRef
from conveyor.flow.tx import flow_transaction
from conveyor.model import NodeInfo, Task, TaskStatus
from conveyor.store.base import Outcome, Store

S = TaskStatus


def _claim(store: Store, tasks: Sequence[Task], refs: Sequence[LimitRef], node: str = "n1",
           lease_s: float = 30.0) -> list[lim.ClaimResult]:
    with flow_transaction(store) as tx:
        results, _ = lim.claim_limited(tx, [(t.id, t.attempts + 1, refs) for t in tasks], node, lease_s,
                                       max_crashes=3)
    return results


def _finish(store: Store, task: Task, status: TaskStatus = S.SUCCEEDED, result: object = None,
            node: str = "n1") -> tuple[Task | None, list[Task]]:
    """A worker's flow outcome: the outcome, the slots it frees and the steps it releases, in one transaction."""
    error = None if status is S.SUCCEEDED else {"type": "E", "message": "boom", "traceback": None}
    with flow_transaction(store) as tx:
        [written] = tx.finish([Outcome(task.id, task.attempts, status, result=result, error=error)], node)
        released: list[Task] = []
        if written is not None:
            released = lim.release_slots(tx, [written.id], max_crashes=3) + workflows.after_outcomes(tx, [written])
    return written, released


# -- unique tasks ---------------------------------------------------------------------------------

def test_a_unique_key_dedupes_submits_only_while_its_task_waits_or_runs(store: Store) -> None:
    first, created = store.create(Task(type="t", flow={"unique_key": "report:42"}))
    again, created_again = store.create(Task(type="t", flow={"unique_key": "report:42"}))
    other, created_other = store.create(Task(type="t", flow={"unique_key": "report:43"}))
    assert (created, created_again, created_other) == (True, False, True)
    assert again.id == first.id and other.id != first.id

    [started] = store.claim_many([(first.id, 1)], "n1", 30.0)
    assert started is not None
    assert store.create(Task(type="t", flow={"unique_key": "report:42"}))[1] is False  # running: still taken
    store.finish_many([Outcome(first.id, 1, S.SUCCEEDED, result=1)], "n1")

    after, created_after = store.create(Task(type="t", flow={"unique_key": "report:42"}))
    assert created_after and after.id != first.id  # finished: the key is free again


def test_a_unique_key_is_not_an_idempotency_key(store: Store) -> None:
    a, _ = store.create(Task(type="t", idempotency_key="once", flow={"unique_key": "u"}))
    store.update(a, S.CANCELLED)
    repeat, created = store.create(Task(type="t", idempotency_key="once", flow={"unique_key": "u"}))
    assert (repeat.id, created) == (a.id, False)  # the idempotency key is forever
    fresh, created = store.create(Task(type="t", flow={"unique_key": "u"}))
    assert created and fresh.id != a.id  # the unique key only while active


def test_create_many_dedupes_unique_keys_within_and_across_batches(store: Store) -> None:
    held, _ = store.create(Task(type="t", flow={"unique_key": "k1"}))
    results = store.create_many([Task(type="t", flow={"unique_key": "k1"}), Task(type="t", flow={"unique_key": "k2"}),
                                 Task(type="t", flow={"unique_key": "k2"}), Task(type="t")])
    assert [created for _, created in results] == [False, True, False, True]
    assert results[0][0].id == held.id and results[2][0].id == results[1][0].id


# -- concurrency limits ---------------------------------------------------------------------------

ONE = LimitDef("t", lim.CONCURRENCY, max_running=1, key_param="customer")


def test_a_concurrency_limit_parks_the_task_over_it_and_its_outcome_releases_the_next(store: Store) -> None:
    a, _ = store.create(Task(type="t", params={"customer": "c1"}), publish=False)
    b, _ = store.create(Task(type="t", params={"customer": "c1"}), publish=False)
    c, _ = store.create(Task(type="t", params={"customer": "c2"}), publish=False)
    ref1, ref2 = LimitRef(ONE, "c1"), LimitRef(ONE, "c2")

    first = _claim(store, [a, b], [ref1])
    other = _claim(store, [c], [ref2])
    assert isinstance(first[0], Task) and first[0].status is S.RUNNING
    assert isinstance(first[1], Held) and first[1].until is None and "concurrency slot" in first[1].reason
    assert isinstance(other[0], Task), "another key has its own slot"
    parked = store.get(b.id)
    assert (parked.status, parked.eta) == (S.SCHEDULED, None)
    assert "concurrency slot" in (store.events(b.id)[-1].detail or "")

    assert _claim(store, [parked], [ref1]) == [Held(None, first[1].reason)], "a copy of its message parks it again"
    written, released = _finish(store, first[0])
    assert written is not None and written.status is S.SUCCEEDED
    assert [t.id for t in released] == [b.id], "the parked task is released with the outcome"
    assert [t.id for t in store.unpublished(-1.0)] == [b.id], "with an outbox intent: its message cannot be lost"

    late, _ = store.create(Task(type="t", params={"customer": "c1"}))
    assert isinstance(_claim(store, [late], [ref1])[0], Held), "the freed slot is kept for the released task"
    [again] = _claim(store, [store.get(b.id)], [ref1])
    assert isinstance(again, Task) and again.id == b.id and again.status is S.RUNNING


def test_a_holder_whose_lease_expired_is_taken_over_and_its_slot_freed(store: Store) -> None:
    a, _ = store.create(Task(type="t", params={"customer": "c1"}))
    b, _ = store.create(Task(type="t", params={"customer": "c1"}))
    ref = LimitRef(ONE, "c1")
    [holder] = _claim(store, [a], [ref], node="dead", lease_s=0.2)
    assert isinstance(holder, Task)
    assert isinstance(_claim(store, [b], [ref])[0], Held)
    time.sleep(0.3)  # the holder's node died: its lease runs out on the store's clock

    with flow_transaction(store) as tx:
        released = lim.sweep_parked(tx, max_crashes=3)
    # The parked task gets the dead holder's slot; the holder, taken over, needs a new message too.
    assert {t.id for t in released} == {a.id, b.id}
    assert store.get(b.id).status is S.SCHEDULED
    taken = store.get(a.id)
    assert (taken.status, taken.crashes) == (S.QUEUED, 1), "the holder was taken over: it cannot come back"
    assert store.finish_many([Outcome(a.id, 1, S.SUCCEEDED)], "dead") == [None], "its late outcome is fenced off"


def test_a_limit_set_in_the_store_overrides_the_declared_one(store: Store) -> None:
    with flow_transaction(store) as tx:
        lim.register_limits(tx, [LimitDef("t", lim.CONCURRENCY, max_running=1)])
        tx.run("UPDATE flow_limits SET max_running = 2, source = 'manual' WHERE name = 't'")
        lim.register_limits(tx, [LimitDef("t", lim.CONCURRENCY, max_running=1)])  # code does not win
    tasks = [store.create(Task(type="t"))[0] for _ in range(3)]
    results = _claim(store, tasks, [LimitRef(LimitDef("t", lim.CONCURRENCY, max_running=1), "")])
    assert [type(r).__name__ for r in results] == ["Task", "Task", "Held"]


# -- rate limits ----------------------------------------------------------------------------------

TWO_PER_S = LimitDef("r", lim.RATE, rate_per_s=2.0, burst=1)


def test_a_rate_limit_defers_each_task_to_its_own_start_time_in_claim_order(store: Store) -> None:
    tasks = [store.create(Task(type="r"))[0] for _ in range(4)]
    ref = LimitRef(TWO_PER_S, "")
    before = store.now()
    results = _claim(store, tasks, [ref])

    assert isinstance(results[0], Task)
    held = results[1:]
    assert all(isinstance(h, Held) and h.until is not None for h in held)
    untils = [h.until for h in held if isinstance(h, Held) and h.until is not None]
    assert untils == sorted(untils)
    assert [round(u - before, 1) for u in untils] == pytest.approx([0.5, 1.0, 1.5], abs=0.11)
    deferred = store.get(tasks[1].id)
    assert deferred.status is S.SCHEDULED and deferred.eta == pytest.approx(untils[0])
    assert "rate limit" in (store.events(tasks[1].id)[-1].detail or "")

    assert _claim(store, [deferred], [ref]) == [None], "before its start time it is not claimable"
    time.sleep(max(0.0, untils[0] - store.now()))
    [started] = _claim(store, [deferred], [ref])
    assert isinstance(started, Task) and started.id == tasks[1].id, "its reservation starts it"
    fresh, _ = store.create(Task(type="r"))
    [late] = _claim(store, [fresh], [ref])
    assert isinstance(late, Held) and late.until is not None and late.until > untils[-1], "newcomers queue behind"


def test_a_burst_starts_at_once_then_the_rate_applies(store: Store) -> None:
    burst = LimitDef("r", lim.RATE, rate_per_s=1.0, burst=3)
    tasks = [store.create(Task(type="r"))[0] for _ in range(4)]
    results = _claim(store, tasks, [LimitRef(burst, "")])
    assert [type(r).__name__ for r in results] == ["Task", "Task", "Task", "Held"]


def test_rate_limits_of_two_keys_are_independent(store: Store) -> None:
    keyed = LimitDef("r", lim.RATE, rate_per_s=1.0, key_param="tenant")
    a = [store.create(Task(type="r"))[0] for _ in range(2)]
    b, _ = store.create(Task(type="r"))
    results = _claim(store, [*a, b], [])  # no limit: all start
    assert all(isinstance(r, Task) for r in results)
    c = [store.create(Task(type="r"))[0] for _ in range(2)]
    assert isinstance(_claim(store, [c[0]], [LimitRef(keyed, "x")])[0], Task)
    assert isinstance(_claim(store, [c[1]], [LimitRef(keyed, "y")])[0], Task)


# -- workflows ------------------------------------------------------------------------------------

def _step(name: str, after: Sequence[str] = (), collect: str = "one", policy: str = "fail") -> workflows.StepSpec:
    return workflows.StepSpec(name, Task(type=f"w.{name}", params={"n": name}), tuple(after), collect,
                              on_parent_failure=policy)


def _submit(store: Store, *steps: workflows.StepSpec) -> tuple[workflows.WorkflowSpec, list[Task]]:
    spec = workflows.WorkflowSpec("wf", tuple(steps), result=(steps[-1].name,))
    with flow_transaction(store) as tx:
        first = workflows.create(tx, spec)
    return spec, first


def _run(store: Store, task: Task, status: TaskStatus = S.SUCCEEDED, result: object = None) -> list[Task]:
    [started] = store.claim_many([(task.id, task.attempts + 1)], "n1", 30.0)
    assert started is not None
    written, released = _finish(store, started, status, result)
    assert written is not None
    return released


def _view(store: Store, wid: uuid.UUID) -> dict[str, object]:
    with flow_transaction(store) as tx:
        view = workflows.view(tx, wid)
    assert view is not None
    return view


def _statuses(view: dict[str, object]) -> dict[str, str]:
    return {s["name"]: s["status"] for s in view["steps"]}  # type: ignore[attr-defined]


def test_a_chain_releases_each_step_with_the_previous_result_in_the_same_transaction(store: Store) -> None:
    spec, first = _submit(store, _step("a"), _step("b", ["a"]), _step("c", ["b"]))
    assert [t.type for t in first] == ["w.a"]
    assert _statuses(_view(store, spec.id)) == {"a": "queued", "b": "waiting", "c": "waiting"}

    [b] = _run(store, first[0], result={"rows": 3})
    assert (b.type, b.params, b.status) == ("w.b", {"n": "b", "previous": {"rows": 3}}, S.QUEUED)
    assert b.id in {t.id for t in store.unpublished(-1.0)}, "released with its outbox intent"
    [c] = _run(store, b, result=7)
    assert c.params["previous"] == 7
    assert _run(store, c, result="done") == []
    view = _view(store, spec.id)
    assert (view["status"], view["result"]) == ("succeeded", "done")


def test_a_chord_fires_once_when_its_last_parent_succeeds_with_the_results_in_order(store: Store) -> None:
    _, first = _submit(store, _step("x"), _step("y"), _step("z"), _step("sum", ["x", "y", "z"], collect="list"))
    by_type = {t.type: t for t in first}
    assert _run(store, by_type["w.y"], result=2) == []
    assert _run(store, by_type["w.x"], result=1) == []
    [total] = _run(store, by_type["w.z"], result=3)
    assert total.params["previous"] == [1, 2, 3]


def test_parents_finishing_at_the_same_moment_release_the_chord_exactly_once(store: Store) -> None:
    _, first = _submit(store, _step("p1"), _step("p2"), _step("p3"), _step("j", ["p1", "p2", "p3"], "list"))
    started = [store.claim_many([(t.id, 1)], "n1", 30.0)[0] for t in first]
    barrier = threading.Barrier(len(started))
    released: list[Task] = []
    errors: list[BaseException] = []

    def finish(task: Task) -> None:
        try:
            barrier.wait(5)
            released.extend(_finish(store, task, result=task.type)[1])
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=finish, args=(t,)) for t in started if t is not None]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(10)
    assert not errors
    assert [t.type for t in released] == ["w.j"]
    assert released[0].params["previous"] == ["w.p1", "w.p2", "w.p3"]


def test_a_failed_parent_fails_or_skips_its_dependants_by_their_policy(store: Store) -> None:
    spec, first = _submit(store, _step("a"), _step("b", ["a"]), _step("c", ["a"], policy="skip"),
                          _step("d", ["b"]), _step("e", ["c"]))
    assert _run(store, first[0], S.FAILED) == []
    assert _statuses(_view(store, spec.id)) == {"a": "failed", "b": "failed", "c": "skipped", "d": "failed",
                                                "e": "skipped"}
    assert _view(store, spec.id)["status"] == "failed"


def test_the_sweep_catches_up_outcomes_recorded_outside_a_workers_flow_transaction(store: Store) -> None:
    spec, first = _submit(store, _step("a"), _step("b", ["a"]), _step("c"), _step("d", ["c"]))
    by_type = {t.type: t for t in first}
    [a] = store.claim_many([(by_type["w.a"].id, 1)], "n1", 30.0)
    assert a is not None
    store.finish_many([Outcome(a.id, 1, S.SUCCEEDED, result=5)], "n1")  # e.g. a foreign worker's report
    store.update(by_type["w.c"], S.CANCELLED)  # e.g. cancelled by hand

    with flow_transaction(store) as tx:
        released = workflows.sweep(tx)
    assert [(t.type, t.params["previous"]) for t in released] == [("w.b", 5)]
    assert _statuses(_view(store, spec.id))["d"] == "failed"
    with flow_transaction(store) as tx:
        assert workflows.sweep(tx) == [], "never twice"


def test_cancelling_a_workflow_cancels_what_has_not_started(store: Store) -> None:
    spec, first = _submit(store, _step("a"), _step("b"), _step("c", ["a", "b"], "list"))
    by_type = {t.type: t for t in first}
    [running] = store.claim_many([(by_type["w.a"].id, 1)], "n1", 30.0)
    assert running is not None
    with flow_transaction(store) as tx:
        released = workflows.cancel_waiting(tx, spec.id)
    for task_id in released:
        with flow_transaction(store) as tx:
            workflows.cancel_task(tx, task_id)
    assert _statuses(_view(store, spec.id)) == {"a": "running", "b": "cancelled", "c": "cancelled"}
    assert _finish(store, running, result=1)[1] == [], "a running step finishes and releases nothing"
    assert _view(store, spec.id)["status"] == "cancelled"


def test_a_workflow_with_a_cycle_or_an_unknown_parent_is_refused(store: Store) -> None:
    with pytest.raises(ValueError, match="cycle"):
        workflows.validate(workflows.WorkflowSpec("w", (_step("a", ["b"]), _step("b", ["a"]))))
    with pytest.raises(ValueError, match="unknown"):
        workflows.validate(workflows.WorkflowSpec("w", (_step("a", ["nope"]),)))


# -- routing --------------------------------------------------------------------------------------

def _node(store: Store, node_id: str, *, alive: bool = True) -> NodeInfo:
    node = NodeInfo(id=node_id, host="h", pid=1, queues=("default", routing.node_queue(node_id)), concurrency=1,
                    started_at=store.now(), last_heartbeat=store.now() - (0 if alive else 3600))
    store.upsert_node(node)
    return node


def test_keyed_tasks_pin_to_one_live_node_and_move_only_when_it_dies(store: Store) -> None:
    nodes = [_node(store, f"node-{i}") for i in range(3)]
    tasks = [Task(type="t", flow={"route": "key", "route_key": f"k{i % 5}"}) for i in range(20)]
    pinned = routing.pin_keyed(store, tasks)
    by_key: dict[str, set[str]] = {}
    for task in pinned:
        by_key.setdefault(task.flow["route_key"], set()).add(task.flow["node"])  # type: ignore[index]
    assert all(len(n) == 1 for n in by_key.values()), "one key, one node"
    assert routing.publish_queue(pinned[0]) == routing.node_queue(pinned[0].flow["node"])  # type: ignore[index]
    stored = [store.create(t)[0] for t in pinned]

    victim = stored[0].flow["node"]  # type: ignore[index]
    _node(store, victim, alive=False)
    nodes = store.nodes()
    with flow_transaction(store) as tx:
        waiting = tx.pinned_waiting(victim, 100)
        moved = routing.repin(tx, waiting, nodes, heartbeat_s=5.0)
    assert {t.id for t in moved} == {t.id for t in stored if t.flow["node"] == victim}  # type: ignore[index]
    assert all(t.flow["node"] != victim for t in moved)  # type: ignore[index]
    survivors = {t.id: t.flow["node"] for t in stored if t.flow["node"] != victim}  # type: ignore[index]
    assert all(store.get(i).flow["node"] == n for i, n in survivors.items()), "other nodes' keys stay"  # type: ignore[index]
    assert len({n.id for n in nodes}) == 3
