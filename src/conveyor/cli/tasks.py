"""``conveyor submit | tasks | task | nodes``: submit and inspect tasks from the shell."""

from __future__ import annotations

import uuid

import click

from conveyor.cli import render
from conveyor.cli.main import CliContext, cli
from conveyor.errors import SerializationError, TaskFailed
from conveyor.message import loads
from conveyor.model import TaskFilter, TaskStatus
from conveyor.validation import MAX_ATTEMPTS


def _app(ctx: CliContext):  # type: ignore[no-untyped-def]
    from conveyor.app import Conveyor

    return Conveyor(settings=ctx.settings)


@cli.command()
@click.argument("task_type", metavar="TYPE")
@click.option("--params", default="{}", show_default=True, help="Task params as a JSON object.")
@click.option("--queue", help="Queue (default: default).")
@click.option("--priority", type=click.IntRange(0, 9), help="0-9, higher first.")
@click.option("--delay", type=float, help="Run not before this many seconds from now.")
@click.option("--max-attempts", type=click.IntRange(1, MAX_ATTEMPTS))
@click.option("--timeout", type=float, help="Seconds per attempt.")
@click.option("--idempotency-key")
@click.option("--unique-key", help="No new task while one with this key waits or runs (docs/flow-control.md).")
@click.option("--wait", is_flag=True, help="Wait for the task to finish and print its result.")
@click.option("--wait-timeout", type=float, default=60.0, show_default=True)
@click.pass_obj
def submit(ctx: CliContext, task_type: str, params: str, queue: str | None, priority: int | None,
           delay: float | None, max_attempts: int | None, timeout: float | None,
           idempotency_key: str | None, unique_key: str | None, wait: bool, wait_timeout: float) -> None:
    """Submit a task of TYPE."""
    try:
        parsed = loads(params)
    except SerializationError as exc:
        raise click.BadParameter(str(exc), param_hint="--params") from exc
    if not isinstance(parsed, dict):
        raise click.BadParameter("must be a JSON object", param_hint="--params")
    app = _app(ctx)
    try:
        handle = app.submit(task_type, parsed, queue=queue, priority=priority, delay=delay,
                            max_attempts=max_attempts, timeout=timeout, idempotency_key=idempotency_key,
                            unique_key=unique_key)
    except ValueError as exc:
        raise click.UsageError(str(exc)) from exc
    if not wait:
        task = handle.get()
        if ctx.json:
            render.emit_json(task.to_dict())
        else:
            render.console.print(f"{task.id} {render.styled(task.status.value)}")
        return
    try:
        handle.result(timeout=wait_timeout)
        failed = False
    except TaskFailed:
        failed = True
    task = handle.get()
    if ctx.json:
        render.emit_json(task.to_dict())
    else:
        render.console.print(f"{task.id} {render.styled(task.status.value)} result={task.result!r}")
    if failed:
        raise SystemExit(1)


@cli.command("tasks")
@click.option("--status", type=click.Choice([s.value for s in TaskStatus]))
@click.option("--type", "task_type")
@click.option("--queue")
@click.option("--node")
@click.option("--limit", type=click.IntRange(1, 1000), default=50, show_default=True)
@click.option("--cursor", help="Continue after this task id (from the previous page).")
@click.pass_obj
def list_tasks(ctx: CliContext, status: str | None, task_type: str | None, queue: str | None,
               node: str | None, limit: int, cursor: str | None) -> None:
    """List tasks, newest first."""
    app = _app(ctx)
    page = app.service.query(
        TaskFilter(status=TaskStatus(status) if status else None, type=task_type, queue=queue, node=node),
        limit=limit, cursor=uuid.UUID(cursor) if cursor else None,
    )
    if ctx.json:
        render.emit_json({"tasks": [t.to_dict() for t in page.tasks],
                          "next_cursor": str(page.next_cursor) if page.next_cursor else None})
        return
    render.console.print(render.tasks_table(page.tasks))
    if page.next_cursor:
        render.console.print(f"more: --cursor {page.next_cursor}")


@cli.command("task")
@click.argument("task_id")
@click.pass_obj
def show_task(ctx: CliContext, task_id: str) -> None:
    """Show one task with its timeline."""
    try:
        tid = uuid.UUID(task_id)
    except ValueError as exc:
        raise click.BadParameter("not a task id (UUID)", param_hint="TASK_ID") from exc
    app = _app(ctx)
    task = app.get(tid)
    events = app.service.events(tid)
    if ctx.json:
        render.emit_json({**task.to_dict(), "events": [e.to_dict() for e in events]})
    else:
        render.task_detail(task, events)


@cli.command("nodes")
@click.pass_obj
def list_nodes(ctx: CliContext) -> None:
    """List worker nodes with their heartbeat and load."""
    nodes = _app(ctx).service.nodes()
    if ctx.json:
        render.emit_json([n.to_dict() for n in nodes])
    else:
        render.console.print(render.nodes_table(nodes))
