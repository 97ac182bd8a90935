"""The PHP package against a real center, real RabbitMQ and PostgreSQL: PHP submits and Python
runs, Python submits and PHP runs, failures keep their PHP traceback, and a PHP worker killed
mid-task loses its task to another node with no stale copy running after the newer attempt."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import uuid
from typing import Any

import pytest

from conveyor import message
from conveyor.model import TaskStatus
from conveyor.service import SubmitRequest
from tests.integration.conftest import REPO_ROOT, Cluster
from tests.php.conftest import Php, settle
from tests.processes import wait_for

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]


def final(cluster: Cluster, task_id: str | uuid.UUID, timeout_s: float = 30.0) -> Any:
    tid = uuid.UUID(str(task_id))

    def done() -> Any:
        task = cluster.service.get(tid)
        return task if task.status.is_final else None

    return wait_for(done, timeout_s, f"task {tid} to finish", pause_s=0.1)


def statuses(cluster: Cluster, task_id: uuid.UUID) -> list[str]:
    return [e.to_status.value for e in cluster.service.events(task_id)]


def test_php_submits_over_http_and_amqp_and_a_python_worker_runs_the_tasks(cluster: Cluster, php: Php) -> None:
    cluster.start("py-1", concurrency=4)
    out = json.loads(php.run("submit.php", "http", "count.noop", '{"n": 7}', '{"idempotency_key": "order-7"}',
                             "1", "wait").stdout)
    first = out["ids"][0]
    assert out["results"] == {first: {"n": 7}}
    again = json.loads(php.run("submit.php", "http", "count.noop", '{"n": 7}', '{"idempotency_key": "order-7"}').stdout)
    assert again["ids"] == [first]  # the idempotency key named the first task
    many = json.loads(php.run("submit.php", "http", "count.noop", '{"n": 1}', '{"priority": 5}', "5", "wait").stdout)
    assert len(set(many["ids"])) == 5 and all(r == {"n": 1} for r in many["results"].values())
    amqp = json.loads(php.run("submit.php", "amqp", "count.noop", '{"n": 8}', '{"max_attempts": 2}', "3",
                              "wait").stdout)
    for task_id in amqp["ids"]:
        task = cluster.service.get(uuid.UUID(task_id))
        assert (task.status, task.result, task.node, task.max_attempts) == (TaskStatus.SUCCEEDED, {"n": 8}, "py-1", 2)
        assert uuid.UUID(task_id).version == 7
    empty = json.loads(php.run("submit.php", "amqp", "count.noop", "[]", '{"idempotency_key": "same"}').stdout)
    twice = json.loads(php.run("submit.php", "amqp", "count.noop", "[]", '{"idempotency_key": "same"}').stdout)
    assert empty["ids"] == twice["ids"]  # over AMQP the key is the id: one task
    task = final(cluster, empty["ids"][0])
    # [] went as {}: count.noop(**{}) misses n, a TypeError on each of its 3 attempts
    assert (task.params, task.status, task.attempts, task.error["type"]) == ({}, TaskStatus.FAILED, 3, "TypeError")
    assert [e.task_id for e in cluster.executions()].count(first) == 1


def test_python_submits_and_the_php_worker_runs_it_with_a_timeline_and_is_listed(cluster: Cluster, php: Php) -> None:
    worker = php.worker("php-a")
    added, _ = cluster.service.submit(SubmitRequest(type="php.add", params={"a": 2, "b": 3}, queue="php"))
    invoice, _ = cluster.service.submit(SubmitRequest(type="php.invoice", params={"number": "F-1"}, queue="php"))
    assert final(cluster, added.id).result == {"sum": 5, "attempt": 1}
    done = final(cluster, invoice.id)
    assert (done.status, done.result, done.node) == (
        TaskStatus.SUCCEEDED, {"invoice": "F-1", "pages": 2, "rendered_by": "php"}, "php-a")
    assert statuses(cluster, invoice.id) == ["queued", "running", "succeeded"]
    nodes = subprocess.run([sys.executable, "-m", "conveyor", "--json", "nodes"], cwd=REPO_ROOT, env=cluster.env(),
                           capture_output=True, text=True, timeout=30, check=True)
    listed = {n["id"]: n for n in json.loads(nodes.stdout)}
    assert listed["php-a"]["queues"] == ["php"] and listed["php-a"]["status"] == "live"
    assert listed["php-a"]["done"] >= 1 or worker.alive()


def test_a_php_handler_that_throws_is_retried_then_fails_with_its_php_traceback(cluster: Cluster, php: Php) -> None:
    php.worker("php-a")
    task, _ = cluster.service.submit(SubmitRequest(type="php.flaky", params={"number": "F-9"}, queue="php",
                                                   max_attempts=2))
    failed = final(cluster, task.id)
    assert (failed.status, failed.attempts) == (TaskStatus.FAILED, 2)
    assert failed.error["type"] == "DomainException"
    assert failed.error["message"] == "invoice F-9 cannot be rendered"
    assert "worker.php" in failed.error["traceback"] and "#0 " in failed.error["traceback"]
    assert statuses(cluster, task.id) == ["queued", "running", "retrying", "running", "failed"]
    assert [e.attempt for e in cluster.executions() if e.task_id == str(task.id)] == [1, 2]


def test_a_php_worker_killed_mid_task_loses_it_and_no_stale_copy_runs(cluster: Cluster, php: Php) -> None:
    doomed = php.worker("php-doomed")
    task, _ = cluster.service.submit(SubmitRequest(type="php.slow", params={"seconds": 3}, queue="php"))
    wait_for(lambda: any(e.task_id == str(task.id) for e in cluster.executions()), 20, "the first run to start")
    survivor = php.worker("php-survivor")
    doomed.kill_all()  # SIGKILL the worker and its handler process mid-task
    stale = message.encode(message.Message(id=task.id, type="php.slow", params={"seconds": 3}, queue="php",
                                           attempt=1))
    wait_for(lambda: cluster.service.get(task.id).attempts == 2, 30, "the take-over as attempt 2", pause_s=0.1)
    cluster.service.broker.publish(stale, queue="php")  # a stale copy of attempt 1 while attempt 2 runs
    done = final(cluster, task.id)
    assert (done.status, done.node, done.attempts, done.crashes) == (TaskStatus.SUCCEEDED, "php-survivor", 2, 1)
    cluster.service.broker.publish(stale, queue="php")  # and once more after it finished
    settle(2.0)
    runs = [(e.attempt, e.node) for e in cluster.executions() if e.task_id == str(task.id)]
    assert runs == [(1, "php-doomed"), (2, "php-survivor")], runs
    assert survivor.alive()
    assert "lease of node php-doomed expired" in " ".join(e.detail or "" for e in cluster.service.events(task.id))


def test_sigterm_gives_a_running_task_back_and_it_runs_again_as_the_same_attempt(cluster: Cluster, php: Php) -> None:
    leaving = php.worker("php-leaving", env={"CONVEYOR_GRACE_S": "0.5"})
    task, _ = cluster.service.submit(SubmitRequest(type="php.slow", params={"seconds": 4}, queue="php"))
    wait_for(lambda: any(e.task_id == str(task.id) for e in cluster.executions()), 20, "the run to start")
    leaving.signal(signal.SIGTERM)
    assert leaving.wait(15) == 0
    back = cluster.service.get(task.id)
    assert (back.status, back.attempts) == (TaskStatus.QUEUED, 0)
    php.worker("php-staying")
    done = final(cluster, task.id)
    assert (done.status, done.node, done.attempts, done.result) == (
        TaskStatus.SUCCEEDED, "php-staying", 1, {"slept": 4, "attempt": 1})
    assert "returned on worker shutdown" in " ".join(e.detail or "" for e in cluster.service.events(task.id))
    assert "stopped" in leaving.output()


def test_a_cancel_stops_the_running_php_handler(cluster: Cluster, php: Php) -> None:
    worker = php.worker("php-a")
    task, _ = cluster.service.submit(SubmitRequest(type="php.slow", params={"seconds": 60}, queue="php"))
    wait_for(lambda: cluster.service.get(task.id).status is TaskStatus.RUNNING, 20, "the run to start")
    started = time.monotonic()
    cluster.service.cancel(task.id)
    wait_for(lambda: "stopped: ignored: task already cancelled" in worker.output(), 15, "the worker to stop it")
    assert time.monotonic() - started < 10
    after, _ = cluster.service.submit(SubmitRequest(type="php.add", params={"a": 1, "b": 1}, queue="php"))
    assert final(cluster, after.id).result == {"sum": 2, "attempt": 1}  # the worker is free again
    assert cluster.service.get(task.id).status is TaskStatus.CANCELLED


def test_concurrency_supervises_processes_and_restarts_one_that_dies(cluster: Cluster, php: Php) -> None:
    pool = php.worker("php-pool", concurrency=2)
    nodes = {n.id: n for n in cluster.service.nodes()}
    assert {"php-pool-0", "php-pool-1"} <= set(nodes)
    victim = nodes["php-pool-0"].pid
    os.kill(victim, signal.SIGKILL)
    wait_for(lambda: any(n.id == "php-pool-0" and n.pid != victim and n.status == "live"
                         for n in cluster.service.nodes()), 20, "the slot to be restarted", pause_s=0.1)
    tasks = [cluster.service.submit(SubmitRequest(type="php.add", params={"a": i, "b": 1}, queue="php"))[0]
             for i in range(6)]
    assert [final(cluster, t.id).result["sum"] for t in tasks] == [i + 1 for i in range(6)]
    assert {e.node for e in cluster.executions()} <= {"php-pool-0", "php-pool-1"}
    pool.signal(signal.SIGTERM)
    assert pool.wait(15) == 0
