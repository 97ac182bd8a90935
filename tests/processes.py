"""Helpers shared by the tests that drive real processes: polling, and worker subprocesses."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]

# The call-phase report of each test (stored by the hook in tests/conftest.py), so fixtures that
# run processes can print their logs when the test failed.
REPORT_KEY = pytest.StashKey[pytest.TestReport]()


def wait_for(predicate: Callable[[], Any], timeout_s: float, what: str, pause_s: float = 0.05) -> Any:
    """Poll ``predicate`` until it returns something truthy; fail the test after ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() >= deadline:
            pytest.fail(f"timed out after {timeout_s} s waiting for {what}")
        time.sleep(pause_s)


@dataclass
class WorkerProcess:
    """A `conveyor worker` subprocess started in its own session, logging to ``log_path``."""

    node_id: str
    proc: subprocess.Popen[bytes]
    log_path: Path
    concurrency: int = 0

    @property
    def pid(self) -> int:
        return self.proc.pid

    def alive(self) -> bool:
        return self.proc.poll() is None

    def output(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def signal(self, signum: int) -> None:
        """Signal the worker process itself (not its handler children)."""
        if self.alive():
            self.proc.send_signal(signum)

    def wait(self, timeout_s: float) -> int:
        return self.proc.wait(timeout=timeout_s)

    def kill_all(self) -> None:
        """SIGKILL the worker and everything in its session (process-pool children)."""
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.proc.pid, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.proc.wait(timeout=10)
