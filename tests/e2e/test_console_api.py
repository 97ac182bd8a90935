"""The operator side of the HTTP API (embedded default): filters and id prefixes, bulk
actions, overview, dead letters, schedules run now, sign-in with CSRF-safe actions, request
deadlines, and /metrics checked against the store after a real run."""

from __future__ import annotations

import re
import socket
import time
import uuid
import warnings
from collections.abc import Iterator
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from conveyor.api import create_app
from conveyor.api.auth import CSRF_HEADER, SESSION_COOKIE
from conveyor.api.server import GuardedH11Protocol, HttpServer, check_bind
from conveyor.broker.sqlite import SqliteBroker
from conveyor.config import Settings
from conveyor.errors import ConfigError, TaskNotFound
from conveyor.model import TaskStatus
from conveyor.service import TaskService
from conveyor.store.sqlite import SqliteStore
from tests.e2e.conftest import REPO_ROOT, Workers
from tests.processes import wait_for

with warnings.catch_warnings():  # starlette asks for httpx2, which is not a dependency
    warnings.simplefilter("ignore")
    from fastapi.testclient import TestClient

TOKEN = "s3cret-token"


@pytest.fixture
def service(db_url: str) -> Iterator[TaskService]:
    store, broker = SqliteStore(db_url), SqliteBroker(db_url)
    yield TaskService(store, broker)
    broker.close()
    store.close()


@pytest.fixture
def client(service: TaskService, db_url: str) -> Iterator[TestClient]:
    with TestClient(create_app(Settings(broker_url=db_url, store_url=db_url), service=service)) as c:
        yield c


@pytest.fixture
def secured(service: TaskService, db_url: str) -> Iterator[TestClient]:
    settings = Settings(broker_url=db_url, store_url=db_url, api_token=TOKEN)
    with TestClient(create_app(settings, service=service), base_url="http://conveyor.test") as c:
        yield c


def submit(client: TestClient, **body: Any) -> dict[str, Any]:
    response = client.post("/api/v1/tasks", json={"type": "demo.add", **body})
    assert response.status_code in (200, 201), response.text
    data: dict[str, Any] = response.json()
    return data


def fail_task(service: TaskService, task_id: str) -> None:
    task = service.get(uuid.UUID(task_id))
    running = service.store.update(task, TaskStatus.RUNNING, node="n1", attempts=1, started_at=time.time())
    service.store.update(running, TaskStatus.FAILED, node="n1", error={"type": "Boom", "message": "boom",
                                                                       "traceback": "Traceback ..."},
                         finished_at=time.time())


def test_list_filters_by_time_id_prefix_and_key(client: TestClient) -> None:
    first = submit(client, idempotency_key="order-1")
    second = submit(client, queue="other")
    listed = client.get("/api/v1/tasks", params={"id": first["id"][:30]}).json()["tasks"]
    assert [t["id"] for t in listed] == [first["id"]]
    assert [t["id"] for t in client.get("/api/v1/tasks", params={"idempotency_key": "order-1"}).json()["tasks"]] == [
        first["id"]]
    since = client.get("/api/v1/tasks", params={"since": second["created_at"]}).json()["tasks"]
    assert second["id"] in {t["id"] for t in since}
    assert client.get("/api/v1/tasks", params={"until": "2000-01-01T00:00:00Z"}).json()["tasks"] == []
    bad = client.get("/api/v1/tasks", params={"id": "xyz"})
    assert bad.status_code == 422 and bad.json()["error"]["fields"] == ["id"]


def test_an_id_prefix_works_wherever_an_id_does(client: TestClient, service: TaskService) -> None:
    task = submit(client)
    short = task["id"][:-6]
    assert client.get(f"/api/v1/tasks/{short}").json()["id"] == task["id"]
    assert client.post(f"/api/v1/tasks/{short}/cancel").json()["status"] == "cancelled"
    assert client.post(f"/api/v1/tasks/{short}/retry").json()["status"] == "queued"
    other = submit(client)
    common = "".join(a for a, b in zip(task["id"], other["id"], strict=True) if a == b)[:8]
    ambiguous = client.get(f"/api/v1/tasks/{common}")
    assert ambiguous.status_code == 422 and "give more characters" in ambiguous.json()["error"]["message"]
    assert client.get("/api/v1/tasks/not-hex").status_code == 404


