"""The core promises, with real worker processes on the embedded default (one SQLite file).

Workers are ``python -m conveyor worker tests.e2e.apps.core_app`` subprocesses; every handler
logs each execution to a side file, so "nothing lost" and "nothing ran twice" are counted,
not assumed. Leases are 2 s, so crash recovery takes seconds.
"""

from __future__ import annotations

import datetime
import signal
import sys
import time
import uuid
from pathlib import Path
from types import ModuleType

import orjson
import pytest

from conveyor import SerializationError, TaskFailed, TaskNotFound, TaskStatus
from conveyor.app import TaskHandle
from conveyor.broker.sqlite import SqliteBroker
from conveyor.message import MAX_MESSAGE_BYTES
from conveyor.model import Task, TaskFilter
from tests.e2e.conftest import (
    LEASE_S,
    Workers,
    leased_messages,
    read_executions,
    run_counts,
    statuses,
    wait_for,
)

pytestmark = pytest.mark.timeout(60)


def wait_final(core: ModuleType, handles: list[TaskHandle], timeout_s: float) -> list[Task]:
    def all_final() -> list[Task] | None:
        tasks = [h.get() for h in handles]
        return tasks if all(t.status.is_final for t in tasks) else None

    tasks: list[Task] = wait_for(all_final, timeout_s, f"{len(handles)} task(s) to finish", pause_s=0.1)
    return tasks


# -- 1. many tasks, two nodes ----------------------------------------------------------------

def test_hundreds_of_tasks_on_two_workers_all_finish_once_each(
        core: ModuleType, workers: Workers, exec_log: Path) -> None:
    workers.start(node_id="node-a")
    workers.start(node_id="node-b")
    total = 300
    handles = [core.record_task.delay(n=i, sleep_s=0.005) for i in range(total)]
    ids = {str(h.id) for h in handles}

    wait_for(lambda: core.app.service.counts().get("succeeded", 0) == total, 35.0,
             f"{total} tasks to succeed", pause_s=0.2)

    counts = {status: n for status, n in core.app.service.counts().items() if n}
    assert counts == {"succeeded": total}
    runs = run_counts(exec_log)
    assert set(runs) == ids, "every task ran at least once"
    ran_twice = sorted(task_id for task_id, n in runs.items() if n > 1)
    sys.stderr.write(f"\n{len(ran_twice)} of {total} task(s) ran more than once\n")
    assert ran_twice == []
    nodes = {e.node for e in read_executions(exec_log)}
    assert nodes == {"node-a", "node-b"}, "both nodes did work"
    results = {h.get().result["n"] for h in handles}
    assert results == set(range(total))


# -- 2. retries ------------------------------------------------------------------------------

def test_a_handler_failing_its_first_attempts_succeeds_on_the_next(
        core: ModuleType, workers: Workers, exec_log: Path) -> None:
    workers.start()
    handle = core.flaky.submit({"fail_times": 2})

    assert handle.result(timeout=15) == {"attempt": 3}
    task = handle.get()
    assert task.attempts == 3
    assert task.status is TaskStatus.SUCCEEDED
    assert statuses(core.app.service.events(handle.id)) == [
        "queued", "running", "retrying", "running", "retrying", "running", "succeeded"]
    assert [e.attempt for e in read_executions(exec_log)] == [1, 2, 3]


def test_a_handler_raising_abort_fails_at_once(core: ModuleType, workers: Workers, exec_log: Path) -> None:
    workers.start()
    handle = core.abort.submit({"reason": "bad input"})

    with pytest.raises(TaskFailed) as failed:
        handle.result(timeout=15)
    task = handle.get()
    assert (task.status, task.attempts, task.max_attempts) == (TaskStatus.FAILED, 1, 5)
    assert failed.value.error is not None and failed.value.error["type"] == "Abort"
    assert failed.value.error["message"] == "bad input"
    assert len(read_executions(exec_log)) == 1
    assert "retrying" not in statuses(core.app.service.events(handle.id))


