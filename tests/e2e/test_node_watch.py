"""Node watch, end to end: a worker process dies mid-task; the scheduler marks its node lost
and the task, taken over once its lease expired, runs again on another worker and succeeds,
its timeline saying why. Workers heartbeat every 0.5 s with 2 s leases (see conftest)."""

from __future__ import annotations

import contextlib
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from conveyor.config import Settings
from conveyor.model import TaskStatus
from tests.e2e.conftest import REPO_ROOT, Workers, wait_for

SLEEPY = "tests.e2e.apps.sleepy"

pytestmark = pytest.mark.timeout(60)


@pytest.fixture
def scheduler(workers: Workers, tmp_path: Path) -> Iterator[subprocess.Popen[bytes]]:
    """One scheduler replica (short lease, so it leads and watches nodes about every second)."""
    log_path = tmp_path / "scheduler.log"
    command = [sys.executable, "-m", "conveyor", "scheduler", "--no-http", "--lease", "1", "--renew", "0.3"]
    with log_path.open("wb") as log_file:
        proc = subprocess.Popen(command, cwd=REPO_ROOT, env=workers.env(), stdin=subprocess.DEVNULL,
                                stdout=log_file, stderr=subprocess.STDOUT)
    try:
        yield proc
    finally:
        with contextlib.suppress(ProcessLookupError):
            proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=10)


@pytest.fixture
def sleepy(settings: Settings) -> Iterator[Any]:
    from tests.e2e.apps import sleepy

    sleepy.app.close()
    sleepy.app.use_settings(settings)
    try:
        yield sleepy.app
    finally:
        sleepy.app.close()


def node_status(workers: Workers, node_id: str) -> str | None:
    return next((n.status for n in workers.store().nodes() if n.id == node_id), None)


def test_a_killed_workers_node_is_lost_and_its_task_reruns_elsewhere(
        workers: Workers, scheduler: subprocess.Popen[bytes], sleepy: Any) -> None:
    victim = workers.start(SLEEPY, node_id="victim")
    handle = sleepy.submit("sleepy.nap", {"seconds": 3})
    wait_for(lambda: (t := handle.get()).status is TaskStatus.RUNNING and t.node == "victim", 10,
             "the task to run on the victim")
    victim.kill_all()
    wait_for(lambda: node_status(workers, "victim") == "lost", 10, "the victim's node to be marked lost")
    workers.start(SLEEPY, node_id="rescuer")
    task = handle.wait(timeout=20)
    assert (task.status, task.node, task.result, task.crashes) == (TaskStatus.SUCCEEDED, "rescuer", "rested", 1)
    takeovers = [e for e in sleepy.service.events(task.id)
                 if e.from_status is TaskStatus.RUNNING and e.to_status is TaskStatus.QUEUED]
    assert len(takeovers) == 1
    assert "lease" in (takeovers[0].detail or "") and "victim" in (takeovers[0].detail or "")
    assert scheduler.poll() is None


def test_a_lost_node_that_heartbeats_again_is_live_again(
        workers: Workers, scheduler: subprocess.Popen[bytes]) -> None:
    frozen = workers.start(SLEEPY, node_id="frozen")
    frozen.signal(signal.SIGSTOP)
    try:
        wait_for(lambda: node_status(workers, "frozen") == "lost", 10, "the frozen node to be marked lost")
    finally:
        frozen.signal(signal.SIGCONT)
    wait_for(lambda: node_status(workers, "frozen") == "live", 10, "the node to be live again")


def test_the_scheduler_declares_the_periodic_schedules_of_its_app(workers: Workers, tmp_path: Path) -> None:
    from conveyor.scheduler.schedule_store import open_schedule_store

    command = [sys.executable, "-m", "conveyor", "scheduler", "--no-http", "--app", SLEEPY]
    with (tmp_path / "declaring.log").open("wb") as log_file:
        proc = subprocess.Popen(command, cwd=REPO_ROOT, env=workers.env(), stdin=subprocess.DEVNULL,
                                stdout=log_file, stderr=subprocess.STDOUT)
    schedules = None
    try:
        wait_for(lambda: (tmp_path / "conveyor.db").exists(), 15, "the database")
        schedules = open_schedule_store(workers.url)
        declared = wait_for(lambda: schedules.all(), 15, "the declared schedule")
        assert [(s.name, s.type, s.cron, s.timezone, s.params) for s in declared] == [
            ("sleepy.new-year-nap", "sleepy.nap", "0 12 1 1 *", "Europe/Paris", {"seconds": 0})]
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=10)
        if schedules is not None:
            schedules.close()
