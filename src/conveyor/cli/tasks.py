"""``conveyor submit | tasks | task | result | wait``: submit and inspect tasks from the shell.

Wherever a task id is taken, a unique prefix of it will do. With ``--api URL`` (or
``CONVEYOR_API``) they talk to a scheduler's HTTP API instead of the store and broker.
"""

from __future__ import annotations

import time
from datetime import UTC, datetime
from typing import Any

import click
import orjson

from conveyor.cli import render
from conveyor.cli.main import EXIT_TIMEOUT, CliContext, cli, fail, json_option
from conveyor.config import parse_duration
from conveyor.errors import SerializationError
from conveyor.message import loads
from conveyor.model import TaskStatus
from conveyor.service import SubmitRequest
from conveyor.validation import MAX_ATTEMPTS

FINAL = {"succeeded", "failed", "cancelled"}


def parse_when(text: str | None, *, param: str) -> float | None:
    """An ISO-8601 time (naive = UTC), or a duration meaning that long ago (``90m``, ``7d``)."""
    if text is None:
        return None
    try:
        return time.time() - parse_duration(text)
    except ValueError:
        pass
    try:
        parsed = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise click.BadParameter("use an ISO-8601 time (2026-01-31T12:00) or a duration ago (90m, 7d)",
                                 param_hint=param) from None
    return (parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)).timestamp()


def describe_end(task: dict[str, Any]) -> str:
    """One line on how a task ended: its result, or its error."""
    if task["status"] == "succeeded":
        return f"{task['id']} succeeded: {orjson.dumps(task.get('result')).decode()}"
    error = task.get("error") or {}
    if error:
        return f"{task['id']} {task['status']}: {error.get('type')}: {error.get('message')}"
    return f"{task['id']} {task['status']}"


def wait_for(ctx: CliContext, backend: Any, task_id: str, timeout_s: float) -> dict[str, Any]:
    """Poll until the task is final; on timeout say so clearly and exit 3."""
    deadline = time.monotonic() + timeout_s
    pause = 0.02
    while True:
        task: dict[str, Any] = backend.task(task_id)
        if task["status"] in FINAL:
            return task
        if time.monotonic() >= deadline:
            fail(f"task {task['id']} is still {task['status']} after {timeout_s:g} s (it goes on; see "
                 f"`conveyor task {task['id']}`)", kind="timeout", code=EXIT_TIMEOUT)
        time.sleep(pause)
        pause = min(pause * 2, 0.25)


def finish(ctx: CliContext, task: dict[str, Any]) -> None:
    """Print a final task (JSON, or one line) and exit 1 unless it succeeded."""
    if ctx.json:
        render.emit_json(task)
    elif task["status"] == "succeeded":
        render.say(describe_end(task))
    else:
        click.secho(describe_end(task), fg="red", err=True)
    if task["status"] != "succeeded":
        raise SystemExit(1)


@cli.command()
@click.argument("task_type", metavar="TYPE")
@click.option("--params", default="{}", show_default=True, help="Task params as a JSON object.")
@click.option("--queue", help="Queue (default: default).")
@click.option("--priority", type=click.IntRange(0, 9), help="0-9, higher first.")
@click.option("--delay", type=click.FloatRange(0), help="Run not before this many seconds from now.")
@click.option("--max-attempts", type=click.IntRange(1, MAX_ATTEMPTS))
@click.option("--timeout", type=click.FloatRange(0, min_open=True), help="Seconds per attempt.")
@click.option("--idempotency-key")
@click.option("--unique-key", help="No new task while one with this key waits or runs (docs/flow-control.md).")
@click.option("--wait", is_flag=True, help="Wait for the task to finish; print its result or error (exit 1 if it "
                                            "failed, 3 if still running at --wait-timeout).")
@click.option("--wait-timeout", type=click.FloatRange(0), default=60.0, show_default=True)
@json_option
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
    request = SubmitRequest(type=task_type, params=parsed, queue=queue, priority=priority, delay_s=delay,
                            max_attempts=max_attempts, timeout=timeout, idempotency_key=idempotency_key,
                            unique_key=unique_key)
    with ctx.backend() as backend:
        try:
            task = backend.submit(request)
        except ValueError as exc:
            raise click.UsageError(str(exc)) from exc
        if not wait:
            if ctx.json:
                render.emit_json(task)
            else:
                render.say(f"{task['id']} {render.styled(task['status'])}")
            return
        finish(ctx, wait_for(ctx, backend, task["id"], wait_timeout))


@cli.command("tasks")
@click.option("--status", type=click.Choice([s.value for s in TaskStatus]))
@click.option("--type", "task_type")
@click.option("--queue")
@click.option("--node")
@click.option("--since", help="Created at or after: ISO-8601 time, or a duration ago (90m, 7d).")
@click.option("--until", help="Created before (same forms).")
@click.option("--id", "id_prefix", help="Id or id prefix.")
@click.option("--key", "idempotency_key", help="Idempotency key.")
@click.option("--limit", type=click.IntRange(1, 1000), default=50, show_default=True)
@click.option("--cursor", help="Continue after this task id (from the previous page).")
@json_option
@click.pass_obj
def list_tasks(ctx: CliContext, status: str | None, task_type: str | None, queue: str | None, node: str | None,
               since: str | None, until: str | None, id_prefix: str | None, idempotency_key: str | None,
               limit: int, cursor: str | None) -> None:
    """List tasks, newest first."""
    filters = {"status": status, "type": task_type, "queue": queue, "node": node,
               "since": parse_when(since, param="--since"), "until": parse_when(until, param="--until"),
               "id": id_prefix, "idempotency_key": idempotency_key}
    with ctx.backend() as backend:
        page = backend.tasks(filters, limit, cursor)
    if ctx.json:
        render.emit_json(page)
        return
    render.show(render.tasks_table(page["tasks"]))
    if page["next_cursor"]:
        render.say(f"more: --cursor {page['next_cursor']}")


@cli.command("task")
@click.argument("task_id")
@json_option
@click.pass_obj
def show_task(ctx: CliContext, task_id: str) -> None:
    """Show one task (id or unique id prefix) with its timeline."""
    with ctx.backend() as backend:
        task = backend.task(task_id)
    if ctx.json:
        render.emit_json(task)
    else:
        render.task_detail(task)


@cli.command("result")
@click.argument("task_id")
@json_option
@click.pass_obj
def result(ctx: CliContext, task_id: str) -> None:
    """Print a finished task's result as plain JSON (exit 1 with its error if it failed, 3 if it
    has not finished)."""
    with ctx.backend() as backend:
        task = backend.task(task_id)
    if task["status"] not in FINAL:
        fail(f"task {task['id']} has not finished: it is {task['status']}", kind="not_finished", code=EXIT_TIMEOUT)
    if task["status"] != "succeeded":
        fail(describe_end(task), kind=task["status"])
    render.emit_json(task.get("result"))


@cli.command("wait")
@click.argument("task_id")
@click.option("--timeout", "timeout_s", type=click.FloatRange(0), default=60.0, show_default=True,
              help="Give up after this many seconds (exit 3).")
@json_option
@click.pass_obj
def wait(ctx: CliContext, task_id: str, timeout_s: float) -> None:
    """Wait until a task finishes; print how it ended (exit 0 succeeded, 1 failed or cancelled,
    3 still unfinished at --timeout)."""
    with ctx.backend() as backend:
        finish(ctx, wait_for(ctx, backend, task_id, timeout_s))