def test_a_handler_exhausting_its_attempts_ends_failed_with_error_type_and_traceback(
        core: ModuleType, workers: Workers, exec_log: Path) -> None:
    workers.start()
    handle = core.always_fails.delay()

    task = wait_final(core, [handle], 15.0)[0]
    assert (task.status, task.attempts) == (TaskStatus.FAILED, 3)
    assert task.error is not None
    assert task.error["type"] == "ValueError"
    assert task.error["message"] == "boom: always fails"
    assert "Traceback" in task.error["traceback"] and "in always_fails" in task.error["traceback"]
    assert len(read_executions(exec_log)) == 3
    assert statuses(core.app.service.events(handle.id))[-2:] == ["running", "failed"]


def test_retry_with_a_delay_waits_at_least_that_long(
        core: ModuleType, workers: Workers, exec_log: Path) -> None:
    workers.start()
    handle = core.retry_later.submit({"delay_s": 1.5})

    assert handle.result(timeout=15) == {"attempt": 2}
    first, second = read_executions(exec_log)
    assert second.at - first.at >= 1.5
    retrying = [e for e in core.app.service.events(handle.id) if e.to_status is TaskStatus.RETRYING]
    assert len(retrying) == 1 and retrying[0].detail is not None and "1.50 s" in retrying[0].detail


# -- 3. timeouts -----------------------------------------------------------------------------

def test_a_thread_pool_handler_past_its_timeout_fails_as_timeout(
        core: ModuleType, workers: Workers) -> None:
    workers.start()
    started = time.monotonic()
    handle = core.sleepy.submit({"seconds": 5})

    task = wait_final(core, [handle], 10.0)[0]
    elapsed = time.monotonic() - started
    assert task.status is TaskStatus.FAILED
    assert task.error is not None and task.error["type"] == "timeout"
    assert "timeout of 1 s" in task.error["message"]
    assert 1.0 <= elapsed < 4.0, "failed about when the 1 s timeout ran out"


def test_a_process_pool_handler_past_its_timeout_is_killed_and_the_worker_goes_on(
        core: ModuleType, workers: Workers, tmp_path: Path) -> None:
    workers.start(pool="process", concurrency=1)
    # Warm up: the handler process loads the app after the worker registers, and a timeout
    # counts from the hand-over, so a cold first task could time out before it even started.
    assert core.record_task.delay(n=0).result(timeout=15) == {"n": 0}
    marker = tmp_path / "marker.txt"
    handle = core.marker.submit({"seconds": 2.0, "path": str(marker)}, timeout=0.5)

    task = wait_final(core, [handle], 15.0)[0]
    assert task.status is TaskStatus.FAILED
    assert task.error is not None and task.error["type"] == "timeout"
    ran = [e for e in read_executions(workers.exec_log) if e.type == "core.marker"]
    assert len(ran) == 1, "the handler did start"

    after = core.record_task.delay(n=7)  # the slot got a fresh handler process
    assert after.result(timeout=15) == {"n": 7}
    time.sleep(max(0.0, ran[0].at + 2.5 - time.time()))  # past the moment it would have written
    assert not marker.exists(), "the handler process was killed, not abandoned"


def test_current_task_is_available_in_a_process_pool_handler(
        core: ModuleType, workers: Workers, exec_log: Path) -> None:
    workers.start(node_id="procs", pool="process", concurrency=1)
    handle = core.flaky.submit({"fail_times": 1})

    assert handle.result(timeout=15) == {"attempt": 2}
    assert [(e.task_id, e.attempt, e.node) for e in read_executions(exec_log)] == [
        (str(handle.id), 1, "procs"), (str(handle.id), 2, "procs")]


# -- 4. a worker dies mid-task ---------------------------------------------------------------

