"""The execution log of the process tests: every handler run appends one line, so a test can
count how often each task really ran, where and when. A handler may also log the end of its
run (``phase="end"``): the chaos suite counts a task as "ran twice" only when two runs ended.
Lines are far below PIPE_BUF and the file is opened with O_APPEND, so lines written by several
worker processes at once never interleave.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from pathlib import Path

from conveyor import current_task

EXEC_LOG_ENV = "CONVEYOR_TEST_EXEC_LOG"


def record(task_type: str, phase: str = "start") -> None:
    """Append ``task_id type attempt node pid time [phase]`` to the log named by the env (if set)."""
    path = os.environ.get(EXEC_LOG_ENV)
    if not path:
        return
    ctx = current_task()  # set in thread, async and process pools alike
    line = f"{ctx.id}\t{task_type}\t{ctx.attempt}\t{ctx.node}\t{os.getpid()}\t{time.time():.6f}"
    line += "\n" if phase == "start" else f"\t{phase}\n"  # start lines keep the original six columns
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, line.encode())
    finally:
        os.close(fd)


@dataclass(frozen=True, slots=True)
class Execution:
    """One line of the execution log: a handler really ran."""

    task_id: str
    type: str
    attempt: int
    node: str
    pid: int
    at: float
    phase: str = "start"


def read_executions(path: Path, phase: str | None = "start") -> list[Execution]:
    """The log's lines of ``phase`` ("start", "end"; None: all)."""
    if not path.exists():
        return []
    rows = []
    for line in path.read_text().splitlines():
        task_id, task_type, attempt, node, pid, at, *rest = line.split("\t")
        row = Execution(task_id, task_type, int(attempt), node, int(pid), float(at), rest[0] if rest else "start")
        if phase is None or row.phase == phase:
            rows.append(row)
    return rows
