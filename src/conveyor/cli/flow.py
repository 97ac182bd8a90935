"""``conveyor workflow | workflows | broadcast | shard | limits | limit``: flow control from the
shell (docs/flow-control.md). Everything goes through ``FlowService``, as the HTTP API does."""

from __future__ import annotations

import sys
import uuid
from typing import Any

import click
from rich.table import Table

from conveyor.cli import render
from conveyor.cli.main import CliContext, cli
from conveyor.errors import SerializationError
from conveyor.message import loads


def _app(ctx: CliContext):  # type: ignore[no-untyped-def]
    from conveyor.app import Conveyor

    return Conveyor(settings=ctx.settings)


def _json_object(text: str, hint: str) -> dict[str, Any]:
    try:
        value = loads(text)
    except SerializationError as exc:
        raise click.BadParameter(str(exc), param_hint=hint) from exc
    if not isinstance(value, dict):
        raise click.BadParameter("must be a JSON object", param_hint=hint)
    return value


def _workflow_id(text: str) -> uuid.UUID:
    try:
        return uuid.UUID(text)
    except ValueError as exc:
        raise click.BadParameter("not a workflow id (UUID)", param_hint="WORKFLOW_ID") from exc


def show_workflow(ctx: CliContext, view: dict[str, Any]) -> None:
    if ctx.json:
        render.emit_json(view)
        return
    render.console.print(f"workflow {view['id']} [bold]{view['name']}[/] {render.styled(view['status'])}")
    table = Table(show_header=True, header_style="bold")
    for col in ("step", "type", "after", "status", "node", "attempts", "detail"):
        table.add_column(col)
    for step in view["steps"]:
        table.add_row(step["name"], step["type"], ",".join(step["after"]), render.styled(step["status"]),
                      step["node"] or "", str(step["attempts"]), step["detail"] or
                      ((step["error"] or {}).get("message") or ""))
    render.console.print(table)
    if view["status"] == "succeeded":
        render.console.print(f"result={view['result']!r}")


def _wait(ctx: CliContext, app: Any, workflow_id: str, wait: bool, wait_timeout: float) -> None:
    handle = app.handle_workflow(workflow_id)
    view = handle.wait(wait_timeout) if wait else handle.get()
    show_workflow(ctx, view)
    if wait and view["status"] != "succeeded":
        raise SystemExit(1)


@cli.group()
def workflow() -> None:
    """Submit, show and cancel workflows (chains, groups, chords, DAGs)."""


@workflow.command("submit")
@click.argument("spec_file", metavar="FILE", type=click.File("r"))
@click.option("--wait", is_flag=True, help="Wait for the workflow to finish.")
@click.option("--wait-timeout", type=float, default=300.0, show_default=True)
@click.pass_obj
def workflow_submit(ctx: CliContext, spec_file: Any, wait: bool, wait_timeout: float) -> None:
    """Submit the workflow in FILE ('-' for stdin): JSON, {"name", "steps": [{"name", "type",
    "params", "after", ...}], "result"} (docs/flow-control.md)."""
    spec = _json_object(spec_file.read(), "FILE")
    app = _app(ctx)
    try:
        view = app.flow.submit_workflow(spec)
    except ValueError as exc:
        raise click.UsageError(str(exc)) from exc
    _wait(ctx, app, view["id"], wait, wait_timeout)


@workflow.command("show")
@click.argument("workflow_id", metavar="WORKFLOW_ID")
@click.pass_obj
def workflow_show(ctx: CliContext, workflow_id: str) -> None:
    """Show a workflow: its status and each step's."""
    show_workflow(ctx, _app(ctx).flow.get_workflow(_workflow_id(workflow_id)))


@workflow.command("cancel")
@click.argument("workflow_id", metavar="WORKFLOW_ID")
@click.pass_obj
def workflow_cancel(ctx: CliContext, workflow_id: str) -> None:
    """Cancel the steps that have not started (running ones finish)."""
    show_workflow(ctx, _app(ctx).flow.cancel_workflow(_workflow_id(workflow_id)))


@cli.command("workflows")
@click.option("--limit", type=click.IntRange(1, 200), default=20, show_default=True)
@click.pass_obj
def list_workflows(ctx: CliContext, limit: int) -> None:
    """List workflows, newest first."""
    views = _app(ctx).flow.list_workflows(limit)
    if ctx.json:
        render.emit_json({"workflows": views})
        return
    table = Table(show_header=True, header_style="bold")
    for col in ("id", "name", "status", "steps", "created"):
        table.add_column(col)
    for view in views:
        done = sum(1 for s in view["steps"] if s["status"] in ("succeeded", "skipped"))
        table.add_row(view["id"], view["name"], render.styled(view["status"]), f"{done}/{len(view['steps'])}",
                      view["created_at"] or "")
    render.console.print(table)


