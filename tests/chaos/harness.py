"""What every chaos scenario shares: its size (short in CI, full in ``make chaos``), the tally it
prints, background submitters and fault loops.

The tally's columns (docs/reliability.md):

- submitted: tasks whose submit call returned (accepted by Conveyor);
- succeeded / failed: tasks in that final status at the end (cancelled counts as failed);
- lost: accepted tasks the store does not have at the end;
- ran twice: tasks whose handler ran to its end more than once (execution log, ``phase=end``);
- stuck: tasks in the store (accepted or not) still not final after the settle time;
- time: from the first submit to the end of the settle wait.
"""

from __future__ import annotations

import contextlib
import json
import os
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from conveyor.errors import ConveyorError
from conveyor.model import Task, TaskFilter, TaskStatus
from conveyor.service import SubmitRequest, TaskService
from conveyor.store.base import Store
from tests.execlog import read_executions

CHAOS_APP = "tests.chaos.apps.chaos_app"  # the task module the scenarios' workers serve
FULL = os.environ.get("CONVEYOR_CHAOS", "short") == "full"
RESULTS_ENV = "CONVEYOR_CHAOS_RESULTS"  # append each tally as a JSON line here (make chaos sets it)
TALLIES: list[Tally] = []  # printed in the terminal summary (tests/chaos/conftest.py)


def scale(short: float, full: float) -> Any:
    """The short (CI) or the full (``make chaos``) value of a scenario parameter."""
    return full if FULL else short


@dataclass
class Tally:
    scenario: str
    submitted: int
    succeeded: int
    failed: int
    lost: int
    ran_twice: int
    stuck: int
    time_s: float
    notes: dict[str, Any] = field(default_factory=dict)
    form: str = "full" if FULL else "short"

    def line(self) -> str:
        notes = " ".join(f"{k}={v}" for k, v in self.notes.items())
        return (f"[chaos {self.scenario}] submitted={self.submitted} succeeded={self.succeeded} "
                f"failed={self.failed} lost={self.lost} ran_twice={self.ran_twice} stuck={self.stuck} "
                f"time={self.time_s:.1f}s {notes}").rstrip()

    def publish(self) -> None:
        """Print the line (``-s`` shows it at once), keep it for the summary, append it to the results file."""
        print("\n" + self.line(), flush=True)
        TALLIES.append(self)
        path = os.environ.get(RESULTS_ENV)
        if path:
            with open(path, "a") as out:
                out.write(json.dumps(asdict(self)) + "\n")

    def problems(self, *, ran_twice_allowed: int = 0) -> list[str]:
        """The targets of issue 11 this run missed (empty when it met them all)."""
        found = []
        if self.lost:
            found.append(f"{self.lost} accepted task(s) lost")
        if self.stuck:
            found.append(f"{self.stuck} task(s) stuck (not final after the settle time)")
        if self.ran_twice > ran_twice_allowed:
            found.append(f"{self.ran_twice} task(s) ran to the end twice (allowed here: {ran_twice_allowed})")
        return found


def all_tasks(store: Store) -> dict[str, Task]:
    tasks: dict[str, Task] = {}
    cursor = None
    while True:
        page = store.query(TaskFilter(), limit=1000, cursor=cursor)
        tasks.update((str(t.id), t) for t in page.tasks)
        if page.next_cursor is None:
            return tasks
        cursor = page.next_cursor


def settle(store: Store, expected: int, settle_s: float) -> dict[str, Task]:
    """Wait until the store holds ``expected`` tasks or more, all final, or ``settle_s`` passed;
    returns the tasks. Store errors while waiting (a fault still healing) are waited out."""
    deadline = time.monotonic() + settle_s
    tasks: dict[str, Task] = {}
    while True:
        with contextlib.suppress(ConveyorError):
            tasks = all_tasks(store)
            if len(tasks) >= expected and all(t.status.is_final for t in tasks.values()):
                return tasks
        if time.monotonic() >= deadline:
            return tasks
        time.sleep(0.5)