def test_bulk_retry_and_cancel_act_on_what_the_filter_matches(client: TestClient, service: TaskService) -> None:
    failed = [submit(client, type="bulk.a") for _ in range(3)]
    for task in failed:
        fail_task(service, task["id"])
    waiting = [submit(client, type="bulk.b") for _ in range(2)]
    retried = client.post("/api/v1/tasks:retry", json={"filter": {"status": "failed", "type": "bulk.a"},
                                                         "limit": 2}).json()
    assert (retried["done"], retried["more"]) == (2, True)
    retried = client.post("/api/v1/tasks:retry", json={"filter": {"status": "failed", "type": "bulk.a"}}).json()
    assert (retried["done"], retried["more"]) == (1, False)
    cancelled = client.post("/api/v1/tasks:cancel", json={"ids": [t["id"] for t in waiting] + [str(uuid.uuid4())]})
    assert cancelled.json()["done"] == 2 and cancelled.json()["skipped"] == 1
    assert {service.get(uuid.UUID(t["id"])).status for t in failed} == {TaskStatus.QUEUED}
    refused = client.post("/api/v1/tasks:retry", json={"filter": {"status": "queued"}})
    assert refused.status_code == 422
    neither = client.post("/api/v1/tasks:cancel", json={"limit": 5})
    assert neither.status_code == 422


def test_overview_counts_and_purge(client: TestClient, service: TaskService) -> None:
    client.get("/api/v1/overview")  # the statistics start counting here
    done = submit(client)
    fail_task(service, done["id"])
    submit(client, queue="waiting")
    overview = client.get("/api/v1/overview").json()
    assert overview["counts"]["failed"] == 1 and overview["counts"]["queued"] == 1
    queue = next(q for q in overview["queues"] if q["name"] == "waiting")
    assert queue["depth"] == 1 and queue["oldest_waiting_s"] >= 0
    assert len(overview["series"]["minutes"]) == 60
    assert overview["series"]["failed"] == 1
    purged = client.post("/api/v1/tasks:purge", json={"finished_before": "2999-01-01T00:00:00Z"}).json()
    assert purged == {"deleted": 1}
    assert client.get(f"/api/v1/tasks/{done['id']}").status_code == 404
    assert client.get("/api/v1/overview").json()["counts"]["failed"] == 0


def test_dead_letters_list_replay_and_delete(client: TestClient, service: TaskService, db_url: str) -> None:
    task = submit(client, type="nobody.knows")
    consumer = service.broker.consume(["default"], prefetch=1)
    delivery = consumer.get(5.0)
    assert delivery is not None
    fail_task(service, task["id"])
    delivery.dead_letter("unknown task type 'nobody.knows'")
    consumer.close()
    service.broker.publish(b"not json", queue="default")
    consumer = service.broker.consume(["default"], prefetch=1)
    junk = consumer.get(5.0)
    assert junk is not None
    junk.dead_letter("malformed message")
    consumer.close()
    letters = client.get("/api/v1/dead-letters").json()["dead_letters"]
    assert [(d["task_id"], d["reason"]) for d in letters] == [
        (task["id"], "unknown task type 'nobody.knows'"), (None, "malformed message")]
    replayed = client.post("/api/v1/dead-letters:replay", json={"ids": [letters[0]["id"]]}).json()
    assert replayed == {"replayed": 1}
    assert service.get(uuid.UUID(task["id"])).status is TaskStatus.QUEUED, "its failed task runs again"
    assert client.post("/api/v1/dead-letters:delete", json={"all": True}).json() == {"deleted": 1}
    assert client.get("/api/v1/dead-letters").json()["dead_letters"] == []
    assert client.post("/api/v1/dead-letters:delete", json={}).status_code == 422


def test_a_schedule_runs_now_on_request(client: TestClient) -> None:
    created = client.post("/api/v1/schedules", json={"name": "hourly", "type": "report.build", "cron": "0 * * * *"})
    assert created.status_code == 201
    ran = client.post("/api/v1/schedules/hourly/run")
    assert ran.status_code == 201
    assert ran.json()["type"] == "report.build" and ran.json()["idempotency_key"].startswith("schedule:hourly:manual:")
    assert client.get("/api/v1/schedules/hourly").json()["last_fired_at"] is None
    assert client.post("/api/v1/schedules/nope/run").status_code == 404


# -- sign-in ------------------------------------------------------------------------------
def sign_in(client: TestClient) -> str:
    response = client.post("/login", data={"token": TOKEN, "next": "/tasks"}, follow_redirects=False)
    assert response.status_code == 303 and response.headers["location"] == "/tasks"
    cookie = response.headers["set-cookie"]
    assert "HttpOnly" in cookie and "SameSite=strict" in cookie
    page = client.get("/tasks").text
    marker = 'data-csrf="'
    return page[page.index(marker) + len(marker):].split('"', 1)[0]


