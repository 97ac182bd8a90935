"""Workflows: a graph of steps stored with the tasks, released by the outcomes of their parents.

A workflow is stored in one transaction: its row, one row per step (``waiting``, with the count
of parents that have not succeeded yet), the edges, and the tasks of the steps without parents
(with their outbox intents). A step's task is created only when it is released: in the SAME
transaction that records the success of its last parent, with the parents' results in its
params and an outbox intent, so a chord can neither fail to fire (the intent guarantees the
message) nor fire twice (the step leaves ``waiting`` by compare-and-set; its task id was fixed at
submit, so it can be inserted once only). A parent that fails (or is cancelled) ends its waiting
dependants, transitively: ``failed`` or ``skipped`` by each dependant's policy (a skipped parent
skips its dependants). Cancelling a workflow cancels its waiting steps and the tasks of released
steps that have not started; running ones finish, and release nothing.

Outcomes recorded outside a worker's flow transaction (a foreign worker's report, a manual
cancel, a task failed as crashed) are caught up by ``sweep``, which looks at the parents of the
waiting steps as they are now.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from conveyor import message
from conveyor.errors import SerializationError
from conveyor.flow.tx import FlowTx, as_uuid
from conveyor.message import Message
from conveyor.model import Task, TaskStatus, iso, new_task_id

WAITING, RELEASED, SKIPPED, FAILED, CANCELLED = "waiting", "released", "skipped", "failed", "cancelled"
POLICIES = ("fail", "skip")
MAX_STEPS = 10_000
_SUCCESS = TaskStatus.SUCCEEDED
_NOT_STARTED = (TaskStatus.QUEUED, TaskStatus.SCHEDULED, TaskStatus.RETRYING)


@dataclass(frozen=True, slots=True)
class StepSpec:
    """One step: the task to run, the steps it waits for, and what it gets from them."""

    name: str
    task: Task  # built and validated at submit (its id is the step's task id)
    after: tuple[str, ...] = ()
    collect: str = "one"  # "one": the parent's result; "list": the parents' results, in ``after`` order
    pass_as: str | None = "previous"  # the param that receives the parents' results (None: not passed)
    on_parent_failure: str = "fail"  # fail | skip


@dataclass(frozen=True, slots=True)
class WorkflowSpec:
    name: str
    steps: tuple[StepSpec, ...]
    result: tuple[str, ...] = ()  # the steps whose results make the workflow's result
    result_list: bool = False  # a list of results (a group) rather than one
    id: uuid.UUID = field(default_factory=new_task_id)  # UUIDv7: workflows list newest first by id


def validate(spec: WorkflowSpec) -> None:
    """Names unique, parents known, no cycle, policies known."""
    if not spec.steps:
        raise ValueError("a workflow needs at least one step")
    if len(spec.steps) > MAX_STEPS:
        raise ValueError(f"a workflow has at most {MAX_STEPS} steps")
    names = [s.name for s in spec.steps]
    if len(set(names)) != len(names):
        raise ValueError("step names must be unique")
    known = set(names)
    for step in spec.steps:
        if not step.name or len(step.name) > 200:
            raise ValueError("a step name must be 1-200 characters")
        unknown = set(step.after) - known
        if unknown:
            raise ValueError(f"step {step.name!r} waits for unknown step(s) {sorted(unknown)}")
        if step.on_parent_failure not in POLICIES:
            raise ValueError(f"step {step.name!r}: on_parent_failure must be one of {', '.join(POLICIES)}")
        if step.collect not in ("one", "list") or (step.collect == "one" and len(step.after) > 1):
            raise ValueError(f"step {step.name!r}: a step after several steps collects a list")
    unknown_result = set(spec.result) - known
    if unknown_result:
        raise ValueError(f"result names unknown step(s) {sorted(unknown_result)}")
    order(spec.steps)


def order(steps: Sequence[StepSpec]) -> list[str]:
    """The step names parents first (raises on a cycle)."""
    parents = {s.name: set(s.after) for s in steps}
    done: list[str] = []
    ready = sorted(n for n, p in parents.items() if not p)
    placed: set[str] = set()
    while ready:
        name = ready.pop()
        done.append(name)
        placed.add(name)
        for child, p in parents.items():
            if child not in placed and child not in ready and p <= placed:
                ready.append(child)
    if len(done) != len(parents):
        raise ValueError("the workflow's steps form a cycle")
    return done


def _spec_json(step: StepSpec) -> str:
    t = step.task
    return message.dumps({
        "type": t.type, "params": t.params, "queue": t.queue, "priority": t.priority,
        "max_attempts": t.max_attempts, "timeout": t.timeout, "after": list(step.after), "collect": step.collect,
        "pass_as": step.pass_as, "on_parent_failure": step.on_parent_failure, "flow": t.flow or {},
    }).decode()


def step_flow(workflow_id: uuid.UUID, name: str, extra: dict[str, Any] | None = None) -> dict[str, Any]:
    return {**(extra or {}), "workflow": str(workflow_id), "step": name}


def create(tx: FlowTx, spec: WorkflowSpec) -> list[Task]:
    """Store the workflow; returns its first tasks (written with their outbox intents)."""
    validate(spec)
    result = message.dumps({"steps": list(spec.result), "list": spec.result_list}).decode()
    tx.run("INSERT INTO flow_workflows (id, name, state, result, created_at) VALUES (?, ?, 'running', ?, ?)",
           (spec.id, spec.name, result, tx.now))
    for step in spec.steps:
        tx.run("INSERT INTO flow_steps (workflow_id, name, task_id, state, pending, spec) VALUES (?, ?, ?, ?, ?, ?)",
               (spec.id, step.name, step.task.id, WAITING, len(step.after), _spec_json(step)))
        for parent in sorted(set(step.after)):
            tx.run("INSERT INTO flow_edges (workflow_id, parent, child) VALUES (?, ?, ?)", (spec.id, parent, step.name))
    roots = [s for s in spec.steps if not s.after]
    first: list[Task] = []
    for step in roots:
        task = step.task.replace(flow=step_flow(spec.id, step.name, step.task.flow), created_at=tx.now,
                                 queued_at=tx.now if step.task.eta is None else None)
        (written, _), = tx.insert([task], detail=f"workflow {spec.name}: step {step.name}", publish=True)
        tx.run("UPDATE flow_steps SET state = ? WHERE workflow_id = ? AND name = ?", (RELEASED, spec.id, step.name))
        first.append(written)
    return first


def _step_of(task: Task) -> tuple[uuid.UUID, str] | None:
    flow = task.flow or {}
    wid, step = flow.get("workflow"), flow.get("step")
    if not isinstance(wid, str) or not isinstance(step, str):
        return None
    return uuid.UUID(wid), step


def after_outcomes(tx: FlowTx, written: Sequence[Task]) -> list[Task]:
    """In the transaction that recorded these tasks' outcomes: release the dependants of the
    steps that succeeded, end those of the steps that failed. Returns the tasks released."""
    publish: list[Task] = []
    for task in written:
        step = _step_of(task)
        if step is None or not task.status.is_final:
            continue
        if task.status is _SUCCESS:
            publish += _on_succeeded(tx, *step)
        else:
            publish += _end_dependants(tx, step[0], step[1], FAILED)
    return publish


def _children(tx: FlowTx, wid: uuid.UUID, name: str) -> list[str]:
    return [r[0] for r in tx.rows("SELECT child FROM flow_edges WHERE workflow_id = ? AND parent = ? ORDER BY child",
                                  (wid, name))]


def _on_succeeded(tx: FlowTx, wid: uuid.UUID, name: str) -> list[Task]:
    released: list[Task] = []
    for child in _children(tx, wid, name):
        rows = tx.rows("UPDATE flow_steps SET pending = pending - 1 WHERE workflow_id = ? AND name = ?"
                       " AND state = ? RETURNING pending", (wid, child, WAITING))
        if rows and rows[0][0] <= 0:
            released += _release(tx, wid, child)
    return released


def _release(tx: FlowTx, wid: uuid.UUID, name: str) -> list[Task]:
    """Start a step whose parents all succeeded: its task, with their results, and its intent."""
    rows = tx.rows("UPDATE flow_steps SET state = ?, pending = 0 WHERE workflow_id = ? AND name = ? AND state = ?"
                   " RETURNING task_id, spec", (RELEASED, wid, name, WAITING))
    if not rows:
        return []  # released already, or ended (cancelled, a parent failed)
    task_id, spec = as_uuid(rows[0][0]), message.loads(rows[0][1])
    params = dict(spec["params"])
    if spec["pass_as"] and spec["after"]:
        results = _parent_results(tx, wid, spec["after"])
        params[spec["pass_as"]] = results[0] if spec["collect"] == "one" else results
    task = Task(id=task_id, type=spec["type"], params=params, queue=spec["queue"], priority=spec["priority"],
                max_attempts=spec["max_attempts"], timeout=spec["timeout"], status=TaskStatus.QUEUED,
                created_at=tx.now, queued_at=tx.now, flow=step_flow(wid, name, spec.get("flow")))
    try:
        message.encode(Message.for_task(task))
    except SerializationError as exc:  # the parents' results make it too large to send
        tx.run("UPDATE flow_steps SET state = ?, detail = ? WHERE workflow_id = ? AND name = ?",
               (FAILED, f"cannot start: {exc}", wid, name))
        return _end_dependants(tx, wid, name, FAILED)
    (written, _), = tx.insert([task], detail=f"workflow step {name}: its parents succeeded", publish=True)
    return [written]


def _parent_results(tx: FlowTx, wid: uuid.UUID, parents: Sequence[str]) -> list[Any]:
    ids = {r[0]: as_uuid(r[1]) for name in parents
           for r in tx.rows("SELECT name, task_id FROM flow_steps WHERE workflow_id = ? AND name = ?", (wid, name))}
    tasks = tx.tasks(list(ids.values()))
    return [tasks[ids[p]].result if ids.get(p) in tasks else None for p in parents]


def _end_dependants(tx: FlowTx, wid: uuid.UUID, name: str, how: str) -> list[Task]:
    """A step ended without success (``how``: failed or skipped): end its waiting dependants,
    and theirs, by each one's policy."""
    stack = [(name, how)]
    while stack:
        parent, parent_how = stack.pop()
        for child in _children(tx, wid, parent):
            rows = tx.rows("SELECT spec FROM flow_steps WHERE workflow_id = ? AND name = ? AND state = ?",
                           (wid, child, WAITING))
            if not rows:
                continue
            policy = message.loads(rows[0][0])["on_parent_failure"]
            state = SKIPPED if policy == "skip" or parent_how == SKIPPED else FAILED
            detail = f"step {parent} {'was skipped' if parent_how == SKIPPED else 'did not succeed'}"
            if tx.run("UPDATE flow_steps SET state = ?, detail = ? WHERE workflow_id = ? AND name = ? AND state = ?",
                      (state, detail, wid, child, WAITING)):
                stack.append((child, state))
    return []


