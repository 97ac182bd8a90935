"""The HTTP API driven as a client would, against real stores and brokers."""

from __future__ import annotations

import uuid
import warnings
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from conveyor.api import create_app
from conveyor.api.schemas import SubmittedOut, TaskDetailOut, TaskPageOut
from conveyor.broker.base import Broker
from conveyor.config import Settings
from conveyor.model import NodeInfo, now
from conveyor.service import TaskService
from conveyor.store.base import Store

with warnings.catch_warnings():  # starlette asks for httpx2, which is not a dependency
    warnings.simplefilter("ignore")
    from fastapi.testclient import TestClient


def _open_backend(request: pytest.FixtureRequest, kind: str) -> tuple[Store, Broker]:
    if kind == "sqlite":
        from conveyor.broker.sqlite import SqliteBroker
        from conveyor.store.sqlite import SqliteStore

        url = request.getfixturevalue("sqlite_url")
        return SqliteStore(url), SqliteBroker(url)
    from conveyor.broker.rabbitmq import RabbitmqBroker
    from conveyor.store.postgres import PostgresStore

    store = PostgresStore(request.getfixturevalue("postgres_schema_url"))
    broker = RabbitmqBroker(request.getfixturevalue("rabbitmq_url"), namespace=f"test-{uuid.uuid4().hex[:8]}")
    return store, broker


@pytest.fixture(params=["sqlite", "distributed"])
def service(request: pytest.FixtureRequest) -> Iterator[TaskService]:
    store, broker = _open_backend(request, request.param)
    yield TaskService(store, broker)
    if hasattr(broker, "delete_topology"):
        broker.delete_topology()  # leave no test queues on the shared server
    broker.close()
    store.close()


@pytest.fixture
def sqlite_service(request: pytest.FixtureRequest) -> Iterator[TaskService]:
    store, broker = _open_backend(request, "sqlite")
    yield TaskService(store, broker)
    broker.close()
    store.close()


@pytest.fixture
def client(service: TaskService) -> Iterator[TestClient]:
    with TestClient(create_app(Settings(), service=service)) as c:
        yield c


@pytest.fixture
def sqlite_client(sqlite_service: TaskService) -> Iterator[TestClient]:
    with TestClient(create_app(Settings(), service=sqlite_service)) as c:
        yield c


def submit(client: TestClient, expect: int = 201, **body: Any) -> dict[str, Any]:
    body.setdefault("type", "demo.add")
    response = client.post("/api/v1/tasks", json=body)
    assert response.status_code == expect, response.text
    data: dict[str, Any] = response.json()
    return data


# -- submit, look up, cancel, retry (every backend) ------------------------------------------------
def test_submitted_task_is_returned_with_its_full_json_and_timeline(client: TestClient) -> None:
    created = submit(client, params={"a": 1, "b": [2, "three"]}, queue="emails", priority=7,
                     max_attempts=5, timeout=2.5)
    SubmittedOut.model_validate(created)
    assert created["created"] is True
    assert created["status"] == "queued"
    assert (created["queue"], created["priority"], created["max_attempts"], created["timeout"]) == (
        "emails", 7, 5, 2.5)
    fetched = client.get(f"/api/v1/tasks/{created['id']}").json()
    TaskDetailOut.model_validate(fetched)
    assert fetched["params"] == {"a": 1, "b": [2, "three"]}
    assert [(e["from"], e["to"]) for e in fetched["events"]] == [(None, "queued")]


def test_repeated_idempotency_key_returns_the_first_task_with_200(client: TestClient) -> None:
    first = submit(client, idempotency_key="order-42", params={"n": 1})
    again = submit(client, expect=200, idempotency_key="order-42", params={"n": 2})
    assert again["id"] == first["id"]
    assert again["created"] is False
    assert again["params"] == {"n": 1}


def test_delayed_task_is_scheduled_and_naive_eta_means_utc(client: TestClient) -> None:
    delayed = submit(client, delay=60)
    assert delayed["status"] == "scheduled"
    assert delayed["eta"] is not None
    soon = datetime.now(UTC).replace(microsecond=0, tzinfo=None) + timedelta(hours=1)
    at = submit(client, eta=soon.isoformat())
    assert (at["status"], at["eta"]) == ("scheduled", soon.isoformat() + "Z")
    offset = submit(client, eta=(soon + timedelta(hours=2)).isoformat() + "+02:00")
    assert offset["eta"] == soon.isoformat() + "Z"


