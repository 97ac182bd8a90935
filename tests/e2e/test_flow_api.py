"""Flow control over HTTP (docs/flow-control.md): workflows, broadcast and sharded submits,
unique tasks and limits, on both deployments' stores and brokers."""

from __future__ import annotations

import uuid
import warnings
from collections.abc import Iterator

import pytest

from conveyor.api import create_app
from conveyor.api.handlers.flow import LimitOut, WorkflowOut
from conveyor.config import Settings
from conveyor.flow.routing import node_queue
from conveyor.model import NodeInfo
from conveyor.service import TaskService
from tests.e2e.test_api import _open_backend

with warnings.catch_warnings():  # starlette asks for httpx2, which is not a dependency
    warnings.simplefilter("ignore")
    from fastapi.testclient import TestClient


@pytest.fixture(params=["sqlite", "distributed"])
def service(request: pytest.FixtureRequest) -> Iterator[TaskService]:
    store, broker = _open_backend(request, request.param)
    service = TaskService(store, broker)
    yield service
    service.close()  # publish what is pending before the broker goes
    if hasattr(broker, "delete_topology"):
        broker.delete_topology()
    broker.close()
    store.close()


@pytest.fixture
def client(service: TaskService) -> Iterator[TestClient]:
    with TestClient(create_app(Settings(), service=service)) as c:
        yield c


CHAIN = {"name": "etl", "steps": [
    {"name": "extract", "type": "etl.extract", "params": {"day": "2030-01-01"}},
    {"name": "load", "type": "etl.load", "after": "extract", "on_parent_failure": "skip"},
]}


def test_a_workflow_is_stored_with_its_graph_and_each_steps_status(client: TestClient) -> None:
    created = client.post("/api/v1/workflows", json=CHAIN)
    assert created.status_code == 201, created.text
    view = WorkflowOut.model_validate(created.json())
    assert (view.name, view.status, view.edges) == ("etl", "running", [["extract", "load"]])
    steps = {s.name: s for s in view.steps}
    assert (steps["extract"].status, steps["load"].status) == ("queued", "waiting")
    assert steps["load"].on_parent_failure == "skip"

    task = client.get(f"/api/v1/tasks/{steps['extract'].task_id}").json()
    assert task["flow"] == {"workflow": view.id, "step": "extract"}
    assert client.get(f"/api/v1/workflows/{view.id}").json() == created.json()
    listed = client.get("/api/v1/workflows").json()["workflows"]
    assert [w["id"] for w in listed] == [view.id]


def test_cancelling_a_workflow_cancels_its_steps_that_have_not_started(client: TestClient) -> None:
    view = client.post("/api/v1/workflows", json=CHAIN).json()
    cancelled = client.post(f"/api/v1/workflows/{view['id']}/cancel")
    assert cancelled.status_code == 200
    body = cancelled.json()
    assert body["status"] == "cancelled"
    assert {s["name"]: s["status"] for s in body["steps"]} == {"extract": "cancelled", "load": "cancelled"}


@pytest.mark.parametrize(("spec", "words"), [
    ({"steps": [{"name": "a", "type": "t", "after": "b"}, {"name": "b", "type": "t", "after": "a"}]}, "cycle"),
    ({"steps": [{"name": "a", "type": "t", "after": "nope"}]}, "unknown step"),
    ({"steps": [{"name": "a", "type": "t"}, {"name": "a", "type": "t"}]}, "unique"),
    ({"steps": [{"name": "a", "type": "t", "colour": "red"}]}, "colour"),
    ({"steps": []}, "steps"),
])
def test_a_bad_workflow_is_refused_with_a_422_and_nothing_is_stored(client: TestClient, spec: dict[str, object],
                                                                     words: str) -> None:
    refused = client.post("/api/v1/workflows", json=spec)
    assert refused.status_code == 422
    assert words in refused.text
    assert client.get("/api/v1/workflows").json()["workflows"] == []
    assert client.get("/api/v1/tasks").json()["tasks"] == []


def test_an_unknown_workflow_is_a_404(client: TestClient) -> None:
    assert client.get(f"/api/v1/workflows/{uuid.uuid4()}").status_code == 404
    assert client.get("/api/v1/workflows/not-an-id").status_code == 404
    assert client.post(f"/api/v1/workflows/{uuid.uuid4()}/cancel").status_code == 404


def test_a_unique_key_returns_the_waiting_task_instead_of_a_new_one(client: TestClient) -> None:
    first = client.post("/api/v1/tasks", json={"type": "report.build", "unique_key": "report:7"})
    again = client.post("/api/v1/tasks", json={"type": "report.build", "unique_key": "report:7"})
    assert (first.status_code, again.status_code) == (201, 200)
    assert again.json()["id"] == first.json()["id"] and again.json()["created"] is False
    assert first.json()["flow"] == {"unique_key": "report:7"}
    client.post(f"/api/v1/tasks/{first.json()['id']}/cancel")
    after = client.post("/api/v1/tasks", json={"type": "report.build", "unique_key": "report:7"})
    assert after.status_code == 201 and after.json()["id"] != first.json()["id"]


def test_broadcast_and_sharded_make_one_step_per_live_node_or_shard(client: TestClient,
                                                                     service: TaskService) -> None:
    refused = client.post("/api/v1/workflows:broadcast", json={"type": "cache.flush"})
    assert refused.status_code == 422 and "no live node" in refused.text
    at = service.store.now()
    for name in ("n1", "n2"):
        service.store.upsert_node(NodeInfo(id=name, host="h", pid=1, queues=("default", node_queue(name)),
                                           concurrency=1, started_at=at, last_heartbeat=at))

    cast = client.post("/api/v1/workflows:broadcast", json={"type": "cache.flush", "params": {"all": True}})
    assert cast.status_code == 201, cast.text
    assert {s["name"]: s["status"] for s in cast.json()["steps"]} == {"node:n1": "queued", "node:n2": "queued"}
    shards = client.post("/api/v1/workflows:sharded", json={"type": "index.part", "shards": 3}).json()
    assert [s["shard"] for s in shards["steps"]] == [[0, 3], [1, 3], [2, 3]]
    assert [client.get(f"/api/v1/tasks/{s['task_id']}").json()["flow"]["node"] for s in shards["steps"]] == [
        "n1", "n2", "n1"]


def test_limits_are_set_listed_and_removed(client: TestClient) -> None:
    assert client.get("/api/v1/limits").json() == {"limits": []}
    rate = client.put("/api/v1/limits/email.send/rate", json={"rate": "100/m", "key_param": "tenant"})
    assert rate.status_code == 200, rate.text
    limit = LimitOut.model_validate(rate.json())
    assert (limit.kind, limit.rate_per_s, limit.burst, limit.key_param, limit.source) == (
        "rate", pytest.approx(100 / 60), 1, "tenant", "manual")
    assert client.put("/api/v1/limits/email.send/concurrency", json={"max_running": 3}).status_code == 200
    kinds = [(x["name"], x["kind"]) for x in client.get("/api/v1/limits").json()["limits"]]
    assert kinds == [("email.send", "concurrency"), ("email.send", "rate")]

    assert client.put("/api/v1/limits/email.send/rate", json={"rate": "lots"}).status_code == 422
    assert client.put("/api/v1/limits/email.send/speed", json={"rate": "1/s"}).status_code == 422
    assert client.delete("/api/v1/limits/email.send/rate").status_code == 204
    assert client.delete("/api/v1/limits/email.send/rate").status_code == 404