def test_a_browser_is_sent_to_sign_in_and_api_clients_get_401(secured: TestClient) -> None:
    page = secured.get("/tasks?status=failed", headers={"accept": "text/html"}, follow_redirects=False)
    assert page.status_code == 303 and page.headers["location"] == "/login?next=%2Ftasks%3Fstatus%3Dfailed"
    assert secured.get("/api/v1/tasks").status_code == 401
    assert secured.get("/docs", headers={"accept": "text/html"}, follow_redirects=False).status_code == 303
    assert secured.get("/login").status_code == 200 and secured.get("/static/app.css").status_code == 200
    wrong = secured.post("/login", data={"token": "nope"})
    assert wrong.status_code == 401 and "not the API token" in wrong.text
    assert SESSION_COOKIE not in secured.cookies


def test_a_signed_in_browser_reads_freely_and_acts_with_its_csrf_token(secured: TestClient) -> None:
    csrf = sign_in(secured)
    assert len(csrf) == 32
    assert secured.get("/api/v1/tasks").status_code == 200
    assert "swagger-ui" in secured.get("/docs").text
    task = secured.post("/api/v1/tasks", json={"type": "x"}, headers={CSRF_HEADER: csrf})
    assert task.status_code == 201
    forged = secured.post("/api/v1/tasks", json={"type": "x"})
    assert forged.status_code == 403 and "X-CSRF-Token" in forged.json()["error"]["message"]
    assert secured.post(f"/tasks/{task.json()['id']}/cancel", headers={CSRF_HEADER: "0" * 32}).status_code == 403
    cancelled = secured.post(f"/tasks/{task.json()['id']}/cancel", headers={CSRF_HEADER: csrf})
    assert cancelled.status_code == 200 and "Cancelled." in cancelled.text
    assert secured.post("/logout", headers={CSRF_HEADER: csrf}).status_code == 204


def test_bearer_clients_need_no_cookie_and_cross_site_posts_are_refused(secured: TestClient) -> None:
    bearer = {"Authorization": f"Bearer {TOKEN}"}
    assert secured.post("/api/v1/tasks", json={"type": "x"}, headers=bearer).status_code == 201
    foreign = secured.post("/api/v1/tasks", json={"type": "x"}, headers={**bearer, "Origin": "https://evil.example"})
    assert foreign.status_code == 403
    same = secured.post("/api/v1/tasks", json={"type": "x"}, headers={**bearer, "Origin": "http://conveyor.test"})
    assert same.status_code == 201
    assert secured.get("/metrics", headers=bearer).status_code == 200
    assert secured.get("/healthz").status_code == 200


def test_a_token_less_api_refuses_non_loopback_addresses() -> None:
    check_bind("127.0.0.1", None, False)
    check_bind("0.0.0.0", "token", False)
    check_bind("0.0.0.0", None, True)
    with pytest.raises(ConfigError, match="CONVEYOR_API_TOKEN"):
        check_bind("0.0.0.0", None, False)
    with pytest.raises(ConfigError):
        check_bind("192.0.2.10", None, False)


# -- slow clients ---------------------------------------------------------------------------
def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
def server(service: TaskService, monkeypatch: pytest.MonkeyPatch) -> Iterator[int]:
    monkeypatch.setattr(GuardedH11Protocol, "header_timeout_s", 0.5)
    port = _free_port()
    http = HttpServer(create_app(Settings(broker_url=service.store.url, store_url=service.store.url), service=service,
                                 body_timeout_s=0.5), "127.0.0.1", port)
    http.start()
    yield port
    http.stop()


def _read_until_closed(sock: socket.socket, timeout_s: float) -> tuple[bytes, float]:
    started = time.monotonic()
    sock.settimeout(timeout_s)
    data = b""
    while True:
        chunk = sock.recv(4096)
        if not chunk:
            return data, time.monotonic() - started
        data += chunk


