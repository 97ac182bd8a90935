"""The task module of the flow-control end-to-end tests (docs/flow-control.md), served by real
``conveyor worker`` processes on both deployments. Every handler records each EXECUTION in the
log of ``tests/execlog.py``; ``flow.slot`` also records when it ends, so overlaps can be counted.
"""

from __future__ import annotations

import time
from typing import Any

from conveyor import Conveyor, current_task
from tests.execlog import record

app = Conveyor()

CONCURRENCY_PER_KEY = 2
RATE_PER_S = 50


@app.task("flow.slot", concurrency_limit=CONCURRENCY_PER_KEY, concurrency_key="customer", max_attempts=5)
def slot(customer: str, n: int, sleep_s: float = 0.05) -> dict[str, Any]:
    """At most two running per customer, across every node."""
    record("flow.slot")
    time.sleep(sleep_s)
    record("flow.slot.end")
    return {"customer": customer, "n": n}


@app.task("flow.rated", rate_limit=f"{RATE_PER_S}/s", max_attempts=5)
def rated(n: int) -> int:
    """At most 50 started per second, across every node."""
    record("flow.rated")
    return n


@app.task("flow.step", max_attempts=5)
def step(name: str, sleep_s: float = 0.0, previous: Any = None) -> dict[str, Any]:
    """A workflow step: returns its name and what it got from its parents."""
    record("flow.step")
    if sleep_s:
        time.sleep(sleep_s)
    return {"name": name, "previous": previous}


@app.task("flow.fail", max_attempts=1)
def fail(name: str, previous: Any = None) -> None:
    record("flow.fail")
    raise ValueError(f"step {name} fails on purpose")


@app.task("flow.where", max_attempts=3)
def where() -> dict[str, Any]:
    """Broadcast and sharded: where it ran, and which shard."""
    record("flow.where")
    ctx = current_task()
    return {"node": ctx.node, "shard_index": ctx.shard_index, "shard_total": ctx.shard_total}


@app.task("flow.keyed", route="key", route_key="account", max_attempts=3)
def keyed(account: str, n: int) -> str:
    """Routed by account: one node per account while it lives."""
    record("flow.keyed")
    return current_task().node


@app.task("flow.unique", unique_on=["report"], max_attempts=3)
def unique(report: str, sleep_s: float = 0.0) -> str:
    record("flow.unique")
    time.sleep(sleep_s)
    return report