def test_a_task_of_a_killed_worker_is_completed_by_another_after_the_lease(
        core: ModuleType, workers: Workers, exec_log: Path) -> None:
    doomed = workers.start(node_id="doomed", concurrency=1)
    handle = core.slow.submit({"seconds": 3.0})
    wait_for(lambda: any(e.node == "doomed" for e in read_executions(exec_log)), 10.0, "the task to start")
    assert handle.status() is TaskStatus.RUNNING

    doomed.kill_all()  # SIGKILL mid-task: no shutdown code runs
    killed_at = time.monotonic()
    workers.start(node_id="rescuer", concurrency=1)

    assert handle.result(timeout=20) == {"slept": 3.0}
    assert time.monotonic() - killed_at >= LEASE_S - 0.5, "not before the dead node's lease ran out"
    task = handle.get()
    assert (task.node, task.attempts, task.crashes) == ("rescuer", 2, 1)
    takeover = [e for e in core.app.service.events(handle.id) if e.detail and "lease" in e.detail]
    assert len(takeover) == 1
    assert takeover[0].to_status is TaskStatus.QUEUED
    assert "doomed" in (takeover[0].detail or "") and "expired" in (takeover[0].detail or "")
    assert [e.node for e in read_executions(exec_log)] == ["doomed", "rescuer"]


def test_tasks_prefetched_by_a_killed_worker_run_again_within_about_the_lease(
        core: ModuleType, workers: Workers, exec_log: Path, db_url: str) -> None:
    doomed = workers.start(node_id="doomed", concurrency=1,  # holds 1 running + 2 prefetched
                           extra_env={"CONVEYOR_PREFETCH": "2"})
    # The prefetch must be seen while the first task runs: 4 s (2 s once missed it on a loaded
    # CI machine). The rescuer's deadline is about the lease plus that task's own run.
    slow_s = 4.0
    handles = [core.slow.submit({"seconds": slow_s})] + [core.record_task.delay(n=i) for i in range(5)]
    wait_for(lambda: read_executions(exec_log), 10.0, "the first task to start")
    wait_for(lambda: leased_messages(db_url) == 3, slow_s, "the worker to prefetch two more")

    doomed.kill_all()
    workers.start(node_id="rescuer", concurrency=2)

    tasks = wait_final(core, handles, 3 * LEASE_S + slow_s + 3.0)
    assert {t.status for t in tasks} == {TaskStatus.SUCCEEDED}
    assert set(run_counts(exec_log)) == {str(h.id) for h in handles}


# -- 5. graceful shutdown --------------------------------------------------------------------

def test_sigterm_lets_in_flight_tasks_finish_within_the_grace_period(
        core: ModuleType, workers: Workers, exec_log: Path) -> None:
    worker = workers.start(node_id="leaving", concurrency=3, grace_s=10.0)
    handles = [core.slow.submit({"seconds": 1.5}) for _ in range(3)]
    wait_for(lambda: len(read_executions(exec_log)) == 3, 10.0, "three tasks to start")

    worker.signal(signal.SIGTERM)

    assert worker.wait(timeout_s=10.0) == 0
    tasks = [h.get() for h in handles]
    assert [t.status for t in tasks] == [TaskStatus.SUCCEEDED] * 3
    assert all(t.node == "leaving" for t in tasks)
    assert len(read_executions(exec_log)) == 3
    node = next(n for n in core.app.service.nodes() if n.id == "leaving")
    assert node.status == "stopped"


def test_sigterm_returns_a_task_longer_than_the_grace_and_another_worker_runs_it(
        core: ModuleType, workers: Workers, exec_log: Path) -> None:
    worker = workers.start(node_id="leaving", concurrency=1, grace_s=0.5)
    handle = core.slow.submit({"seconds": 4.0})
    wait_for(lambda: read_executions(exec_log), 10.0, "the task to start")

    worker.signal(signal.SIGTERM)

    assert worker.wait(timeout_s=10.0) == 0
    task = handle.get()
    assert task.status is TaskStatus.QUEUED
    returned = core.app.service.events(handle.id)[-1]
    assert (returned.to_status, returned.detail, returned.node) == (
        TaskStatus.QUEUED, "returned on worker shutdown", "leaving")

    workers.start(node_id="next", concurrency=1)
    assert handle.result(timeout=15) == {"slept": 4.0}
    assert handle.get().node == "next"
    assert [e.node for e in read_executions(exec_log)] == ["leaving", "next"]