def test_cancel_then_retry_runs_the_same_task_again(client: TestClient) -> None:
    task = submit(client, delay=60)
    cancelled = client.post(f"/api/v1/tasks/{task['id']}/cancel")
    assert cancelled.status_code == 200
    assert cancelled.json()["status"] == "cancelled"
    again = client.post(f"/api/v1/tasks/{task['id']}/cancel")
    assert again.status_code == 409
    assert "cancelled" in again.json()["error"]["message"]
    retried = client.post(f"/api/v1/tasks/{task['id']}/retry")
    assert retried.status_code == 200
    assert (retried.json()["id"], retried.json()["status"]) == (task["id"], "queued")
    not_failed = client.post(f"/api/v1/tasks/{task['id']}/retry")
    assert not_failed.status_code == 409
    assert not_failed.json()["error"]["type"] == "conflict"
    timeline = [e["to"] for e in client.get(f"/api/v1/tasks/{task['id']}").json()["events"]]
    assert timeline == ["scheduled", "cancelled", "queued"]


def test_unknown_and_malformed_task_ids_are_404(client: TestClient) -> None:
    for path in (f"/api/v1/tasks/{uuid.uuid4()}", "/api/v1/tasks/not-a-uuid",
                 f"/api/v1/tasks/{uuid.uuid4()}/cancel", "/api/v1/tasks/x/retry"):
        method = client.post if path.endswith(("cancel", "retry")) else client.get
        response = method(path)
        assert response.status_code == 404, path
        assert response.json()["error"]["type"] == "not_found"


def test_batch_submits_every_task_with_its_own_created_flag(client: TestClient) -> None:
    response = client.post("/api/v1/tasks:batch", json={"tasks": [
        {"type": "a", "idempotency_key": "k1"}, {"type": "b"}, {"type": "c", "idempotency_key": "k1"},
    ]})
    assert response.status_code == 201
    tasks = response.json()["tasks"]
    assert [t["type"] for t in tasks] == ["a", "b", "a"]
    assert [t["created"] for t in tasks] == [True, True, False]
    assert tasks[2]["id"] == tasks[0]["id"]


def test_listing_filters_and_pages_newest_first(client: TestClient) -> None:
    batch = [{"type": "page.me", "queue": "q1" if i % 2 else "q2"} for i in range(7)]
    ids = [t["id"] for t in client.post("/api/v1/tasks:batch", json={"tasks": batch}).json()["tasks"]]
    seen: list[str] = []
    cursor: str | None = None
    for _ in range(5):
        params: dict[str, Any] = {"type": "page.me", "limit": 3, **({"cursor": cursor} if cursor else {})}
        page = client.get("/api/v1/tasks", params=params).json()
        TaskPageOut.model_validate(page)
        seen += [t["id"] for t in page["tasks"]]
        cursor = page["next_cursor"]
        if cursor is None:
            break
    # Newest first means by id (UUIDv7): tasks created in the same millisecond may tie-break
    # on their random bits, so compare with the ids sorted rather than the submission order.
    assert seen == sorted(ids, key=uuid.UUID, reverse=True)
    q1 = client.get("/api/v1/tasks", params={"queue": "q1", "status": "queued"}).json()["tasks"]
    assert {t["id"] for t in q1} == {ids[i] for i in range(1, 7, 2)}
    assert client.get("/api/v1/tasks", params={"status": "succeeded", "type": "page.me"}).json() == {
        "tasks": [], "next_cursor": None}


def test_queues_report_depth_in_flight_and_finished(client: TestClient) -> None:
    for _ in range(3):
        submit(client, queue="stats-a")
    scheduled = submit(client, queue="stats-a", delay=60)
    submit(client, queue="stats-b")
    client.post(f"/api/v1/tasks/{scheduled['id']}/cancel")
    queues = {q["name"]: q for q in client.get("/api/v1/queues").json()["queues"]}
    a = queues["stats-a"]
    assert (a["depth"], a["in_flight"], a["cancelled"], a["succeeded"], a["failed"]) == (3, 0, 1, 0, 0)
    assert queues["stats-b"]["depth"] == 1
    assert a["finished_last_60s"] == 1
    assert a["rate_per_s"] == pytest.approx(1 / 60, abs=0.001)


# -- nodes, health, metrics ---------------------------------------------------------------------
def _node(node_id: str, beat_age_s: float, status: str = "live") -> NodeInfo:
    return NodeInfo(id=node_id, host="h", pid=1, queues=("default", "nodeq"), concurrency=4,
                    started_at=now() - 100, last_heartbeat=now() - beat_age_s, status=status,
                    in_flight=2, done=9)


def test_nodes_show_a_silent_live_node_as_lost(sqlite_client: TestClient, sqlite_service: TaskService) -> None:
    store = sqlite_service.store
    store.upsert_node(_node("fresh", 1))
    store.upsert_node(_node("silent", 3 * Settings().heartbeat_s + 5))
    store.upsert_node(_node("gone", 1, status="stopped"))
    nodes = {n["id"]: n for n in sqlite_client.get("/api/v1/nodes").json()["nodes"]}
    assert {k: v["status"] for k, v in nodes.items()} == {"fresh": "live", "silent": "lost"}
    assert (nodes["fresh"]["queues"], nodes["fresh"]["concurrency"], nodes["fresh"]["in_flight"],
            nodes["fresh"]["done"]) == (["default", "nodeq"], 4, 2, 9)
    everything = sqlite_client.get("/api/v1/nodes", params={"include_stopped": "true"}).json()["nodes"]
    assert len(everything) == 3
    queues = {q["name"] for q in sqlite_client.get("/api/v1/queues").json()["queues"]}
    assert "nodeq" in queues


