"""Processes the benchmark starts: each in its own session (so it and its children can be
signalled as one group), output to a log file, all killed at the end whatever happens."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from benchlib import cpu


class BenchError(RuntimeError):
    """A benchmark step failed; the case is reported as failed and the run goes on."""


class Procs:
    def __init__(self, log_dir: Path) -> None:
        self.log_dir = log_dir
        self.running: list[subprocess.Popen[bytes]] = []
        self._seq = 0

    def _log(self, name: str) -> Path:
        self._seq += 1
        return self.log_dir / f"{self._seq:04d}-{name}.log"

    def start(self, argv: Sequence[str], env: Mapping[str, str], name: str) -> subprocess.Popen[bytes]:
        log = self._log(name).open("wb")
        proc = subprocess.Popen(list(argv), env=dict(env), stdout=log, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL, start_new_session=True)
        log.close()
        self.running.append(proc)
        return proc

    def run(self, argv: Sequence[str], env: Mapping[str, str], name: str, timeout_s: float) -> dict[str, Any]:
        """Run a client to completion; its last stdout line is a JSON object."""
        return self.run_many([(argv, env, name)], timeout_s)[0]

    def run_many(self, jobs: Sequence[tuple[Sequence[str], Mapping[str, str], str]],
                 timeout_s: float) -> list[dict[str, Any]]:
        """Run clients side by side to completion; each one's last stdout line is a JSON object."""
        started: list[tuple[subprocess.Popen[bytes], Path, str]] = []
        for argv, env, name in jobs:
            log = self._log(name)
            with log.open("wb") as err:
                proc = subprocess.Popen(list(argv), env=dict(env), stdout=subprocess.PIPE, stderr=err,
                                        stdin=subprocess.DEVNULL, start_new_session=True)
            self.running.append(proc)
            started.append((proc, log, name))
        deadline = time.monotonic() + timeout_s
        results = []
        try:
            for proc, log, name in started:
                try:
                    out, _ = proc.communicate(timeout=max(0.1, deadline - time.monotonic()))
                except subprocess.TimeoutExpired:
                    raise BenchError(f"{name} took longer than {timeout_s:.0f} s (log {log})") from None
                if proc.returncode != 0:
                    raise BenchError(f"{name} exited {proc.returncode}: {tail(log)}")
                lines = out.decode().strip().splitlines()
                if not lines:
                    raise BenchError(f"{name} printed no result: {tail(log)}")
                results.append(json.loads(lines[-1]))
        finally:
            self.stop([p for p, _, _ in started if p.poll() is None], grace_s=1)
            for proc, _, _ in started:
                if proc in self.running:
                    self.running.remove(proc)
        return results

    def stop(self, procs: Sequence[subprocess.Popen[bytes]], grace_s: float = 5.0) -> None:
        """SIGTERM each process group, wait up to ``grace_s``, then SIGKILL what is left."""
        for proc in procs:
            _signal_group(proc, signal.SIGTERM)
        deadline = time.monotonic() + grace_s
        for proc in procs:
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=max(0.0, deadline - time.monotonic()))
            _signal_group(proc, signal.SIGKILL)  # children that outlived their parent too
            proc.wait()
            if proc in self.running:
                self.running.remove(proc)

    def stop_all(self) -> None:
        self.stop(list(self.running), grace_s=2.0)


def _signal_group(proc: subprocess.Popen[bytes], sig: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, sig)  # the group this process leads (start_new_session=True)


def tail(path: Path, lines: int = 2) -> str:
    try:
        return " | ".join(path.read_text(errors="replace").strip().splitlines()[-lines:])
    except OSError:
        return "(no log)"


def memory_mb(roots: Sequence[int]) -> dict[str, float]:
    """RSS and PSS summed over the process trees under ``roots``, in MiB.
    RSS counts pages shared by forked children once per process; PSS splits them."""
    rss_kb = pss_kb = 0
    count = 0
    for pid in cpu.tree(cpu.proc_table(), roots):
        try:
            rss_kb += _field_kb(Path(f"/proc/{pid}/status"), "VmRSS:")
            pss_kb += _field_kb(Path(f"/proc/{pid}/smaps_rollup"), "Pss:")
            count += 1
        except OSError:
            continue
    return {"rss_mib": rss_kb / 1024, "pss_mib": pss_kb / 1024, "processes": count}


def _field_kb(path: Path, field: str) -> int:
    for line in path.read_text().splitlines():
        if line.startswith(field):
            return int(line.split()[1])
    return 0