# -- 6 and 7. bad messages -------------------------------------------------------------------

def _bad_bodies() -> dict[str, bytes]:
    def task_body(**fields: object) -> bytes:
        return orjson.dumps({"protocol": 1, "id": str(uuid.uuid4()), "params": {"n": 1}, "queue": "default",
                             **fields})

    return {
        "not json": b"\x00\x01 this is not json {",
        "json array": b'[{"type": "core.record"}]',
        "missing type": task_body(),
        "bad priority": task_body(type="core.record", priority=42),
        "2 MiB body": task_body(type="core.record", params={"n": 1, "pad": "x" * (2 * 1024 * 1024)}),
    }


def test_malformed_messages_are_dead_lettered_while_good_tasks_still_run(
        core: ModuleType, workers: Workers, raw_broker: SqliteBroker) -> None:
    bad = _bad_bodies()
    assert len(bad["2 MiB body"]) > MAX_MESSAGE_BYTES
    handles = []
    for i, body in enumerate(bad.values()):  # interleaved: good, bad, good, bad, ...
        handles.append(core.record_task.delay(n=i))
        raw_broker.publish(body, queue="default")
    handles.append(core.record_task.delay(n=99))
    workers.start()

    tasks = wait_final(core, handles, 20.0)
    assert {t.status for t in tasks} == {TaskStatus.SUCCEEDED}
    dead = wait_for(lambda: d if len(d := raw_broker.dead_letters()) >= len(bad) else None, 10.0,
                    "the bad messages to be dead-lettered")
    assert sorted(body for body, _ in dead) == sorted(bad.values())
    for _, headers in dead:
        assert headers["x-conveyor-reason"].startswith("malformed message"), headers
    reasons = {name: next(h for b, h in dead if b == body)["x-conveyor-reason"] for name, body in bad.items()}
    assert "not JSON" in reasons["not json"]
    assert "JSON object" in reasons["json array"]
    assert "type" in reasons["missing type"]
    assert "priority" in reasons["bad priority"]
    assert "limit" in reasons["2 MiB body"]
    assert len(core.app.service.query(TaskFilter()).tasks) == len(handles), "no record for bad ones"
    assert workers.started[0].alive()


def test_an_unknown_task_type_fails_and_is_dead_lettered_and_the_worker_goes_on(
        core: ModuleType, workers: Workers, raw_broker: SqliteBroker) -> None:
    workers.start(node_id="plain")
    unknown = core.app.submit("core.no_such_type", {"x": 1})

    with pytest.raises(TaskFailed) as failed:
        unknown.result(timeout=15)
    assert failed.value.error is not None and failed.value.error["type"] == "unknown_task"
    assert "core.no_such_type" in failed.value.error["message"]
    assert unknown.get().attempts == 1
    (body, headers), = raw_broker.dead_letters()
    assert orjson.loads(body)["id"] == str(unknown.id)
    assert "unknown task type 'core.no_such_type'" in headers["x-conveyor-reason"]

    assert core.record_task.delay(n=1).result(timeout=15) == {"n": 1}
    assert workers.started[0].alive()


# -- 8. poison task --------------------------------------------------------------------------

