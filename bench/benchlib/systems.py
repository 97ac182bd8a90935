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
from typing import Any

from benchlib import cpu, infra, record
from benchlib.pace import merge_paced
from benchlib.procs import BenchError, Procs

Popen = subprocess.Popen[bytes]
Result = dict[str, Any]

CLIENT_START_S = 4.0  # paced clients start their schedule this long after launch (imports, warm-up)
IN_FLIGHT = 64  # "many in flight": threads or coroutines submitting at once


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

    def env(self, **more: str) -> dict[str, str]:
        return {**infra.base_env(self.record_dir, self.queue), **self.extra_env, **more}


class System:
    """Base adapter; subclasses fill in the commands."""

    family = ""
    uses: tuple[str, ...] = ()  # servers its tasks go through: "broker", "pg", "redis"
    processes = 1  # worker processes that run tasks (each writes its own record file)
    client_env: dict[str, str] = {}  # added to every client's environment

    def prepare(self, scope: Scope) -> None:
        scope.record_dir.mkdir(parents=True, exist_ok=True)

    def client_argv(self, args: list[str]) -> list[str]:
        raise NotImplementedError

    def client(self, scope: Scope, args: list[str], name: str, n: int, **env: str) -> Result:
        return scope.procs.run(self.client_argv(args), scope.env(**self.client_env, **env),
                               f"{self.family}-{name}", client_timeout(n))

    def submit(self, scope: Scope, n: int, max_s: float | None = None) -> Result:
        """N durable submits, one at a time (the submit scenario); ``n`` in the result is how
        many went out before the time cap."""
        return self.client(scope, ["submit", "--n", str(n), "--max-s", str(max_s or scope.max_s)], "submit", n)

    def in_flight(self, scope: Scope, n: int) -> Result:
        """N durable submits from one process, IN_FLIGHT at a time, without batching."""
        raise BenchError(f"{self.family} has no many-in-flight client")

    def fill(self, scope: Scope, n: int, max_s: float | None = None) -> Result:
        """Queue N tasks as fast as this system allows (drain and memory set-up; not a result)."""
        return self.submit(scope, n, max_s)

    def paced(self, scope: Scope, n: int, rate: float, clients: int = 1, threads: int = 16,
              start_in: float = CLIENT_START_S) -> Result:
        """N submits at ``rate``/s, one schedule shared by ``clients`` processes (each with
        ``threads`` threads, or asyncio for async clients), starting ``start_in`` s from now."""
        start_at = time.time() + start_in
        common = ["paced", "--n", str(n), "--rate", str(rate), "--of", str(clients), "--threads", str(threads),
                  "--start-at", f"{start_at:.6f}"]
        env = scope.env(**self.client_env)
        jobs = [(self.client_argv([*common, "--shard", str(k)]), env, f"{self.family}-paced{rate:.0f}-{k}")
                for k in range(clients)]
        return merge_paced(scope.procs.run_many(jobs, client_timeout(n) + start_in), rate)

    def start_workers(self, scope: Scope) -> list[Popen]:
        raise NotImplementedError

    def cleanup(self, scope: Scope) -> None:
        pass


def client_timeout(n: int) -> float:
    return 120 + n / 50  # generous: a stuck client fails the case, not the run