def cancel_waiting(tx: FlowTx, wid: uuid.UUID) -> list[uuid.UUID]:
    """Cancel the workflow and its waiting steps; returns the task ids of its released steps
    (the caller cancels those that have not started, each in its own compare-and-set)."""
    tx.run("UPDATE flow_workflows SET state = ?, cancelled_at = ? WHERE id = ? AND state = 'running'",
           (CANCELLED, tx.now, wid))
    tx.run("UPDATE flow_steps SET state = ?, detail = 'workflow cancelled' WHERE workflow_id = ? AND state = ?",
           (CANCELLED, wid, WAITING))
    return [as_uuid(r[0]) for r in tx.rows("SELECT task_id FROM flow_steps WHERE workflow_id = ? AND state = ?",
                                           (wid, RELEASED))]


def cancel_task(tx: FlowTx, task_id: uuid.UUID) -> Task | None:
    """Cancel a released step's task if it has not started (queued, scheduled or retrying)."""
    task = tx.tasks([task_id], lock=True).get(task_id)
    if task is None or task.status not in _NOT_STARTED:
        return None
    return tx.update(task, TaskStatus.CANCELLED, finished_at=tx.now, detail="workflow cancelled")


def sweep(tx: FlowTx, limit: int = 500) -> list[Task]:
    """Catch up waiting steps whose parents ended outside a worker's flow transaction."""
    waiting = tx.rows("SELECT workflow_id, name FROM flow_steps WHERE state = ? LIMIT ?", (WAITING, limit))
    publish: list[Task] = []
    by_workflow: dict[uuid.UUID, list[str]] = {}
    for raw_wid, name in waiting:
        by_workflow.setdefault(as_uuid(raw_wid), []).append(name)
    for wid, names in by_workflow.items():
        steps = {r[0]: (as_uuid(r[1]), r[2], message.loads(r[3]))
                 for r in tx.rows("SELECT name, task_id, state, spec FROM flow_steps WHERE workflow_id = ?", (wid,))}
        tasks = tx.tasks([tid for tid, state, _ in steps.values() if state == RELEASED])
        for name in names:
            outcome = _parents_outcome(steps, tasks, steps[name][2]["after"])
            if outcome == "succeeded":
                publish += _release(tx, wid, name)
            elif outcome is not None:
                publish += _end_dependants_of_parent(tx, wid, name, outcome)
    return publish


