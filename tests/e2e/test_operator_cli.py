"""The operator CLI driven as a user would (subprocess, real output, exit codes), on the
embedded default, and through a scheduler's HTTP API with ``--api``."""

from __future__ import annotations

import os
import subprocess
import sys
import uuid
from pathlib import Path
from typing import Any

import orjson
import pytest

from conveyor.model import TaskStatus
from tests.e2e.conftest import REPO_ROOT, Workers
from tests.processes import wait_for

pytestmark = pytest.mark.timeout(120)
APP = "tests.e2e.apps.console_app"


def conveyor(workers: Workers, *args: str, env: dict[str, str] | None = None, cwd: Path | None = None,
             timeout_s: float = 30.0) -> subprocess.CompletedProcess[str]:
    full = workers.env(extra={"COLUMNS": "80", "NO_COLOR": "1", "CONVEYOR_LOG_LEVEL": "WARNING", **(env or {})})
    return subprocess.run([sys.executable, "-m", "conveyor", *args], cwd=cwd or workers.tmp_path, env=full,
                          capture_output=True, text=True, timeout=timeout_s, check=False)


def ok_json(result: subprocess.CompletedProcess[str]) -> Any:
    assert result.returncode == 0, result.stdout + result.stderr
    return orjson.loads(result.stdout)


@pytest.fixture
def worker(workers: Workers) -> Workers:
    workers.start(APP, node_id="cli-ops", concurrency=2)
    return workers


def test_read_commands_never_create_a_store(workers: Workers, tmp_path: Path) -> None:
    empty = tmp_path / "elsewhere"
    empty.mkdir()
    default = {"CONVEYOR_BROKER_URL": "", "CONVEYOR_STORE_URL": ""}
    for args in (["tasks"], ["task", "0190"], ["queues"], ["nodes"], ["dead", "list"], ["schedule", "list"]):
        result = conveyor(workers, *args, env=default, cwd=empty)
        assert result.returncode == 1, result.stdout + result.stderr
        assert "no Conveyor database at" in result.stderr and "Traceback" not in result.stderr
    missing = f"sqlite:///{tmp_path}/no/such/folder/c.db"
    result = conveyor(workers, "tasks", env={"CONVEYOR_STORE_URL": missing, "CONVEYOR_BROKER_URL": missing})
    assert result.returncode == 1 and "no Conveyor database" in result.stderr
    assert list(empty.iterdir()) == [] and not (tmp_path / "no").exists()


