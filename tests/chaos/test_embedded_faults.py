"""The embedded mode (one SQLite file) under file-system faults (issue 11, hole 3): the disk full
then freed, the database locked by another process past the busy timeout, the file system
turned read-only then writable again. Workers must come back by themselves once the fault is
gone and run everything.

The file lives on a small tmpfs of the scenario's own, or (read-only) on the switchable FUSE
file system of ``rofs.py``: the kernel refuses ``remount,ro`` while the file is open for
writing, and chmod or ``chattr +i`` only refuse new opens, not the workers' open handles.
Mounting needs root, as CI has."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from conveyor.broker import open_broker
from conveyor.service import TaskService
from conveyor.store import open_store
from tests.chaos.drill import CONCURRENCY, start_workers
from tests.chaos.harness import Repeat, Submitter, Tally, count, scale, work_requests
from tests.integration.conftest import Cluster
from tests.processes import wait_for

ROFS = "tests.chaos.rofs"

pytestmark = [pytest.mark.chaos, pytest.mark.timeout(scale(150, 600))]

TASKS = scale(400, 3000)
FAULT_S = scale(6, 20)


class EmbeddedCluster(Cluster):
    """``Cluster`` on one SQLite file (broker and store)."""

    @property
    def service(self) -> TaskService:
        if self._service is None:
            self._service = TaskService(open_store(self.store_url), open_broker(self.broker_url))
        return self._service


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A 24 MiB tmpfs of our own, unmounted after the test."""
    need_root()
    mount = tmp_path / "disk"
    mount.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=24m", "tmpfs", str(mount)], check=True, timeout=30)
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False, timeout=30)


def need_root() -> None:
    if os.geteuid() != 0:
        if os.environ.get("CI"):
            pytest.fail("the embedded-mode chaos scenarios mount file systems: CI must run as root")
        pytest.skip("mounting needs root")


@pytest.fixture
def switchable_disk(tmp_path: Path) -> Iterator[tuple[Path, Path]]:
    """A FUSE file system of our own over a folder; read-only while the switch file exists.
    Yields (mount point, switch). Unmounted and its server killed after the test."""
    need_root()
    backing, mount, switch = tmp_path / "backing", tmp_path / "switchable", tmp_path / "read-only"
    backing.mkdir()
    mount.mkdir()
    log = tmp_path / "rofs.log"
    with log.open("wb") as out:
        server = subprocess.Popen([sys.executable, "-m", ROFS, str(backing), str(mount), str(switch)],
                                  stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                                  start_new_session=True, cwd=Path(__file__).resolve().parents[2])
    try:
        wait_for(lambda: os.path.ismount(mount) or server.poll() is not None, 20, "the FUSE file system")
        if server.poll() is not None:
            pytest.fail(f"the FUSE file system did not mount:\n{log.read_text()[-3000:]}")
        yield mount, switch
    finally:
        switch.unlink(missing_ok=True)
        subprocess.run(["umount", "-l", str(mount)], check=False, timeout=30)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(server.pid, signal.SIGKILL)
        server.wait(timeout=10)


@pytest.fixture
def embedded(tmp_path: Path, small_disk: Path) -> Iterator[EmbeddedCluster]:
    url = f"sqlite:///{small_disk}/conveyor.db"
    nodes = EmbeddedCluster(tmp_path, url, url)
    try:
        yield nodes
    finally:
        nodes.close()


