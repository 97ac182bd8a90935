"""Wire fuzzing (issue 11): task messages and worker reports generated from the protocol's JSON
Schemas, valid and mutated (tests/chaos/fuzz.py), published to a real queue and consumed by a
real Conveyor worker (task messages) or the real center, ``conveyor scheduler`` (reports).

Task messages: every body either ends in the store (a final status, or waiting for its eta) or
is dead-lettered with a reason, within seconds; a body the schema refuses never reaches the store;
the queue is empty at the end and stays so (no message goes round and round); the worker is
alive and still runs a task. The same, shorter, against the embedded mode (SQLite).

Reports: every body gets exactly one answer on its ``reply_to``; the ones the schema refuses are
dead-lettered with a reason; ``_reports`` is empty at the end; the center is alive.

``CONVEYOR_FUZZ_SEED`` replays a run (the seed is in the tally line).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import random
import sqlite3
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

import aiormq
import aiormq.abc
import pytest
from hypothesis import strategies as st
from hypothesis_jsonschema import from_schema
from pamqp.commands import Basic

from conveyor._sqlite import sqlite_path
from conveyor.broker.base import Broker
from conveyor.broker.sqlite import SqliteBroker
from conveyor.model import Task, TaskStatus
from conveyor.service import SubmitRequest
from conveyor.store import open_store
from conveyor.store.base import Store
from tests.chaos import fuzz
from tests.chaos.center import Center
from tests.chaos.harness import CHAOS_APP, Tally, all_tasks, scale
from tests.e2e.conftest import Workers
from tests.execlog import read_executions
from tests.integration.conftest import Cluster, rabbitmqctl
from tests.processes import wait_for

pytestmark = [pytest.mark.chaos, pytest.mark.integration, pytest.mark.timeout(300)]

QUEUE = "fuzz"
HANDLER = "chaos.any"
SEED = int(os.environ.get("CONVEYOR_FUZZ_SEED") or random.randrange(2**32))
RESOLVE_S = 30.0  # every message is run or dead-lettered within this


# -- generating task messages ---------------------------------------------------------------------

def task_bodies(count: int, fuzz_seed: int) -> list[tuple[str, bytes]]:
    """``count`` (label, body) pairs: about half valid task messages (most of them for the
    fuzzing handler, on the queue they are published to), half mutated ones."""
    seen: set[uuid.UUID] = set()

    def adjust(message: dict[str, Any], ours: bool) -> dict[str, Any]:
        message = {**message, "id": fuzz.fresh_id(message["id"], seen), "queue": QUEUE}
        return {**message, "type": HANDLER} if ours else message

    # No unknown top-level fields from the generator (the mutations add some): they cost most of
    # the generation time and receivers ignore them anyway.
    schema = {**fuzz.unrolled(fuzz.TASK_SCHEMA, depth=1), "additionalProperties": False}
    valid = st.builds(adjust, from_schema(schema), st.booleans() | st.just(True))
    strategy = fuzz.labelled(valid, lambda m: m, fuzz.TASK_REQUIRED, fuzz.TASK_BOUNDS)
    return [(label if label != "valid" or fuzz.task_valid(body) else "mutated-valid", body)
            for label, body in fuzz.draw_examples(strategy, count, fuzz_seed)]


def amqp_priority(body: bytes) -> int:
    value = fuzz.parsed(body)
    prio = value.get("priority") if isinstance(value, dict) else None
    return prio if isinstance(prio, int) and not isinstance(prio, bool) and 0 <= prio <= 9 else 0


# -- judging what became of them ------------------------------------------------------------------

@dataclass
class Verdict:
    outcomes: Counter[str] = field(default_factory=Counter)
    problems: list[str] = field(default_factory=list)
    unresolved: list[int] = field(default_factory=list)

    def problem(self, what: str, body: bytes) -> None:
        self.problems.append(f"{what}: {body[:160]!r}")


def body_id(body: bytes) -> uuid.UUID | None:
    value = fuzz.parsed(body)
    raw = value.get("id") if isinstance(value, dict) else None
    with contextlib.suppress(ValueError, TypeError, AttributeError):
        return uuid.UUID(raw) if isinstance(raw, str) else None
    return None


def waiting_for_eta(task: Task, now: float) -> bool:
    """Legitimately not final yet: scheduled (a future eta) or retrying after a failed attempt."""
    return task.status in (TaskStatus.SCHEDULED, TaskStatus.RETRYING) and task.eta is not None and task.eta > now - 5


def judge(bodies: Sequence[tuple[str, bytes]], dead: Sequence[tuple[bytes, dict[str, str]]],
          tasks: dict[uuid.UUID, Task], now: float, validity: Callable[[bytes], bool]) -> Verdict:
    verdict = Verdict()
    letters = Counter(b for b, _ in dead)
    reasons = {b: h.get("x-conveyor-reason", "") for b, h in dead}
    for index, (_, body) in enumerate(bodies):
        valid = validity(body)
        task = tasks.get(body_id(body)) if body_id(body) is not None else None
        if letters[body] > 0:
            letters[body] -= 1
            if not reasons[body].strip():
                verdict.problem("dead-lettered without a reason", body)
            if valid and task is None:
                verdict.problem("a schema-valid message was dead-lettered: " + reasons[body][:200], body)
            verdict.outcomes["dead_lettered"] += 1
            if task is not None and not valid:
                verdict.problem("a schema-invalid message reached the store", body)
            continue
        if task is None:
            verdict.unresolved.append(index)
        elif not valid:
            verdict.problem("a schema-invalid message reached the store", body)
        elif task.status.is_final:
            verdict.outcomes[task.status.value] += 1
        elif waiting_for_eta(task, now):
            verdict.outcomes["waiting_for_eta"] += 1
        else:
            verdict.unresolved.append(index)
    return verdict


def run_counts_ok(exec_log: Path, tasks: dict[uuid.UUID, Task]) -> list[str]:
    """A task's handler starts at most once per attempt it was allowed (a message going round
    and round would start it again and again)."""
    starts = Counter(e.task_id for e in read_executions(exec_log))
    return [f"task {tid} started {n} times" for tid, n in starts.items()
            if uuid.UUID(tid) in tasks and n > max(1, tasks[uuid.UUID(tid)].attempts)]


# -- RabbitMQ ---------------------------------------------------------------------------------------

def queue_depths(cluster: Cluster) -> dict[str, tuple[int, int]]:
    """{queue: (ready, unacked)} of the cluster's vhost."""
    vhost = unquote(urlsplit(cluster.broker_url).path.lstrip("/"))
    out = rabbitmqctl("list_queues", "-p", vhost, "name", "messages_ready", "messages_unacknowledged",
                      "--no-table-headers", "-q")
    depths = {}
    for line in out.splitlines():
        parts = line.split()
        if len(parts) == 3 and parts[1].isdigit():
            depths[parts[0]] = (int(parts[1]), int(parts[2]))
    return depths