def test_a_damaged_database_is_refused_at_open(workers: Workers, tmp_path: Path) -> None:
    store = workers.store()
    from conveyor.model import Task

    store.create_many([Task(type="filler", params={"pad": "x" * 2000}) for _ in range(300)])
    workers.kill_all()
    path = Path(workers.url.removeprefix("sqlite:///"))
    size = path.stat().st_size
    with path.open("r+b") as f:  # scribble over pages in the middle of the file
        f.seek(size // 2 - (size // 2) % 4096)
        f.write(os.urandom(3 * 4096))
    result = conveyor(workers, "tasks")
    assert result.returncode == 1
    assert "is damaged" in result.stderr and "restore a backup" in result.stderr
    worker = workers.start(APP, wait_ready=False)
    assert worker.wait(15) != 0
    assert "is damaged" in worker.output()


def test_submit_wait_says_how_it_ended(worker: Workers) -> None:
    timed_out = conveyor(worker, "submit", "console.ok", "--params", '{"sleep_s": 3}', "--wait", "--wait-timeout",
                         "0.3")
    assert timed_out.returncode == 3
    assert "is still" in timed_out.stderr and "after 0.3 s" in timed_out.stderr
    assert "Traceback" not in timed_out.stderr
    failed = conveyor(worker, "submit", "console.fail_first", "--max-attempts", "1", "--params", '{"order": "A-1"}',
                      "--wait")
    assert failed.returncode == 1
    assert "failed: ValueError: order A-1: the payment service said no" in failed.stderr
    good = conveyor(worker, "submit", "console.ok", "--params", '{"n": 7}', "--wait")
    assert good.returncode == 0 and 'succeeded: {"n":7}' in good.stdout


def test_retry_cancel_result_and_wait_take_id_prefixes(worker: Workers) -> None:
    failed = ok_json(conveyor(worker, "submit", "console.fail_first", "--max-attempts", "1", "--params",
                              '{"order": "B-2"}', "--json"))
    wait = conveyor(worker, "wait", failed["id"][:-4], "--timeout", "20")
    assert wait.returncode == 1 and "ValueError" in wait.stderr
    result = conveyor(worker, "result", failed["id"][:-4], "--json")
    assert result.returncode == 1 and orjson.loads(result.stdout)["error"]["type"] == "failed"
    retried = ok_json(conveyor(worker, "retry", failed["id"][:-4], "--json"))
    assert retried["status"] == "queued"
    assert conveyor(worker, "wait", failed["id"], "--timeout", "20").returncode == 0
    assert ok_json(conveyor(worker, "result", failed["id"][:-4])) == {"order": "B-2", "charged": "yes"}
    later = ok_json(conveyor(worker, "--json", "submit", "console.ok", "--delay", "60"))
    cancelled = conveyor(worker, "cancel", later["id"][:-3])
    assert cancelled.returncode == 0 and f"{later['id']} cancelled" in cancelled.stdout
    again = conveyor(worker, "cancel", later["id"], "--json")
    assert again.returncode == 1 and orjson.loads(again.stdout)["error"]["type"] == "conflict"


def test_bulk_retry_by_filters_and_errors_as_json(worker: Workers) -> None:
    ids = [ok_json(conveyor(worker, "submit", "console.fail_first", "--max-attempts", "1", "--params",
                            f'{{"order": "C-{i}"}}', "--json"))["id"] for i in range(3)]
    store = worker.store()
    wait_for(lambda: all(store.get(uuid.UUID(i)).status is TaskStatus.FAILED for i in ids), 20, "3 failures")
    retried = ok_json(conveyor(worker, "retry", "--status", "failed", "--type", "console.fail_first", "--since",
                               "10m", "--json"))
    assert retried["done"] == 3 and sorted(retried["ids"]) == sorted(ids)
    usage = conveyor(worker, "retry", ids[0], "--type", "x", "--json")
    assert usage.returncode == 2 and orjson.loads(usage.stdout)["error"]["type"] == "usage"
    unknown = conveyor(worker, "task", str(uuid.uuid4()), "--json")
    assert unknown.returncode == 1 and orjson.loads(unknown.stdout)["error"]["type"] == "not_found"


def test_tables_print_whole_ids_when_piped_and_queues_show_consumers(worker: Workers) -> None:
    task = ok_json(conveyor(worker, "--json", "submit", "console.ok", "--wait"))
    listing = conveyor(worker, "tasks", "--type", "console.ok")
    assert listing.returncode == 0 and task["id"] in listing.stdout
    queues = ok_json(conveyor(worker, "queues", "--json"))
    default = next(q for q in queues if q["name"] == "default")
    assert default["consumers"] == 1 and default["slots"] == 2 and default["succeeded"] >= 1


def test_dead_letters_are_listed_replayed_and_purged(workers: Workers) -> None:
    first = workers.start(APP, node_id="old-code", concurrency=1)
    late = ok_json(conveyor(workers, "--json", "submit", "console.late", "--params", '{"n": 5}'))
    junk = ok_json(conveyor(workers, "--json", "submit", "console.late"))
    store = workers.store()
    wait_for(lambda: store.get(uuid.UUID(junk["id"])).status is TaskStatus.FAILED, 20, "the dead letters")
    letters = ok_json(conveyor(workers, "dead", "list", "--json"))
    assert {d["task_id"] for d in letters} == {late["id"], junk["id"]}
    assert all("unknown task type 'console.late'" in d["reason"] for d in letters)
    first.signal(15)
    first.wait(15)
    workers.start(APP, node_id="new-code", concurrency=1, extra_env={"CONSOLE_APP_V2": "1"})
    chosen = next(d["id"] for d in letters if d["task_id"] == late["id"])
    assert ok_json(conveyor(workers, "dead", "replay", chosen, "--json")) == {"replayed": 1}
    assert ok_json(conveyor(workers, "wait", late["id"], "--json"))["result"] == {"late": 5}
    assert ok_json(conveyor(workers, "dead", "purge", "--all", "--json")) == {"deleted": 1}
    assert ok_json(conveyor(workers, "dead", "list", "--json")) == []
    purged = ok_json(conveyor(workers, "purge", "--finished-before", "2999-01-01", "--json"))
    assert purged["deleted"] >= 2


def test_the_worker_banner_and_refusals(workers: Workers) -> None:
    worker = workers.start(APP, node_id="banner-node", concurrency=3,
                           extra_env={"CONVEYOR_LOG_LEVEL": "INFO"})
    wait_for(lambda: "task types:" in worker.output(), 10, "the banner")
    banner = next(line for line in worker.output().splitlines() if "task types:" in line)
    assert "worker banner-node" in banner and f"store {workers.url}" in banner
    assert "queues default, concurrency 3 (thread pool)" in banner
    assert "console.fail_first, console.ok" in banner
    mixed = conveyor(workers, "worker", APP, env={"CONVEYOR_BROKER_URL": "amqp://u:hunter2@127.0.0.1:1/"})
    assert mixed.returncode == 1 and "local SQLite file" in mixed.stderr and "hunter2" not in mixed.stderr
    exposed = conveyor(workers, "scheduler", "--http", "0.0.0.0:0")
    assert exposed.returncode == 1 and "without CONVEYOR_API_TOKEN" in exposed.stderr
    helped = conveyor(workers, "--help")
    assert "CONVEYOR_RETENTION" in helped.stdout and "CONVEYOR_LEASE_S" in helped.stdout


def test_operator_commands_talk_to_a_remote_scheduler(workers: Workers, tmp_path: Path) -> None:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = workers.env(extra={"CONVEYOR_API_TOKEN": "remote-token", "CONVEYOR_LOG_LEVEL": "WARNING"})
    log_path = tmp_path / "scheduler.log"
    with log_path.open("wb") as log_file:
        scheduler = subprocess.Popen([sys.executable, "-m", "conveyor", "scheduler", "--http", f"127.0.0.1:{port}"],
                                     cwd=REPO_ROOT, env=env, stdout=log_file, stderr=subprocess.STDOUT,
                                     start_new_session=True)
    try:
        workers.start(APP, node_id="remote-node", concurrency=2)
        api = {"CONVEYOR_API": f"http://127.0.0.1:{port}", "CONVEYOR_API_TOKEN": "remote-token",
               "CONVEYOR_STORE_URL": "sqlite:////nonexistent/never.db", "CONVEYOR_BROKER_URL": ""}
        wait_for(lambda: conveyor(workers, "nodes", env=api).returncode == 0, 15, "the API")
        task = ok_json(conveyor(workers, "--json", "submit", "console.fail_first", "--max-attempts", "1",
                                "--params", '{"order": "R"}', env=api))
        done = conveyor(workers, "wait", task["id"][:-4], "--json", env=api)
        assert done.returncode == 1 and orjson.loads(done.stdout)["status"] == "failed"
        assert ok_json(conveyor(workers, "retry", task["id"][:-4], "--json", env=api))["status"] == "queued"
        assert conveyor(workers, "wait", task["id"], env=api).returncode == 0
        listing = ok_json(conveyor(workers, "tasks", "--id", task["id"][:20], "--json", env=api))
        assert [t["id"] for t in listing["tasks"]] == [task["id"]]
        wrong = conveyor(workers, "tasks", "--json", env={**api, "CONVEYOR_API_TOKEN": "nope"})
        assert wrong.returncode == 1 and orjson.loads(wrong.stdout)["error"]["type"] == "unauthorized"

        # schedules too: the store URL above does not exist, so all of this went over HTTP
        added = ok_json(conveyor(workers, "schedule", "add", "nightly", "--type", "console.fail_first",
                                 "--params", '{"order": "S"}', "--cron", "0 3 * * *", "--tz", "Europe/Paris",
                                 "--json", env=api))
        assert (added["name"], added["cron"], added["timezone"], added["enabled"]) == (
            "nightly", "0 3 * * *", "Europe/Paris", True)
        assert ok_json(conveyor(workers, "schedule", "disable", "nightly", "--json", env=api))["enabled"] is False
        listed = ok_json(conveyor(workers, "schedule", "list", "--json", env=api))
        assert [(s["name"], s["enabled"]) for s in listed] == [("nightly", False)]
        fired = ok_json(conveyor(workers, "schedule", "run", "nightly", "--json", env=api))
        assert (fired["type"], fired["params"]) == ("console.fail_first", {"order": "S"})
        table = conveyor(workers, "schedule", "list", env=api)
        assert table.returncode == 0 and "nightly" in table.stdout and "Europe/Paris" in table.stdout
        bad = conveyor(workers, "schedule", "add", "x", "--type", "t", "--cron", "0 7 * *", "--json", env=api)
        assert bad.returncode == 1 and orjson.loads(bad.stdout)["error"]["type"] == "validation", bad.stdout
        taken = conveyor(workers, "schedule", "add", "nightly", "--type", "t", "--every", "60", "--json", env=api)
        assert taken.returncode == 1 and orjson.loads(taken.stdout)["error"]["type"] == "conflict", taken.stdout
        assert ok_json(conveyor(workers, "schedule", "rm", "nightly", "--json", env=api)) == {"deleted": "nightly"}
        gone = conveyor(workers, "schedule", "enable", "nightly", "--json", env=api)
        assert gone.returncode == 1 and orjson.loads(gone.stdout)["error"]["type"] == "not_found", gone.stdout
    finally:
        scheduler.terminate()
        try:
            scheduler.wait(15)
        except subprocess.TimeoutExpired:
            scheduler.kill()
    assert "Traceback" not in log_path.read_text(), log_path.read_text()
