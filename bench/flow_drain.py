"""Drain before/after: does a Conveyor change slow down tasks that use none of its features?

Runs the drain of ``bench/run.py`` (N ``bench.noop`` tasks queued first, then worker processes
started; rate from the first to the last task start) for two source trees of Conveyor, the
*base* (a git revision, extracted to a temp dir) and the *head* (this checkout's HEAD, extracted
the same way), interleaved repeat by repeat (base, head, then head, base, ...) because the
machine is shared and noisy. Each worker runs with ``PYTHONPATH=<tree>/src``, so nothing is
installed. Prints a markdown table of each run and the medians.

    .venv/bin/python bench/flow_drain.py --base main --tasks 10000 --repeats 3
    .venv/bin/python bench/flow_drain.py --base main --deployment sqlite --workers 2

Needs RabbitMQ and PostgreSQL on 127.0.0.1 (the same as ``bench/run.py``); every case uses its own
queue and PostgreSQL schema, both removed afterwards.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

BENCH = Path(__file__).resolve().parent
REPO = BENCH.parent
sys.path.insert(0, str(BENCH))

import psycopg  # noqa: E402
from benchlib import infra, record  # noqa: E402


def extract(rev: str, into: Path) -> Path:
    """The ``src`` tree of ``rev`` under ``into``."""
    into.mkdir(parents=True, exist_ok=True)
    archive = subprocess.run(["git", "-C", str(REPO), "archive", rev, "src"], check=True, capture_output=True).stdout
    subprocess.run(["tar", "-x", "-C", str(into)], input=archive, check=True)
    return into / "src"


def env_for(src: Path, urls: dict[str, str], queue: str, records: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("CONVEYOR_", "BENCH_"))}
    env.update(urls, PYTHONPATH=f"{src}{os.pathsep}{BENCH}", BENCH_QUEUE=queue, BENCH_RECORD_DIR=str(records),
               CONVEYOR_LOG_LEVEL="WARNING", CONVEYOR_GRACE_S="3", PYTHONUNBUFFERED="1")
    return env


def cpu_s(pids: list[int]) -> float:
    """User + system CPU seconds of these processes so far (threads included), from /proc."""
    total = 0
    for pid in pids:
        with contextlib.suppress(OSError):
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
            total += int(fields[11]) + int(fields[12])  # utime, stime (fields 14 and 15 of stat)
    return total / os.sysconf("SC_CLK_TCK")


def which_conveyor(env: dict[str, str]) -> str:
    code = "import conveyor, os; print(os.path.dirname(conveyor.__file__))"
    return subprocess.run([sys.executable, "-c", code], env=env, check=True, capture_output=True,
                          text=True).stdout.strip()


def drain_once(src: Path, args: argparse.Namespace, label: str) -> dict[str, float | str]:
    tag = f"flowbench_{label}_{uuid.uuid4().hex[:6]}"
    with tempfile.TemporaryDirectory(prefix="conveyor-flowbench-") as tmp:
        records = Path(tmp) / "records"
        records.mkdir()
        if args.deployment == "sqlite":
            url = f"sqlite:///{tmp}/conveyor.db"
            urls = {"CONVEYOR_BROKER_URL": url, "CONVEYOR_STORE_URL": url}
        else:
            urls = {"CONVEYOR_BROKER_URL": infra.AMQP, "CONVEYOR_STORE_URL": infra.pg_url(tag)}
            with psycopg.connect(infra.PG, autocommit=True) as conn:
                conn.execute(f'CREATE SCHEMA "{tag}"')
        env = env_for(src, urls, tag, records)
        assert which_conveyor(env).startswith(str(src)), "the worker would not run the tree under test"
        nodes = [f"{tag}-{k}" for k in range(args.workers)]
        workers: list[subprocess.Popen[bytes]] = []
        try:
            subprocess.run([sys.executable, "-m", "conveyor_bench.client", "submit-many", "--n", str(args.tasks),
                            "--max-s", "600"], env=env, check=True, capture_output=True, timeout=900)
            log_file = (Path(tmp) / "workers.log").open("ab")
            for node in nodes:
                workers.append(subprocess.Popen(
                    [sys.executable, "-m", "conveyor", "worker", "conveyor_bench.tasks:app", "-q", tag,
                     "--concurrency", str(args.concurrency), "--node-id", node],
                    env=env, stdout=log_file, stderr=subprocess.STDOUT, start_new_session=True))
            total = args.tasks + 1  # the client's warm-up task is recorded too
            deadline = time.monotonic() + args.timeout_s
            pids = [w.pid for w in workers]
            cpu_first: float | None = None
            while (done := record.count(records)) < total:
                if cpu_first is None and done:
                    cpu_first, done_first = cpu_s(pids), done
                if time.monotonic() > deadline or all(w.poll() is not None for w in workers):
                    log = (Path(tmp) / "workers.log").read_text(errors="replace")[-3000:]
                    raise RuntimeError(f"{label}: {record.count(records)} of {total} tasks recorded; workers:\n{log}")
                time.sleep(0.05)
            cpu_us = (cpu_s(pids) - (cpu_first or 0.0)) / max(1, total - (done_first if cpu_first else 0)) * 1e6
            starts = [start for start, _ in record.read(records)]
            span = starts[-1] - starts[0]
            return {"variant": label, "rate_per_s": (len(starts) - 1) / span, "span_s": span,
                    "worker_cpu_us_per_task": cpu_us}
        finally:
            for proc in workers:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(10)
            if args.deployment != "sqlite":
                infra.drop_schema(tag)
                infra.delete_queues([f"conveyor.{tag}", *(f"conveyor._node.{n}" for n in nodes)])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--base", default="main", help="git revision to compare against (default: main)")
    parser.add_argument("--head", default="HEAD", help="git revision under test (default: HEAD)")
    parser.add_argument("--tasks", type=int, default=10_000)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--deployment", choices=["rabbitmq", "sqlite"], default="rabbitmq")
    parser.add_argument("--timeout-s", type=float, default=600.0)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="conveyor-flowbench-src-") as tmp:
        trees = {"base": extract(args.base, Path(tmp) / "base"), "head": extract(args.head, Path(tmp) / "head")}
        revs = {k: subprocess.run(["git", "-C", str(REPO), "rev-parse", "--short", r], check=True, capture_output=True,
                                  text=True).stdout.strip() for k, r in (("base", args.base), ("head", args.head))}
        runs: list[dict[str, float | str]] = []
        for repeat in range(args.repeats):
            order = ["base", "head"] if repeat % 2 == 0 else ["head", "base"]
            for label in order:
                load = os.getloadavg()[0]
                result = drain_once(trees[label], args, label)
                result.update(repeat=repeat + 1, load1=round(load, 2))
                runs.append(result)
                print(f"repeat {repeat + 1} {label} ({revs[label]}): {float(result['rate_per_s']):,.0f}/s "
                      f"(load {load:.2f})", file=sys.stderr, flush=True)
    print(f"\nDrain, {args.deployment}, {args.workers} worker(s) x --concurrency {args.concurrency}, "
          f"N = {args.tasks:,}, base {revs['base']}, head {revs['head']}, interleaved\n")
    print("| repeat | variant | rate (tasks/s) | worker CPU per task (µs) | span (s) | load (1 min) at start |")
    print("|---|---|---|---|---|---|")
    for run in runs:
        print(f"| {run['repeat']} | {run['variant']} | {float(run['rate_per_s']):,.0f} "
              f"| {float(run['worker_cpu_us_per_task']):.0f} | {float(run['span_s']):.2f} | {run['load1']} |")
    for metric, unit in (("rate_per_s", "/s"), ("worker_cpu_us_per_task", " µs")):
        med = {label: statistics.median(float(r[metric]) for r in runs if r["variant"] == label)
               for label in ("base", "head")}
        print(f"\nmedian {metric}: base {med['base']:,.0f}{unit}, head {med['head']:,.0f}{unit}, "
              f"head / base = {med['head'] / med['base']:.3f}")


if __name__ == "__main__":
    main()
