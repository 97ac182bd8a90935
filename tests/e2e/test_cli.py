"""The ``conveyor`` command line, run as a user would (subprocess, real output, exit codes)."""

from __future__ import annotations

import subprocess
import sys
import uuid
from pathlib import Path
from typing import Any

import orjson
import pytest

from conveyor.model import TaskFilter
from tests.e2e.conftest import REPO_ROOT, Workers

pytestmark = pytest.mark.timeout(60)


def conveyor(workers: Workers, *args: str, timeout_s: float = 30.0,
             default_urls: bool = False) -> subprocess.CompletedProcess[str]:
    """Run ``python -m conveyor ARGS`` against the test's database (or, with ``default_urls``,
    the embedded default); wide output, no colour."""
    env = workers.env(extra={"COLUMNS": "200", "NO_COLOR": "1", "CONVEYOR_LOG_LEVEL": "WARNING"})
    if default_urls:
        del env["CONVEYOR_BROKER_URL"], env["CONVEYOR_STORE_URL"]
    return subprocess.run([sys.executable, "-m", "conveyor", *args], cwd=workers.tmp_path, env=env,
                          capture_output=True, text=True, timeout=timeout_s, check=False)


def json_out(result: subprocess.CompletedProcess[str]) -> Any:
    assert result.returncode == 0, result.stderr
    return orjson.loads(result.stdout)


@pytest.fixture
def demo_worker(workers: Workers) -> Workers:
    workers.start("conveyor.demo_tasks", node_id="cli-node", concurrency=2)
    return workers


def test_demo_runs_two_workers_and_prints_the_summary(workers: Workers, tmp_path: Path) -> None:
    result = conveyor(workers, "demo", timeout_s=40.0, default_urls=True)

    assert result.returncode == 0, result.stdout + result.stderr
    assert "summary by node and status" in result.stdout
    assert "demo-node-1" in result.stdout and "demo-node-2" in result.stdout
    assert "succeeded" in result.stdout
    assert "embedded mode" in result.stdout
    assert not (tmp_path / "conveyor.db").exists(), "on the default URLs the demo uses a temporary folder"


def test_demo_on_given_urls_runs_its_tasks_there(workers: Workers) -> None:
    result = conveyor(workers, "demo", "--tasks", "20", timeout_s=40.0)

    assert result.returncode == 0, result.stdout + result.stderr
    assert len(workers.store().query(TaskFilter(), limit=100).tasks) == 20


def test_submit_wait_json_prints_the_result_of_the_task(demo_worker: Workers) -> None:
    task = json_out(conveyor(demo_worker, "--json", "submit", "demo.add", "--params", '{"a":1,"b":2}', "--wait"))

    assert task["status"] == "succeeded"
    assert task["result"] == {"sum": 3}
    assert task["node"] == "cli-node"


def test_tasks_and_task_show_what_ran_with_its_timeline(demo_worker: Workers) -> None:
    submitted = json_out(conveyor(demo_worker, "--json", "submit", "demo.add", "--params", '{"a":2,"b":2}',
                                  "--wait"))
    task_id = submitted["id"]

    listing = json_out(conveyor(demo_worker, "--json", "tasks"))
    assert [t["id"] for t in listing["tasks"]] == [task_id]
    assert listing["next_cursor"] is None

    detail = json_out(conveyor(demo_worker, "--json", "task", task_id))
    assert [e["to"] for e in detail["events"]] == ["queued", "running", "succeeded"]

    shown = conveyor(demo_worker, "task", task_id)
    assert shown.returncode == 0, shown.stderr
    assert "timeline" in shown.stdout
    assert task_id in shown.stdout and "cli-node" in shown.stdout and "attempt 1" in shown.stdout


def test_task_with_an_unknown_id_exits_non_zero(workers: Workers) -> None:
    missing = str(uuid.uuid4())
    workers.store()  # the database exists; the task does not

    result = conveyor(workers, "task", missing)

    assert result.returncode != 0
    assert f"unknown task id {missing}" in result.stderr


def test_nodes_json_lists_the_running_worker(demo_worker: Workers) -> None:
    nodes = json_out(conveyor(demo_worker, "--json", "nodes"))

    node = next(n for n in nodes if n["id"] == "cli-node")
    assert node["status"] == "live"
    assert node["queues"] == ["default"]
    assert node["concurrency"] == 2
    assert node["pid"] == demo_worker.started[0].pid


@pytest.mark.parametrize(("params", "message"), [("[1]", "must be a JSON object"), ("not json", "not JSON")])
def test_submit_with_bad_params_exits_2_with_a_message(workers: Workers, params: str, message: str) -> None:
    result = conveyor(workers, "submit", "x", "--params", params)

    assert result.returncode == 2
    assert "--params" in result.stderr and message in result.stderr
    assert not (workers.tmp_path / "conveyor.db").exists(), "nothing was stored"


def test_the_cli_runs_from_the_repository_too() -> None:
    result = subprocess.run([sys.executable, "-m", "conveyor", "--help"], cwd=REPO_ROOT, capture_output=True,
                            text=True, timeout=30, check=False)

    assert result.returncode == 0
    for command in ("worker", "submit", "tasks", "task", "nodes", "demo"):
        assert command in result.stdout
