#!/usr/bin/env python3
"""The conformance runner: points the kit's fixtures at a worker implementation (any language)
running against real RabbitMQ and PostgreSQL, and says which cases it passes.

    python protocol/conformance/runner.py --amqp amqp://guest:guest@127.0.0.1:5672/VHOST \\
        --store postgresql://postgres@127.0.0.1:5432/test -- COMMAND...

COMMAND starts the worker under test. It must consume the logical queue ``conformance`` on the
broker named by ``CONVEYOR_BROKER_URL`` (a vhost of its own: the runner deletes nothing else)
with handlers for the ``conformance.*`` types described in README.md, each appending one line
``task_id<TAB>type<TAB>attempt<TAB>node<TAB>pid<TAB>unix time`` to the file named by
``CONVEYOR_CONFORMANCE_LOG`` when it starts. The runner plays the scheduling center (the
report listener that answers claims and reports, lease 3 s, heartbeat 1 s), presets the store
for the claim cases, publishes every case's message, waits for the outcomes, stops the worker
with SIGTERM and prints one line per case and a closing ``N passed, M failed``.

It needs the ``conveyor`` package (with the rabbitmq and postgres extras) to play the center;
the worker under test needs nothing of it. ``tests/conformance`` runs it for the Python and the
PHP worker.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

KIT = Path(__file__).resolve().parent
QUEUE = "conformance"
LEASE_S = 3.0
HEARTBEAT_S = 1.0
ECHO = "conformance.echo"


def load(name: str) -> list[dict[str, Any]]:
    """The cases of one fixture file: ``messages``, ``claims`` or ``reports``."""
    cases: list[dict[str, Any]] = json.loads((KIT / f"{name}.json").read_text(encoding="utf-8"))["cases"]
    return cases


def fresh_id() -> str:
    from conveyor.model import new_task_id

    return str(new_task_id())


def substitute(value: Any, task_id: str, at: str = "") -> Any:
    """The fixture with ``@id`` (and ``@now``) replaced."""
    if isinstance(value, str):
        return task_id if value == "@id" else at if value == "@now" else value
    if isinstance(value, dict):
        return {k: substitute(v, task_id, at) for k, v in value.items()}
    if isinstance(value, list):
        return [substitute(v, task_id, at) for v in value]
    return value


def message_body(case: Mapping[str, Any], task_id: str) -> bytes:
    """The bytes to publish for a ``messages`` case."""
    if "raw" in case:
        return str(case["raw"]).replace("@id", task_id).encode("utf-8")
    return json.dumps(substitute(case["message"], task_id), ensure_ascii=False).encode("utf-8")


def claim_message(task_id: str, attempt: int) -> dict[str, Any]:
    """The task message delivered in a ``claims`` case."""
    return {"protocol": 1, "id": task_id, "type": ECHO, "params": {"claim": True}, "queue": QUEUE,
            "priority": 0, "attempt": attempt, "max_attempts": 3, "timeout": 10, "eta": None, "trace": {}}


def preset(store: Any, task_id: str, spec: Mapping[str, Any] | None, *, params: dict[str, Any] | None = None) -> None:
    """Write the task a ``claims``/``reports`` case starts from (nothing for ``None``)."""
    if spec is None:
        return
    from conveyor.model import Task, TaskStatus, now

    at = now()
    status = TaskStatus(spec["status"])
    lease = spec.get("lease_in_s")
    eta = spec.get("eta_in_s")
    store.create(Task(
        id=uuid.UUID(task_id), type=ECHO, params=params if params is not None else {"claim": True}, queue=QUEUE,
        status=status, attempts=spec.get("attempts", 0), max_attempts=spec.get("max_attempts", 3), timeout=10,
        node=spec.get("node"), lease_until=None if lease is None else at + lease,
        eta=None if eta is None else at + eta, crashes=spec.get("crashes", 0), created_at=at - 1,
        queued_at=at - 1, started_at=at - 1 if status is TaskStatus.RUNNING else None,
        finished_at=at - 1 if status.is_final else None,
    ), detail="conformance preset")


# -- checking -----------------------------------------------------------------------------------
def _same(problems: list[str], what: str, got: Any, want: Any) -> None:
    if got != want:
        problems.append(f"{what}: got {got!r}, want {want!r}")


def _contains(problems: list[str], what: str, text: str | None, part: str) -> None:
    if part.lower() not in (text or "").lower():
        problems.append(f"{what}: {text!r} does not contain {part!r}")


def check_task(task: Any, want: Mapping[str, Any]) -> list[str]:
    """Compare a stored task with a fixture's expectations (status, attempts, crashes, result,
    error_type, error_message)."""
    problems: list[str] = []
    if task is None:
        return ["the task is not in the store"]
    _same(problems, "status", task.status.value, want["status"])
    for key in ("attempts", "crashes", "result"):
        if key in want:
            _same(problems, key, getattr(task, key), want[key])
    error = task.error or {}
    if "error_type" in want:
        _same(problems, "error type", error.get("type"), want["error_type"])
    if "error_message" in want:
        _contains(problems, "error message", error.get("message"), want["error_message"])
    return problems


def check_claim_answer(case: Mapping[str, Any], answer: Mapping[str, Any]) -> list[str]:
    want, problems = case["expect"], []
    _same(problems, "decision", answer.get("decision"), want["decision"])
    _contains(problems, "reason", answer.get("reason"), want["reason"])
    if "attempt" in want:
        _same(problems, "attempt", answer.get("attempt"), want["attempt"])
    for key in ("lease_s", "renew_s", "heartbeat_s"):
        if not isinstance(answer.get(key), int | float):
            problems.append(f"the answer has no {key}")
    if want["decision"] == "later" and not isinstance(answer.get("delay_s"), int | float):
        problems.append("a later answer needs delay_s")
    return problems


def check_report_answer(case: Mapping[str, Any], answer: Mapping[str, Any]) -> list[str]:
    want, problems = case["expect"], []
    _same(problems, "applied", answer.get("applied"), want["applied"])
    _same(problems, "stop", answer.get("stop"), want["stop"])
    _contains(problems, "reason", answer.get("reason"), want["reason"])
    return problems


def check_report_task(case: Mapping[str, Any], task: Any) -> list[str]:
    want = case["expect"]["task"]
    if want is None:
        return [] if task is None else ["a task appeared for an unknown id"]
    problems: list[str] = []
    if task is None:
        return ["the task is not in the store"]
    _same(problems, "status", task.status.value, want["status"])
    for key in ("attempts", "result"):
        if key in want:
            _same(problems, key, getattr(task, key), want[key])
    if "error_type" in want:
        _same(problems, "error type", (task.error or {}).get("type"), want["error_type"])
    return problems


# -- running a worker ---------------------------------------------------------------------------
@dataclass
class _Case:
    name: str
    kind: str  # messages | claims
    task_id: str
    body: bytes
    expect: dict[str, Any]
    published_at: float = 0.0
    preset_at: float | None = None  # claims: when the store state (its eta, its lease) was written
    problems: list[str] = field(default_factory=list)


@dataclass(frozen=True, slots=True)
class Execution:
    task_id: str
    type: str
    attempt: int
    node: str
    at: float


def read_log(path: Path) -> list[Execution]:
    if not path.exists():
        return []
    rows = []
    for line in path.read_text(encoding="utf-8").splitlines():
        parts = line.split("\t")
        if len(parts) >= 6:
            rows.append(Execution(parts[0], parts[1], int(parts[2]), parts[3], float(parts[5])))
    return rows


def worker_cases() -> list[_Case]:
    cases = []
    for case in load("messages"):
        tid = fresh_id()
        cases.append(_Case(case["name"], "messages", tid, message_body(case, tid), case["expect"]))
    for case in load("claims"):
        tid = fresh_id()
        body = json.dumps(claim_message(tid, case["message_attempt"])).encode()
        cases.append(_Case(case["name"], "claims", tid, body, {**case["expect"]["worker"], "_store": case["store"]}))
    return cases


def run_worker_suite(amqp_url: str, store_url: str, command: Sequence[str], *, env: Mapping[str, str] | None = None,
                     cwd: str | None = None, timeout_s: float = 60.0, log: Callable[[str], None] = print,
                     ) -> dict[str, list[str]]:
    """Run every ``messages`` and ``claims`` case against the worker ``command`` starts; return
    the problems found per case name (an empty list: passed)."""
    from conveyor.broker.rabbitmq import RabbitmqBroker
    from conveyor.foreign import LeaseTerms
    from conveyor.reports_amqp import AmqpReportListener
    from conveyor.service import TaskService
    from conveyor.store import open_store

    cases = worker_cases()
    store = open_store(store_url)
    broker = RabbitmqBroker(amqp_url)
    service = TaskService(store, broker)
    listener = AmqpReportListener(service, amqp_url, LeaseTerms(lease_s=LEASE_S, heartbeat_s=HEARTBEAT_S))
    workdir = Path(tempfile.mkdtemp(prefix="conveyor-conformance-"))
    exec_log = workdir / "executions.log"
    worker_out = workdir / "worker.log"
    proc: subprocess.Popen[bytes] | None = None
    try:
        broker.declare_queue(QUEUE)
        listener.start()
        for case in cases:
            if case.kind == "claims":
                case.preset_at = time.time()
                preset(store, case.task_id, case.expect["_store"])
        child_env = {**os.environ, **(env or {}), "CONVEYOR_BROKER_URL": amqp_url, "CONVEYOR_STORE_URL": store_url,
                     "CONVEYOR_LEASE_S": str(LEASE_S), "CONVEYOR_HEARTBEAT_S": str(HEARTBEAT_S),
                     "CONVEYOR_CONFORMANCE_LOG": str(exec_log), "CONVEYOR_QUEUES": QUEUE}
        with worker_out.open("wb") as out:
            proc = subprocess.Popen(list(command), cwd=cwd, env=child_env, stdin=subprocess.DEVNULL, stdout=out,
                                    stderr=subprocess.STDOUT, start_new_session=True)
        _wait_until_listed(service, proc, worker_out, timeout_s=min(30.0, timeout_s))
        for case in cases:
            case.published_at = time.time()
            broker.publish(case.body, queue=QUEUE)
        _wait_for_outcomes(service, cases, exec_log, deadline=time.monotonic() + timeout_s)
        time.sleep(1.0)  # let stray late runs of dropped copies show up before judging
        _judge(service, cases, read_log(exec_log))
    finally:
        if proc is not None:
            _stop(proc)
        listener.stop()
        broker.close()
        store.close()
    failed = [c for c in cases if c.problems]
    if failed:
        log(f"worker output ({worker_out}):\n" + worker_out.read_text(errors="replace")[-6000:])
    return {case.name: case.problems for case in cases}


def _wait_until_listed(service: Any, proc: subprocess.Popen[bytes], out: Path, timeout_s: float) -> None:
    """The worker counts as ready once it heartbeats (it is then listed by `conveyor nodes`)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"the worker exited with {proc.returncode}:\n{out.read_text(errors='replace')[-4000:]}")
        if any(node.status == "live" for node in service.nodes()):
            return
        time.sleep(0.1)
    raise RuntimeError(f"the worker did not heartbeat within {timeout_s} s:\n{out.read_text(errors='replace')[-4000:]}")