def stays_drained(cluster: Cluster, deferred: int, seconds: float = 2.0) -> list[str]:
    """The task queue empty, and no more messages in delay queues than tasks waiting for an eta,
    at every look during ``seconds``."""
    problems: list[str] = []
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        depths = queue_depths(cluster)
        ready, unacked = depths.get(f"conveyor.{QUEUE}", (0, 0))
        delayed = sum(r + u for name, (r, u) in depths.items() if name.startswith("conveyor.delay."))
        if ready or unacked:
            problems.append(f"conveyor.{QUEUE} holds {ready} ready, {unacked} unacked")
        if delayed > deferred:
            problems.append(f"{delayed} message(s) in delay queues for {deferred} task(s) waiting for an eta")
        time.sleep(0.5)
    return sorted(set(problems))


def resolve(bodies: Sequence[tuple[str, bytes]], broker: Broker, store: Store,
            validity: Callable[[bytes], bool], timeout_s: float) -> Verdict:
    deadline = time.monotonic() + timeout_s
    while True:
        tasks = {t.id: t for t in all_tasks(store).values()}
        verdict = judge(bodies, broker.dead_letters(limit=len(bodies) + 50), tasks, store.now(), validity)
        if not verdict.unresolved or time.monotonic() > deadline:
            return verdict
        time.sleep(0.5)


