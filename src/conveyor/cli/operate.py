"""Operator commands: ``cancel``, ``retry``, ``queues``, ``nodes``, ``purge``, ``dead list|replay|purge``.

Each goes through ``Operations`` (locally) or the HTTP API (``--api``), as the dashboard does.
Bulk retry and cancel stop after ``--limit`` tasks and say when more match.
"""

from __future__ import annotations

import time
from typing import Any

import click

from conveyor.cli import render
from conveyor.cli.main import CliContext, cli, json_option
from conveyor.cli.tasks import parse_when
from conveyor.model import TaskStatus
from conveyor.operations import BULK_LIMIT


def _report(ctx: CliContext, verb: str, result: dict[str, Any]) -> None:
    if ctx.json:
        render.emit_json(result)
        return
    for task_id in result["ids"]:
        render.say(f"{verb.lower()} {task_id}")
    skipped = f", {result['skipped']} skipped (their status does not allow it)" if result["skipped"] else ""
    more = "; more match: run it again" if result["more"] else ""
    render.say(f"{verb} {result['done']} task(s){skipped}{more}")


@cli.command()
@click.argument("task_ids", nargs=-1, required=True, metavar="ID...")
@json_option
@click.pass_obj
def cancel(ctx: CliContext, task_ids: tuple[str, ...]) -> None:
    """Cancel tasks that have not finished (ids or unique id prefixes)."""
    with ctx.backend() as backend:
        if len(task_ids) == 1:
            task = backend.cancel(task_ids[0])
            render.emit_json(task) if ctx.json else render.say(f"{task['id']} {render.styled(task['status'])}")
            return
        _report(ctx, "Cancelled", backend.bulk("cancel", list(task_ids), None, BULK_LIMIT))


@cli.command()
@click.argument("task_ids", nargs=-1, metavar="[ID...]")
@click.option("--status", type=click.Choice([TaskStatus.FAILED.value, TaskStatus.CANCELLED.value]),
              help="Retry the tasks with this status (default: failed and cancelled) matching the filters.")
@click.option("--type", "task_type", help="Only tasks of this type.")
@click.option("--queue", help="Only tasks of this queue.")
@click.option("--node", help="Only tasks last run by this node.")
@click.option("--since", help="Only tasks created at or after: ISO-8601 time or a duration ago (90m, 7d).")
@click.option("--until", help="Only tasks created before (same forms).")
@click.option("--limit", type=click.IntRange(1, BULK_LIMIT), default=BULK_LIMIT, show_default=True)
@json_option
@click.pass_obj
def retry(ctx: CliContext, task_ids: tuple[str, ...], status: str | None, task_type: str | None,
          queue: str | None, node: str | None, since: str | None, until: str | None, limit: int) -> None:
    """Run failed or cancelled tasks again: by ID (or prefix), or every one matching the filters."""
    filtered = any(v is not None for v in (status, task_type, queue, node, since, until))
    if bool(task_ids) == filtered:
        raise click.UsageError("give task ids, or filters (--status, --type, --queue, --node, --since), not both")
    with ctx.backend() as backend:
        if len(task_ids) == 1:
            task = backend.retry(task_ids[0])
            render.emit_json(task) if ctx.json else render.say(f"{task['id']} {render.styled(task['status'])}")
            return
        if task_ids:
            _report(ctx, "Retried", backend.bulk("retry", list(task_ids), None, limit))
            return
        filters = {"status": status, "type": task_type, "queue": queue, "node": node,
                   "since": parse_when(since, param="--since"), "until": parse_when(until, param="--until")}
        _report(ctx, "Retried", backend.bulk("retry", None, filters, limit))


@cli.command("queues")
@json_option
@click.pass_obj
def queues(ctx: CliContext) -> None:
    """Per queue: depth, in flight, oldest waiting, consumers, totals."""
    with ctx.backend() as backend:
        rows = backend.queues()
    render.emit_json(rows) if ctx.json else render.show(render.queues_table(rows))


@cli.command("nodes")
@json_option
@click.pass_obj
def nodes(ctx: CliContext) -> None:
    """List worker nodes with their heartbeat and load."""
    with ctx.backend() as backend:
        rows = backend.nodes()
    render.emit_json(rows) if ctx.json else render.show(render.nodes_table(rows))


@cli.command()
@click.option("--finished-before", required=True,
              help="Delete tasks finished before this: ISO-8601 time, or a duration ago (30d).")
@click.option("--yes", is_flag=True, help="Do not ask for confirmation.")
@json_option
@click.pass_obj
def purge(ctx: CliContext, finished_before: str, yes: bool) -> None:
    """Delete finished tasks (and their timelines) for good, in short batches."""
    cutoff = parse_when(finished_before, param="--finished-before")
    assert cutoff is not None
    if not yes and not ctx.json and not click.confirm(
            f"Delete every task finished before {time.strftime('%Y-%m-%d %H:%M:%S', time.gmtime(cutoff))} UTC?"):
        raise click.exceptions.Abort()
    with ctx.backend() as backend:
        deleted = backend.purge(cutoff)
    render.emit_json({"deleted": deleted}) if ctx.json else render.say(f"deleted {deleted} task(s)")


# -- dead letters ---------------------------------------------------------------------------
@cli.group()
def dead() -> None:
    """Dead letters: messages no node could run (malformed, or of a type no node knows)."""


@dead.command("list")
@click.option("--limit", type=click.IntRange(1, 1000), default=100, show_default=True)
@json_option
@click.pass_obj
def dead_list(ctx: CliContext, limit: int) -> None:
    """List dead letters with the reason, oldest first."""
    with ctx.backend() as backend:
        letters = backend.dead_letters(limit)
    render.emit_json(letters) if ctx.json else render.show(render.dead_table(letters))


def _chosen(ids: tuple[str, ...], everything: bool) -> list[str] | None:
    if bool(ids) == everything:
        raise click.UsageError("give dead-letter ids (from `conveyor dead list`) or --all")
    return None if everything else list(ids)


@dead.command("replay")
@click.argument("ids", nargs=-1, metavar="[ID...]")
@click.option("--all", "everything", is_flag=True, help="Replay every dead letter.")
@json_option
@click.pass_obj
def dead_replay(ctx: CliContext, ids: tuple[str, ...], everything: bool) -> None:
    """Send dead letters back: a failed task runs again under its id; other messages go back to
    their queue as they are."""
    chosen = _chosen(ids, everything)
    with ctx.backend() as backend:
        count = backend.dead_action("replay", chosen)
    render.emit_json({"replayed": count}) if ctx.json else render.say(f"replayed {count} dead letter(s)")


@dead.command("purge")
@click.argument("ids", nargs=-1, metavar="[ID...]")
@click.option("--all", "everything", is_flag=True, help="Delete every dead letter.")
@json_option
@click.pass_obj
def dead_purge(ctx: CliContext, ids: tuple[str, ...], everything: bool) -> None:
    """Delete dead letters for good."""
    chosen = _chosen(ids, everything)
    with ctx.backend() as backend:
        count = backend.dead_action("delete", chosen)
    render.emit_json({"deleted": count}) if ctx.json else render.say(f"deleted {count} dead letter(s)")
