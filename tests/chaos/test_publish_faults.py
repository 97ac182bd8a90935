"""Stored but never published (issue 11, hole 1): a submitter, and a scheduler leader while
firing, SIGKILLed between the store write and the broker's confirm.

To strike exactly there, the client runs as its own RabbitMQ user on our vhost of the shared
server; cutting that user off (connection limit 0, its connections closed) holds its publish in
the broker adapter's outage wait, and the SIGKILL lands while the task is stored and unpublished.
Only our own users and connections are touched. The design's outbox (an intent row in the same
transaction, republished after a grace period; an idempotent repeat publishes) must run them.
"""

from __future__ import annotations

import contextlib
import json
import secrets
import signal
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path
from urllib.parse import quote, unquote, urlsplit

import pytest

from conveyor.scheduler.schedule_store import open_schedule_store
from conveyor.service import SubmitRequest
from conveyor.store import open_store
from tests.chaos.drill import start_workers
from tests.chaos.harness import all_tasks, count, scale
from tests.integration.conftest import REPO_ROOT, Cluster, rabbitmqctl
from tests.processes import wait_for

pytestmark = [pytest.mark.chaos, pytest.mark.integration, pytest.mark.timeout(scale(150, 600))]


class BrokerUser:
    """A RabbitMQ user of our own on the shared server, allowed on our vhost only, that can be cut off."""

    def __init__(self, vhost_url: str) -> None:
        self.vhost = unquote(urlsplit(vhost_url).path.lstrip("/"))
        self.name = f"chaos-{uuid.uuid4().hex[:8]}"
        password = secrets.token_hex(12)
        rabbitmqctl("add_user", self.name, password)
        rabbitmqctl("set_permissions", "-p", self.vhost, self.name, ".*", ".*", ".*")
        self.url = f"amqp://{self.name}:{password}@127.0.0.1:5672/{quote(self.vhost, safe='')}"

    def cut_off(self) -> None:
        rabbitmqctl("set_user_limits", self.name, json.dumps({"max-connections": 0}))
        for line in rabbitmqctl("list_connections", "-q", "--no-table-headers", "pid", "user").splitlines():
            pid, _, user = line.partition("\t")
            if user.strip() == self.name:
                rabbitmqctl("close_connection", pid.strip(), "chaos: cut off")

    def restore(self) -> None:
        rabbitmqctl("clear_user_limits", self.name, "max-connections")

    def delete(self) -> None:
        with contextlib.suppress(subprocess.SubprocessError):
            rabbitmqctl("delete_user", self.name)


class Lines(threading.Thread):
    """Collects a child's stdout lines as they come."""

    def __init__(self, proc: subprocess.Popen[str]) -> None:
        super().__init__(daemon=True)
        self.proc = proc
        self.lines: list[str] = []

    def run(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.append(line.strip())


def stored_keys(cluster: Cluster, prefix: str) -> dict[str, str]:
    """idempotency key -> task id of the stored tasks whose key starts with ``prefix``."""
    store = open_store(cluster.store_url)
    try:
        return {t.idempotency_key: k for k, t in all_tasks(store).items()
                if t.idempotency_key and t.idempotency_key.startswith(prefix)}
    finally:
        store.close()


def orphan_a_task(cluster: Cluster, user: BrokerUser, prefix: str, log: Path) -> tuple[str, str, list[str]]:
    """Run a submitter as ``user``, cut it off mid-stream, SIGKILL it once it stored tasks it could
    not publish (a submit returns at the store commit; the message follows from a background
    publisher, which the cut-off holds). Returns (key, id) of such a task and the ids the
    submitter saw accepted."""
    env = cluster.env({"CONVEYOR_BROKER_URL": user.url})
    proc = subprocess.Popen([sys.executable, "-m", "tests.chaos.apps.submit_loop", prefix, "100000", "0.02"],
                            cwd=REPO_ROOT, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                            stderr=log.open("w"), text=True, start_new_session=True)
    lines = Lines(proc)
    lines.start()
    try:
        wait_for(lambda: len(lines.lines) >= 5, 30, "the submitter to get 5 tasks accepted")
        user.cut_off()
        cut_at = len(lines.lines)
        wait_for(lambda: len(lines.lines) >= cut_at + 3, 20, "tasks stored after the broker was cut off")
        key, task_id = lines.lines[-1].split()[1:3]
        orphan = (key, task_id)
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=10)
    finally:
        with contextlib.suppress(ProcessLookupError):
            proc.kill()
        user.restore()
    lines.join(timeout=5)
    return orphan[0], orphan[1], [line.split()[2] for line in lines.lines]


