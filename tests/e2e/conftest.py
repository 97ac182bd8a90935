"""End-to-end helpers: real ``python -m conveyor worker`` processes on the embedded default.

Each test gets its own SQLite file in ``tmp_path`` (broker and store share it). Workers run
with short leases, heartbeats and grace so crash and shutdown scenarios take seconds. Every
process a test starts is SIGKILLed in teardown (its whole session, so ``--pool process``
children go too), whatever the test did.
"""

from __future__ import annotations

import contextlib
import os
import sqlite3
import subprocess
import sys
import uuid
from collections import Counter
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import pytest

from conveyor._sqlite import sqlite_path
from conveyor.broker.sqlite import SqliteBroker
from conveyor.config import Settings
from conveyor.model import TaskEvent
from conveyor.store.sqlite import SqliteStore
from tests.execlog import EXEC_LOG_ENV, read_executions
from tests.processes import REPO_ROOT, REPORT_KEY, WorkerProcess, wait_for

CORE_APP = "tests.e2e.apps.core_app"
LEASE_S = 2.0
HEARTBEAT_S = 0.5
GRACE_S = 5.0
READY_TIMEOUT_S = 15.0


def leased_messages(url: str) -> int:
    """Broker messages some consumer holds right now (handed out or prefetched)."""
    with contextlib.closing(sqlite3.connect(sqlite_path(url))) as conn:
        row = conn.execute("SELECT count(*) FROM broker_messages WHERE lease_owner IS NOT NULL").fetchone()
    return int(row[0])


def run_counts(path: Path) -> Counter[str]:
    """How many times each task id was executed."""
    return Counter(e.task_id for e in read_executions(path))


class Workers:
    """Starts worker processes against one database and kills them all in teardown."""

    def __init__(self, tmp_path: Path, url: str, exec_log: Path) -> None:
        self.tmp_path = tmp_path
        self.url = url
        self.exec_log = exec_log
        self.started: list[WorkerProcess] = []
        self._store: SqliteStore | None = None

    def env(self, *, lease_s: float = LEASE_S, heartbeat_s: float = HEARTBEAT_S, grace_s: float = GRACE_S,
            extra: Mapping[str, str] | None = None) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("CONVEYOR_")}
        env.update({
            "CONVEYOR_BROKER_URL": self.url, "CONVEYOR_STORE_URL": self.url,
            "CONVEYOR_LEASE_S": str(lease_s), "CONVEYOR_HEARTBEAT_S": str(heartbeat_s),
            "CONVEYOR_GRACE_S": str(grace_s), "CONVEYOR_LOG_LEVEL": "INFO", EXEC_LOG_ENV: str(self.exec_log),
            "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO_ROOT), env.get("PYTHONPATH")])),
            "PYTHONUNBUFFERED": "1",
        })
        env.update(extra or {})
        return env

    def start(self, app_ref: str = CORE_APP, *, node_id: str | None = None, concurrency: int = 4,
              pool: str = "thread", queues: str = "default", lease_s: float = LEASE_S,
              grace_s: float = GRACE_S, wait_ready: bool = True,
              extra_env: Mapping[str, str] | None = None) -> WorkerProcess:
        node_id = node_id or f"node-{uuid.uuid4().hex[:6]}"
        log_path = self.tmp_path / f"worker-{node_id}-{len(self.started)}.log"
        command = [sys.executable, "-m", "conveyor", "worker", app_ref, "--concurrency", str(concurrency),
                   "--node-id", node_id, "--pool", pool, "--queues", queues]
        with log_path.open("wb") as log_file:
            proc = subprocess.Popen(
                command, cwd=REPO_ROOT, env=self.env(lease_s=lease_s, grace_s=grace_s, extra=extra_env),
                stdin=subprocess.DEVNULL, stdout=log_file, stderr=subprocess.STDOUT,
                start_new_session=True,  # its own process group: teardown kills its children too
            )
        worker = WorkerProcess(node_id, proc, log_path)
        self.started.append(worker)
        if wait_ready:
            self.wait_ready(worker)
        return worker

    def wait_ready(self, worker: WorkerProcess, timeout_s: float = READY_TIMEOUT_S) -> None:
        """A worker registers its node (status live) just before it starts consuming."""

        def registered() -> bool:
            if not worker.alive():
                code = worker.proc.returncode
                pytest.fail(f"worker {worker.node_id} exited with {code}:\n{worker.output()}")
            return any(n.id == worker.node_id and n.status == "live" and n.pid == worker.pid
                       for n in self.store().nodes())

        wait_for(registered, timeout_s, f"worker {worker.node_id} to register")

    def store(self) -> SqliteStore:
        if self._store is None:
            self._store = SqliteStore(self.url)
        return self._store

    def kill_all(self) -> None:
        for worker in self.started:
            worker.kill_all()
        if self._store is not None:
            self._store.close()
            self._store = None

    def outputs(self) -> str:
        return "\n".join(f"--- {w.node_id} (pid {w.pid}) ---\n{w.output()}" for w in self.started)


@pytest.fixture
def db_url(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path}/conveyor.db"


@pytest.fixture
def exec_log(tmp_path: Path) -> Path:
    return tmp_path / "executions.log"


@pytest.fixture
def workers(tmp_path: Path, db_url: str, exec_log: Path, request: pytest.FixtureRequest) -> Iterator[Workers]:
    pool = Workers(tmp_path, db_url, exec_log)
    try:
        yield pool
    finally:
        pool.kill_all()
        report = request.node.stash.get(REPORT_KEY, None)
        if report is not None and report.failed:  # show what the workers logged
            sys.stderr.write(pool.outputs()[-20_000:])


@pytest.fixture
def settings(db_url: str) -> Settings:
    return Settings(broker_url=db_url, store_url=db_url, lease_s=LEASE_S, heartbeat_s=HEARTBEAT_S,
                    grace_s=GRACE_S)


@pytest.fixture
def core(settings: Settings) -> Iterator[Any]:
    """The core test app, pointed at this test's database (its task options apply on submit)."""
    from tests.e2e.apps import core_app

    core_app.app.close()
    core_app.app.use_settings(settings)
    try:
        yield core_app
    finally:
        core_app.app.close()


@pytest.fixture
def raw_broker(db_url: str) -> Iterator[SqliteBroker]:
    broker = SqliteBroker(db_url)
    try:
        yield broker
    finally:
        broker.close()


def statuses(timeline: list[TaskEvent]) -> list[str]:
    """The timeline as the list of statuses it went through."""
    return [e.to_status.value for e in timeline]