def count(scenario: str, *, accepted: Iterable[str], store: Store, exec_log: Path, started: float,
          settle_s: float, expected: int | None = None, notes: dict[str, Any] | None = None,
          only: Callable[[Task], bool] | None = None) -> Tally:
    """Settle, then count; ``only`` limits the count to the scenario's own tasks."""
    accepted = set(accepted)
    tasks = settle(store, len(accepted) if expected is None else expected, settle_s)
    if only is not None:
        tasks = {k: t for k, t in tasks.items() if only(t)}
    elapsed = time.monotonic() - started
    statuses = Counter(t.status for t in tasks.values())
    ends = Counter(e.task_id for e in read_executions(exec_log, phase="end"))
    stuck = [t for t in tasks.values() if not t.status.is_final]
    extra = dict(notes or {})
    if stuck:
        extra["stuck_by_status"] = dict(Counter(t.status.value for t in stuck))
    return Tally(
        scenario=scenario, submitted=len(accepted),
        succeeded=statuses[TaskStatus.SUCCEEDED],
        failed=statuses[TaskStatus.FAILED] + statuses[TaskStatus.CANCELLED],
        lost=len(accepted - set(tasks)), ran_twice=sum(1 for n in ends.values() if n > 1),
        stuck=len(stuck), time_s=elapsed, notes=extra,
    )


class Repeat(threading.Thread):
    """Run ``action`` every ``every_s`` until stopped; counts runs and errors (a fault loop)."""

    def __init__(self, name: str, every_s: float, action: Callable[[], object], *, first_after_s: float | None = None,
                 times: int | None = None, min_runs: int = 0) -> None:
        super().__init__(name=name, daemon=True)
        self.min_runs = min_runs  # the drill keeps its window open until this many runs struck
        self.every_s = every_s
        self.action = action
        self.first_after_s = every_s if first_after_s is None else first_after_s
        self.times = times
        self.runs = 0
        self.errors: list[str] = []
        self._halt = threading.Event()

    def run(self) -> None:
        if self._halt.wait(self.first_after_s):
            return
        while self.times is None or self.runs < self.times:
            try:
                self.action()
            except Exception as exc:  # a fault loop reports, it does not die
                self.errors.append(f"{type(exc).__name__}: {exc}")
            self.runs += 1
            if self._halt.wait(self.every_s):
                return

    def stop(self) -> None:
        self._halt.set()
        self.join(timeout=120)

    def __enter__(self) -> Repeat:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


class Submitter(threading.Thread):
    """Submits ``total`` tasks in batches, as a careful client would: a batch the service refused
    is sent again with the same idempotency keys (bounded), so the store never holds a task the
    client gave up on without knowing."""

    def __init__(self, service: TaskService, requests: Sequence[SubmitRequest], *, batch: int = 100,
                 pause_s: float = 0.0, give_up_s: float = 120.0) -> None:
        super().__init__(name="chaos-submitter", daemon=True)
        self.service = service
        self.requests = requests
        self.batch = batch
        self.pause_s = pause_s
        self.give_up_s = give_up_s
        self.accepted: list[str] = []
        self.refusals: list[str] = []
        self.abandoned = 0
        self._halt = threading.Event()

    def run(self) -> None:
        for start in range(0, len(self.requests), self.batch):
            if self._halt.is_set():
                return
            chunk = self.requests[start:start + self.batch]
            deadline = time.monotonic() + self.give_up_s
            while True:
                try:
                    results = self.service.submit_many(chunk)
                    self.accepted.extend(str(task.id) for task, _ in results)
                    break
                except ConveyorError as exc:
                    self.refusals.append(f"{type(exc).__name__}: {str(exc)[:120]}")
                    if time.monotonic() > deadline:
                        self.abandoned += len(chunk)
                        break
                    time.sleep(0.5)
            if self.pause_s:
                time.sleep(self.pause_s)

    def stop(self, timeout_s: float) -> list[str]:
        """Send no further batch (the one under way is finished); what was accepted."""
        self._halt.set()
        return self.result(timeout_s)

    def result(self, timeout_s: float) -> list[str]:
        self.join(timeout_s)
        if self.is_alive():
            raise AssertionError(f"the submitter did not finish within {timeout_s} s")
        return self.accepted


def work_requests(count: int, scenario: str, *, sleep_s: float = 0.0, queue: str | None = None) -> list[SubmitRequest]:
    """``count`` chaos.work tasks, each with an idempotency key (so a refused batch can be sent again)."""
    params: dict[str, Any] = {"sleep_s": sleep_s} if sleep_s else {}
    return [SubmitRequest(type="chaos.work", params={"n": i, **params}, queue=queue,
                          idempotency_key=f"{scenario}-{i}") for i in range(count)]
