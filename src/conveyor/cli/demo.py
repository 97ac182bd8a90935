"""``conveyor demo``: two worker processes on the embedded default, a mixed batch of tasks,
a live progress bar, and a summary by status and node. Exits 0 in about 30 s at most."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from urllib.parse import urlsplit

import click
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from conveyor.app import Conveyor, TaskHandle
from conveyor.cli import render
from conveyor.cli.main import CliContext, cli
from conveyor.config import DEFAULT_URL, Settings
from conveyor.model import Task

DEADLINE_S = 25.0


@cli.command()
@click.option("--tasks", "count", type=click.IntRange(10, 10_000), default=60, show_default=True)
@click.option("--workers", type=click.IntRange(1, 8), default=2, show_default=True)
@click.option("--keep", is_flag=True, help="Keep the demo database and print its path.")
@click.pass_obj
def demo(ctx: CliContext, count: int, workers: int, keep: bool) -> None:
    """Run a demo: worker processes, sample tasks, live progress, a summary."""
    chosen = ctx.settings
    folder = None
    if chosen.broker_url == DEFAULT_URL and chosen.store_url == DEFAULT_URL:
        folder = tempfile.mkdtemp(prefix="conveyor-demo-")  # a fresh embedded file per run
        chosen = chosen.with_overrides(broker_url=f"sqlite:///{folder}/conveyor.db",
                                       store_url=f"sqlite:///{folder}/conveyor.db")
    settings = chosen.with_overrides(heartbeat_s=1.0, grace_s=5.0)
    mode = "embedded mode" if settings.broker_url.startswith("sqlite") else "distributed mode"
    from conveyor.demo_tasks import app

    app.use_settings(settings)  # submit with the demo types' own options (timeouts, attempts)
    render.console.print(f"[bold]Conveyor demo[/]: {mode}, broker {_safe_url(settings.broker_url)}, "
                         f"store {_safe_url(settings.store_url)}, {workers} worker processes")
    procs = [_start_worker(settings, f"demo-node-{i + 1}") for i in range(workers)]
    try:
        handles = _submit_batch(app, count)
        tasks = _watch(app, handles)
    finally:
        for proc in procs:
            proc.send_signal(signal.SIGTERM)
        for proc in procs:
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
    _summary(tasks)
    app.close()
    if keep and folder:
        render.console.print(f"database kept at {folder}/conveyor.db")
    elif folder:
        shutil.rmtree(folder, ignore_errors=True)
    unfinished = [t for t in tasks if not t.status.is_final]
    if unfinished:
        render.console.print(f"[red]{len(unfinished)} task(s) did not finish in time[/]")
        raise SystemExit(1)


def _safe_url(url: str) -> str:
    parts = urlsplit(url)
    if parts.password:
        return url.replace(f":{parts.password}@", ":***@")
    return url


def _start_worker(settings: Settings, node_id: str) -> subprocess.Popen[bytes]:
    env = {**os.environ, "CONVEYOR_BROKER_URL": settings.broker_url, "CONVEYOR_STORE_URL": settings.store_url,
           "CONVEYOR_HEARTBEAT_S": "1", "CONVEYOR_LOG_LEVEL": "ERROR"}
    return subprocess.Popen(
        [sys.executable, "-m", "conveyor", "worker", "conveyor.demo_tasks", "--concurrency", "4",
         "--node-id", node_id, "--grace", "5"],
        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )


def _submit_batch(app: Conveyor, count: int) -> list[TaskHandle]:
    handles = [app.submit("demo.slow", {"seconds": 3}), app.submit("demo.broken", {"reason": "bad input"})]
    handles += [app.submit("demo.flaky", {"n": i}) for i in range(max(1, count // 10))]
    handles.append(app.submit("demo.retry_later"))
    i = 0
    while len(handles) < count:
        if i % 3 == 0:
            handles.append(app.submit("demo.fetch", {"url": f"https://example.com/{i}"}))
        else:
            handles.append(app.submit("demo.add", {"a": i, "b": i * 2}, priority=i % 10))
        i += 1
    return handles


def _watch(app: Conveyor, handles: list[TaskHandle]) -> list[Task]:
    columns = (TextColumn("[bold]tasks"), BarColumn(), MofNCompleteColumn(), TextColumn("{task.fields[counts]}"),
               TimeElapsedColumn())
    deadline = time.monotonic() + DEADLINE_S
    with Progress(*columns, console=render.console, transient=False) as progress:
        bar = progress.add_task("tasks", total=len(handles), counts="")
        while True:
            tasks = [h.get() for h in handles]
            counts = Counter(t.status.value for t in tasks)
            done = sum(1 for t in tasks if t.status.is_final)
            progress.update(bar, completed=done, counts=" ".join(f"{k}={v}" for k, v in sorted(counts.items())))
            if done == len(tasks) or time.monotonic() > deadline:
                return tasks
            time.sleep(0.2)


def _summary(tasks: list[Task]) -> None:
    by_status = Counter(t.status.value for t in tasks)
    by_node = Counter((t.node or "-", t.status.value) for t in tasks)
    statuses = sorted(by_status)
    table = Table(title="summary by node and status", header_style="bold")
    table.add_column("node")
    for status in statuses:
        table.add_column(render.styled(status), justify="right")
    table.add_column("total", justify="right")
    for node in sorted({n for n, _ in by_node}):
        row = [by_node.get((node, s), 0) for s in statuses]
        table.add_row(node, *map(str, row), str(sum(row)))
    table.add_row("[bold]all[/]", *(str(by_status[s]) for s in statuses), str(len(tasks)))
    render.console.print(table)
    retried = sum(1 for t in tasks if t.attempts > 1)
    render.console.print(f"{retried} task(s) needed more than one attempt")
    for t in tasks:
        if t.status.value == "failed" and t.error:
            render.console.print(f"  failed {t.type} {t.id}: {t.error.get('type')}: {t.error.get('message')}")