def test_half_sent_headers_and_bodies_are_timed_out(server: int) -> None:
    with socket.create_connection(("127.0.0.1", server)) as sock:
        sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n")  # never finishes its headers
        data, waited = _read_until_closed(sock, 5.0)
    assert data.startswith(b"HTTP/1.1 408") and waited < 3
    with socket.create_connection(("127.0.0.1", server)) as sock:
        sock.sendall(b"POST /api/v1/tasks HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                     b"Content-Length: 100\r\n\r\n{\"type\":")  # promises 100 bytes, sends 8
        data, waited = _read_until_closed(sock, 5.0)
    assert b" 408 " in data.split(b"\r\n", 1)[0] and waited < 3
    with socket.create_connection(("127.0.0.1", server)) as sock:  # a complete request is served
        sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        data, _ = _read_until_closed(sock, 5.0)
    assert data.startswith(b"HTTP/1.1 200")


# -- metrics after a real run -------------------------------------------------------------------
def _metrics(client: TestClient) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    samples = {}
    for family in text_string_to_metric_families(client.get("/metrics").text):
        for sample in family.samples:
            samples[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return samples


def test_metrics_after_a_run_agree_with_the_store(workers: Workers, db_url: str, service: TaskService,
                                                   client: TestClient) -> None:
    from tests.e2e.apps import core_app

    workers.start(node_id="metrics-node", concurrency=4)
    client.get("/api/v1/overview")  # statistics start counting here
    core_app.app.close()
    core_app.app.use_settings(Settings(broker_url=db_url, store_url=db_url))
    try:
        handles = [core_app.app.submit("core.record", {"n": i}) for i in range(6)]
        handles += [core_app.app.submit("core.flaky", {"fail_times": 1}) for _ in range(2)]
        handles += [core_app.app.submit("core.always_fails") for _ in range(2)]
        for handle in handles:
            handle.wait(timeout=30)
    finally:
        core_app.app.close()
    store = service.store

    def folded() -> dict[tuple[str, tuple[tuple[str, str], ...]], float] | None:
        samples = _metrics(client)
        return samples if samples.get(("conveyor_stats_pending_events", ()), 1) == 0 else None

    samples = wait_for(folded, 10, "the statistics to catch up")
    tasks = [store.get(h.id) for h in handles]
    events = [e for t in tasks for e in store.events(t.id)]

    def counter(name: str, task_type: str) -> float:
        return samples.get((f"conveyor_tasks_{name}_total", (("queue", "default"), ("type", task_type))), 0.0)

    for task_type in ("core.record", "core.flaky", "core.always_fails"):
        of_type = [t for t in tasks if t.type == task_type]
        ids = {t.id for t in of_type}
        assert counter("submitted", task_type) == len(of_type)
        assert counter("started", task_type) == sum(t.attempts for t in of_type)
        assert counter("succeeded", task_type) == sum(t.status is TaskStatus.SUCCEEDED for t in of_type)
        assert counter("failed", task_type) == sum(t.status is TaskStatus.FAILED for t in of_type)
        assert counter("retried", task_type) == sum(
            e.to_status is TaskStatus.RETRYING for e in events if e.task_id in ids)
        runs = samples[("conveyor_task_run_seconds_count", (("queue", "default"), ("type", task_type)))]
        assert runs == sum(t.attempts for t in of_type)
    by_status = store.count_by_status()
    for status, n in by_status.items():
        assert samples.get(("conveyor_tasks", (("queue", "default"), ("status", status))), 0.0) == n
    assert samples[("conveyor_queue_depth", (("queue", "default"),))] == 0
    assert samples[("conveyor_nodes", (("status", "live"),))] == 1
    # Every series the shipped Grafana dashboard queries is one the server exposes.
    dashboard = (REPO_ROOT / "deploy" / "grafana" / "conveyor-dashboard.json").read_text()
    exposed = {name for name, _ in samples}
    assert set(re.findall(r"conveyor_[a-z_]+", dashboard)) - exposed == set()


# -- retention --------------------------------------------------------------------------------
def test_the_scheduler_leader_prunes_past_retention_and_forgets_old_nodes(service: TaskService,
                                                                            db_url: str) -> None:
    from conveyor.model import NodeInfo, Task
    from conveyor.operations import Operations
    from conveyor.scheduler import SchedulerService, open_schedule_store

    settings = Settings(broker_url=db_url, store_url=db_url, retention_s=60, node_retention_s=3600)
    at = time.time()
    old, _ = service.store.create(Task(type="old", status=TaskStatus.SUCCEEDED, finished_at=at - 120))
    recent, _ = service.store.create(Task(type="recent", status=TaskStatus.FAILED, finished_at=at - 10))
    waiting, _ = service.store.create(Task(type="waiting", created_at=at - 10 * 86400))
    for node_id, beat in (("gone", at - 7200), ("here", at)):
        service.store.upsert_node(NodeInfo(id=node_id, host="h", pid=1, queues=("default",), concurrency=1,
                                           started_at=at - 9000, last_heartbeat=beat, status="stopped"))
    ops = Operations(service, settings)
    schedules = open_schedule_store(db_url)
    leader = SchedulerService(schedules, service, settings, maintenance=ops.maintain)
    try:
        leader.step()
    finally:
        schedules.close()
        ops.close()
    assert leader.is_leader
    with pytest.raises(TaskNotFound):
        service.get(old.id)
    assert service.store.events(old.id) == []
    assert service.get(recent.id).type == "recent" and service.get(waiting.id).type == "waiting"
    assert [n.id for n in service.nodes()] == ["here"]
