"""One adapter per system under test: how to submit to it, start its workers, and clean up.

A ``Scope`` holds what one case owns (queue name, schema, temp dir, record dir); every name
carries the run's tag so nothing collides with other users of the same servers.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from benchlib import infra, record
from benchlib.procs import BenchError, Procs

Popen = subprocess.Popen[bytes]


@dataclass
class Scope:
    tag: str
    root: Path
    procs: Procs
    max_s: float = 30.0  # a client stops submitting after this long (see pace.timed)
    extra_env: dict[str, str] = field(default_factory=dict)

    @property
    def queue(self) -> str:
        return self.tag

    @property
    def record_dir(self) -> Path:
        return self.root / "records"

    def env(self) -> dict[str, str]:
        return {**infra.base_env(self.record_dir, self.queue), **self.extra_env}


class System:
    """Base adapter; subclasses fill in the commands."""

    family = ""

    def prepare(self, scope: Scope) -> None:
        scope.record_dir.mkdir(parents=True, exist_ok=True)

    def client(self, scope: Scope, args: list[str], name: str, n: int) -> dict[str, float]:
        raise NotImplementedError

    def submit(self, scope: Scope, n: int, max_s: float | None = None) -> dict[str, float]:
        """N durable submits, one at a time (the submit scenario); ``n`` in the result is how
        many went out before the time cap."""
        return self.client(scope, ["submit", "--n", str(n), "--max-s", str(max_s or scope.max_s)], "submit", n)

    def fill(self, scope: Scope, n: int, max_s: float | None = None) -> dict[str, float]:
        """Queue N tasks as fast as this system allows (drain and memory set-up; not a result)."""
        return self.submit(scope, n, max_s)

    def paced(self, scope: Scope, n: int, rate: float) -> dict[str, float]:
        return self.client(scope, ["paced", "--n", str(n), "--rate", str(rate)], f"paced{rate:.0f}", n)

    def start_workers(self, scope: Scope) -> list[Popen]:
        raise NotImplementedError

    def cleanup(self, scope: Scope) -> None:
        pass


def client_timeout(n: int) -> float:
    return 120 + n / 50  # generous: a stuck client fails the case, not the run


class ConveyorAmqp(System):
    """Conveyor distributed: RabbitMQ broker, PostgreSQL store (a schema per case)."""

    family = "conveyor"

    def __init__(self, processes: int = 1, concurrency: int = 8) -> None:
        self.processes = processes
        self.concurrency = concurrency

    def urls(self, scope: Scope) -> dict[str, str]:
        return {"CONVEYOR_BROKER_URL": infra.AMQP, "CONVEYOR_STORE_URL": infra.pg_url(scope.tag)}

    def prepare(self, scope: Scope) -> None:
        super().prepare(scope)
        infra.create_schema(scope.tag, migrate=True)
        scope.extra_env.update(self.urls(scope), CONVEYOR_GRACE_S="3", CONVEYOR_LOG_LEVEL="WARNING")

    def client(self, scope: Scope, args: list[str], name: str, n: int) -> dict[str, float]:
        return scope.procs.run([sys.executable, "-m", "conveyor_bench.client", *args], scope.env(),
                               f"conveyor-{name}", client_timeout(n))

    def submit_many(self, scope: Scope, n: int, max_s: float | None = None) -> dict[str, float]:
        return self.client(scope, ["submit-many", "--n", str(n), "--max-s", str(max_s or scope.max_s)],
                           "submit-many", n)

    def fill(self, scope: Scope, n: int, max_s: float | None = None) -> dict[str, float]:
        return self.submit_many(scope, n, max_s)

    def start_workers(self, scope: Scope) -> list[Popen]:
        return [scope.procs.start(
            [sys.executable, "-m", "conveyor", "worker", "conveyor_bench.tasks:app", "-q", scope.queue,
             "--concurrency", str(self.concurrency), "--node-id", f"{scope.tag}-{k}"],
            scope.env(), f"conveyor-worker{k}") for k in range(self.processes)]

    def cleanup(self, scope: Scope) -> None:
        infra.drop_schema(scope.tag)
        infra.delete_queues([f"conveyor.{scope.queue}"])


class ConveyorSqlite(ConveyorAmqp):
    """Conveyor embedded: broker and store in one SQLite file under the case's temp dir."""

    def urls(self, scope: Scope) -> dict[str, str]:
        url = f"sqlite:///{scope.root / 'conveyor.db'}"
        return {"CONVEYOR_BROKER_URL": url, "CONVEYOR_STORE_URL": url}

    def prepare(self, scope: Scope) -> None:
        System.prepare(self, scope)
        scope.extra_env.update(self.urls(scope), CONVEYOR_GRACE_S="3", CONVEYOR_LOG_LEVEL="WARNING")

    def fill(self, scope: Scope, n: int, max_s: float | None = None) -> dict[str, float]:
        return self.submit(scope, n, max_s)

    def cleanup(self, scope: Scope) -> None:
        pass


