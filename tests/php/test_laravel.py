"""The Laravel connector with Debian's php-laravel-framework (a minimal app in tests/php/laravel):
``dispatch(new SendInvoice(...))`` on a ``conveyor`` connection becomes a Conveyor task, and
``php artisan conveyor:work`` runs it; a failing job is retried per its ``$tries`` and its
``failed()`` hook runs."""

from __future__ import annotations

import subprocess
import uuid
from pathlib import Path

import pytest

from conveyor.model import TaskFilter, TaskStatus
from tests.integration.conftest import Cluster
from tests.php.conftest import Php
from tests.processes import WorkerProcess, wait_for

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]

LARAVEL = Path(__file__).resolve().parent / "laravel"
JOB_TYPE = "laravel:App\\Jobs\\SendInvoice"


def laravel_env(php: Php, tmp_path: Path) -> dict[str, str]:
    return php.env({"CONVEYOR_LARAVEL_SENT": str(tmp_path / "sent.txt"),
                    "CONVEYOR_LARAVEL_CACHE": str(tmp_path / "cache")})


def dispatch(php: Php, tmp_path: Path, *args: str) -> str:
    done = subprocess.run([php.php, str(LARAVEL / "dispatch.php"), *args], cwd=LARAVEL, env=laravel_env(php, tmp_path),
                          capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 0, done.stdout + done.stderr
    return done.stdout.strip()


def test_a_dispatched_laravel_job_becomes_a_conveyor_task_and_conveyor_work_runs_it(
        cluster: Cluster, php: Php, tmp_path: Path) -> None:
    log_path = tmp_path / "artisan.log"
    with log_path.open("wb") as log_file:
        proc = subprocess.Popen([php.php, "artisan", "conveyor:work", "--node-id", "laravel-1"], cwd=LARAVEL,
                                env=laravel_env(php, tmp_path), stdin=subprocess.DEVNULL, stdout=log_file,
                                stderr=subprocess.STDOUT, start_new_session=True)
    worker = WorkerProcess("laravel-1", proc, log_path)
    cluster.workers.append(worker)
    php.wait_listed(worker)
    task_id = dispatch(php, tmp_path, "F-42", "99.5")
    failing = dispatch(php, tmp_path, "F-7", "1", "fail")

    def finished() -> bool:
        tasks = cluster.service.query(TaskFilter(type=JOB_TYPE)).tasks
        return len(tasks) == 4 and all(t.status.is_final for t in tasks)

    wait_for(finished, 60, "4 Laravel jobs to finish", pause_s=0.2)
    done = cluster.service.get(uuid.UUID(task_id))
    assert (done.status, done.queue, done.node, done.max_attempts, done.timeout) == (
        TaskStatus.SUCCEEDED, "laravel", "laravel-1", 2, 20.0)
    assert done.result == {"job": "App\\Jobs\\SendInvoice"}
    assert done.params["laravel"]["displayName"] == "App\\Jobs\\SendInvoice"
    bounced = cluster.service.get(uuid.UUID(failing))
    assert (bounced.status, bounced.attempts) == (TaskStatus.FAILED, 2)
    assert (bounced.error["type"], bounced.error["message"]) == ("RuntimeException", "invoice F-7 bounced")
    sent = sorted((tmp_path / "sent.txt").read_text().splitlines())
    assert sent == ["F-42 99.5", "F-42-helper 99.5", "F-7-helper 1", "failed F-7: invoice F-7 bounced"]
    runs = [e.task_id for e in cluster.executions()]
    assert runs.count(task_id) == 1 and runs.count(failing) == 2
