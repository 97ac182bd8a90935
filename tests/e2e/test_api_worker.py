"""End to end: tasks submitted over HTTP run on a real worker running in this process."""

from __future__ import annotations

import threading
import time
import warnings
from collections.abc import Iterator
from typing import Any

import pytest

from conveyor import Conveyor, current_task
from conveyor.api import create_app
from conveyor.config import Settings
from conveyor.worker.worker import Worker

with warnings.catch_warnings():  # starlette asks for httpx2, which is not a dependency
    warnings.simplefilter("ignore")
    from fastapi.testclient import TestClient


@pytest.fixture
def conveyor_app(sqlite_url: str) -> Iterator[Conveyor]:
    settings = Settings(broker_url=sqlite_url, store_url=sqlite_url, heartbeat_s=0.2, lease_s=3.0, grace_s=2.0)
    app = Conveyor(settings=settings)
    calls: dict[str, int] = {}

    @app.task("math.add")
    def add(a: int, b: int) -> int:
        return a + b

    @app.task("flaky.once", max_attempts=1)
    def flaky_once(key: str) -> str:
        calls[key] = calls.get(key, 0) + 1
        if calls[key] == 1:
            raise RuntimeError("first call fails")
        return f"ok after {calls[key]}"

    @app.task("wait.for.cancel", max_attempts=1)
    def wait_for_cancel() -> str:
        ctx = current_task()
        deadline = time.monotonic() + 8
        while not ctx.cancelled and time.monotonic() < deadline:
            time.sleep(0.02)
        return "noticed" if ctx.cancelled else "timed out"

    yield app
    app.close()


@pytest.fixture
def worker(conveyor_app: Conveyor) -> Iterator[Worker]:
    node = Worker(conveyor_app, queues=["default"], concurrency=2, node_id="api-e2e-node")
    node.start()
    fetcher = threading.Thread(target=node.fetch_loop, name="test-fetch-loop", daemon=True)
    fetcher.start()
    yield node
    node.stop()
    fetcher.join(timeout=5)
    node.shutdown()


@pytest.fixture
def client(conveyor_app: Conveyor) -> Iterator[TestClient]:
    # The app's service carries its registry, so task-type defaults apply to HTTP submissions.
    with TestClient(create_app(conveyor_app.settings, service=conveyor_app.service)) as c:
        yield c


def wait_for(client: TestClient, task_id: str, statuses: set[str], timeout_s: float = 8.0) -> dict[str, Any]:
    deadline = time.monotonic() + timeout_s
    while True:
        task: dict[str, Any] = client.get(f"/api/v1/tasks/{task_id}").json()
        if task["status"] in statuses or time.monotonic() > deadline:
            return task
        time.sleep(0.02)


def test_task_submitted_over_http_runs_and_its_result_is_served(client: TestClient, worker: Worker) -> None:
    created = client.post("/api/v1/tasks", json={"type": "math.add", "params": {"a": 2, "b": 3}})
    assert created.status_code == 201
    task = wait_for(client, created.json()["id"], {"succeeded", "failed"})
    assert (task["status"], task["result"], task["node"], task["attempts"]) == ("succeeded", 5, worker.node_id, 1)
    assert [e["to"] for e in task["events"]] == ["queued", "running", "succeeded"]
    nodes = client.get("/api/v1/nodes").json()["nodes"]
    assert [(n["id"], n["status"], n["queues"]) for n in nodes] == [(worker.node_id, "live", ["default"])]
    queues = {q["name"]: q for q in client.get("/api/v1/queues").json()["queues"]}
    assert queues["default"]["succeeded"] == 1


def test_failed_task_retried_over_http_runs_again_with_the_same_id(client: TestClient, worker: Worker) -> None:
    task_id = client.post("/api/v1/tasks", json={"type": "flaky.once", "params": {"key": "k"}}).json()["id"]
    failed = wait_for(client, task_id, {"failed", "succeeded"})
    assert failed["status"] == "failed"
    assert "first call fails" in failed["error"]["message"]
    retried = client.post(f"/api/v1/tasks/{task_id}/retry")
    assert retried.status_code == 200
    done = wait_for(client, task_id, {"succeeded", "failed"}, timeout_s=8)
    assert (done["status"], done["result"], done["attempts"]) == ("succeeded", "ok after 2", 2)
    assert client.post(f"/api/v1/tasks/{task_id}/cancel").status_code == 409


def test_cancelling_a_running_task_reaches_its_handler(client: TestClient, worker: Worker) -> None:
    task_id = client.post("/api/v1/tasks", json={"type": "wait.for.cancel"}).json()["id"]
    assert wait_for(client, task_id, {"running"})["status"] == "running"
    cancelled = client.post(f"/api/v1/tasks/{task_id}/cancel")
    assert (cancelled.status_code, cancelled.json()["status"]) == (200, "cancelled")
    deadline = time.monotonic() + 5
    while worker.in_flight_snapshot() and time.monotonic() < deadline:
        time.sleep(0.02)
    assert not worker.in_flight_snapshot()  # the handler saw the cancellation and returned
    assert client.get(f"/api/v1/tasks/{task_id}").json()["status"] == "cancelled"