def test_health_probes_answer_and_metrics_expose_tasks_nodes_and_requests(
    sqlite_client: TestClient, sqlite_service: TaskService,
) -> None:
    assert sqlite_client.get("/healthz").json() == {"status": "ok"}
    assert sqlite_client.get("/readyz").json() == {"status": "ready"}
    sqlite_service.store.upsert_node(_node("n1", 1))
    submit(sqlite_client)
    text = sqlite_client.get("/metrics").text
    assert 'conveyor_tasks{queue="default",status="queued"} 1.0' in text
    assert 'conveyor_nodes{status="live"} 1.0' in text
    assert 'conveyor_http_requests_total{method="POST",route="/api/v1/tasks",status="201"} 1.0' in text


def test_readyz_is_503_and_the_api_503_when_the_store_is_gone(sqlite_client: TestClient,
                                                              sqlite_service: TaskService) -> None:
    sqlite_service.store.close()
    ready = sqlite_client.get("/readyz")
    assert ready.status_code == 503
    assert ready.json()["error"]["type"] == "unavailable"
    listing = sqlite_client.get("/api/v1/tasks")
    assert listing.status_code == 503
    assert sqlite_client.get("/healthz").status_code == 200


def test_app_opens_and_closes_its_own_connections_from_settings(sqlite_url: str) -> None:
    app = create_app(Settings(broker_url=sqlite_url, store_url=sqlite_url))
    with TestClient(app) as c:
        assert app.state.service is not None
        assert submit(c)["status"] == "queued"
        assert c.get("/readyz").status_code == 200
    assert app.state.service is None
    not_started = TestClient(create_app(Settings(broker_url=sqlite_url, store_url=sqlite_url)))
    assert not_started.get("/readyz").status_code == 503
    assert not_started.get("/api/v1/tasks").status_code == 503


def test_openapi_spec_is_served_with_title_and_version(sqlite_client: TestClient) -> None:
    from conveyor import __version__

    spec = sqlite_client.get("/openapi.json").json()
    assert (spec["info"]["title"], spec["info"]["version"]) == ("Conveyor", __version__)
    assert {"/api/v1/tasks", "/api/v1/tasks:batch", "/api/v1/tasks/{task_id}", "/api/v1/nodes",
            "/api/v1/queues", "/healthz", "/readyz", "/metrics"} <= set(spec["paths"])


# -- auth ---------------------------------------------------------------------------------------
@pytest.fixture
def token_client(sqlite_service: TaskService) -> Iterator[TestClient]:
    with TestClient(create_app(Settings(api_token="s3cret-token"), service=sqlite_service)) as c:
        yield c


def test_token_is_required_everywhere_but_the_health_probes(token_client: TestClient) -> None:
    for path in ("/api/v1/tasks", "/api/v1/nodes", "/api/v1/queues", "/metrics", "/openapi.json",
                 f"/api/v1/tasks/{uuid.uuid4()}", "/no/such/path"):
        response = token_client.get(path)
        assert response.status_code == 401, path
        assert response.json()["error"]["type"] == "unauthorized"
        assert response.headers["www-authenticate"] == "Bearer"
    assert token_client.post("/api/v1/tasks", content=b"{not json").status_code == 401
    assert token_client.get("/healthz").status_code == 200
    assert token_client.get("/readyz").status_code == 200


def test_wrong_or_malformed_tokens_are_refused_and_the_right_one_accepted(token_client: TestClient) -> None:
    for header in ("Bearer wrong", "Bearer s3cret-toke", "Basic s3cret-token", "s3cret-token",
                   "Bearer s3cret-token-and-more", "Bearer ", "Bearer \u00e9t\u00e9"):
        response = token_client.get("/api/v1/tasks", headers={"Authorization": header.encode("utf-8")})
        assert response.status_code == 401, header
        assert "wrong bearer token" in response.json()["error"]["message"]
    for header in ("Bearer s3cret-token", "bearer s3cret-token"):
        assert token_client.get("/api/v1/tasks", headers={"Authorization": header}).status_code == 200
    ok = token_client.post("/api/v1/tasks", json={"type": "x"}, headers={"Authorization": "Bearer s3cret-token"})
    assert ok.status_code == 201
    metrics = token_client.get("/metrics", headers={"Authorization": "Bearer s3cret-token"})
    assert 'status="401"' in metrics.text
