"""The six scenarios as a list of cases. A case runs one configuration once and returns its
metrics; run.py repeats every case (interleaved) and takes medians."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from benchlib import infra, record
from benchlib.procs import memory_mb
from benchlib.systems import (
    Celery,
    ConveyorAmqp,
    ConveyorSqlite,
    Dramatiq,
    Huey,
    Popen,
    Scope,
    System,
    wait_records,
)

Metrics = dict[str, Any]

PG_BACKEND_CAP = 5000  # Celery with the database result backend runs at ~200 tasks/s


@dataclass(frozen=True)
class Row:
    """One line of the table: a label and the metric(s) it shows."""

    label: str
    keys: tuple[str, ...]
    unit: str  # "tasks/s", "ms" or "MiB"


@dataclass(frozen=True)
class Compare:
    """Conveyor's row divided by another case's metric, shown in ``column``."""

    column: str  # "Celery", "Dramatiq", "Huey" or "ceiling"
    case_id: str
    key: str | None = None  # the other case's metric; None: the row's own keys
    label: str = ""  # told apart when a cell holds several


@dataclass
class Case:
    id: str
    scenario: str
    system: System
    n: int
    run: Callable[[Scope], Metrics]
    rows: list[Row]
    compare: list[Compare] = field(default_factory=list)
    once: bool = False  # memory: one repeat is enough and 5N tasks are costly
    note: str = ""


class RawAmqp(System):
    """No task system: the ceiling cases only need their queue deleted afterwards."""

    family = "amqp"

    def cleanup(self, scope: Scope) -> None:
        infra.delete_queues([scope.queue])


def drain_rate(scope: Scope) -> float:
    starts = [start for start, _ in record.read(scope.record_dir)]
    return (len(starts) - 1) / max(starts[-1] - starts[0], 1e-9)


def submit(system: System, n: int, many: bool = False) -> Callable[[Scope], Metrics]:
    def go(scope: Scope) -> Metrics:
        result = system.submit_many(scope, n) if many and isinstance(system, ConveyorAmqp) \
            else system.submit(scope, n)
        return {"rate": result["rate"], "n": result["n"]}

    return go


def drain(system: System, n: int) -> Callable[[Scope], Metrics]:
    def go(scope: Scope) -> Metrics:
        filled = int(system.fill(scope, n)["n"])
        workers = system.start_workers(scope)
        wait_records(scope, filled + 1, workers)  # +1: the client's warm-up task
        return {"rate": drain_rate(scope), "n": filled}

    return go


def warm_up(system: System, scope: Scope, workers: list[Popen]) -> int:
    """Ten tasks through freshly started workers; returns the records so far."""
    system.paced(scope, 10, 50.0)
    wait_records(scope, 11, workers)
    time.sleep(0.5)
    return record.count(scope.record_dir)


def latency(system: System, rate: float, duration_s: float) -> Callable[[Scope], Metrics]:
    def go(scope: Scope) -> Metrics:
        workers = system.start_workers(scope)
        before = warm_up(system, scope, workers)
        since = time.time()
        n = int(rate * duration_s)
        sent = system.paced(scope, n, rate)
        wait_records(scope, before + n + 1, workers)
        waits = sorted((start - s) * 1000 for start, s in record.read(scope.record_dir) if s >= since)
        cuts = statistics.quantiles(waits, n=100, method="inclusive")
        return {"p50_ms": cuts[49], "p95_ms": cuts[94], "p99_ms": cuts[98],
                "achieved_rate": sent["achieved_rate"], "target_rate": rate, "samples": len(waits),
                "submit_call_p50_ms": sent["submit_call_p50_ms"], "submit_call_p99_ms": sent["submit_call_p99_ms"]}

    return go


def memory(system: System, n: int, chunk: int, budget_s: float) -> Callable[[Scope], Metrics]:
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


def embedded(system: System, n: int) -> Callable[[Scope], Metrics]:
    def go(scope: Scope) -> Metrics:
        submitted = system.submit(scope, n)
        workers = system.start_workers(scope)
        wait_records(scope, int(submitted["n"]) + 1, workers)
        return {"submit_rate": submitted["rate"], "drain_rate": drain_rate(scope), "n": submitted["n"]}

    return go


def ceiling(publisher: str, ack_every: int, n: int) -> Callable[[Scope], Metrics]:
    def go(scope: Scope) -> Metrics:
        env = scope.env()

        def client(*args: str) -> Metrics:
            return scope.procs.run([infra.PEERS_PYTHON, "-m", "peers.ceiling", *args, "--queue", scope.queue],
                                   env, f"ceiling-{args[0]}", 120 + n / 100)

        published = client(publisher, "--n", str(n), "--max-s", str(scope.max_s))
        consumed = client("consume-pika", "--n", str(int(published["n"])), "--ack-every", str(ack_every))
        return {"publish_rate": published["rate"], "consume_rate": consumed["rate"], "n": published["n"]}

    return go


def build(n: int, latency_s: float, memory_s: float, only: set[str] | None) -> list[Case]:
    cases = [*submit_cases(n), *drain_cases(n), *latency_cases(latency_s), *memory_cases(5 * n, n, memory_s),
             *embedded_cases(n), *ceiling_cases(n)]
    return [c for c in cases if only is None or c.scenario in only]


RATE = "tasks/s"
SUBMIT_PEERS = [Compare("Celery", "submit/celery"), Compare("Dramatiq", "submit/dramatiq")]


def submit_cases(n: int) -> list[Case]:
    conveyor = ConveyorAmqp()
    return [
        Case("submit/conveyor", "submit", conveyor, n, submit(conveyor, n),
             [Row("Conveyor TaskService.submit (PG insert + confirmed publish)", ("rate",), RATE)],
             [*SUBMIT_PEERS, Compare("ceiling", "ceiling/pika", "publish_rate")]),
        Case("submit/conveyor-many", "submit", conveyor, n, submit(conveyor, n, many=True),
             [Row("Conveyor TaskService.submit_many (batches of 500)", ("rate",), RATE)],
             [*SUBMIT_PEERS, Compare("ceiling", "ceiling/aiopika", "publish_rate")]),
        Case("submit/celery", "submit", Celery(), n, submit(Celery(), n),
             [Row("Celery apply_async, confirm_publish", ("rate",), RATE)]),
        Case("submit/dramatiq", "submit", Dramatiq(), n, submit(Dramatiq(), n),
             [Row("Dramatiq send, confirm_delivery", ("rate",), RATE)]),
    ]


def drain_cases(n: int) -> list[Case]:
    pg_n = min(n, PG_BACKEND_CAP)
    consume = Compare("ceiling", "ceiling/aiopika", "consume_rate")
    out = []
    for procs in (1, 2):
        system = ConveyorAmqp(processes=procs)
        celery = [Compare("Celery", f"drain/celery-c{procs}", label="no results" if procs == 2 else "")]
        if procs == 2:
            celery += [Compare("Celery", "drain/celery-c2-redis", label="redis"),
                       Compare("Celery", "drain/celery-c2-pg", label="pg")]
        out.append(Case(f"drain/conveyor-{procs}p", "drain", system, n, drain(system, n),
                        [Row(f"Conveyor worker x{procs}, --concurrency 8 (RabbitMQ + PG)", ("rate",), RATE)],
                        [*celery, Compare("Dramatiq", f"drain/dramatiq-{procs}p"), consume]))
    # More slots per worker mean larger shared batches of store writes (group commit).
    wide = ConveyorAmqp(processes=2, concurrency=32)
    out.append(Case("drain/conveyor-2p-c32", "drain", wide, n, drain(wide, n),
                    [Row("Conveyor worker x2, --concurrency 32 (RabbitMQ + PG)", ("rate",), RATE)],
                    [Compare("Celery", "drain/celery-c2", label="no results"),
                     Compare("Celery", "drain/celery-c2-pg", label="pg"),
                     Compare("Dramatiq", "drain/dramatiq-2p"), consume]))
    for procs in (1, 2):
        out.append(Case(f"drain/celery-c{procs}", "drain", Celery(procs), n, drain(Celery(procs), n),
                        [Row(f"Celery prefork -c {procs}, no results", ("rate",), RATE)]))
    out.append(Case("drain/celery-c2-redis", "drain", Celery(2, "redis"), n, drain(Celery(2, "redis"), n),
                    [Row("Celery prefork -c 2, Redis results", ("rate",), RATE)]))
    out.append(Case("drain/celery-c2-pg", "drain", Celery(2, "postgresql"), pg_n,
                    drain(Celery(2, "postgresql"), pg_n),
                    [Row("Celery prefork -c 2, PG results + track_started", ("rate",), RATE)],
                    note=f"N capped at {pg_n}" if pg_n < n else ""))
    for procs in (1, 2):
        out.append(Case(f"drain/dramatiq-{procs}p", "drain", Dramatiq(procs), n, drain(Dramatiq(procs), n),
                        [Row(f"Dramatiq --processes {procs} --threads 8", ("rate",), RATE)]))
    return out


def latency_cases(duration_s: float) -> list[Case]:
    out = []
    for rate in (200, 1000):
        n = int(rate * duration_s)
        keys = ("p50_ms", "p95_ms", "p99_ms")
        for sid, system, label in (("conveyor", ConveyorAmqp(2), "Conveyor worker x2, --concurrency 8"),
                                   ("celery", Celery(2), "Celery prefork -c 2, no results"),
                                   ("dramatiq", Dramatiq(2), "Dramatiq --processes 2 --threads 8")):
            compare = [Compare("Celery", f"latency/celery-{rate}"), Compare("Dramatiq", f"latency/dramatiq-{rate}")]
            out.append(Case(f"latency/{sid}-{rate}", "latency", system, n, latency(system, rate, duration_s),
                            [Row(f"{label} @ {rate}/s: p50 / p95 / p99", keys, "ms")],
                            compare if sid == "conveyor" else []))
    return out


def memory_cases(n: int, chunk: int, budget_s: float) -> list[Case]:
    keys = (("idle_rss_mib",), ("after_rss_mib",))
    out = []
    for sid, system, label in (("conveyor", ConveyorAmqp(1), "Conveyor worker x1, --concurrency 8"),
                               ("celery", Celery(1), "Celery prefork -c 1 (parent + 1 child)"),
                               ("dramatiq", Dramatiq(1), "Dramatiq --processes 1 --threads 8 (parent + 1)")):
        rows = [Row(f"{label}: idle RSS", keys[0], "MiB"), Row(f"{label}: RSS after N tasks", keys[1], "MiB")]
        compare = [Compare("Celery", "memory/celery"), Compare("Dramatiq", "memory/dramatiq")]
        out.append(Case(f"memory/{sid}", "memory", system, n, memory(system, n, chunk, budget_s), rows,
                        compare if sid == "conveyor" else [], once=True))
    return out


def embedded_cases(n: int) -> list[Case]:
    conveyor, huey = ConveyorSqlite(processes=2), Huey(workers=2)
    return [
        Case("embedded/conveyor", "embedded", conveyor, n, embedded(conveyor, n),
             [Row("Conveyor SQLite: submit", ("submit_rate",), RATE),
              Row("Conveyor SQLite: drain, worker x2 --concurrency 8", ("drain_rate",), RATE)],
             [Compare("Huey", "embedded/huey")]),
        Case("embedded/huey", "embedded", huey, n, embedded(huey, n),
             [Row("Huey SqliteHuey: submit", ("submit_rate",), RATE),
              Row("Huey SqliteHuey: drain, -w 2 -k process", ("drain_rate",), RATE)]),
    ]


def ceiling_cases(n: int) -> list[Case]:
    raw = RawAmqp()
    return [
        Case("ceiling/aiopika", "ceiling", raw, n, ceiling("publish-aiopika", 1, n),
             [Row("aio-pika publish, 256 confirms in flight", ("publish_rate",), RATE),
              Row("pika consume, ack each (prefetch 100)", ("consume_rate",), RATE)]),
        Case("ceiling/pika", "ceiling", raw, n, ceiling("publish-pika", 50, n),
             [Row("pika publish, one confirm per publish", ("publish_rate",), RATE),
              Row("pika consume, ack every 50 (multiple=True)", ("consume_rate",), RATE)]),
    ]


SCENARIOS = ("submit", "drain", "latency", "memory", "embedded", "ceiling")
