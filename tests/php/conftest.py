"""PHP end to end: the PHP package (clients/php) as real php-cli processes beside a real
scheduling center (``conveyor scheduler``: HTTP API + report listener) and Python workers, on
RabbitMQ (a vhost per test) and PostgreSQL (a schema per test). In CI a missing php fails."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path

import pytest

from tests.integration.conftest import REPO_ROOT, Cluster, cluster, vhost_url
from tests.processes import WorkerProcess, wait_for

__all__ = ["cluster", "vhost_url"]

PHP_DIR = REPO_ROOT / "clients" / "php"
APPS = Path(__file__).resolve().parent / "apps"


def php_binary() -> str:
    php = shutil.which("php")
    if php is None:
        if os.environ.get("CI"):
            pytest.fail("php is not installed (CI requires it: scripts/install-debian-packages.sh --php)")
        pytest.skip("php is not installed")
    return php


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class Php:
    """Runs PHP scripts and PHP workers against the cluster's vhost and schema."""

    def __init__(self, cluster: Cluster, api_url: str) -> None:
        self.cluster = cluster
        self.api_url = api_url
        self.php = php_binary()

    def env(self, extra: Mapping[str, str] | None = None) -> dict[str, str]:
        return self.cluster.env({"CONVEYOR_API_URL": self.api_url, **(extra or {})})

    def run(self, script: str, *args: str, env: Mapping[str, str] | None = None,
            timeout_s: float = 60.0) -> subprocess.CompletedProcess[str]:
        """Run apps/SCRIPT; fail the test (with its output) if it exits non-zero."""
        done = subprocess.run([self.php, str(APPS / script), *args], cwd=PHP_DIR, env=self.env(env),
                              capture_output=True, text=True, timeout=timeout_s, check=False)
        assert done.returncode == 0, f"{script} exited {done.returncode}:\n{done.stdout}\n{done.stderr}"
        return done

    def worker(self, node_id: str, *, queues: Sequence[str] = ("php",), concurrency: int = 1,
               bootstrap: str = "worker.php", env: Mapping[str, str] | None = None,
               wait_ready: bool = True) -> WorkerProcess:
        log_path = self.cluster.tmp_path / f"php-{node_id}-{len(self.cluster.workers)}.log"
        command = [self.php, str(PHP_DIR / "bin" / "conveyor-worker"), str(APPS / bootstrap), "--queues",
                   ",".join(queues), "--concurrency", str(concurrency), "--node-id", node_id]
        with log_path.open("wb") as log_file:
            proc = subprocess.Popen(command, cwd=PHP_DIR, env=self.env(env), stdin=subprocess.DEVNULL,
                                    stdout=log_file, stderr=subprocess.STDOUT, start_new_session=True)
        worker = WorkerProcess(node_id, proc, log_path, concurrency)
        self.cluster.workers.append(worker)
        if wait_ready:
            self.wait_listed(worker, count=concurrency)
        return worker

    def wait_listed(self, worker: WorkerProcess, count: int = 1, timeout_s: float = 20.0) -> None:
        """Ready = every process of the worker heartbeats (so `conveyor nodes` lists it) and consumes."""

        def ready() -> bool:
            if not worker.alive():
                pytest.fail(f"PHP worker {worker.node_id} exited with {worker.proc.returncode}:\n{worker.output()}")
            live = [n for n in self.cluster.service.nodes() if n.id.startswith(worker.node_id) and n.status == "live"]
            return len(live) >= count and worker.output().count(" started: queues=") >= count

        wait_for(ready, timeout_s, f"PHP worker {worker.node_id} to heartbeat")


@pytest.fixture
def center(cluster: Cluster) -> Iterator[str]:
    """`conveyor scheduler` (HTTP API, report listener, reaper) on the cluster; yields its URL."""
    port = free_port()
    log_path = cluster.tmp_path / "scheduler.log"
    with log_path.open("wb") as log_file:
        proc = subprocess.Popen([sys.executable, "-m", "conveyor", "scheduler", "--http", f"127.0.0.1:{port}"],
                                cwd=REPO_ROOT, env=cluster.env(), stdin=subprocess.DEVNULL, stdout=log_file,
                                stderr=subprocess.STDOUT, start_new_session=True)
    cluster.workers.append(WorkerProcess("scheduler", proc, log_path))
    url = f"http://127.0.0.1:{port}"

    def up() -> bool:
        if proc.poll() is not None:
            pytest.fail(f"the scheduler exited:\n{log_path.read_text(errors='replace')}")
        try:
            with urllib.request.urlopen(f"{url}/readyz", timeout=1) as response:
                return bool(response.status == 200)
        except OSError:
            return False

    wait_for(up, 30.0, "the scheduler's HTTP API", pause_s=0.1)
    yield url


@pytest.fixture
def php(cluster: Cluster, center: str) -> Php:
    return Php(cluster, center)


def executions_of(cluster: Cluster, task_id: str) -> list[object]:
    return [e for e in cluster.executions() if e.task_id == task_id]


def settle(seconds: float) -> None:
    """Give stray copies a chance to run (they must not)."""
    time.sleep(seconds)
