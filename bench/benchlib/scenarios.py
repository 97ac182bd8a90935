"""What each scenario measures, as functions of a system that return a case's run: the run
takes the case's Scope, drives clients and workers, and returns its metrics."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from typing import Any

from benchlib import cpu, infra, record
from benchlib.procs import memory_mb
from benchlib.systems import ConveyorAmqp, Popen, Scope, System, wait_records

Metrics = dict[str, Any]
Run = Callable[[Scope], Metrics]

IDLE_PROBE_S = 1.0  # how long the servers' background load is sampled before each drain


class RawAmqp(System):
    """No task system: the ceiling cases only need their queue deleted afterwards."""

    family = "amqp"

    def cleanup(self, scope: Scope) -> None:
        infra.delete_queues([scope.queue])


def drain_rate(scope: Scope) -> float:
    starts = [start for start, _ in record.read(scope.record_dir)]
    return (len(starts) - 1) / max(starts[-1] - starts[0], 1e-9)


def conveyor_has_submit_async() -> bool:
    from conveyor import Conveyor

    return hasattr(Conveyor, "submit_async")


def submit(system: System, n: int, how: str = "one") -> Run:
    """``how``: "one" (one at a time), "many" (Conveyor submit_many batches), "threads" /
    "async" (many in flight from one process, each call durable on return)."""
    def go(scope: Scope) -> Metrics:
        if how == "async" and isinstance(system, ConveyorAmqp):
            if not conveyor_has_submit_async():
                return {"skipped": "the installed Conveyor has no submit_async"}
            result = system.in_flight_async(scope, n)
        elif how == "many" and isinstance(system, ConveyorAmqp):
            result = system.submit_many(scope, n)
        elif how in ("threads", "async"):
            result = system.in_flight(scope, n)
        else:
            result = system.submit(scope, n)
        return {"rate": result["rate"], "n": result["n"]}

    return go


def drain_measured(system: System, scope: Scope, expected: int) -> Metrics:
    """Start the workers on a filled queue and wait for ``expected`` records, measuring the
    CPU per task of the workers and the servers (see cpu.Window) and the servers' load just
    before (other users of the shared servers)."""
    idle = cpu.idle_rates(IDLE_PROBE_S)
    workers = system.start_workers(scope)
    window = cpu.Window([w.pid for w in workers], system.processes)
    measured = wait_records(scope, expected, workers, window=window)
    return {"rate": drain_rate(scope), **measured, **idle}


def drain(system: System, n: int) -> Run:
    def go(scope: Scope) -> Metrics:
        filled = int(system.fill(scope, n)["n"])
        return {**drain_measured(system, scope, filled + 1), "n": filled}  # +1: the client's warm-up task

    return go


def warm_up(system: System, scope: Scope, workers: list[Popen]) -> int:
    """Ten tasks through freshly started workers; returns the records so far."""
    system.paced(scope, 10, 50.0, start_in=0.5)  # late sends do not matter here
    wait_records(scope, 11, workers)
    time.sleep(0.5)
    return record.count(scope.record_dir)


def latency(system: System, rate: float, duration_s: float, clients: int, threads: int) -> Run:
    def go(scope: Scope) -> Metrics:
        workers = system.start_workers(scope)
        before = warm_up(system, scope, workers)
        since = time.time()
        n = int(rate * duration_s)
        sent = system.paced(scope, n, rate, clients=clients, threads=threads)
        wait_records(scope, before + n + clients, workers)  # + each client's warm-up task
        waits = sorted((start - s) * 1000 for start, s in record.read(scope.record_dir) if s >= since)
        cuts = statistics.quantiles(waits, n=100, method="inclusive")
        return {"p50_ms": cuts[49], "p95_ms": cuts[94], "p99_ms": cuts[98], "samples": len(waits), **sent}

    return go


def memory(system: System, n: int, chunk: int, budget_s: float) -> Run:
    """Idle RSS, then chunks of tasks (each queued and drained) until ``n`` ran or
    ``budget_s`` passed; RSS after every chunk shows a leak as a trend."""
    def go(scope: Scope) -> Metrics:
        workers = system.start_workers(scope)
        expected = warm_up(system, scope, workers)
        time.sleep(1.0)
        idle = memory_mb([w.pid for w in workers])
        out: Metrics = {"idle_rss_mib": idle["rss_mib"], "idle_pss_mib": idle["pss_mib"],
                        "processes": idle["processes"]}
        done, deadline = 0, time.monotonic() + budget_s
        while done < n and time.monotonic() < deadline:
            filled = int(system.fill(scope, min(chunk, n - done), max(5.0, deadline - time.monotonic()))["n"])
            done, expected = done + filled, expected + filled + 1
            wait_records(scope, expected, workers)
            time.sleep(0.5)
            out[f"rss_mib_after_{done}"] = memory_mb([w.pid for w in workers])["rss_mib"]
        after = memory_mb([w.pid for w in workers])
        out.update(after_rss_mib=after["rss_mib"], after_pss_mib=after["pss_mib"], n=done)
        return out

    return go


def embedded(system: System, n: int) -> Run:
    def go(scope: Scope) -> Metrics:
        submitted = system.submit(scope, n)
        drained = drain_measured(system, scope, int(submitted["n"]) + 1)
        drained["drain_rate"] = drained.pop("rate")
        return {"submit_rate": submitted["rate"], **drained, "n": submitted["n"]}

    return go


def ceiling(publisher: str, ack_every: int, n: int) -> Run:
    def go(scope: Scope) -> Metrics:
        env = scope.env()

        def client(*args: str) -> Metrics:
            return scope.procs.run([infra.PEERS_PYTHON, "-m", "peers.ceiling", *args, "--queue", scope.queue],
                                   env, f"ceiling-{args[0]}", 120 + n / 100)

        published = client(publisher, "--n", str(n), "--max-s", str(scope.max_s))
        consumed = client("consume-pika", "--n", str(int(published["n"])), "--ack-every", str(ack_every))
        return {"publish_rate": published["rate"], "consume_rate": consumed["rate"], "n": published["n"]}

    return go