class ConveyorAmqp(System):
    """Conveyor distributed: RabbitMQ broker, PostgreSQL store (a schema per case)."""

    family = "conveyor"
    uses: tuple[str, ...] = ("broker", "pg")

    def __init__(self, processes: int = 1, concurrency: int = 8) -> None:
        self.processes = processes
        self.concurrency = concurrency

    def urls(self, scope: Scope) -> dict[str, str]:
        return {"CONVEYOR_BROKER_URL": infra.AMQP, "CONVEYOR_STORE_URL": infra.pg_url(scope.tag)}

    def prepare(self, scope: Scope) -> None:
        super().prepare(scope)
        infra.create_schema(scope.tag, migrate=True)
        scope.extra_env.update(self.urls(scope), CONVEYOR_GRACE_S="3", CONVEYOR_LOG_LEVEL="WARNING")

    def client_argv(self, args: list[str]) -> list[str]:
        return [sys.executable, "-m", "conveyor_bench.client", *args]

    def submit_many(self, scope: Scope, n: int, max_s: float | None = None) -> Result:
        return self.client(scope, ["submit-many", "--n", str(n), "--max-s", str(max_s or scope.max_s)],
                           "submit-many", n)

    def in_flight(self, scope: Scope, n: int) -> Result:
        return self.client(scope, ["threads", "--n", str(n), "--threads", str(IN_FLIGHT), "--max-s",
                                   str(scope.max_s)], "threads", n)

    def in_flight_async(self, scope: Scope, n: int) -> Result:
        return self.client(scope, ["async", "--n", str(n), "--in-flight", str(IN_FLIGHT), "--max-s",
                                   str(scope.max_s)], "async", n)

    def fill(self, scope: Scope, n: int, max_s: float | None = None) -> Result:
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

    uses: tuple[str, ...] = ()

    def urls(self, scope: Scope) -> dict[str, str]:
        url = f"sqlite:///{scope.root / 'conveyor.db'}"
        return {"CONVEYOR_BROKER_URL": url, "CONVEYOR_STORE_URL": url}

    def prepare(self, scope: Scope) -> None:
        System.prepare(self, scope)
        scope.extra_env.update(self.urls(scope), CONVEYOR_GRACE_S="3", CONVEYOR_LOG_LEVEL="WARNING")

    def fill(self, scope: Scope, n: int, max_s: float | None = None) -> Result:
        return self.submit(scope, n, max_s)

    def cleanup(self, scope: Scope) -> None:
        pass


class Peer(System):
    def client_argv(self, args: list[str]) -> list[str]:
        return [infra.PEERS_PYTHON, "-m", "peers.client", self.family, *args]

    def fill(self, scope: Scope, n: int, max_s: float | None = None) -> Result:
        # Filling is set-up, not a measured result: no confirms, batches where the system has them.
        return self.client(scope, ["fill", "--n", str(n), "--max-s", str(max_s or scope.max_s)], "fill", n,
                           BENCH_CONFIRM="0")


