"""What every benchmark task does: append one fixed-width line ``<start time> <submit time>``
to a file of its own process under ``$BENCH_RECORD_DIR``.

One unbuffered ``os.write`` per task: nothing is lost when a worker is killed, and an
O_APPEND write this small is atomic, so threads of a process share the file. Fixed-width
lines let the harness count completions from file sizes alone.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

LINE_BYTES = 36
_state: dict[str, int] = {}


def record(sent: float = 0.0) -> None:
    pid = os.getpid()
    if _state.get("pid") != pid:  # first task here, or a fork of a process that had one
        path = os.path.join(os.environ["BENCH_RECORD_DIR"], f"{pid}.rec")
        _state["fd"] = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
        _state["pid"] = pid
    os.write(_state["fd"], b"%17.6f %17.6f\n" % (time.time(), sent))


def count(record_dir: str | Path) -> int:
    """Tasks recorded so far under ``record_dir``."""
    total = 0
    for entry in os.scandir(record_dir):
        if entry.name.endswith(".rec"):
            total += entry.stat().st_size // LINE_BYTES
    return total


def read(record_dir: str | Path) -> list[tuple[float, float]]:
    """Every (start, sent) pair recorded under ``record_dir``, sorted by start."""
    rows: list[tuple[float, float]] = []
    for path in Path(record_dir).glob("*.rec"):
        for line in path.read_bytes().splitlines():
            start, sent = line.split()
            rows.append((float(start), float(sent)))
    rows.sort()
    return rows


def processes(record_dir: str | Path) -> int:
    """How many processes have recorded a task under ``record_dir``."""
    return sum(1 for entry in os.scandir(record_dir) if entry.name.endswith(".rec") and entry.stat().st_size)
