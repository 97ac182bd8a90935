"""Human output (rich tables, colours) and --json output for the CLI."""

from __future__ import annotations

import sys
from collections.abc import Iterable
from typing import Any

import orjson
from rich.console import Console
from rich.table import Table

from conveyor.model import NodeInfo, Task, TaskEvent, iso

STATUS_STYLE = {
    "scheduled": "cyan", "queued": "blue", "running": "yellow", "retrying": "magenta",
    "succeeded": "green", "failed": "red", "cancelled": "dim", "live": "green", "lost": "red",
    "stopped": "dim",
}

console = Console()


def emit_json(value: Any) -> None:
    sys.stdout.write(orjson.dumps(value, option=orjson.OPT_INDENT_2).decode() + "\n")


def styled(status: str) -> str:
    style = STATUS_STYLE.get(status, "")
    return f"[{style}]{status}[/]" if style else status


def tasks_table(tasks: Iterable[Task]) -> Table:
    table = Table(show_header=True, header_style="bold")
    for col in ("id", "type", "queue", "status", "attempts", "node", "created"):
        table.add_column(col)
    for t in tasks:
        table.add_row(str(t.id), t.type, t.queue, styled(t.status.value), f"{t.attempts}/{t.max_attempts}",
                      t.node or "", iso(t.created_at) or "")
    return table


def task_detail(task: Task, events: list[TaskEvent]) -> None:
    info = Table.grid(padding=(0, 2))
    info.add_column(style="bold")
    info.add_column()
    data = task.to_dict()
    data["status"] = styled(task.status.value)
    for key, value in data.items():
        if key == "error" and value:
            value = f"{value.get('type')}: {value.get('message')}"
        info.add_row(key, "" if value is None else str(value))
    console.print(info)
    if task.error and task.error.get("traceback"):
        console.print("[bold]traceback[/]")
        console.print(task.error["traceback"], markup=False, highlight=False)
    timeline = Table(title="timeline", show_header=True, header_style="bold")
    for col in ("at", "from", "to", "node", "detail"):
        timeline.add_column(col)
    for e in events:
        timeline.add_row(iso(e.at) or "", e.from_status.value if e.from_status else "-",
                         styled(e.to_status.value), e.node or "", e.detail or "")
    console.print(timeline)


def nodes_table(nodes: Iterable[NodeInfo]) -> Table:
    table = Table(show_header=True, header_style="bold")
    for col in ("node", "status", "host", "pid", "queues", "concurrency", "in flight", "done", "last heartbeat"):
        table.add_column(col)
    for n in nodes:
        queues = ",".join(q for q in n.queues if not q.startswith("_node."))  # its own queue: routing's
        table.add_row(n.id, styled(n.status), n.host, str(n.pid), queues, str(n.concurrency),
                      str(n.in_flight), str(n.done), iso(n.last_heartbeat) or "")
    return table