def canary_runs(cluster_broker: Broker, store: Store) -> bool:
    """A fresh valid message still runs: the worker survived the fuzzing and consumes."""
    tid = uuid.uuid4()
    body = json.dumps({"protocol": 1, "id": str(tid), "type": HANDLER, "params": {"canary": 1}, "queue": QUEUE})
    cluster_broker.publish_many([(body.encode(), QUEUE, 0, 0.0, None)])

    def done() -> bool:
        with contextlib.suppress(Exception):
            return store.get(tid).status is TaskStatus.SUCCEEDED
        return False

    wait_for(done, 20, "a canary task to succeed after the fuzzing")
    return True


def tally(scenario: str, bodies: Sequence[tuple[str, bytes]], verdict: Verdict, started: float,
          tasks: dict[uuid.UUID, Task], exec_log: Path, **notes: Any) -> Tally:
    ends = Counter(e.task_id for e in read_executions(exec_log, phase="end"))
    stuck = sum(1 for i in verdict.unresolved if body_id(bodies[i][1]) in tasks)  # in the store, not final
    labels = Counter(label for label, _ in bodies)
    return Tally(
        scenario=scenario, submitted=len(bodies), succeeded=verdict.outcomes["succeeded"],
        failed=verdict.outcomes["failed"] + verdict.outcomes["cancelled"],
        lost=len(verdict.unresolved) - stuck, ran_twice=sum(1 for n in ends.values() if n > 1), stuck=stuck,
        time_s=time.monotonic() - started,
        notes={"seed": SEED, "valid": labels["valid"] + labels["mutated-valid"],
               "dead_lettered": verdict.outcomes["dead_lettered"],
               "waiting_for_eta": verdict.outcomes["waiting_for_eta"], "problems": len(verdict.problems), **notes})


# -- the scenarios -------------------------------------------------------------------------------------

def test_fuzzed_task_messages_run_or_are_dead_lettered(cluster: Cluster) -> None:
    worker = cluster.start("fuzz-1", concurrency=8, app=CHAOS_APP, extra_env={"CONVEYOR_QUEUES": QUEUE},
                           wait_ready=False)
    bodies = task_bodies(scale(150, 1500), SEED)  # while the worker starts
    cluster.wait_ready(worker)
    broker = cluster.service.broker
    broker.declare_queue(QUEUE)
    started = time.monotonic()
    broker.publish_many([(body, QUEUE, amqp_priority(body), 0.0, None) for _, body in bodies])
    store = open_store(cluster.store_url)
    try:
        verdict = resolve(bodies, broker, store, fuzz.task_valid, scale(RESOLVE_S, 4 * RESOLVE_S))
        tasks = {t.id: t for t in all_tasks(store).values()}
        drained = stays_drained(cluster, verdict.outcomes["waiting_for_eta"])
        alive = worker.alive()
        canary = alive and canary_runs(broker, store)
    finally:
        store.close()
    result = tally("fuzz-task-messages", bodies, verdict, started, tasks, cluster.exec_log)
    result.publish()
    problems = verdict.problems + drained + run_counts_ok(cluster.exec_log, tasks) + [
        f"unresolved after {RESOLVE_S} s: {bodies[i][1][:160]!r}" for i in verdict.unresolved]
    assert not problems, f"seed {SEED}:\n" + "\n".join(problems[:20])
    assert alive and canary, f"the worker died:\n{worker.output()[-5000:]}"


