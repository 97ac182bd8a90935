"""Two ``conveyor scheduler --no-http`` processes on one store and broker: a schedule firing
every second is submitted exactly once per tick, also when the lease holder is SIGKILLed
halfway. Runs on the embedded SQLite file and on PostgreSQL + RabbitMQ. Nobody executes the
tasks: the test counts what was submitted, by idempotency key, in the store."""

from __future__ import annotations

import asyncio
import contextlib
import math
import os
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from conveyor.model import TaskFilter
from conveyor.scheduler.schedule_store import ScheduleStore, open_schedule_store
from conveyor.scheduler.schedules import Schedule
from conveyor.store import open_store
from conveyor.store.base import Store
from tests.processes import REPO_ROOT, wait_for

WINDOW_S = 10
LEASE_S, RENEW_S = 3.0, 1.0

pytestmark = [pytest.mark.integration, pytest.mark.timeout(60)]


@dataclass
class Backend:
    store_url: str
    broker_url: str


@pytest.fixture(params=["sqlite", "postgres+rabbitmq"])
def backend(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Backend]:
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path}/conveyor.db"
        yield Backend(url, url)
        return
    pytest.importorskip("conveyor.store.postgres")
    pytest.importorskip("conveyor.broker.rabbitmq")
    yield Backend(request.getfixturevalue("postgres_schema_url"), request.getfixturevalue("rabbitmq_url"))


class Replicas:
    """Scheduler processes, each with a known replica id (the lease holder's name)."""

    def __init__(self, backend: Backend, tmp_path: Path) -> None:
        self.backend = backend
        self.tmp_path = tmp_path
        self.procs: dict[str, subprocess.Popen[bytes]] = {}

    def start(self, replica: str, *, http: str | None = None) -> None:
        env = {k: v for k, v in os.environ.items() if not k.startswith("CONVEYOR_")}
        env.update({"CONVEYOR_STORE_URL": self.backend.store_url, "CONVEYOR_BROKER_URL": self.backend.broker_url,
                    "PYTHONPATH": str(REPO_ROOT / "src"), "PYTHONUNBUFFERED": "1"})
        command = [sys.executable, "-m", "conveyor", "scheduler", "--id", replica, "--lease", str(LEASE_S),
                   "--renew", str(RENEW_S), *(["--http", http] if http else ["--no-http"])]
        with (self.tmp_path / f"{replica}.log").open("wb") as log:
            self.procs[replica] = subprocess.Popen(command, env=env, stdin=subprocess.DEVNULL, stdout=log,
                                                   stderr=subprocess.STDOUT)

    def kill(self, replica: str) -> None:
        proc = self.procs[replica]
        with contextlib.suppress(ProcessLookupError):
            proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=10)

    def kill_all(self) -> None:
        for replica in self.procs:
            self.kill(replica)

    def log(self, replica: str) -> str:
        return (self.tmp_path / f"{replica}.log").read_text(errors="replace")

    def logs(self) -> str:
        return "\n".join(f"--- {r} ---\n{self.log(r)}" for r in self.procs)


def leader(schedules: ScheduleStore) -> str | None:
    lease = schedules.lease("scheduler")
    return lease[0] if lease and lease[1] > time.time() else None


def fire_times(store: Store, queue: str, name: str) -> list[int]:
    page = store.query(TaskFilter(queue=queue), limit=1000)
    prefix = f"schedule:{name}:"
    keys = [t.idempotency_key or "" for t in page.tasks]
    assert all(k.startswith(prefix) for k in keys)
    return sorted(int(k[len(prefix):]) for k in keys)


def delete_rabbitmq_queue(url: str, queue: str) -> None:
    import aio_pika

    async def delete() -> None:
        connection = await aio_pika.connect(url)
        async with connection:
            channel = await connection.channel()
            await channel.queue_delete(f"conveyor.{queue}")

    with contextlib.suppress(Exception):
        asyncio.run(delete())


@pytest.mark.parametrize("kill_leader", [False, True], ids=["steady", "leader-killed"])
def test_two_replicas_fire_every_tick_exactly_once(backend: Backend, tmp_path: Path, kill_leader: bool) -> None:
    name, queue = f"ha-{uuid.uuid4().hex[:8]}", f"ha-{uuid.uuid4().hex[:8]}"
    store = open_store(backend.store_url)  # creates the task tables before the replicas race to
    schedules = open_schedule_store(backend.store_url)
    replicas = Replicas(backend, tmp_path)
    try:
        schedules.create(Schedule.new(name, "ha.noop", interval_s=1, misfire="run_once", queue=queue))
        replicas.start("replica-a")
        replicas.start("replica-b")
        first_leader = wait_for(lambda: leader(schedules), 20, "a lease holder")
        start = math.ceil(time.time()) + 1
        end = start + WINDOW_S
        if kill_leader:
            time.sleep(max(0.0, start + WINDOW_S / 2 - time.time()))
            holder = leader(schedules)
            assert holder in replicas.procs
            replicas.kill(holder)
            survivor = wait_for(lambda: (h := leader(schedules)) and h != holder and h, LEASE_S + 5, "a takeover")
            assert survivor in replicas.procs
        wait_for(lambda: end - 1 in fire_times(store, queue, name), end - time.time() + LEASE_S + 5,
                 f"the fire of {end - 1}")
        fires = fire_times(store, queue, name)
        in_window = [t for t in fires if start <= t < end]
        assert in_window == list(range(start, end)), (first_leader, fires, replicas.logs())
        assert len(fires) == len(set(fires))  # no fire time submitted twice
        assert fires == list(range(fires[0], fires[-1] + 1)), "a tick was lost"
    finally:
        replicas.kill_all()
        schedules.close()
        store.close()
        if backend.broker_url.startswith("amqp"):
            delete_rabbitmq_queue(backend.broker_url, queue)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def test_a_leader_stopped_by_sigterm_stops_its_http_api_and_hands_over_at_once(
        backend: Backend, tmp_path: Path) -> None:
    import httpx

    schedules = open_schedule_store(backend.store_url)
    replicas = Replicas(backend, tmp_path)
    port = free_port()
    try:
        schedules.create(Schedule.new(f"s-{uuid.uuid4().hex[:8]}", "ha.noop", cron="0 0 1 1 *"))
        replicas.start("replica-a", http=f"127.0.0.1:{port}")
        wait_for(lambda: leader(schedules) == "replica-a", 20, "replica-a to lead")
        replicas.start("replica-b")
        listed = httpx.get(f"http://127.0.0.1:{port}/api/v1/schedules", timeout=5)
        assert listed.status_code == 200
        assert [s["name"] for s in listed.json()["schedules"]] == [s.name for s in schedules.all()]
        wait_for(lambda: "scheduler replica-b started" in replicas.log("replica-b"), 20, "replica-b to stand by")
        replicas.procs["replica-a"].send_signal(signal.SIGTERM)
        assert replicas.procs["replica-a"].wait(timeout=10) == 0, replicas.logs()
        stopped = time.monotonic()
        wait_for(lambda: leader(schedules) == "replica-b", LEASE_S + 5, "replica-b to take over")
        assert time.monotonic() - stopped < LEASE_S  # released, not left to expire
        with pytest.raises(httpx.ConnectError):
            httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=2)
    finally:
        replicas.kill_all()
        schedules.close()
