"""The benchmark as a list of cases: one configuration of one system in one scenario, the
table rows it fills, and which of its numbers Conveyor's rows are divided by. run.py repeats
every case (interleaved) and takes medians."""

from __future__ import annotations

from dataclasses import dataclass, field

from benchlib.scenarios import Metrics, RawAmqp, Run, ceiling, drain, embedded, latency, memory, submit
from benchlib.systems import (
    IN_FLIGHT,
    Celery,
    ConveyorAmqp,
    ConveyorSqlite,
    Dramatiq,
    Huey,
    PgQueuer,
    Procrastinate,
    System,
)

__all__ = ["SCENARIOS", "Case", "Compare", "Metrics", "Row", "build"]

PG_BACKEND_CAP = 5000  # Celery with the database result backend runs at ~200 tasks/s
# Procrastinate drains at a few hundred tasks/s, slower the deeper its queue (see README).
PROCRASTINATE_CAP = 5000
# Jobs PgQueuer picks per dequeue query: its docs advise raising the default (10) for short
# jobs; 100 drained ~2.5x faster than 10 here, 250 little more. The default gets a row too.
PGQUEUER_BATCH = 100
# Paced clients per target rate: (processes, threads per process). One process of 16 threads
# kept Conveyor's client at ~480/s, 2 x 32 threads lagged behind 1,000/s, 2 x 64 kept it
# (4 x 32 kept it too, but its CPU starved the workers). Async clients ignore threads.
LATENCY_CLIENTS = {200: (1, 16), 1000: (2, 64)}
RATE = "tasks/s"


def drain_row(label: str, key: str = "rate") -> Row:
    return Row(label, (key,), RATE, cpu=True)


@dataclass(frozen=True)
class Row:
    """One line of the table: a label and the metric(s) it shows."""

    label: str
    keys: tuple[str, ...]
    unit: str  # "tasks/s", "ms" or "MiB"
    cpu: bool = False  # a drain row: the CPU-per-task cell is filled from the case's metrics


@dataclass(frozen=True)
class Compare:
    """Conveyor's row divided by another case's metric, shown in ``column``."""

    column: str  # one of report.COLUMNS
    case_id: str
    key: str | None = None  # the other case's metric; None: the row's own keys
    label: str = ""  # told apart when a cell holds several


@dataclass
class Case:
    id: str
    scenario: str
    system: System
    n: int
    run: Run
    rows: list[Row]
    compare: list[Compare] = field(default_factory=list)
    once: bool = False  # memory: one repeat is enough and 5N tasks are costly
    note: str = ""


def build(n: int, latency_s: float, memory_s: float, only: set[str] | None) -> list[Case]:
    cases = [*submit_cases(n), *drain_cases(n), *latency_cases(latency_s), *memory_cases(5 * n, n, memory_s),
             *embedded_cases(n), *ceiling_cases(n)]
    return [c for c in cases if only is None or c.scenario in only]


def submit_cases(n: int) -> list[Case]:
    conveyor = ConveyorAmqp()
    one_peers = [Compare("Celery", "submit/celery"), Compare("Dramatiq", "submit/dramatiq"),
                 Compare("PgQueuer", "submit/pgqueuer"), Compare("Procrastinate", "submit/procrastinate")]
    many_peers = [Compare("Celery", "submit/celery-threads"), Compare("Dramatiq", "submit/dramatiq-threads"),
                  Compare("PgQueuer", "submit/pgqueuer-async"),
                  Compare("Procrastinate", "submit/procrastinate-async"),
                  Compare("ceiling", "ceiling/aiopika", "publish_rate")]
    k = IN_FLIGHT
    out = [
        Case("submit/conveyor", "submit", conveyor, n, submit(conveyor, n),
             [Row("Conveyor TaskService.submit, one at a time (PG insert + confirmed publish)", ("rate",), RATE)],
             [*one_peers, Compare("ceiling", "ceiling/pika", "publish_rate")]),
        Case("submit/conveyor-many", "submit", conveyor, n, submit(conveyor, n, "many"),
             [Row("Conveyor TaskService.submit_many (batches of 500)", ("rate",), RATE)],
             [*one_peers, Compare("ceiling", "ceiling/aiopika", "publish_rate")]),
        Case("submit/conveyor-threads", "submit", conveyor, n, submit(conveyor, n, "threads"),
             [Row(f"Conveyor TaskService.submit from {k} threads, each durable on return", ("rate",), RATE)],
             many_peers),
        Case("submit/conveyor-async", "submit", conveyor, n, submit(conveyor, n, "async"),
             [Row(f"Conveyor await app.submit_async, {k} coroutines in flight", ("rate",), RATE)], many_peers),
    ]
    peers: list[tuple[str, System, str, str]] = [
        ("celery", Celery(), "Celery apply_async, confirm_publish", "threads"),
        ("dramatiq", Dramatiq(), "Dramatiq send, confirm_delivery", "threads"),
        ("pgqueuer", PgQueuer(), "PgQueuer enqueue (asyncpg)", "async"),
        ("procrastinate", Procrastinate(), "Procrastinate defer_async (psycopg)", "async"),
    ]
    for sid, system, label, many in peers:
        many_label = f"from {k} threads" if many == "threads" else f"{k} coroutines in flight (pool of 16)"
        out += [Case(f"submit/{sid}", "submit", system, n, submit(system, n), [Row(f"{label}, one at a time",
                                                                                  ("rate",), RATE)]),
                Case(f"submit/{sid}-{many}", "submit", system, n, submit(system, n, many),
                     [Row(f"{label}, {many_label}", ("rate",), RATE)])]
    return out