def test_a_submitter_killed_between_store_write_and_publish_leaves_no_task_behind(
        cluster: Cluster, vhost_url: str, tmp_path: Path) -> None:
    start_workers(cluster, 2)
    user = BrokerUser(vhost_url)
    started = time.monotonic()
    try:
        left_alone = orphan_a_task(cluster, user, "left", tmp_path / "submitter-1.log")
        repeated = orphan_a_task(cluster, user, "repeated", tmp_path / "submitter-2.log")
    finally:
        user.delete()
    # The client of the second one comes back and repeats its call, as an idempotency key allows.
    again, created = cluster.service.submit(SubmitRequest(type="chaos.work", params={"n": 0},
                                                          idempotency_key=repeated[0]))
    assert not created and str(again.id) == repeated[1]
    accepted = left_alone[2] + repeated[2] + [repeated[1]]
    store = open_store(cluster.store_url)
    try:
        tally = count("submitter-killed-before-publish", accepted=accepted, store=store, exec_log=cluster.exec_log,
                      started=started, settle_s=scale(30, 60),
                      notes={"orphans": 2, "orphan_left_alone": left_alone[1], "orphan_repeated": repeated[1]})
    finally:
        store.close()
    tally.publish()
    assert not tally.problems(), tally.problems()


def test_the_scheduler_leader_sigkilled_while_firing_leaves_no_tick_behind(
        cluster: Cluster, vhost_url: str, tmp_path: Path) -> None:
    start_workers(cluster, 2)
    subprocess.run([sys.executable, "-m", "conveyor", "schedule", "add", "tick", "--type", "chaos.work",
                    "--params", '{"n": 0}', "--every", "1"], cwd=REPO_ROOT, env=cluster.env(), check=True,
                   capture_output=True, timeout=60)
    users = {replica: BrokerUser(vhost_url) for replica in ("s1", "s2")}
    procs: dict[str, subprocess.Popen[bytes]] = {}

    def start(replica: str) -> None:
        env = cluster.env({"CONVEYOR_BROKER_URL": users[replica].url})
        with (tmp_path / f"scheduler-{replica}.log").open("ab") as log:
            procs[replica] = subprocess.Popen(
                [sys.executable, "-m", "conveyor", "scheduler", "--no-http", "--id", replica, "--lease", "3",
                 "--renew", "1"], cwd=REPO_ROOT, env=env, stdin=subprocess.DEVNULL, stdout=log,
                stderr=subprocess.STDOUT, start_new_session=True)

    schedules = open_schedule_store(cluster.store_url)
    started = time.monotonic()
    kills = 0
    try:
        for replica in users:
            start(replica)
        for _ in range(scale(2, 8)):
            lease = wait_for(lambda: schedules.lease("scheduler"), 20, "a scheduler leader")
            leader = lease[0]
            users[leader].cut_off()  # its next fire is stored, then its publish waits on the broker
            time.sleep(2.5)
            procs[leader].send_signal(signal.SIGKILL)
            procs[leader].wait(timeout=10)
            kills += 1
            users[leader].restore()
            start(leader)
            time.sleep(3)
    finally:
        for proc in procs.values():
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
            proc.wait(timeout=10)
        for user in users.values():
            user.delete()
        schedules.close()
    store = open_store(cluster.store_url)
    try:
        ticks = [k for k, t in all_tasks(store).items() if (t.idempotency_key or "").startswith("schedule:tick:")]
        tally = count("scheduler-leader-killed-while-firing", accepted=ticks, store=store,
                      exec_log=cluster.exec_log, started=started, settle_s=scale(30, 60), notes={"leader_kills": kills})
    finally:
        store.close()
    tally.publish()
    assert tally.submitted >= 5, "the scheduler fired fewer than 5 ticks: nothing was tested"
    assert not tally.problems(), tally.problems()
