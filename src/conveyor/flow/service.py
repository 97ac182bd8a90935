"""FlowService: workflows (submit, look up, cancel), broadcast and sharded submits, and limits
(list, set, remove). The Python API, the CLI and the HTTP API all go through it, as they go
through ``TaskService`` for single tasks (whose validation it reuses for every step)."""

from __future__ import annotations

import logging
import uuid
from collections.abc import Mapping
from typing import Any

from conveyor import message
from conveyor.errors import ConcurrentUpdate, WorkflowNotFound
from conveyor.flow import limits as lim
from conveyor.flow import routing, workflows
from conveyor.flow.options import check_route
from conveyor.flow.tx import flow_transaction
from conveyor.model import Task, iso, new_task_id
from conveyor.service import SubmitRequest, TaskService

log = logging.getLogger(__name__)

_STEP_OPTIONS = ("queue", "priority", "max_attempts", "timeout")


class FlowService:
    def __init__(self, tasks: TaskService, heartbeat_s: float = routing.DEFAULT_HEARTBEAT_S) -> None:
        self.tasks = tasks
        self.store = tasks.store
        self.heartbeat_s = heartbeat_s

    # -- workflows ------------------------------------------------------------------------
    def build(self, spec: Mapping[str, Any]) -> workflows.WorkflowSpec:
        """Validate a JSON workflow spec (docs/flow-control.md) into steps with built tasks."""
        raw_steps = spec.get("steps")
        if not isinstance(raw_steps, list) or not raw_steps:
            raise ValueError("steps: a workflow needs a list of steps")
        steps = [self._step(i, s) for i, s in enumerate(raw_steps)]
        names = [s.name for s in steps]
        result = spec.get("result")
        if result is None:
            parents = {p for s in steps for p in s.after}
            leaves = [n for n in names if n not in parents]
            if not leaves:
                raise ValueError("the workflow's steps form a cycle")
            result = leaves if len(leaves) > 1 else leaves[0]
        result_list = isinstance(result, list)
        built = workflows.WorkflowSpec(name=str(spec.get("name") or "workflow")[:200], steps=tuple(steps),
                                       result=tuple(result if isinstance(result, list) else [result]),
                                       result_list=result_list)
        workflows.validate(built)
        return built

    def _step(self, index: int, raw: Any) -> workflows.StepSpec:
        if not isinstance(raw, dict):
            raise ValueError(f"steps[{index}] must be an object")
        unknown = set(raw) - {"name", "type", "params", "after", "pass_as", "on_parent_failure", *_STEP_OPTIONS}
        if unknown:
            raise ValueError(f"steps[{index}]: unknown field(s) {sorted(unknown)}")
        after = raw.get("after") or []
        collect = "one" if isinstance(after, str) else "list"
        after_list = [after] if isinstance(after, str) else list(after)
        if not all(isinstance(a, str) for a in after_list):
            raise ValueError(f"steps[{index}].after must be a step name or a list of them")
        task = self.tasks.build_task(SubmitRequest(
            type=raw.get("type"), params=raw.get("params") or {},  # type: ignore[arg-type]
            **{k: raw.get(k) for k in _STEP_OPTIONS}))
        task = task.replace(flow=None)  # a step is deduped by the workflow, never by a unique key
        return workflows.StepSpec(
            name=str(raw.get("name") or f"{index + 1}.{task.type}"), task=task, after=tuple(after_list),
            collect=collect, pass_as=raw.get("pass_as", "previous"),
            on_parent_failure=raw.get("on_parent_failure") or "fail")

    def submit_workflow(self, spec: Mapping[str, Any] | workflows.WorkflowSpec) -> dict[str, Any]:
        """Store the workflow (durable on return) and publish its first steps; returns its view."""
        built = spec if isinstance(spec, workflows.WorkflowSpec) else self.build(spec)
        for step in built.steps:  # refuse a step whose message would be too large, before storing
            message.encode(message.Message.for_task(step.task))
        with flow_transaction(self.store) as tx:
            first = workflows.create(tx, built)
        self.tasks.publisher.send(first)
        return self.get_workflow(built.id)

    def get_workflow(self, workflow_id: uuid.UUID) -> dict[str, Any]:
        with flow_transaction(self.store) as tx:
            view = workflows.view(tx, workflow_id)
        if view is None:
            raise WorkflowNotFound(workflow_id)
        return view

    def list_workflows(self, limit: int = 50, cursor: uuid.UUID | None = None) -> list[dict[str, Any]]:
        with flow_transaction(self.store) as tx:
            ids = workflows.list_ids(tx, limit, cursor)
            return [v for v in (workflows.view(tx, i) for i in ids) if v is not None]

    def cancel_workflow(self, workflow_id: uuid.UUID) -> dict[str, Any]:
        """Cancel what has not started: waiting steps, and released ones still queued,
        scheduled or retrying. Running steps finish; nothing after them starts."""
        self.get_workflow(workflow_id)  # 404 before anything
        with flow_transaction(self.store) as tx:
            released = workflows.cancel_waiting(tx, workflow_id)
        for task_id in released:
            for _ in range(5):
                try:
                    with flow_transaction(self.store) as tx:
                        workflows.cancel_task(tx, task_id)
                    break
                except ConcurrentUpdate:
                    continue
        return self.get_workflow(workflow_id)

    # -- routing --------------------------------------------------------------------------
    def broadcast(self, task_type: str, params: dict[str, Any] | None = None, **options: Any) -> dict[str, Any]:
        """One child task per live node of the queue, each run on its node: a workflow."""
        template = self._template(task_type, params, options)
        nodes = self._live(template.queue)
        steps = [workflows.StepSpec(f"node:{n.id}", template.replace(
            id=new_task_id(), flow={"route": "broadcast", "node": n.id})) for n in nodes]
        return self.submit_workflow(workflows.WorkflowSpec(
            name=f"broadcast {task_type}", steps=tuple(steps), result=tuple(s.name for s in steps), result_list=True))

    def shard(self, task_type: str, params: dict[str, Any] | None = None, *, shards: int | None = None,
              **options: Any) -> dict[str, Any]:
        """``shards`` child tasks (default: one per live node), spread over the live nodes; each
        reads ``shard_index``/``shard_total`` from ``current_task()``."""
        template = self._template(task_type, params, options)
        nodes = self._live(template.queue)
        spec = self.tasks.registry.find(task_type)
        declared = spec.options.flow.shards if spec is not None and spec.options.flow is not None else None
        total = shards or declared or len(nodes)
        check_route("sharded", None, total)
        steps = [workflows.StepSpec(f"shard:{i}", template.replace(
            id=new_task_id(), flow={"route": "sharded", "node": node.id, "shard": [i, total]}))
            for i, node in enumerate(routing.spread(nodes, total))]
        return self.submit_workflow(workflows.WorkflowSpec(
            name=f"sharded {task_type}", steps=tuple(steps), result=tuple(s.name for s in steps), result_list=True))

    def _template(self, task_type: str, params: dict[str, Any] | None, options: dict[str, Any]) -> Task:
        unknown = set(options) - set(_STEP_OPTIONS)
        if unknown:
            raise ValueError(f"unknown option(s) {sorted(unknown)}")
        return self.tasks.build_task(SubmitRequest(type=task_type, params=params or {}, **options)).replace(flow=None)

    def _live(self, queue: str) -> list[Any]:
        nodes = routing.live_nodes(self.store.nodes(), queue, self.store.now(), self.heartbeat_s)
        if not nodes:
            raise ValueError(f"no live node serves queue {queue!r}")
        return nodes

    # -- limits ---------------------------------------------------------------------------
    def limits(self) -> list[dict[str, Any]]:
        """Every stored limit with its keys in use: running and parked per concurrency key,
        the next free start per rate key."""
        with flow_transaction(self.store) as tx:
            rows = tx.rows(f"SELECT {lim.LIMIT_COLS} FROM flow_limits ORDER BY name, kind")
            out = []
            for row in rows:
                limit = lim.limit_from_row(row)
                out.append({"name": limit.name, "kind": limit.kind, "rate_per_s": limit.rate_per_s,
                            "burst": limit.burst if limit.kind == lim.RATE else None,
                            "max_running": limit.max_running, "key_param": limit.key_param, "source": row[6],
                            "keys": _keys(tx, limit)})
        return out

    def set_limit(self, name: str, kind: str, *, rate: str | float | None = None, burst: int | None = None,
                  max_running: int | None = None, key_param: str | None = None) -> dict[str, Any]:
        """Set (or override) a limit of task type ``name``; an operator's setting wins over code."""
        from conveyor.flow.options import parse_rate

        if kind == lim.RATE:
            rate_per_s = parse_rate(rate) if isinstance(rate, str) else rate
            if rate_per_s is None or rate_per_s <= 0:
                raise ValueError("a rate limit needs a positive rate (e.g. 100/m)")
            if burst is not None and burst < 1:
                raise ValueError("burst must be at least 1")
            values: tuple[float | None, int | None, int | None] = (rate_per_s, burst or 1, None)
        elif kind == lim.CONCURRENCY:
            if max_running is None or max_running < 1:
                raise ValueError("a concurrency limit needs max_running of at least 1")
            values = (None, None, max_running)
        else:
            raise ValueError("kind must be 'rate' or 'concurrency'")
        with flow_transaction(self.store) as tx:
            tx.run(f"INSERT INTO flow_limits ({lim.LIMIT_COLS}) VALUES (?, ?, ?, ?, ?, ?, 'manual', ?)"
                   " ON CONFLICT (name, kind) DO UPDATE SET rate_per_s = excluded.rate_per_s, burst = excluded.burst,"
                   " max_running = excluded.max_running, key_param = excluded.key_param, source = 'manual',"
                   " updated_at = excluded.updated_at", (name, kind, *values, key_param, tx.now))
        return next(x for x in self.limits() if x["name"] == name and x["kind"] == kind)

    def remove_limit(self, name: str, kind: str) -> bool:
        """Remove a stored limit (a limit declared in code is written again by the next worker
        that starts with it). Parked tasks of a removed concurrency limit are released."""
        with flow_transaction(self.store) as tx:
            removed = tx.run("DELETE FROM flow_limits WHERE name = ? AND kind = ?", (name, kind)) > 0
        return removed


def _keys(tx: Any, limit: lim.LimitDef) -> list[dict[str, Any]]:
    if limit.kind == lim.RATE:
        rows = tx.rows("SELECT key, tat FROM flow_buckets WHERE kind = ? AND name = ? ORDER BY key LIMIT 100",
                       (lim.RATE, limit.name))
        return [{"key": key, "next_start_at": iso(max(float(tat), tx.now))} for key, tat in rows]
    held = tx.rows("SELECT key, count(*) FROM flow_slots WHERE name = ? GROUP BY key ORDER BY key LIMIT 100",
                   (limit.name,))
    parked = dict(tx.rows("SELECT key, count(*) FROM flow_parked WHERE name = ? GROUP BY key", (limit.name,)))
    keys = {key: {"key": key, "slots": int(n), "parked": int(parked.pop(key, 0))} for key, n in held}
    keys.update({key: {"key": key, "slots": 0, "parked": int(n)} for key, n in parked.items()})
    return [keys[k] for k in sorted(keys)]