def test_a_task_that_kills_its_worker_every_time_is_failed_as_crashed_after_three_deaths(
        core: ModuleType, workers: Workers, exec_log: Path) -> None:
    handle = core.suicide.delay()
    deadline = time.monotonic() + 40.0
    current = workers.start(wait_ready=False)
    while not handle.get().status.is_final:  # a supervisor: restart the worker whenever it dies
        assert time.monotonic() < deadline, f"still {handle.status().value}:\n{workers.outputs()}"
        if not current.alive():
            assert current.proc.returncode == -signal.SIGKILL
            current = workers.start(wait_ready=False)
        time.sleep(0.1)

    task = handle.get()
    assert task.status is TaskStatus.FAILED
    assert task.error is not None and task.error["type"] == "crashed"
    assert task.crashes == 3
    assert len(read_executions(exec_log)) == 3
    crash_events = [e.detail for e in core.app.service.events(handle.id) if e.detail and "expired" in e.detail]
    assert [d.split("(")[-1] for d in crash_events] == ["crash 1 of 3)", "crash 2 of 3)", "crash 3 of 3)"]

    time.sleep(2 * LEASE_S)  # stale copies of its message may come back: they must be dropped
    assert current.alive()
    assert len(read_executions(exec_log)) == 3, "not delivered again"
    assert core.record_task.delay(n=5).result(timeout=15) == {"n": 5}


# -- 10 and 11. the Python API ---------------------------------------------------------------

def test_a_task_id_never_submitted_reads_as_unknown(core: ModuleType) -> None:
    never = uuid.uuid4()

    with pytest.raises(TaskNotFound, match="unknown task id"):
        core.app.get(never)
    with pytest.raises(TaskNotFound):
        core.app.handle(str(never)).status()


def test_delay_returns_a_handle_whose_result_is_the_return_value(core: ModuleType, workers: Workers) -> None:
    workers.start()
    handle = core.send_email.delay(to="ada@example.com", subject="hello")

    assert handle.result(timeout=15) == {"sent_to": "ada@example.com", "subject": "hello"}
    assert handle.status() is TaskStatus.SUCCEEDED


def test_result_raises_task_failed_for_a_failed_task(core: ModuleType, workers: Workers) -> None:
    workers.start()
    handle = core.abort.delay(reason="no such user")

    with pytest.raises(TaskFailed, match="no such user") as failed:
        handle.result(timeout=15)
    assert failed.value.status == "failed"
    assert failed.value.task_id == handle.id


def test_result_raises_timeout_error_when_no_worker_runs(core: ModuleType) -> None:
    handle = core.send_email.delay(to="ada@example.com", subject="hello")

    started = time.monotonic()
    with pytest.raises(TimeoutError):
        handle.result(timeout=0.5)
    assert 0.5 <= time.monotonic() - started < 2.0
    assert handle.status() is TaskStatus.QUEUED


def test_submitting_twice_with_one_idempotency_key_gives_one_task_run_once(
        core: ModuleType, workers: Workers, exec_log: Path) -> None:
    params = {"to": "ada@example.com", "subject": "once"}
    first = core.send_email.submit(params, idempotency_key="welcome-ada")
    second = core.send_email.submit(params, idempotency_key="welcome-ada")
    assert first.id == second.id

    workers.start()
    assert second.result(timeout=15)["subject"] == "once"
    time.sleep(0.5)  # a second message, had one been sent, would run by now
    assert run_counts(exec_log) == {str(first.id): 1}
    assert len(core.app.service.query(TaskFilter()).tasks) == 1


@pytest.mark.parametrize("value", [{1, 2}, object(), b"bytes"], ids=["set", "object", "bytes"])
def test_non_json_params_are_refused_at_submit_and_nothing_is_stored(core: ModuleType, value: object) -> None:
    with pytest.raises(SerializationError):
        core.send_email.delay(to=value, subject="x")
    assert core.app.service.query(TaskFilter()).tasks == []


def test_a_datetime_param_is_refused_at_submit(core: ModuleType) -> None:
    with pytest.raises(SerializationError):
        core.send_email.delay(to="ada@example.com", subject=datetime.datetime.now(datetime.UTC))
    assert core.app.service.query(TaskFilter()).tasks == []


def test_async_handlers_run_on_the_worker_event_loop(core: ModuleType, workers: Workers) -> None:
    workers.start()
    handles = [core.async_add.delay(a=i, b=1) for i in range(10)]

    assert [h.result(timeout=15) for h in handles] == [{"sum": i + 1, "on_loop": True} for i in range(10)]