def _parents_outcome(steps: dict[str, tuple[uuid.UUID, str, Any]], tasks: dict[uuid.UUID, Task],
                     parents: Sequence[str]) -> str | None:
    """'succeeded' when every parent did, FAILED/SKIPPED when one ended otherwise, None while waiting."""
    ended: str | None = None
    all_succeeded = True
    for parent in parents:
        task_id, state, _ = steps[parent]
        status = tasks[task_id].status if state == RELEASED and task_id in tasks else None
        if status is _SUCCESS:
            continue
        all_succeeded = False
        if state in (FAILED, CANCELLED) or (status is not None and status.is_final):
            ended = FAILED
        elif state == SKIPPED and ended is None:
            ended = SKIPPED
    return "succeeded" if all_succeeded else ended


def _end_dependants_of_parent(tx: FlowTx, wid: uuid.UUID, name: str, parent_how: str) -> list[Task]:
    """``name`` is waiting on a parent that ended without success: end it (and its dependants)."""
    rows = tx.rows("SELECT spec FROM flow_steps WHERE workflow_id = ? AND name = ? AND state = ?", (wid, name, WAITING))
    if not rows:
        return []
    policy = message.loads(rows[0][0])["on_parent_failure"]
    state = SKIPPED if policy == "skip" or parent_how == SKIPPED else FAILED
    if tx.run("UPDATE flow_steps SET state = ?, detail = 'a parent did not succeed' WHERE workflow_id = ? AND name = ?"
              " AND state = ?", (state, wid, name, WAITING)):
        _end_dependants(tx, wid, name, state)
    return []


