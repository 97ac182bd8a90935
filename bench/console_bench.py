"""The console's queries at a million stored tasks: list pages (every filter the dashboard
offers, first page and deep pages), the overview and a /metrics scrape; and what the console's
index and statistics cost the worker's status changes.

    .venv/bin/python bench/console_bench.py                      # 1,000,000 tasks, PostgreSQL and SQLite
    .venv/bin/python bench/console_bench.py --tasks 100000 --only postgres --repeats 50

Each backend gets its own store (a fresh PostgreSQL schema, a SQLite file under /tmp), filled
with tasks spread over 7 days (90% succeeded, 4% failed, 2% cancelled, 2% queued, 1%
scheduled, 1% running; 20 types, 5 queues, 10 nodes; 10% with an idempotency key; three events
per finished task), then every query runs ``--repeats`` times (after one warm-up) and the table
gives p50 / p95 / p99 in milliseconds. The target is p99 < 50 ms. Results also go to
``bench/results/console-<date>.json``. Dropped afterwards: the schema, the file.

Write cost: queued tasks are claimed and finished (``claim_many`` then ``finish_many``, as the
worker writes them, batches of 8 from 8 threads) in rounds of 3,000 that alternate with and without migration 0004's
indexes on ``tasks`` and ``task_events`` (3 rounds each; the median rate of each is shown), and
the statistics fold of those events is timed (with the indexes: without ``task_events_seq`` it
would read the whole table).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from conveyor.config import Settings  # noqa: E402
from conveyor.model import Task, TaskStatus  # noqa: E402
from conveyor.operations import Operations  # noqa: E402
from conveyor.service import TaskService  # noqa: E402
from conveyor.store.queries import TaskSearch  # noqa: E402

PG_URL = os.environ.get("CONVEYOR_BENCH_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/test")
TARGET_P99_MS = 50.0
STATUSES = [("succeeded", 0.90), ("failed", 0.04), ("cancelled", 0.02), ("queued", 0.02), ("scheduled", 0.01),
            ("running", 0.01)]
TYPES = [f"svc{i}.job" for i in range(20)]
QUEUES = ["default", "email", "reports", "billing", "rare"]
QUEUE_WEIGHTS = [0.55, 0.25, 0.12, 0.079, 0.001]
NODES = [f"node-{i}" for i in range(10)]
SPAN_S = 7 * 86400
WRITE_ROUNDS = 3  # of each condition
WRITE_TASKS_PER_ROUND = 3000
CONSOLE_INDEXES = ("tasks_queued_by_queue ON tasks (queue, queued_at) WHERE status = 'queued'",
                   "task_events_seq ON task_events (seq)")  # what migration 0004 adds to the hot tables


def uuid7_at(ms: int, rng: random.Random) -> uuid.UUID:
    return uuid.UUID(int=(ms << 80) | (0x7 << 76) | (rng.getrandbits(12) << 64) | (0b10 << 62) | rng.getrandbits(62))


def fake_rows(count: int, now: float, seed: int = 7) -> Iterator[tuple[Any, ...]]:
    """(task values in Task field order: type, params, id, ...; events) for ``count`` tasks, oldest first."""
    rng = random.Random(seed)
    start = now - SPAN_S
    names = [s for s, _ in STATUSES]
    weights = [w for _, w in STATUSES]
    for i in range(count):
        created = start + SPAN_S * i / count
        status = rng.choices(names, weights)[0]
        task_id = uuid7_at(int(created * 1000), rng)
        queue = rng.choices(QUEUES, QUEUE_WEIGHTS)[0]
        node = rng.choice(NODES) if status not in ("queued", "scheduled") else None
        started = created + rng.uniform(0.001, 2) if node else None
        finished = started + rng.uniform(0.01, 5) if status in ("succeeded", "failed", "cancelled") and started \
            else None
        error = json.dumps({"type": "ValueError", "message": "boom", "traceback": "Traceback ..."}) \
            if status == "failed" else None
        key = f"order-{i}" if i % 10 == 0 else None
        task = (rng.choice(TYPES), json.dumps({"n": i, "to": "someone@example.com"}), task_id, queue, 0, status,
                1 if node else 0, 3, None, now + 3600 if status == "scheduled" else None, key,
                json.dumps({"ok": True}) if status == "succeeded" else None, error, node, created,
                created if status != "scheduled" else None, started, finished,
                (now + 30) if status == "running" else None, 0, 3 if finished else 1)
        events = [(task_id, None, "queued" if status != "scheduled" else "scheduled", created, None, "submitted")]
        if started:
            events.append((task_id, "queued", "running", started, node, "attempt 1"))
        if finished:
            events.append((task_id, "running", status, finished, node, None))
        yield task, events


# -- loading --------------------------------------------------------------------------------------
def load_postgres(url: str, count: int) -> None:
    import psycopg

    from conveyor.store.postgres_sql import _COLS

    now = time.time()
    with psycopg.connect(url, autocommit=True) as conn:
        with conn.cursor() as cur, cur.copy(f"COPY tasks ({_COLS}) FROM STDIN") as copy:
            for task, _ in fake_rows(count, now):
                copy.write_row(task)
        with conn.cursor() as cur, cur.copy(
                "COPY task_events (task_id, from_status, to_status, at, node, detail) FROM STDIN") as copy:
            for _, events in fake_rows(count, now):
                for event in events:
                    copy.write_row(event)
        conn.execute("VACUUM ANALYZE tasks")
        conn.execute("VACUUM ANALYZE task_events")


def load_sqlite(path: str, count: int) -> None:
    import sqlite3

    from conveyor.store.sqlite import _COLUMNS

    conn = sqlite3.connect(path)
    marks = f"({', '.join(_COLUMNS)}) VALUES ({', '.join('?' * len(_COLUMNS))})"
    batch: list[tuple[Any, ...]] = []
    events: list[tuple[Any, ...]] = []
    for task, task_events in fake_rows(count, time.time()):
        batch.append((*task[:2], str(task[2]), *task[3:]))
        events.extend((str(e[0]), *e[1:]) for e in task_events)
        if len(batch) >= 20_000:
            _flush_sqlite(conn, marks, batch, events)
    _flush_sqlite(conn, marks, batch, events)
    conn.execute("ANALYZE")
    conn.close()


def _flush_sqlite(conn: Any, marks: str, batch: list[tuple[Any, ...]], events: list[tuple[Any, ...]]) -> None:
    conn.executemany(f"INSERT INTO tasks {marks}", batch)
    conn.executemany("INSERT INTO task_events (task_id, from_status, to_status, at, node, detail)"
                     " VALUES (?, ?, ?, ?, ?, ?)", events)
    conn.commit()
    batch.clear()
    events.clear()


# -- measuring ------------------------------------------------------------------------------------
def timed(fn: Callable[[], Any], repeats: int) -> list[float]:
    fn()  # warm-up
    samples = []
    for _ in range(repeats):
        started = time.perf_counter()
        fn()
        samples.append((time.perf_counter() - started) * 1000)
    return samples


def percentile(samples: list[float], q: float) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, max(0, round(q * len(ordered)) - 1))]


def query_cases(ops: Operations, store: Any) -> list[tuple[str, Callable[[], Any]]]:
    sample = ops.search(TaskSearch(), limit=1000).tasks
    known = sample[500]
    deep_cursor = ops.search(TaskSearch(), limit=1000, cursor=sample[-1].id).next_cursor  # ~2,000 rows down
    middle = uuid7_at(int((time.time() - SPAN_S / 2) * 1000), random.Random(1))  # a page 3.5 days back
    failed = ops.search(TaskSearch(status=TaskStatus.FAILED), limit=1).tasks[0]
    metrics = None
    try:
        from prometheus_client import generate_latest

        from conveyor.api.handlers.ops import ApiMetrics

        metrics = ApiMetrics(lambda: ops, ops.settings.heartbeat_s)
    except ImportError:
        pass
    cases: list[tuple[str, Callable[[], Any]]] = [
        ("list: newest 50", lambda: ops.search(TaskSearch(), limit=50)),
        ("list: page after 2,000", lambda: ops.search(TaskSearch(), limit=50, cursor=deep_cursor)),
        ("list: page 3.5 days back", lambda: ops.search(TaskSearch(), limit=50, cursor=middle)),
        ("list: status=failed", lambda: ops.search(TaskSearch(status=TaskStatus.FAILED), limit=50)),
        ("list: status=failed, page 3.5 days back",
         lambda: ops.search(TaskSearch(status=TaskStatus.FAILED), limit=50, cursor=middle)),
        ("list: status=queued", lambda: ops.search(TaskSearch(status=TaskStatus.QUEUED), limit=50)),
        ("list: type=svc3.job", lambda: ops.search(TaskSearch(type="svc3.job"), limit=50)),
        ("list: queue=rare (0.1%)", lambda: ops.search(TaskSearch(queue="rare"), limit=50)),
        ("list: node=node-4", lambda: ops.search(TaskSearch(node="node-4"), limit=50)),
        ("list: status=failed + type", lambda: ops.search(TaskSearch(status=TaskStatus.FAILED, type="svc3.job"),
                                                          limit=50)),
        ("list: status=failed + queue=rare", lambda: ops.search(TaskSearch(status=TaskStatus.FAILED, queue="rare"),
                                                                 limit=50)),
        ("list: status=succeeded + type + queue=email",
         lambda: ops.search(TaskSearch(status=TaskStatus.SUCCEEDED, type="svc7.job", queue="email"), limit=50)),
        ("list: created in the last hour", lambda: ops.search(TaskSearch(created_after=time.time() - 3600),
                                                              limit=50)),
        ("list: created on one day, failed", lambda: ops.search(
            TaskSearch(status=TaskStatus.FAILED, created_after=time.time() - 4 * 86400,
                       created_before=time.time() - 3 * 86400), limit=50)),
        ("search: id prefix (13 chars)", lambda: ops.resolve(str(known.id)[:13] + str(known.id)[14:20])),
        ("search: idempotency key", lambda: ops.search(TaskSearch(idempotency_key="order-500000"), limit=50)),
        ("detail: task + timeline", lambda: (ops.service.get(failed.id), ops.service.events(failed.id))),
        ("overview (counts, queues, last hour, nodes)", ops.overview),
        ("overview: queues only", ops.queues),
        ("for comparison: count_by_status over all rows", store.count_by_status),
    ]
    if metrics is not None:
        cases.append(("GET /metrics (generate_latest)", lambda: generate_latest(metrics.registry)))
    return cases


def write_cost(store: Any, stats: Any, toggle_index: Callable[[bool], None] | None, label: str) -> dict[str, Any]:
    """Claim and finish tasks from 8 threads in rounds that alternate with and without the 0004
    index (interleaved, so the shared machine's drift weighs on both alike); the median rate of
    each, and the fold time per 1,000 events."""
    stats.fold_all()
    rounds = [True, False] * WRITE_ROUNDS if toggle_index is not None else [True] * WRITE_ROUNDS
    tasks = [Task(type="bench.write", queue="bench", status=TaskStatus.QUEUED, queued_at=time.time())
             for _ in range(WRITE_TASKS_PER_ROUND * len(rounds))]
    for start in range(0, len(tasks), 1000):
        store.create_many(tasks[start:start + 1000])
    rates: dict[bool, list[float]] = {True: [], False: []}
    folds: list[float] = []
    for n, indexed in enumerate(rounds):
        if toggle_index is not None:
            toggle_index(indexed)
        chunk = tasks[n * WRITE_TASKS_PER_ROUND:(n + 1) * WRITE_TASKS_PER_ROUND]
        rates[indexed].append(len(chunk) / _claim_and_finish(store, chunk))
        if toggle_index is not None:
            toggle_index(True)
        fold_started = time.perf_counter()
        folded = stats.fold_all(max_batches=1000)
        folds.append((time.perf_counter() - fold_started) * 1000 / max(folded, 1) * 1000)
    if toggle_index is not None:
        toggle_index(True)
    results: dict[str, Any] = {}
    for indexed, label_text in ((True, "with the 0004 indexes"), (False, "without them")):
        if rates[indexed]:
            results[label_text] = {"tasks": WRITE_TASKS_PER_ROUND * len(rates[indexed]),
                                   "tasks_per_s": round(statistics.median(rates[indexed]), 1),
                                   "rounds": [round(r, 1) for r in rates[indexed]],
                                   "fold_ms_per_1000_events": round(statistics.median(folds), 2)}
    print(f"  {label} write cost: {results}", file=sys.stderr)
    return results


def _claim_and_finish(store: Any, tasks: list[Task]) -> float:
    """What the worker writes for each task (its claim, then its outcome), 8 threads, in
    batches of 8 as the worker's cycle groups them."""
    from conveyor.store.base import Outcome

    pending = list(tasks)
    lock = threading.Lock()

    def work() -> None:
        while True:
            with lock:
                batch, pending[:] = pending[:8], pending[8:]
            if not batch:
                return
            claimed = store.claim_many([(t.id, t.attempts + 1) for t in batch], "bench-node", 30.0)
            store.finish_many([Outcome(t.id, t.attempts, TaskStatus.SUCCEEDED) for t in claimed if t is not None],
                              "bench-node")

    threads = [threading.Thread(target=work) for _ in range(8)]
    started = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return time.perf_counter() - started


# -- backends -------------------------------------------------------------------------------------
def run_backend(name: str, count: int, repeats: int) -> dict[str, Any]:
    from conveyor.broker.sqlite import SqliteBroker

    print(f"{name}: loading {count:,} tasks ...", file=sys.stderr)
    loaded = time.perf_counter()
    cleanup: Callable[[], None]
    drop_index: Callable[[bool], None] | None
    if name == "postgres":
        import psycopg

        from conveyor.store.postgres import PostgresStore

        schema = f"bench_console_{uuid.uuid4().hex[:8]}"
        with psycopg.connect(PG_URL, autocommit=True) as conn:
            conn.execute(f'CREATE SCHEMA "{schema}"')
        url = f"{PG_URL}?options=-csearch_path%3D{schema}"

        def cleanup_pg() -> None:
            with psycopg.connect(PG_URL, autocommit=True) as conn:
                conn.execute(f'DROP SCHEMA "{schema}" CASCADE')

        try:
            PostgresStore(url).close()  # migrations
            load_postgres(url, count)
        except BaseException:
            cleanup_pg()
            raise
        store: Any = PostgresStore(url)

        def toggle_pg_index(present: bool) -> None:
            with psycopg.connect(url, autocommit=True) as conn:
                for index in CONSOLE_INDEXES:
                    if present:
                        conn.execute(f"CREATE INDEX IF NOT EXISTS {index}")
                    else:
                        conn.execute(f"DROP INDEX IF EXISTS {index.split()[0]}")

        drop_index, cleanup = toggle_pg_index, cleanup_pg
    else:
        from conveyor.store.sqlite import SqliteStore

        folder = tempfile.mkdtemp(prefix="conveyor-console-bench-")
        path = f"{folder}/bench.db"
        url = f"sqlite:///{path}"
        SqliteStore(url).close()
        load_sqlite(path, count)
        store = SqliteStore(url)
        drop_index = None  # SQLite keeps the index (created by the statistics on open)

        def cleanup_sqlite() -> None:
            import shutil

            shutil.rmtree(folder, ignore_errors=True)

        cleanup = cleanup_sqlite
    load_s = time.perf_counter() - loaded
    print(f"{name}: loaded in {load_s:.0f} s", file=sys.stderr)
    broker_dir = tempfile.mkdtemp(prefix="conveyor-console-bench-broker-")
    broker = SqliteBroker(f"sqlite:///{broker_dir}/broker.db")
    try:
        ops = Operations(TaskService(store, broker), Settings())
        started = time.perf_counter()
        ops.stats.fold()  # first fold: counts all stored tasks once
        init_s = time.perf_counter() - started
        rows = []
        for label, fn in query_cases(ops, store):
            samples = timed(fn, repeats)
            row = {"query": label, "p50_ms": percentile(samples, 0.5), "p95_ms": percentile(samples, 0.95),
                   "p99_ms": percentile(samples, 0.99)}
            rows.append(row)
            print(f"  {name} {label}: p99 {row['p99_ms']:.2f} ms", file=sys.stderr)
        writes = write_cost(store, ops.stats, drop_index, name)
        ops.close()
        return {"backend": name, "tasks": count, "load_s": round(load_s, 1),
                "stats_first_fold_s": round(init_s, 2), "queries": rows, "write_cost": writes}
    finally:
        broker.close()
        store.close()
        cleanup()


def table(results: list[dict[str, Any]]) -> str:
    lines = ["| backend | query | p50 ms | p95 ms | p99 ms | p99 < 50 ms |", "|---|---|---|---|---|---|"]
    for result in results:
        for row in result["queries"]:
            ok = "yes" if row["p99_ms"] < TARGET_P99_MS else "**no**"
            if row["query"].startswith("for comparison"):
                ok = "(not a dashboard query)"
            lines.append(f"| {result['backend']} ({result['tasks']:,}) | {row['query']} | {row['p50_ms']:.2f} | "
                         f"{row['p95_ms']:.2f} | {row['p99_ms']:.2f} | {ok} |")
    lines += ["", "| backend | status changes (claim + finish, 8 threads) | tasks | tasks/s (median) | rounds | "
                  "fold ms per 1,000 events |", "|---|---|---|---|---|---|"]
    for result in results:
        for phase, w in result["write_cost"].items():
            lines.append(f"| {result['backend']} | {phase} | {w['tasks']:,} | {w['tasks_per_s']:,} | "
                         f"{', '.join(f'{r:,.0f}' for r in w['rounds'])} | {w['fold_ms_per_1000_events']} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tasks", type=int, default=1_000_000)
    parser.add_argument("--repeats", type=int, default=200)
    parser.add_argument("--only", default="postgres,sqlite")
    parser.add_argument("--out", default=None, help="results path (default bench/results/console-<date>.json)")
    args = parser.parse_args()
    results = [run_backend(name, args.tasks, args.repeats) for name in args.only.split(",")]
    text = table(results)
    print(text)
    out = Path(args.out) if args.out else ROOT / "bench" / "results" / f"console-{datetime.now(UTC):%Y-%m-%d}.json"
    if args.tasks < 1_000_000 and not args.out:
        out = out.with_name(out.stem + f"-{args.tasks}.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    machine = {"cores": os.cpu_count(), "python": sys.version.split()[0]}
    out.write_text(json.dumps({"machine": machine, "results": results, "table": text,
                               "p99_target_ms": TARGET_P99_MS, "repeats": args.repeats}, indent=2))
    print(f"results: {out}", file=sys.stderr)


if __name__ == "__main__":
    main()