def test_fuzzed_task_messages_embedded(tmp_path: Path) -> None:
    """The short variant on SQLite: one file for the broker and the store, a real worker process."""
    url = f"sqlite:///{tmp_path}/fuzz.db"
    exec_log = tmp_path / "executions.log"
    pool = Workers(tmp_path, url, exec_log)
    broker = SqliteBroker(url)
    store = open_store(url)
    try:
        worker = pool.start(CHAOS_APP, concurrency=4, queues=QUEUE, wait_ready=False)
        bodies = task_bodies(scale(50, 500), SEED + 1)  # while the worker starts
        pool.wait_ready(worker)
        started = time.monotonic()
        broker.publish_many([(body, QUEUE, amqp_priority(body), 0.0, None) for _, body in bodies])
        verdict = resolve(bodies, broker, store, fuzz.task_valid, scale(RESOLVE_S, 4 * RESOLVE_S))
        tasks = {t.id: t for t in all_tasks(store).values()}
        with contextlib.closing(sqlite3.connect(sqlite_path(url))) as conn:
            left, deliveries = conn.execute(
                "SELECT count(*), coalesce(max(delivery_count), 0) FROM broker_messages WHERE queue = ?",
                (QUEUE,)).fetchone()
        alive = worker.alive()
        canary = alive and canary_runs(broker, store)
        result = tally("fuzz-task-messages-embedded", bodies, verdict, started, tasks, exec_log,
                       left_in_queue=left, max_deliveries=deliveries)
        result.publish()
        problems = verdict.problems + run_counts_ok(exec_log, tasks) + [
            f"unresolved after {RESOLVE_S} s: {bodies[i][1][:160]!r}" for i in verdict.unresolved]
        if left > verdict.outcomes["waiting_for_eta"]:
            problems.append(f"{left} message(s) left in the queue for "
                            f"{verdict.outcomes['waiting_for_eta']} task(s) waiting for an eta")
        assert not problems, f"seed {SEED + 1}:\n" + "\n".join(problems[:20])
        assert alive and canary, f"the worker died:\n{worker.output()[-5000:]}"
    finally:
        pool.kill_all()
        broker.close()
        store.close()


# -- reports -----------------------------------------------------------------------------------------

REPLY_TO = "amq.rabbitmq.reply-to"


def report_bodies(count: int, fuzz_seed: int, known: Sequence[str]) -> list[tuple[str, bytes]]:
    """Valid and mutated reports, heartbeats and claims; half of those carrying an id name a task
    the store has (so they are applied, not refused as unknown)."""
    seen: set[uuid.UUID] = set()

    def adjust(report: dict[str, Any], pick: int) -> dict[str, Any]:
        if "id" not in report:
            return report
        chosen = known[pick] if pick < len(known) else fuzz.fresh_id(report["id"], seen)
        message = report.get("message")
        if isinstance(message, dict):  # a claim's message is for the task claimed (not in the schema)
            report = {**report, "message": {**message, "id": chosen}}
        return {**report, "id": chosen}

    schema = fuzz.unrolled(fuzz.REPORT_SCHEMA, depth=1, inline={"task-message.schema.json": fuzz.TASK_SCHEMA})
    valid = st.builds(adjust, from_schema(schema), st.integers(0, 2 * len(known)))
    strategy = fuzz.labelled(valid, lambda m: m, fuzz.REPORT_REQUIRED, fuzz.REPORT_BOUNDS)
    return fuzz.draw_examples(strategy, count, fuzz_seed)