def drain_cases(n: int) -> list[Case]:
    pg_n = min(n, PG_BACKEND_CAP)
    consume = Compare("ceiling", "ceiling/aiopika", "consume_rate")
    out = []
    for procs in (1, 2):
        system = ConveyorAmqp(processes=procs)
        celery = [Compare("Celery", f"drain/celery-c{procs}", label="no results" if procs == 2 else "")]
        pgqueuer = [Compare("PgQueuer", f"drain/pgqueuer-{procs}p",
                            label=f"batch {PGQUEUER_BATCH}" if procs == 2 else "")]
        if procs == 2:
            celery += [Compare("Celery", "drain/celery-c2-redis", label="redis"),
                       Compare("Celery", "drain/celery-c2-pg", label="pg")]
            pgqueuer.append(Compare("PgQueuer", "drain/pgqueuer-2p-b10", label="batch 10"))
        out.append(Case(f"drain/conveyor-{procs}p", "drain", system, n, drain(system, n),
                        [drain_row(f"Conveyor worker x{procs}, --concurrency 8 (RabbitMQ + PG)")],
                        [*celery, Compare("Dramatiq", f"drain/dramatiq-{procs}p"), *pgqueuer,
                         Compare("Procrastinate", f"drain/procrastinate-{procs}p"), consume]))
    # More slots per worker mean larger shared batches of store writes (group commit).
    wide = ConveyorAmqp(processes=2, concurrency=32)
    out.append(Case("drain/conveyor-2p-c32", "drain", wide, n, drain(wide, n),
                    [drain_row("Conveyor worker x2, --concurrency 32 (RabbitMQ + PG)")],
                    [Compare("Celery", "drain/celery-c2", label="no results"),
                     Compare("Celery", "drain/celery-c2-pg", label="pg"),
                     Compare("Dramatiq", "drain/dramatiq-2p"), Compare("PgQueuer", "drain/pgqueuer-2p"),
                     Compare("Procrastinate", "drain/procrastinate-2p"), consume]))
    for procs in (1, 2):
        out.append(Case(f"drain/celery-c{procs}", "drain", Celery(procs), n, drain(Celery(procs), n),
                        [drain_row(f"Celery prefork -c {procs}, no results")]))
    out.append(Case("drain/celery-c2-redis", "drain", Celery(2, "redis"), n, drain(Celery(2, "redis"), n),
                    [drain_row("Celery prefork -c 2, Redis results")]))
    out.append(Case("drain/celery-c2-pg", "drain", Celery(2, "postgresql"), pg_n,
                    drain(Celery(2, "postgresql"), pg_n),
                    [drain_row("Celery prefork -c 2, PG results + track_started")],
                    note=f"N capped at {pg_n}" if pg_n < n else ""))
    for procs in (1, 2):
        out.append(Case(f"drain/dramatiq-{procs}p", "drain", Dramatiq(procs), n, drain(Dramatiq(procs), n),
                        [drain_row(f"Dramatiq --processes {procs} --threads 8")]))
    for procs, batch in ((1, PGQUEUER_BATCH), (2, PGQUEUER_BATCH), (2, 10)):
        pgq = PgQueuer(procs, batch)
        sid = f"drain/pgqueuer-{procs}p" + ("" if batch == PGQUEUER_BATCH else f"-b{batch}")
        out.append(Case(sid, "drain", pgq, n, drain(pgq, n),
                        [drain_row(f"PgQueuer worker x{procs}, batch size {batch}"
                                   + (" (its default)" if batch == 10 else "") + " (PG only)")]))
    pro_n = min(n, PROCRASTINATE_CAP)
    for procs in (1, 2):
        pro = Procrastinate(procs, 8)
        out.append(Case(f"drain/procrastinate-{procs}p", "drain", pro, pro_n, drain(pro, pro_n),
                        [drain_row(f"Procrastinate worker x{procs}, --concurrency 8 (PG only)")],
                        note=f"N capped at {pro_n}" if pro_n < n else ""))
    return out


def latency_cases(duration_s: float) -> list[Case]:
    out = []
    keys = ("p50_ms", "p95_ms", "p99_ms")
    for rate in (200, 1000):
        n = int(rate * duration_s)
        clients, threads = LATENCY_CLIENTS[rate]
        systems: list[tuple[str, System, str]] = [
            ("conveyor", ConveyorAmqp(2), "Conveyor worker x2, --concurrency 8"),
            ("celery", Celery(2), "Celery prefork -c 2, no results"),
            ("dramatiq", Dramatiq(2), "Dramatiq --processes 2 --threads 8"),
            ("pgqueuer", PgQueuer(2, PGQUEUER_BATCH), f"PgQueuer worker x2, batch size {PGQUEUER_BATCH}"),
            ("procrastinate", Procrastinate(2, 8), "Procrastinate worker x2, --concurrency 8"),
        ]
        compare = [Compare(column, f"latency/{column.lower()}-{rate}")
                   for column in ("Celery", "Dramatiq", "PgQueuer", "Procrastinate")]
        for sid, system, label in systems:
            out.append(Case(f"latency/{sid}-{rate}", "latency", system, n,
                            latency(system, rate, duration_s, clients, threads),
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
              drain_row("Conveyor SQLite: drain, worker x2 --concurrency 8", "drain_rate")],
             [Compare("Huey", "embedded/huey")]),
        Case("embedded/huey", "embedded", huey, n, embedded(huey, n),
             [Row("Huey SqliteHuey: submit", ("submit_rate",), RATE),
              drain_row("Huey SqliteHuey: drain, -w 2 -k process", "drain_rate")]),
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