def run_through(embedded: EmbeddedCluster, scenario: str, fault: Repeat, *, ran_twice_allowed: int = 0,
                notes: dict[str, Any] | None = None) -> Tally:
    """Submit everything, let the workers start on it, strike, heal, settle, count; ``notes`` (the
    fault may fill them in) go on the tally line."""
    start_workers(embedded, 2)
    started = time.monotonic()
    submitter = Submitter(embedded.service, work_requests(TASKS, scenario, sleep_s=0.05))
    submitter.start()
    accepted = submitter.result(timeout_s=60)
    wait_for(lambda: len(embedded.executions()) >= 20, 30, "the workers to start on the tasks")
    fault.start()
    fault.join(timeout=FAULT_S + 60)
    store = open_store(embedded.store_url)
    try:
        tally = count(scenario, accepted=accepted, store=store, exec_log=embedded.exec_log, started=started,
                      settle_s=scale(45, 120),
                      notes={**(notes or {}), **({"fault_errors": fault.errors[:2]} if fault.errors else {})})
    finally:
        store.close()
    tally.publish()
    assert fault.runs == 1 and not fault.errors, f"the fault did not strike: {fault.errors}"
    assert not tally.problems(ran_twice_allowed=ran_twice_allowed), tally.problems()
    return tally


def test_embedded_disk_full_then_freed(embedded: EmbeddedCluster, small_disk: Path) -> None:
    filler = small_disk / "filler"

    def fill_then_free() -> None:
        with filler.open("wb") as out, contextlib.suppress(OSError):
            while True:
                out.write(b"\0" * (1 << 20))
                out.flush()
        time.sleep(FAULT_S)
        filler.unlink()

    run_through(embedded, "embedded-disk-full", Repeat("disk_full", 0, fill_then_free, first_after_s=0, times=1))


LOCKER = """
import sqlite3, sys, time
conn = sqlite3.connect(sys.argv[1], isolation_level=None, timeout=30)
conn.execute("BEGIN EXCLUSIVE")
print("locked", flush=True)
time.sleep(float(sys.argv[2]))
conn.execute("ROLLBACK")
"""


def test_embedded_database_locked_past_the_busy_timeout(embedded: EmbeddedCluster, small_disk: Path) -> None:
    def lock() -> None:  # longer than the 10 s busy timeout: writers get "database is locked"
        subprocess.run([sys.executable, "-c", LOCKER, str(small_disk / "conveyor.db"), str(FAULT_S + 10)],
                       check=True, capture_output=True, timeout=FAULT_S + 60)

    # Locked far longer than a lease: no node can record an outcome or renew a lease meanwhile,
    # so the tasks whose handler finished during the lock may be taken over by another node once
    # it lifts, and run again (counted; at most what the two nodes held: slots + prefetch).
    run_through(embedded, "embedded-locked", Repeat("lock", 0, lock, first_after_s=0, times=1),
                ran_twice_allowed=2 * 2 * CONCURRENCY)


def test_embedded_file_system_read_only_then_writable(tmp_path: Path, switchable_disk: tuple[Path, Path]) -> None:
    mount, switch = switchable_disk
    url = f"sqlite:///{mount}/conveyor.db"
    embedded = EmbeddedCluster(tmp_path, url, url)
    marks: dict[str, Any] = {"read_only_s": FAULT_S}

    def read_only_for_a_while() -> None:
        marks["runs_at_strike"] = len(embedded.executions())
        switch.touch()  # from here every write, through handles already open too, fails with EROFS
        try:
            time.sleep(FAULT_S)
        finally:
            switch.unlink()
        marks["runs_at_heal"] = len(embedded.executions())

    try:
        # Read-only far longer than a lease: as under the lock, a task whose handler ended meanwhile
        # may be taken over once writes work again and run a second time (counted; at most the
        # two nodes' slots).
        run_through(embedded, "embedded-read-only", Repeat("read_only", 0, read_only_for_a_while, first_after_s=0,
                                                             times=1), notes=marks, ran_twice_allowed=2 * CONCURRENCY)
        assert marks["runs_at_heal"] < TASKS, "the work was done before the file system turned writable again"
        for worker in embedded.workers:
            output = worker.output()
            assert worker.alive(), f"worker {worker.node_id} exited:\n{output[-3000:]}"
            # The node knows it cannot write (the heartbeat that would say so cannot be written
            # either: the log says it), and says when it can again.
            assert "cannot write to the store" in output, f"{worker.node_id} never noticed:\n{output[-3000:]}"
            assert "the store takes writes again" in output, f"{worker.node_id} did not recover:\n{output[-3000:]}"
    finally:
        embedded.close()