def _settled(service: Any, case: _Case, dead_bodies: set[bytes]) -> bool:
    from conveyor.errors import TaskNotFound

    want = case.expect
    if want.get("outcome") == "dead_letter":
        return case.body in dead_bodies
    if want.get("runs") == 0 and case.kind == "claims":
        return True  # judged at the end: nothing may happen
    try:
        task = service.get(uuid.UUID(case.task_id))
    except TaskNotFound:
        return False
    return bool(task.status.value == want["status"] and task.status.is_final)


def _wait_for_outcomes(service: Any, cases: list[_Case], exec_log: Path, deadline: float) -> None:
    pending = list(cases)
    while pending and time.monotonic() < deadline:
        dead = {body for body, _ in service.broker.dead_letters(limit=1000)}
        pending = [c for c in pending if not _settled(service, c, dead)]
        if pending:
            time.sleep(0.25)


def _judge(service: Any, cases: list[_Case], executions: list[Execution]) -> None:
    from conveyor.errors import TaskNotFound

    runs = Counter(e.task_id for e in executions)
    first_run = {}
    for e in sorted(executions, key=lambda e: e.at):
        first_run.setdefault(e.task_id, e.at)
    dead = {body: headers for body, headers in service.broker.dead_letters(limit=1000)}
    for case in cases:
        want = case.expect
        try:
            task = service.get(uuid.UUID(case.task_id))
        except (TaskNotFound, ValueError):
            task = None
        if want.get("outcome") == "dead_letter":
            headers = dead.get(case.body)
            if headers is None:
                case.problems.append("not dead-lettered (or its body was changed)")
            else:
                _contains(case.problems, "dead-letter reason", headers.get("x-conveyor-reason"), want["reason"])
            if "status" in want:
                case.problems += check_task(task, want)
        else:
            case.problems += check_task(task, want)
        expected_runs = want.get("runs", 0 if want.get("outcome") == "dead_letter" else None)
        if expected_runs is not None:
            _same(case.problems, "handler runs", runs[case.task_id], expected_runs)
        if "not_before_s" in want and case.task_id in first_run:
            since = case.preset_at if case.preset_at is not None else case.published_at
            early = first_run[case.task_id] - since
            if early < want["not_before_s"]:
                case.problems.append(f"ran {early:.2f} s after its eta or lease was set, before "
                                     f"{want['not_before_s']} s")


def _stop(proc: subprocess.Popen[bytes]) -> None:
    with contextlib.suppress(ProcessLookupError):
        proc.send_signal(signal.SIGTERM)
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(timeout=15)
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGKILL)
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(timeout=5)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--amqp", required=True, help="AMQP URL with a vhost of the test's own")
    parser.add_argument("--store", required=True, help="PostgreSQL URL (schema of the test's own)")
    parser.add_argument("--timeout", type=float, default=60.0)
    parser.add_argument("command", nargs="+", help="the worker under test")
    args = parser.parse_args(argv)
    results = run_worker_suite(args.amqp, args.store, args.command, timeout_s=args.timeout)
    for name, problems in results.items():
        print(("ok     " if not problems else "FAILED ") + name + ("" if not problems else ": " + "; ".join(problems)))
    failed = sum(1 for p in results.values() if p)
    print(f"{len(results) - failed} passed, {failed} failed")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
