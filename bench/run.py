"""Conveyor beside Celery, Dramatiq, Huey, PgQueuer, Procrastinate and raw AMQP on the same local
servers, in one run.

    .venv/bin/python bench/run.py [--tasks N] [--repeats R] [--only submit,drain,...] [--quick]

Prints one markdown table on stdout (progress goes to stderr) and writes
bench/results/<date>.json and .png. See bench/README.md.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import secrets
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from types import FrameType

sys.path.insert(0, str(Path(__file__).resolve().parent))

from benchlib import infra, report
from benchlib.cases import SCENARIOS, Case, Metrics, build
from benchlib.procs import Procs
from benchlib.systems import Scope, remove_tree


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tasks", type=int, help="tasks per configuration (default 20000; --quick 2000)")
    parser.add_argument("--repeats", type=int, help="repeats, interleaved (default 3; --quick 1)")
    parser.add_argument("--only", help=f"comma-separated scenarios: {','.join(SCENARIOS)}")
    parser.add_argument("--cases", help="comma-separated parts of case ids to keep (drain/pgqueuer,latency/conv)")
    parser.add_argument("--quick", action="store_true", help="N=2000, 1 repeat, 3 s latency runs")
    parser.add_argument("--latency-s", type=float, help="seconds per latency run (default 5; --quick 3)")
    parser.add_argument("--max-submit-s", type=float, default=30.0,
                        help="a client stops submitting after this many seconds (default 30)")
    parser.add_argument("--memory-s", type=float, default=120.0,
                        help="time budget of each memory run's task chunks (default 120)")
    parser.add_argument("--out", type=Path, help="results path without suffix (default bench/results/<date>)")
    args = parser.parse_args()
    args.tasks = args.tasks or (2000 if args.quick else 20000)
    args.repeats = args.repeats or (1 if args.quick else 3)
    args.latency_s = args.latency_s or (3.0 if args.quick else 5.0)
    only = {s.strip() for s in args.only.split(",")} if args.only else None
    if only and not only <= set(SCENARIOS):
        parser.error(f"unknown scenario(s): {', '.join(sorted(only - set(SCENARIOS)))}")
    args.only_set = only
    return args


def check_services() -> None:
    try:
        infra.wait_for_services(timeout_s=5.0)
    except RuntimeError as exc:
        sys.exit(f"{exc}; `make services` starts RabbitMQ and PostgreSQL (Redis: redis-server --daemonize yes)")


def execute(case: Case, tag: str, tmp: Path, procs: Procs, max_s: float) -> Metrics:
    scope = Scope(tag, tmp / tag, procs, max_s=max_s)
    try:
        infra.wait_for_services()
        case.system.prepare(scope)
        return case.run(scope)
    except Exception as exc:  # one failed case must not lose the others' results
        return {"error": f"{type(exc).__name__}: {exc}"}
    finally:
        procs.stop_all()
        try:
            infra.wait_for_services()  # a server restarted mid-case still gets its leftovers removed
            case.system.cleanup(scope)
        except Exception as exc:
            infra.log(f"  cleanup of {tag} failed: {exc!r}")
        remove_tree(scope.root)


def summary(metrics: Metrics) -> str:
    if "error" in metrics:
        return f"FAILED {metrics['error']}"
    if "skipped" in metrics:
        return f"skipped: {metrics['skipped']}"
    return ", ".join(f"{k}={v:,.2f}" if v < 100 else f"{k}={v:,.0f}" for k, v in metrics.items()
                     if isinstance(v, int | float))


def run_all(cases: list[Case], repeats: int, tmp: Path, procs: Procs, max_s: float) -> dict[str, list[Metrics]]:
    """Repeat 1 of every case, then repeat 2, ...; a ``once`` case runs in repeat 1 only."""
    run_id = secrets.token_hex(3)
    raw: dict[str, list[Metrics]] = {c.id: [] for c in cases}
    started, seq = time.monotonic(), 0
    for r in range(repeats):
        for case in cases:
            if case.once and r > 0:
                continue
            seq += 1
            t0 = time.monotonic()
            infra.log(f"[{_clock(started)}] repeat {r + 1}/{repeats} {case.id} (N={case.n:,}) ...")
            load = _load1()
            metrics = execute(case, f"bench_{run_id}_{seq:03d}", tmp, procs, max_s)
            if "error" in metrics:  # e.g. a server restarted by another user of this machine
                infra.log(f"    {metrics['error'][:300]}; trying once more")
                seq += 1
                first = metrics["error"]
                metrics = execute(case, f"bench_{run_id}_{seq:03d}", tmp, procs, max_s)
                metrics["first_error"] = first
            metrics["load1_before"] = load
            raw[case.id].append(metrics)
            infra.log(f"    {summary(metrics)} ({time.monotonic() - t0:.1f} s)")
    return raw


def _load1() -> float:
    """The 1-minute load average: other work on this 2-core machine skews the numbers."""
    return float(Path("/proc/loadavg").read_text().split()[0])


def _clock(since: float) -> str:
    s = int(time.monotonic() - since)
    return f"{s // 60:02d}:{s % 60:02d}"


def write_results(out: Path, args: argparse.Namespace, machine: dict[str, object], cases: list[Case],
                  raw: dict[str, list[Metrics]], table: str, started: dt.datetime) -> None:
    out.parent.mkdir(parents=True, exist_ok=True)
    data = {"date": started.date().isoformat(), "started": started.isoformat(timespec="seconds"),
            "duration_s": round((dt.datetime.now() - started).total_seconds(), 1),
            "args": {"tasks": args.tasks, "repeats": args.repeats, "only": args.only, "cases": args.cases,
                     "quick": args.quick, "latency_s": args.latency_s,
                     "max_submit_s": args.max_submit_s, "memory_s": args.memory_s},
            "machine": machine, "cases": report.payload(cases, raw), "table": table}
    json_path = out.with_suffix(".json")
    json_path.write_text(json.dumps(data, indent=1) + "\n")
    chart = subprocess.run([infra.PEERS_PYTHON, str(infra.BENCH / "peers" / "chart.py"), str(json_path),
                            str(out.with_suffix(".png"))], capture_output=True, text=True, check=False)
    if chart.returncode != 0:
        infra.log(f"chart failed: {chart.stderr.strip()[-500:]}")
    infra.log(f"wrote {json_path} and {out.with_suffix('.png')}")


def default_out(args: argparse.Namespace, today: dt.date) -> Path:
    suffix = "-quick" if args.quick else ("" if args.tasks == 20000 else f"-n{args.tasks}")
    if args.only:
        suffix += "-" + "-".join(sorted(args.only_set))
    if args.cases:
        suffix += "-cases"
    return infra.BENCH / "results" / f"{today.isoformat()}{suffix}"


def on_signal(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt  # unwinds through every case's clean-up


def main() -> None:
    args = parse_args()
    signal.signal(signal.SIGTERM, on_signal)
    check_services()
    infra.ensure_peers_venv()
    started = dt.datetime.now()
    machine = infra.machine_info()
    cases = build(args.tasks, args.latency_s, args.memory_s, args.only_set)
    if args.cases:
        parts = [p.strip() for p in args.cases.split(",")]
        cases = [c for c in cases if any(p in c.id for p in parts)]
    tmp = Path(tempfile.mkdtemp(prefix="conveyor-bench-"))
    procs = Procs(tmp)
    infra.log(f"{len(cases)} configurations x {args.repeats} repeat(s), N={args.tasks:,}; logs in {tmp}")
    try:
        raw = run_all(cases, args.repeats, tmp, procs, args.max_submit_s)
    finally:
        procs.stop_all()
    table = report.table(cases, raw)
    print(table)
    write_results(args.out or default_out(args, started.date()), args, machine, cases, raw, table, started)
    if any("error" in m for runs in raw.values() for m in runs):
        infra.log(f"some runs failed; logs kept in {tmp}")
    else:
        remove_tree(tmp)


if __name__ == "__main__":
    main()