class Celery(Peer):
    family = "celery"
    uses: tuple[str, ...] = ("broker",)

    def __init__(self, concurrency: int = 2, backend: str = "") -> None:
        self.processes = concurrency
        self.backend = backend  # "", "redis" or "postgresql"
        if backend:
            self.uses = ("broker", "redis" if backend == "redis" else "pg")

    def prepare(self, scope: Scope) -> None:
        super().prepare(scope)
        if self.backend:
            scope.extra_env["BENCH_CELERY_RESULTS"] = "1"
        if self.backend == "postgresql":
            infra.create_schema(scope.tag, migrate=False)
            scope.extra_env.update(BENCH_PG_SCHEMA=scope.tag,
                                   BENCH_CELERY_BACKEND=infra.PG.replace("postgresql://", "db+postgresql+psycopg2://"))
        elif self.backend == "redis":
            scope.extra_env["BENCH_CELERY_BACKEND"] = infra.REDIS

    def client(self, scope: Scope, args: list[str], name: str, n: int, **env: str) -> Result:
        # Clients send without a result backend connection (a Redis one would subscribe to every
        # task's result); BENCH_CELERY_RESULTS still marks each message's result as wanted.
        return super().client(scope, args, name, n, **env, BENCH_CELERY_BACKEND="")

    def in_flight(self, scope: Scope, n: int) -> Result:
        return self.client(scope, ["threads", "--n", str(n), "--threads", str(IN_FLIGHT), "--max-s",
                                   str(scope.max_s)], "threads", n, BENCH_CELERY_POOL_LIMIT=str(IN_FLIGHT))

    def start_workers(self, scope: Scope) -> list[Popen]:
        return [scope.procs.start(
            [infra.PEERS_PYTHON, "-m", "celery", "-A", "peers.celery_app", "worker", "-P", "prefork",
             "-c", str(self.processes), "-Q", scope.queue, "--loglevel", "WARNING", "--without-gossip",
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
    uses: tuple[str, ...] = ("broker",)

    def __init__(self, processes: int = 1, threads: int = 8) -> None:
        self.processes = processes
        self.threads = threads

    def in_flight(self, scope: Scope, n: int) -> Result:
        return self.client(scope, ["threads", "--n", str(n), "--threads", str(IN_FLIGHT), "--max-s",
                                   str(scope.max_s)], "threads", n)

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
        self.processes = workers

    def prepare(self, scope: Scope) -> None:
        super().prepare(scope)
        scope.extra_env["BENCH_HUEY_DB"] = str(scope.root / "huey.db")

    def start_workers(self, scope: Scope) -> list[Popen]:
        return [scope.procs.start(
            [infra.PEERS_PYTHON, "-m", "huey.bin.huey_consumer", "peers.huey_app.huey", "-w", str(self.processes),
             "-k", "process", "-q"], scope.env(), "huey-consumer")]


class PostgresPeer(Peer):
    """A queue that lives in PostgreSQL alone, in a schema of its own per case."""

    uses: tuple[str, ...] = ("pg",)

    def in_flight(self, scope: Scope, n: int) -> Result:
        return self.client(scope, ["async", "--n", str(n), "--in-flight", str(IN_FLIGHT), "--pool", "16",
                                   "--max-s", str(scope.max_s)], "async", n)

    def setup_command(self, scope: Scope, argv: list[str]) -> None:
        done = subprocess.run([infra.PEERS_PYTHON, "-m", *argv], env=scope.env(), capture_output=True, text=True,
                              timeout=120, check=False)
        if done.returncode != 0:
            raise BenchError(f"{' '.join(argv[:3])} failed: {(done.stderr or done.stdout).strip()[-300:]}")

    def cleanup(self, scope: Scope) -> None:
        infra.drop_schema(scope.tag)


class PgQueuer(PostgresPeer):
    """PgQueuer: one ``pgqueuer.run`` (what ``pgq run`` runs) per worker process, picking
    ``batch_size`` jobs per query."""

    family = "pgqueuer"

    def __init__(self, processes: int = 1, batch_size: int = 10) -> None:
        self.processes = processes
        self.batch_size = batch_size

    def prepare(self, scope: Scope) -> None:
        super().prepare(scope)
        scope.extra_env.update(PGDSN=infra.PG, BENCH_PG_DSN=infra.PG, PGQUEUER_SCHEMA=scope.tag,
                               PGQUEUER_CHANNEL=f"{scope.tag}_ch")
        self.setup_command(scope, ["pgqueuer", "install"])  # tables, trigger, function in the new schema

    def start_workers(self, scope: Scope) -> list[Popen]:
        return [scope.procs.start(
            [infra.PEERS_PYTHON, "-m", "peers.pgqueuer_worker", "--batch-size", str(self.batch_size)],
            scope.env(), f"pgqueuer-worker{k}") for k in range(self.processes)]


class Procrastinate(PostgresPeer):
    """Procrastinate: ``procrastinate worker --concurrency C`` per worker process."""

    family = "procrastinate"
    APP = "peers.procrastinate_app.app"

    def __init__(self, processes: int = 1, concurrency: int = 8) -> None:
        self.processes = processes
        self.concurrency = concurrency

    def prepare(self, scope: Scope) -> None:
        super().prepare(scope)
        infra.create_schema(scope.tag, migrate=False)
        scope.extra_env.update(BENCH_PG_DSN=infra.PG, BENCH_PG_SCHEMA=scope.tag)
        self.setup_command(scope, ["procrastinate", "--app", self.APP, "schema", "--apply"])

    def start_workers(self, scope: Scope) -> list[Popen]:
        # A pool of concurrency + 2: one connection per sub-worker, LISTEN, heartbeats.
        env = scope.env(BENCH_PG_POOL=str(self.concurrency + 2))
        return [scope.procs.start(
            [infra.PEERS_PYTHON, "-m", "procrastinate", "--app", self.APP, "--log-level", "warning", "worker",
             "--concurrency", str(self.concurrency), "--name", f"{scope.tag}-{k}", "--queues", scope.queue],
            env, f"procrastinate-worker{k}") for k in range(self.processes)]


def wait_records(scope: Scope, expected: int, workers: list[Popen], stall_s: float = 60.0,
                 window: cpu.Window | None = None) -> dict[str, float]:
    """Wait until ``expected`` tasks are recorded; fail when none completes for ``stall_s``
    or a worker exits. With a ``window``, returns its CPU per task."""
    seen, last_progress = -1, time.monotonic()
    while True:
        done = record.count(scope.record_dir)
        if window is not None:
            window.observe(done, record.processes(scope.record_dir))
        if done >= expected:
            return window.close(done) if window is not None else {}
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
