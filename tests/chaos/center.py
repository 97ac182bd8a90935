"""A real ``conveyor scheduler`` process (the center: report listener, and the HTTP API unless
``http`` is None) on a ``Cluster``'s vhost and store, for the fuzzing scenarios."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
from collections.abc import Mapping
from pathlib import Path

from tests.integration.conftest import REPO_ROOT, Cluster
from tests.processes import wait_for


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class Center:
    def __init__(self, cluster: Cluster, *, http: bool = False, extra_env: Mapping[str, str] | None = None) -> None:
        self.port = free_port() if http else None
        self.log_path: Path = cluster.tmp_path / "scheduler.log"
        command = [sys.executable, "-m", "conveyor", "scheduler", "--id", "fuzz-center"]
        command += ["--http", f"127.0.0.1:{self.port}"] if http else ["--no-http"]
        with self.log_path.open("wb") as log_file:
            self.proc = subprocess.Popen(command, cwd=REPO_ROOT, env=cluster.env(extra_env), stdin=subprocess.DEVNULL,
                                         stdout=log_file, stderr=subprocess.STDOUT, start_new_session=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def output(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def alive(self) -> bool:
        return self.proc.poll() is None

    def wait_ready(self, timeout_s: float = 30.0) -> None:
        def ready() -> bool:
            if not self.alive():
                raise AssertionError(f"the scheduler exited with {self.proc.returncode}:\n{self.output()}")
            return "scheduler fuzz-center started" in self.output()

        wait_for(ready, timeout_s, "the scheduler to start")

    def close(self) -> None:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.proc.pid, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.proc.wait(timeout=10)