async def publish_reports(url: str, bodies: Sequence[bytes], timeout_s: float) -> dict[int, list[dict[str, Any]]]:
    """Publish each body to ``_reports`` with direct reply-to (confirmed); the answers per body,
    collected until every body has one or ``timeout_s`` passed, then 2 s more (for repeats)."""
    connection = await aiormq.connect(url)
    try:
        channel = await connection.channel(publisher_confirms=True)
        answers: dict[int, list[dict[str, Any]]] = {}

        async def on_answer(message: aiormq.abc.DeliveredMessage) -> None:
            index = int(message.header.properties.correlation_id or "-1")
            answers.setdefault(index, []).append(json.loads(message.body))

        await channel.basic_consume(REPLY_TO, on_answer, no_ack=True)
        for index, body in enumerate(bodies):
            await channel.basic_publish(body, exchange="conveyor", routing_key="_reports", properties=Basic.Properties(
                content_type="application/json", delivery_mode=2, reply_to=REPLY_TO, correlation_id=str(index)))
        deadline = time.monotonic() + timeout_s
        while len(answers) < len(bodies) and time.monotonic() < deadline:
            await asyncio.sleep(0.2)
        await asyncio.sleep(2.0)
        return answers
    finally:
        await connection.close()


@pytest.fixture
def center(cluster: Cluster) -> Iterator[Center]:
    node = Center(cluster)
    try:
        node.wait_ready()
        yield node
    finally:
        node.close()


def test_fuzzed_reports_are_answered_once_or_dead_lettered(cluster: Cluster, center: Center) -> None:
    known = [str(t.id) for t in cluster.submit(
        [SubmitRequest(type="fuzz.remote", params={"i": i}, queue="remote") for i in range(10)], threads=2)]
    bodies = report_bodies(scale(150, 1500), SEED + 2, known)
    started = time.monotonic()
    answers = asyncio.run(publish_reports(cluster.broker_url, [b for _, b in bodies], scale(RESOLVE_S, 4 * RESOLVE_S)))
    dead = [(b, h) for b, h in cluster.service.broker.dead_letters(limit=len(bodies) + 50)
            if h.get("x-conveyor-queue") == "_reports"]
    letters = Counter(b for b, _ in dead)
    problems: list[str] = []
    outcomes: Counter[str] = Counter()
    for index, (_, body) in enumerate(bodies):
        got = answers.get(index, [])
        valid = fuzz.report_valid(body)
        lettered = letters[body] > 0
        if lettered:
            letters[body] -= 1
            outcomes["dead_lettered"] += 1
        if len(got) != 1:
            problems.append(f"{len(got)} answers to {body[:160]!r}")
            continue
        kind = got[0].get("kind")
        outcomes[f"answer_{kind}"] += 1
        if not valid and not lettered:
            problems.append(f"a schema-invalid report was not dead-lettered (answer {got[0]}): {body[:160]!r}")
        if valid and kind == "error":
            problems.append(f"a schema-valid report was refused ({got[0].get('reason')}): {body[:160]!r}")
    reasons_missing = [b for b, h in dead if not h.get("x-conveyor-reason", "").strip()]
    problems += [f"dead-lettered without a reason: {b[:160]!r}" for b in reasons_missing]
    depth = queue_depths(cluster).get("conveyor._reports", (0, 0))
    if depth != (0, 0):
        problems.append(f"conveyor._reports holds {depth[0]} ready, {depth[1]} unacked at the end")
    labels = Counter(label for label, _ in bodies)
    # succeeded: answered and not dead-lettered; failed: dead-lettered; lost: never answered;
    # stuck: left in _reports at the end.
    Tally(scenario="fuzz-reports", submitted=len(bodies), succeeded=len(bodies) - outcomes["dead_lettered"],
          failed=outcomes["dead_lettered"], lost=sum(1 for i in range(len(bodies)) if not answers.get(i)),
          ran_twice=sum(1 for a in answers.values() if len(a) > 1), stuck=sum(depth),
          time_s=time.monotonic() - started,
          notes={"seed": SEED + 2, "valid": labels["valid"], **outcomes, "problems": len(problems)}).publish()
    assert not problems, f"seed {SEED + 2}:\n" + "\n".join(problems[:20])
    assert center.alive(), f"the center died:\n{center.output()[-5000:]}"
