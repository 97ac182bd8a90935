"""CPU time of process trees, from /proc: the benchmark's "CPU per task" figures.

A tree's CPU is utime + stime of every live process in it, plus cutime + cstime of each (the
CPU of children that already exited and were reaped, e.g. a PostgreSQL backend that closed,
or an autovacuum worker). Only differences between two snapshots mean anything.

Roles: ``worker`` (the trees of the processes the case started), ``broker`` (RabbitMQ's
beam.smp tree), ``pg`` (the postmaster's tree: every backend and background process of the
cluster), ``redis`` (redis-server), and ``machine`` (busy time of all cores, /proc/stat), so
that what no role accounts for (other users of the machine, the harness, the kernel) shows.
"""

from __future__ import annotations

import os
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

TICK_S = 1.0 / os.sysconf("SC_CLK_TCK")


@dataclass(frozen=True)
class ProcInfo:
    ppid: int
    comm: str
    ticks: int  # utime + stime + cutime + cstime


def proc_table() -> dict[int, ProcInfo]:
    """Every process now: parent, command name and CPU ticks (one pass over /proc)."""
    table: dict[int, ProcInfo] = {}
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            stat = Path(entry.path, "stat").read_text()
        except OSError:
            continue  # exited meanwhile
        comm = stat[stat.index("(") + 1:stat.rindex(")")]
        fields = stat[stat.rindex(")") + 2:].split()
        # after the name: state ppid ... utime(12) stime(13) cutime(14) cstime(15), 0-based here
        table[int(entry.name)] = ProcInfo(int(fields[1]), comm, sum(int(f) for f in fields[11:15]))
    return table


def tree(table: dict[int, ProcInfo], roots: Sequence[int]) -> list[int]:
    """The pids of ``roots`` and every process below them."""
    children: dict[int, list[int]] = {}
    for pid, info in table.items():
        children.setdefault(info.ppid, []).append(pid)
    found: list[int] = []
    todo = [r for r in roots if r in table]
    while todo:
        pid = todo.pop()
        found.append(pid)
        todo.extend(children.get(pid, []))
    return found


def tree_cpu_s(table: dict[int, ProcInfo], roots: Sequence[int]) -> float:
    return sum(table[pid].ticks for pid in tree(table, roots)) * TICK_S


def machine_busy_s() -> float:
    """CPU seconds all cores spent not idle (user+nice+system+irq+softirq+steal) since boot."""
    fields = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    user, nice, system, _idle, _iowait, irq, softirq, steal = fields[:8]
    return (user + nice + system + irq + softirq + steal) * TICK_S


def find_roots(table: dict[int, ProcInfo]) -> dict[str, list[int]]:
    """The servers' root processes on this machine, by command name: RabbitMQ's beam.smp (the
    one that boots rabbit, not a passing CLI's Erlang VM),
    the PostgreSQL postmaster (the ``postgres`` process whose parent is not one) and
    redis-server. A server that is not running has no root (its CPU reads 0)."""
    roots: dict[str, list[int]] = {"broker": [], "pg": [], "redis": []}
    for pid, info in table.items():
        if info.comm == "beam.smp" and _cmdline_has(pid, b"-s rabbit boot"):  # not rabbitmqctl's VM
            roots["broker"].append(pid)
        elif info.comm == "postgres" and table.get(info.ppid, ProcInfo(0, "", 0)).comm != "postgres":
            roots["pg"].append(pid)
        elif info.comm == "redis-server":
            roots["redis"].append(pid)
    return roots


def _cmdline_has(pid: int, needle: bytes) -> bool:
    """Whether the process's arguments, joined by spaces, contain ``needle``."""
    try:
        return needle in Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ")
    except OSError:
        return False


@dataclass(frozen=True)
class Snapshot:
    at: float  # time.monotonic()
    done: int  # tasks recorded when it was taken
    cpu_s: dict[str, float]  # role -> CPU seconds (cumulative)
    roots: dict[str, list[int]]  # the servers' root pids: a change means a restart in between


def snapshot(workers: Sequence[int], done: int) -> Snapshot:
    """CPU of every role now; servers are looked up afresh (another user may restart one)."""
    table = proc_table()
    roots = find_roots(table)
    cpu = {"worker": tree_cpu_s(table, workers), "machine": machine_busy_s()}
    cpu.update({role: tree_cpu_s(table, pids) for role, pids in roots.items()})
    return Snapshot(time.monotonic(), done, cpu, roots)


def per_task(first: Snapshot, last: Snapshot) -> dict[str, float]:
    """Microseconds of CPU per task for each role between two snapshots, plus ``other``
    (machine busy time no role accounts for) and the window itself. A server restarted in
    between (another user of the machine) has no figure, and ``cpu_restarted_<role>`` says so."""
    tasks = max(last.done - first.done, 1)
    out = {f"cpu_us_{role}": (last.cpu_s[role] - first.cpu_s[role]) * 1e6 / tasks for role in first.cpu_s}
    for role, pids in first.roots.items():
        if pids != last.roots[role]:
            del out[f"cpu_us_{role}"]
            out[f"cpu_restarted_{role}"] = 1.0
    machine = out.pop("cpu_us_machine")
    if not any(k.startswith("cpu_restarted_") for k in out):
        out["cpu_us_other"] = machine - sum(out[f"cpu_us_{r}"] for r in ("worker", "broker", "pg", "redis"))
    seconds = last.at - first.at
    out.update(cpu_window_s=seconds, cpu_window_tasks=float(tasks))
    return out


def idle_rates(seconds: float) -> dict[str, float]:
    """How busy each server is with no case running (other users of the shared servers),
    in percent of one core, over ``seconds``."""
    first = snapshot([], 0)
    time.sleep(seconds)
    last = snapshot([], 0)
    span = last.at - first.at
    return {f"idle_cpu_pct_{role}": (last.cpu_s[role] - first.cpu_s[role]) * 100 / span
            for role in ("broker", "pg", "redis", "machine") if first.roots.get(role) == last.roots.get(role)}


class Window:
    """The drain window CPU is measured over, fed by the loop that waits for the drain.

    It opens when every task-running process has recorded a task (``executors`` record files):
    the start-up of a second worker process, which may still be importing when the first is
    at work, stays outside it. If the drain ends before that or the window would cover less
    than half the tasks (a short run where one process took nearly everything), it opens at
    the first recorded task instead. It closes ``settle_s`` after the last task started, so
    the last outcomes, buffered commits and acks are in it.
    """

    def __init__(self, workers: Sequence[int], executors: int, settle_s: float = 0.25) -> None:
        self.workers = list(workers)
        self.executors = executors
        self.settle_s = settle_s
        self.first: Snapshot | None = None
        self.ready: Snapshot | None = None

    def observe(self, done: int, busy: int) -> None:
        """Called on every poll with the tasks recorded and the processes that recorded any."""
        if done and self.first is None:
            self.first = snapshot(self.workers, done)
        if busy >= self.executors and self.ready is None:
            self.ready = snapshot(self.workers, done)

    def close(self, done: int) -> dict[str, float]:
        time.sleep(self.settle_s)
        last = snapshot(self.workers, done)
        if self.first is None:
            return {}
        opened, start = self.first, 0.0
        if self.ready is not None and last.done - self.ready.done >= (last.done - self.first.done) / 2:
            opened, start = self.ready, 1.0
        out = per_task(opened, last)
        out["cpu_window_all_busy"] = start  # 1: opened when every process was at work
        return out