class Peer(System):
    def client(self, scope: Scope, args: list[str], name: str, n: int) -> dict[str, float]:
        return scope.procs.run([infra.PEERS_PYTHON, "-m", "peers.client", self.family, *args], scope.env(),
                               f"{self.family}-{name}", client_timeout(n))

    def fill(self, scope: Scope, n: int, max_s: float | None = None) -> dict[str, float]:
        saved = scope.extra_env.get("BENCH_CONFIRM")
        scope.extra_env["BENCH_CONFIRM"] = "0"  # filling is set-up, not a measured result
        try:
            return self.submit(scope, n, max_s)
        finally:
            scope.extra_env.pop("BENCH_CONFIRM")
            if saved is not None:
                scope.extra_env["BENCH_CONFIRM"] = saved


class Celery(Peer):
    family = "celery"

    def __init__(self, concurrency: int = 2, backend: str = "") -> None:
        self.concurrency = concurrency
        self.backend = backend  # "", "redis" or "postgresql"

    def prepare(self, scope: Scope) -> None:
        super().prepare(scope)
        if self.backend == "postgresql":
            infra.create_schema(scope.tag, migrate=False)
            scope.extra_env.update(BENCH_PG_SCHEMA=scope.tag, BENCH_CELERY_BACKEND=infra.PG.replace("postgresql://", "db+postgresql+psycopg2://"))
        elif self.backend == "redis":
            scope.extra_env["BENCH_CELERY_BACKEND"] = infra.REDIS

    def client(self, scope: Scope, args: list[str], name: str, n: int) -> dict[str, float]:
        # Clients send without a result backend (a Redis one would subscribe to every task's
        # result); the workers still store results: storing is decided on the worker side.
        saved = scope.extra_env.pop("BENCH_CELERY_BACKEND", None)
        try:
            return super().client(scope, args, name, n)
        finally:
            if saved is not None:
                scope.extra_env["BENCH_CELERY_BACKEND"] = saved

    def start_workers(self, scope: Scope) -> list[Popen]:
        return [scope.procs.start(
            [infra.PEERS_PYTHON, "-m", "celery", "-A", "peers.celery_app", "worker", "-P", "prefork",
             "-c", str(self.concurrency), "-Q", scope.queue, "--loglevel", "WARNING", "--without-gossip",
             "--without-mingle", "--without-heartbeat", "-n", f"{scope.tag}@%h"],
            scope.env(), "celery-worker")]

    def cleanup(self, scope: Scope) -> None:
        if self.backend == "postgresql":
            infra.drop_schema(scope.tag)
        infra.delete_queues([scope.queue], exchanges=(scope.queue,))  # Celery names one after the queue
        if self.backend == "redis":
            subprocess.run([infra.PEERS_PYTHON, "-m", "peers.admin", "redis-clean", str(infra.REDIS_DB)],
                           env=scope.env(), capture_output=True, timeout=120, check=False)


class Dramatiq(Peer):
    family = "dramatiq"

    def __init__(self, processes: int = 1, threads: int = 8) -> None:
        self.processes = processes
        self.threads = threads

    def start_workers(self, scope: Scope) -> list[Popen]:
        return [scope.procs.start(
            [infra.PEERS_PYTHON, "-m", "dramatiq", "peers.dramatiq_app", "--processes", str(self.processes),
             "--threads", str(self.threads), "--queues", scope.queue],
            scope.env(), "dramatiq-worker")]

    def cleanup(self, scope: Scope) -> None:
        q = scope.queue
        infra.delete_queues([q, f"{q}.DQ", f"{q}.XQ"])


class Huey(Peer):
    family = "huey"

    def __init__(self, workers: int = 2) -> None:
        self.workers = workers

    def prepare(self, scope: Scope) -> None:
        super().prepare(scope)
        scope.extra_env["BENCH_HUEY_DB"] = str(scope.root / "huey.db")

    def fill(self, scope: Scope, n: int, max_s: float | None = None) -> dict[str, float]:
        return self.submit(scope, n, max_s)

    def start_workers(self, scope: Scope) -> list[Popen]:
        return [scope.procs.start(
            [infra.PEERS_PYTHON, "-m", "huey.bin.huey_consumer", "peers.huey_app.huey", "-w", str(self.workers),
             "-k", "process", "-q"], scope.env(), "huey-consumer")]


def wait_records(scope: Scope, expected: int, workers: list[Popen], stall_s: float = 60.0) -> None:
    """Wait until ``expected`` tasks are recorded; fail when none completes for ``stall_s``
    or a worker exits."""
    seen, last_progress = -1, time.monotonic()
    while True:
        done = record.count(scope.record_dir)
        if done >= expected:
            return
        if done != seen:
            seen, last_progress = done, time.monotonic()
        elif time.monotonic() - last_progress > stall_s:
            raise BenchError(f"stalled at {done}/{expected} tasks for {stall_s:.0f} s")
        for proc in workers:
            if proc.poll() is not None:
                raise BenchError(f"a worker exited with {proc.returncode} at {done}/{expected} tasks")
        time.sleep(0.05)


def remove_tree(path: Path) -> None:
    shutil.rmtree(path, ignore_errors=True)
