"""Human output (rich tables, colours) and --json output for the CLI.

Tables print whole task ids, never cut: piped, the console has no width limit (a script gets
every id in full); in a terminal the id column keeps its 36 characters and the others give
way. Rows are the API's JSON shapes, so local and ``--api`` output look the same.
"""

from __future__ import annotations

import sys
from collections.abc import Iterable
from typing import Any

import orjson
from rich.console import Console
from rich.table import Table

from conveyor.config import mask_secrets

STATUS_STYLE = {
    "scheduled": "cyan", "queued": "blue", "running": "yellow", "retrying": "magenta",
    "succeeded": "green", "failed": "red", "cancelled": "dim", "live": "green", "lost": "red",
    "stopped": "dim",
}
ID_WIDTH = 36

console = Console()
PIPE_WIDTH = 100_000  # piped output: no width limit, so nothing is cut or wrapped
_piped = Console(width=PIPE_WIDTH)


def show(table: Table) -> None:
    """Print a table: to a terminal at its width, to a pipe with no limit."""
    (console if console.is_terminal else _piped).print(table)


def emit_json(value: Any) -> None:
    sys.stdout.write(orjson.dumps(value, option=orjson.OPT_INDENT_2).decode() + "\n")


def styled(status: str) -> str:
    style = STATUS_STYLE.get(status, "")
    return f"[{style}]{status}[/]" if style else status


def when(text: str | None) -> str:
    """An ISO-8601 time as ``2026-11-30 12:03:04`` (UTC)."""
    return (text or "").replace("T", " ").replace("Z", "")[:19]


def _table(*columns: str) -> Table:
    table = Table(show_header=True, header_style="bold")
    for name in columns:
        if name == "id":
            table.add_column(name, no_wrap=True, min_width=ID_WIDTH)
        else:
            table.add_column(name)
    return table


def tasks_table(tasks: Iterable[dict[str, Any]]) -> Table:
    table = _table("id", "type", "queue", "status", "attempts", "node", "created")
    for t in tasks:
        table.add_row(t["id"], t["type"], t["queue"], styled(t["status"]), f"{t['attempts']}/{t['max_attempts']}",
                      t.get("node") or "", when(t.get("created_at")))
    return table


def task_detail(task: dict[str, Any]) -> None:
    info = Table.grid(padding=(0, 2))
    info.add_column(style="bold")
    info.add_column()
    for key, value in task.items():
        if key in ("events", "created"):
            continue
        if key == "status":
            value = styled(value)
        elif key == "error" and value:
            value = f"{value.get('type')}: {value.get('message')}"
        elif key in ("params", "result") and value is not None:
            value = orjson.dumps(value).decode()
        info.add_row(key, "" if value is None else str(value))
    console.print(info, markup=True, highlight=False)
    error = task.get("error") or {}
    if error.get("traceback"):
        console.print("[bold]traceback[/]")
        console.print(error["traceback"], markup=False, highlight=False)
    timeline = Table(title="timeline", show_header=True, header_style="bold")
    for col in ("at", "from", "to", "node", "detail"):
        timeline.add_column(col)
    for e in task.get("events", []):
        timeline.add_row(when(e["at"]), e["from"] or "-", styled(e["to"]), e.get("node") or "", e.get("detail") or "")
    show(timeline)


def nodes_table(nodes: Iterable[dict[str, Any]]) -> Table:
    table = _table("node", "status", "host", "pid", "queues", "concurrency", "in flight", "done", "last heartbeat")
    for n in nodes:
        table.add_row(n["id"], styled(n["status"]), n["host"], str(n["pid"]), ",".join(n["queues"]),
                      str(n["concurrency"]), str(n["in_flight"]), str(n["done"]), when(n.get("last_heartbeat")))
    return table


def queues_table(queues: Iterable[dict[str, Any]]) -> Table:
    table = _table("queue", "depth", "queued", "in flight", "oldest waiting", "consumers", "slots", "succeeded",
                   "failed", "finished 60 s")
    for q in queues:
        oldest = q.get("oldest_waiting_s")
        table.add_row(q["name"], str(q["depth"]), str(q["queued"]), str(q["in_flight"]),
                      "" if oldest is None else f"{oldest:.1f} s", str(q["consumers"]), str(q["slots"]),
                      str(q["succeeded"]), str(q["failed"]), str(q["finished_last_60s"]))
    return table


def dead_table(letters: Iterable[dict[str, Any]]) -> Table:
    table = Table(show_header=True, header_style="bold")
    for name in ("id", "queue", "task", "type", "reason", "at"):
        table.add_column(name, no_wrap=name == "task", min_width=ID_WIDTH if name == "task" else None)
    for d in letters:
        table.add_row(d["id"], d["queue"], d.get("task_id") or "", d.get("type") or "", d["reason"], when(d.get("at")))
    return table


def say(text: str) -> None:
    console.print(mask_secrets(text), highlight=False)
