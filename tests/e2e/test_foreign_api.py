"""The HTTP side of the protocol for foreign workers (discovery, claims, reports) and the bounds
every HTTP and CLI entry point shares with the wire: NaN, Infinity, out-of-range numbers and NUL
are refused with a 4xx (or a usage error), never stored as null."""

from __future__ import annotations

import subprocess
import sys
import time
import uuid
import warnings
from collections.abc import Iterator
from typing import Any

import pytest

from conveyor.api import create_app
from conveyor.broker.sqlite import SqliteBroker
from conveyor.config import Settings
from conveyor.model import TaskStatus
from conveyor.service import SubmitRequest, TaskService
from conveyor.store.sqlite import SqliteStore
from tests.conformance.kit import runner
from tests.e2e.conftest import REPO_ROOT

with warnings.catch_warnings():  # starlette asks for httpx2, which is not a dependency
    warnings.simplefilter("ignore")
    from fastapi.testclient import TestClient

SETTINGS = Settings(lease_s=12.0, heartbeat_s=2.0)


@pytest.fixture
def service(sqlite_url: str) -> Iterator[TaskService]:
    store, broker = SqliteStore(sqlite_url), SqliteBroker(sqlite_url)
    yield TaskService(store, broker)
    broker.close()
    store.close()


@pytest.fixture
def client(service: TaskService) -> Iterator[TestClient]:
    with TestClient(create_app(SETTINGS, service=service)) as c:
        yield c


def post_raw(client: TestClient, path: str, body: str) -> Any:
    return client.post(path, content=body, headers={"Content-Type": "application/json"})


@pytest.mark.parametrize("literal", ["NaN", "Infinity", "-Infinity", "1e400", "-1e400"])
def test_non_json_numbers_in_params_are_422_not_null(client: TestClient, service: TaskService, literal: str) -> None:
    response = post_raw(client, "/api/v1/tasks", f'{{"type": "x", "params": {{"n": [1, {{"deep": {literal}}}]}}}}')
    assert response.status_code == 422, response.text
    assert response.json()["error"]["fields"] == ["params"]
    assert "NaN or Infinity" in response.json()["error"]["message"]
    assert sum(service.counts().values()) == 0  # nothing stored


@pytest.mark.parametrize(("body", "field"), [
    ({"type": "x", "timeout": 1e10}, "timeout"),
    ({"type": "x", "max_attempts": 10**12}, "max_attempts"),
    ({"type": "x\u0000"}, "type"),
    ({"type": "x", "queue": "q" * 201}, "queue"),
    ({"type": "x", "queue": ":starts-with-a-colon"}, "queue"),
])
def test_the_wire_bounds_hold_over_http(client: TestClient, body: dict[str, Any], field: str) -> None:
    response = client.post("/api/v1/tasks", json=body)
    assert response.status_code == 422, response.text
    assert field in response.json()["error"]["fields"]


def test_a_queue_name_of_200_characters_is_accepted(client: TestClient) -> None:
    assert client.post("/api/v1/tasks", json={"type": "x", "queue": "q" * 200}).status_code == 201


def test_the_protocol_endpoint_announces_the_lease_terms(client: TestClient) -> None:
    body = client.get("/api/v1/protocol").json()
    assert (body["protocol"], body["lease_s"], body["renew_s"], body["heartbeat_s"]) == (1, 12.0, 4.0, 2.0)
    assert body["amqp"]["reports_routing_key"] == "_reports"
    assert body["limits"]["queue_pattern"].startswith("^[A-Za-z0-9]")


def test_a_claim_over_http_runs_then_a_second_node_waits_and_a_stale_copy_is_dropped(
        client: TestClient, service: TaskService) -> None:
    task, _ = service.submit(SubmitRequest(type="php.job", params={}, queue="php"))
    started = time.monotonic()
    first = client.post(f"/api/v1/tasks/{task.id}/claim", json={"attempt": 1, "node": "php-a"}).json()
    assert (first["decision"], first["attempt"], first["lease_s"], first["renew_s"]) == ("run", 1, 12.0, 4.0)
    second = client.post(f"/api/v1/tasks/{task.id}/claim", json={"attempt": 1, "node": "php-b"}).json()
    between = time.monotonic() - started  # the lease ran this long, at most, before the second claim
    # told to come back when the lease is over, plus the margin: 12 s + 0.5 s, less what already ran
    assert second["decision"] == "later" and 12.5 - between <= second["delay_s"] <= 12.6, (second, between)
    done = client.post("/api/v1/reports", json={"protocol": 1, "id": str(task.id), "attempt": 1, "node": "php-a",
                                                "status": "succeeded", "result": {"ok": 1},
                                                "at": "2030-01-01T00:00:00Z"}).json()
    assert (done["applied"], done["stop"], done["task_status"]) == (True, False, "succeeded")
    stale = client.post(f"/api/v1/tasks/{task.id}/claim", json={"attempt": 1, "node": "php-c"}).json()
    assert (stale["decision"], stale["reason"]) == ("drop", "already succeeded")