def _fan_out_options(f: Any) -> Any:
    for option in (click.option("--params", default="{}", show_default=True, help="Task params as a JSON object."),
                   click.option("--queue", help="Queue (default: the type's)."),
                   click.option("--wait", is_flag=True, help="Wait until every copy finished."),
                   click.option("--wait-timeout", type=float, default=300.0, show_default=True)):
        f = option(f)
    return f


@cli.command("broadcast")
@click.argument("task_type", metavar="TYPE")
@_fan_out_options
@click.pass_obj
def broadcast(ctx: CliContext, task_type: str, params: str, queue: str | None, wait: bool,
              wait_timeout: float) -> None:
    """Run a task of TYPE once on every live node of its queue."""
    app = _app(ctx)
    options = {"queue": queue} if queue else {}
    try:
        view = app.flow.broadcast(task_type, _json_object(params, "--params"), **options)
    except ValueError as exc:
        raise click.UsageError(str(exc)) from exc
    _wait(ctx, app, view["id"], wait, wait_timeout)


@cli.command("shard")
@click.argument("task_type", metavar="TYPE")
@click.option("--shards", type=click.IntRange(1, 1000), help="How many (default: one per live node).")
@_fan_out_options
@click.pass_obj
def shard(ctx: CliContext, task_type: str, shards: int | None, params: str, queue: str | None, wait: bool,
          wait_timeout: float) -> None:
    """Run SHARDS copies of a task of TYPE spread over the live nodes (shard_index/shard_total)."""
    app = _app(ctx)
    options = {"queue": queue} if queue else {}
    try:
        view = app.flow.shard(task_type, _json_object(params, "--params"), shards=shards, **options)
    except ValueError as exc:
        raise click.UsageError(str(exc)) from exc
    _wait(ctx, app, view["id"], wait, wait_timeout)


@cli.command("limits")
@click.pass_obj
def list_limits(ctx: CliContext) -> None:
    """Rate and concurrency limits, with their keys in use."""
    limits = _app(ctx).flow.limits()
    if ctx.json:
        render.emit_json({"limits": limits})
        return
    table = Table(show_header=True, header_style="bold")
    for col in ("type", "kind", "limit", "key param", "source", "keys in use"):
        table.add_column(col)
    for limit in limits:
        value = (f"{limit['rate_per_s']:g}/s burst {limit['burst']}" if limit["kind"] == "rate"
                 else f"{limit['max_running']} running")
        keys = limit["keys"]
        if limit["kind"] == "concurrency":
            used = ", ".join(f"{k['key'] or '-'}: {k['slots']} held, {k['parked']} parked" for k in keys[:5])
        else:
            used = ", ".join(f"{k['key'] or '-'}: next {k['next_start_at']}" for k in keys[:5])
        table.add_row(limit["name"], limit["kind"], value, limit["key_param"] or "", limit["source"],
                      used + (" ..." if len(keys) > 5 else ""))
    render.console.print(table)


@cli.group()
def limit() -> None:
    """Set or remove the rate or concurrency limit of a task type (an operator's setting wins over code)."""


@limit.command("set")
@click.argument("task_type", metavar="TYPE")
@click.option("--rate", help="Tasks started per period: 100/m, 50/s, 5/10s.")
@click.option("--burst", type=click.IntRange(1, 100_000), help="With --rate: how many may start at once.")
@click.option("--concurrency", type=click.IntRange(1, 1_000_000), help="Tasks running at once.")
@click.option("--key", "key_param", help="The param whose value keys the limit (default: one for the type).")
@click.pass_obj
def limit_set(ctx: CliContext, task_type: str, rate: str | None, burst: int | None, concurrency: int | None,
              key_param: str | None) -> None:
    """Set TYPE's rate limit (--rate) or concurrency limit (--concurrency)."""
    if (rate is None) == (concurrency is None):
        raise click.UsageError("give exactly one of --rate or --concurrency")
    flow = _app(ctx).flow
    try:
        if rate is not None:
            result = flow.set_limit(task_type, "rate", rate=rate, burst=burst, key_param=key_param)
        else:
            result = flow.set_limit(task_type, "concurrency", max_running=concurrency, key_param=key_param)
    except ValueError as exc:
        raise click.UsageError(str(exc)) from exc
    if ctx.json:
        render.emit_json(result)
    else:
        render.console.print(f"{task_type} {result['kind']} limit set")


@limit.command("rm")
@click.argument("task_type", metavar="TYPE")
@click.option("--kind", type=click.Choice(["rate", "concurrency"]), required=True)
@click.pass_obj
def limit_rm(ctx: CliContext, task_type: str, kind: str) -> None:
    """Remove TYPE's stored limit of KIND (one declared in code returns when a worker with it starts)."""
    if not _app(ctx).flow.remove_limit(task_type, kind):
        click.echo(f"no {kind} limit for {task_type!r}", err=True)
        sys.exit(1)
    render.console.print(f"{task_type} {kind} limit removed")