def view(tx: FlowTx, wid: uuid.UUID) -> dict[str, Any] | None:
    """The workflow as the API shows it: its status, result, graph and each step's status."""
    rows = tx.rows("SELECT name, state, result, created_at, cancelled_at FROM flow_workflows WHERE id = ?", (wid,))
    if not rows:
        return None
    name, state, result_spec, created_at, cancelled_at = rows[0]
    steps = tx.rows("SELECT name, task_id, state, spec, detail FROM flow_steps WHERE workflow_id = ? ORDER BY name",
                    (wid,))
    tasks = tx.tasks([as_uuid(r[1]) for r in steps if r[2] == RELEASED])
    out_steps = []
    for step_name, raw_id, step_state, spec_text, detail in steps:
        spec = message.loads(spec_text)
        task = tasks.get(as_uuid(raw_id))
        out_steps.append({
            "name": step_name, "type": spec["type"], "after": spec["after"], "task_id": str(as_uuid(raw_id)),
            "status": task.status.value if task is not None else step_state, "detail": detail,
            "node": task.node if task is not None else None, "attempts": task.attempts if task is not None else 0,
            "started_at": iso(task.started_at) if task is not None else None,
            "finished_at": iso(task.finished_at) if task is not None else None,
            "error": task.error if task is not None else None,
            "shard": (spec.get("flow") or {}).get("shard"),
            "on_parent_failure": spec["on_parent_failure"],
        })
    status = _status(state, [s["status"] for s in out_steps])
    result = message.loads(result_spec)
    by_name = {s[0]: tasks.get(as_uuid(s[1])) for s in steps}
    values = [by_name[n].result if by_name.get(n) is not None else None for n in result["steps"]]  # type: ignore[union-attr]
    finished = [t.finished_at for t in tasks.values() if t.finished_at is not None]
    return {
        "id": str(wid), "name": name, "status": status,
        "result": (values if result["list"] else (values[0] if values else None)) if status == "succeeded" else None,
        "created_at": iso(created_at), "cancelled_at": iso(cancelled_at),
        "finished_at": iso(max(finished)) if status in ("succeeded", "failed") and finished else None,
        "steps": out_steps,
        "edges": [[parent, s["name"]] for s in out_steps for parent in s["after"]],
    }


def _status(state: str, step_statuses: Sequence[str]) -> str:
    if state == CANCELLED:
        return "cancelled"
    final = {"succeeded", "failed", "cancelled", SKIPPED, FAILED}
    if any(s not in final for s in step_statuses):
        return "running"
    return "failed" if any(s in ("failed", "cancelled") for s in step_statuses) else "succeeded"


def list_ids(tx: FlowTx, limit: int, before: uuid.UUID | None) -> list[uuid.UUID]:
    if before is None:
        rows = tx.rows("SELECT id FROM flow_workflows ORDER BY id DESC LIMIT ?", (limit,))
    else:
        rows = tx.rows("SELECT id FROM flow_workflows WHERE id < ? ORDER BY id DESC LIMIT ?", (before, limit))
    return [as_uuid(r[0]) for r in rows]