def test_a_claim_over_http_adopts_a_task_from_its_message(client: TestClient, service: TaskService) -> None:
    task_id = runner.fresh_id()
    body = {"attempt": 1, "node": "php-a", "queue": "conformance", "message": runner.claim_message(task_id, 1)}
    answer = client.post(f"/api/v1/tasks/{task_id}/claim", json=body).json()
    assert answer["decision"] == "run"
    assert service.get(uuid.UUID(task_id)).status is TaskStatus.RUNNING


def test_a_renewal_of_a_cancelled_task_is_answered_stop(client: TestClient, service: TaskService) -> None:
    task, _ = service.submit(SubmitRequest(type="php.job", params={}, queue="php"))
    client.post(f"/api/v1/tasks/{task.id}/claim", json={"attempt": 1, "node": "php-a"})
    client.post(f"/api/v1/tasks/{task.id}/cancel")
    renewal = {"protocol": 1, "id": str(task.id), "attempt": 1, "node": "php-a", "status": "running",
               "at": "2030-01-01T00:00:00Z"}
    answer = client.post("/api/v1/reports", json=renewal).json()
    assert (answer["applied"], answer["stop"], answer["reason"]) == (False, True, "ignored: task already cancelled")


@pytest.mark.parametrize(("path", "body", "status"), [
    ("/api/v1/tasks/{id}/claim", '{"attempt": 0, "node": "n"}', 422),
    ("/api/v1/tasks/{id}/claim", '{"attempt": NaN, "node": "n"}', 422),
    ("/api/v1/tasks/{id}/claim", '{"attempt": 1, "node": "n", "message": {"protocol": 1, "id": "{id}", '
                                 '"type": "t", "params": {"x": NaN}, "queue": "q"}}', 422),
    ("/api/v1/tasks/not-a-uuid/claim", '{"attempt": 1, "node": "n"}', 404),
    ("/api/v1/reports", '{"protocol": 1, "id": "{id}", "attempt": 1, "node": "n", "status": "succeeded", '
                        '"at": "2030-01-01T00:00:00Z", "result": {"x": Infinity}}', 422),
    ("/api/v1/reports", '{"protocol": 1, "id": "{id}", "attempt": 1, "node": "n", "status": "running", '
                        '"at": "2030-01-01T00:00:00Z"}', 404),
])
def test_bad_claims_and_reports_over_http_are_4xx(client: TestClient, path: str, body: str, status: int) -> None:
    task_id = str(uuid.uuid4())
    response = post_raw(client, path.replace("{id}", task_id), body.replace("{id}", task_id))
    assert response.status_code == status, response.text
    assert response.json()["error"]["message"]


@pytest.mark.parametrize(("args", "text"), [
    (["--timeout", "1e10"], "timeout"),
    (["--timeout", "nan"], "timeout"),
    (["--delay", "inf"], "delay"),
    (["--queue", "q" * 201], "queue"),
    (["--params", '{"x": NaN}'], "params"),
])
def test_the_cli_refuses_what_the_wire_refuses(tmp_path: Any, args: list[str], text: str) -> None:
    env = {"PATH": "/usr/bin:/bin", "CONVEYOR_BROKER_URL": f"sqlite:///{tmp_path}/c.db",
           "CONVEYOR_STORE_URL": f"sqlite:///{tmp_path}/c.db", "PYTHONPATH": str(REPO_ROOT / "src")}
    done = subprocess.run([sys.executable, "-m", "conveyor", "submit", "t", *args], env=env, capture_output=True,
                          text=True, timeout=30, check=False)
    assert done.returncode == 2, done.stdout + done.stderr
    assert text in done.stderr
