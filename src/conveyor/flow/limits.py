"""Rate and concurrency limits, global across nodes: decided in the store, on its clock.

**Concurrency** (at most N running per limit key). A claim takes a *slot* (a ``flow_slots``
row) in the same transaction that starts the task; the slot is valid while the task runs under
a live lease. A claim over the limit *parks* the task (``flow_parked``; the task becomes
``scheduled`` without an eta and its delivery is acked): it waits in the store, holding no
worker slot and no message. The transaction that records a holder's outcome frees its slot and
releases the oldest parked task of that key: it reserves the slot for it and records an outbox
intent, so its message is published (and can never be lost). A holder whose lease expired (its
node died) is taken over by the next claim or sweep of its key, which frees its slot.

**Rate** (at most R started per second per limit key, GCRA). Each key keeps the theoretical
arrival time ``tat`` of its next task. A claim within the burst tolerance starts at once;
otherwise the task reserves the next free start time (``flow_reserved``) and is deferred to it:
it becomes ``scheduled`` with that eta and its delivery goes back to the broker with that delay.
Tasks are served in the order they reserved, exactly R per second, however many nodes claim. A
reservation missed by more than ``RATE_STALE_S`` (its worker was busy) is dropped and taken
again, so a late crowd cannot start in a burst.

The claims' rows are locked first (in id order), then the limit buckets (sorted): the outcome
side locks the outcome's task row first too, so two transactions never wait in a circle.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from conveyor.errors import ConcurrentUpdate
from conveyor.flow.options import FlowOptions
from conveyor.flow.tx import OUTBOX_UPSERT, FlowTx, as_uuid
from conveyor.model import Task, TaskStatus, iso
from conveyor.recovery import take_over
from conveyor.store.base import CLAIM_EARLY_SLACK_S

RATE = "rate"
CONCURRENCY = "concurrency"
RESERVE_S = 30.0  # a released parked task keeps its slot this long for its message to arrive
RATE_STALE_S = 2.0  # a rate reservation missed by more than this is taken again
_WAITING = (TaskStatus.QUEUED, TaskStatus.SCHEDULED, TaskStatus.RETRYING)


@dataclass(frozen=True, slots=True)
class LimitDef:
    """One limit of a task type (``name``): a rate or a concurrency limit, maybe keyed by a param."""

    name: str
    kind: str  # RATE | CONCURRENCY
    rate_per_s: float | None = None
    burst: int = 1
    max_running: int | None = None
    key_param: str | None = None

    def describe(self) -> str:
        keyed = f" per {self.key_param}" if self.key_param else ""
        if self.kind == RATE:
            return f"{self.rate_per_s:g}/s (burst {self.burst}){keyed}"
        return f"{self.max_running} running{keyed}"


@dataclass(frozen=True, slots=True)
class LimitRef:
    """A limit as it applies to one task: the limit and the task's key value."""

    limit: LimitDef
    key: str

    @property
    def bucket(self) -> tuple[str, str, str]:
        return self.limit.kind, self.limit.name, self.key

    def label(self) -> str:
        return f"{self.limit.name}[{self.key}]" if self.key else self.limit.name


@dataclass(frozen=True, slots=True)
class Held:
    """A claim flow control held back: deferred until ``until`` (rate), or parked (``until`` None)."""

    until: float | None
    reason: str


ClaimResult = Task | Held | None  # started | held back | not claimable now (the slow path decides)


def declared_limits(task_type: str, options: FlowOptions | None) -> list[LimitDef]:
    """The limits a task type declares in code."""
    if options is None:
        return []
    limits = []
    if options.rate_limit is not None:
        limits.append(LimitDef(task_type, RATE, rate_per_s=options.rate_limit, burst=options.rate_burst,
                               key_param=options.rate_key))
    if options.concurrency_limit is not None:
        limits.append(LimitDef(task_type, CONCURRENCY, max_running=options.concurrency_limit,
                               key_param=options.concurrency_key))
    return limits


def limit_from_row(row: Sequence[Any]) -> LimitDef:
    name, kind, rate, burst, max_running, key_param = row[:6]
    return LimitDef(name, kind, rate_per_s=rate, burst=int(burst or 1), max_running=max_running, key_param=key_param)


LIMIT_COLS = "name, kind, rate_per_s, burst, max_running, key_param, source, updated_at"


def stored_limits(tx: FlowTx, names: Iterable[str] | None = None) -> dict[tuple[str, str], LimitDef]:
    """The limits as stored (``flow_limits``), by (name, kind); all, or those of ``names``."""
    if names is None:
        rows = tx.rows(f"SELECT {LIMIT_COLS} FROM flow_limits")
    else:
        rows = [r for name in sorted(set(names))
                for r in tx.rows(f"SELECT {LIMIT_COLS} FROM flow_limits WHERE name = ?", (name,))]
    return {(r[0], r[1]): limit_from_row(r) for r in rows}


def register_limits(tx: FlowTx, limits: Sequence[LimitDef]) -> None:
    """Record the limits declared in code (a manual setting of the same limit wins)."""
    for d in limits:
        tx.run(f"INSERT INTO flow_limits ({LIMIT_COLS}) VALUES (?, ?, ?, ?, ?, ?, 'code', ?)"
               " ON CONFLICT (name, kind) DO UPDATE SET rate_per_s = excluded.rate_per_s, burst = excluded.burst,"
               " max_running = excluded.max_running, key_param = excluded.key_param, updated_at = excluded.updated_at"
               " WHERE flow_limits.source = 'code'",
               (d.name, d.kind, d.rate_per_s, d.burst, d.max_running, d.key_param, tx.now))


def _claimable(task: Task, attempt: int, at: float) -> bool:
    """The batch claim's rule (``Store.claim_many``)."""
    if task.attempts >= attempt:
        return False
    if task.status is TaskStatus.QUEUED:
        return True
    return task.status in (TaskStatus.SCHEDULED, TaskStatus.RETRYING) and (
        task.eta is None or task.eta <= at + CLAIM_EARLY_SLACK_S)


class _TxClock:
    """A FlowTx seen as the bit of a Store that ``recovery.take_over`` writes through."""

    def __init__(self, tx: FlowTx) -> None:
        self._tx = tx
        self.update = tx.update

    def now(self) -> float:
        return self._tx.now


@dataclass
class _Concurrency:
    """A concurrency key's slots as this transaction sees them."""

    max_running: int
    holders: set[uuid.UUID] = field(default_factory=set)
    reserved: set[uuid.UUID] = field(default_factory=set)  # released parked tasks whose claim is due


def _load_slots(tx: FlowTx, name: str, key: str, max_running: int, max_crashes: int,
                publish: list[Task]) -> _Concurrency:
    """The valid holders of a key's slots. A holder running past its lease is taken over (so it
    can never come back and make one too many) and its slot freed; stale rows are deleted."""
    state = _Concurrency(max_running)
    rows = tx.rows("SELECT task_id, reserved_until FROM flow_slots WHERE name = ? AND key = ?", (name, key))
    tasks = tx.tasks([as_uuid(r[0]) for r in rows])
    for raw_id, reserved_until in rows:
        task_id = as_uuid(raw_id)
        task = tasks.get(task_id)
        if task is not None and task.status is TaskStatus.RUNNING:
            if task.lease_until is not None and task.lease_until > tx.now:
                state.holders.add(task_id)
                continue
            try:
                taken = take_over(_TxClock(tx), task, max_crashes=max_crashes)  # type: ignore[arg-type]
            except ConcurrentUpdate:
                state.holders.add(task_id)  # its owner renewed just now
                continue
            if taken.status is not TaskStatus.FAILED:
                publish.append(taken)
        elif task is not None and task.status in _WAITING and reserved_until is not None and reserved_until > tx.now:
            state.holders.add(task_id)
            state.reserved.add(task_id)
            continue
        tx.run("DELETE FROM flow_slots WHERE name = ? AND key = ? AND task_id = ?", (name, key, task_id))
    return state


def _take_slot(tx: FlowTx, name: str, key: str, task_id: uuid.UUID, reserved_until: float | None) -> None:
    tx.run("INSERT INTO flow_slots (name, key, task_id, reserved_until) VALUES (?, ?, ?, ?)"
           " ON CONFLICT (name, key, task_id) DO UPDATE SET reserved_until = excluded.reserved_until",
           (name, key, task_id, reserved_until))


@dataclass
class _Rate:
    tat: float
    changed: bool = False


def _gcra(state: _Rate, limit: LimitDef, now: float) -> float | None:
    """Take the next start time: None when it is now (within the burst), else the time reserved."""
    interval = 1.0 / (limit.rate_per_s or 1.0)
    tolerance = (limit.burst - 1) * interval
    tat = max(state.tat, now)
    state.tat, state.changed = tat + interval, True
    if tat - now <= tolerance + 1e-9:
        return None
    return tat - tolerance


class _Admission:
    """The limits' state for one claim transaction: buckets loaded once, decisions in order."""

    def __init__(self, tx: FlowTx, limits: dict[tuple[str, str], LimitDef], max_crashes: int) -> None:
        self.tx = tx
        self.limits = limits
        self.max_crashes = max_crashes
        self.publish: list[Task] = []
        self.slots: dict[tuple[str, str], _Concurrency] = {}
        self.rates: dict[tuple[str, str], _Rate] = {}

    def effective(self, ref: LimitRef) -> LimitDef:
        return self.limits.get((ref.limit.name, ref.limit.kind), ref.limit)

    def load(self, refs: Iterable[LimitRef]) -> None:
        unique = {ref.bucket: ref for ref in refs}
        self.tx.lock_buckets(sorted(unique))
        for (kind, name, key), ref in sorted(unique.items()):
            limit = self.effective(ref)
            if kind == CONCURRENCY:
                self.slots[(name, key)] = _load_slots(self.tx, name, key, limit.max_running or 1, self.max_crashes,
                                                      self.publish)
            else:
                row = self.tx.rows("SELECT tat FROM flow_buckets WHERE kind = ? AND name = ? AND key = ?",
                                   (RATE, name, key))
                self.rates[(name, key)] = _Rate(float(row[0][0]) if row else 0.0)

    def decide(self, task: Task, refs: Sequence[LimitRef]) -> Held | None:
        """None to start ``task`` now (its slots and tokens taken), or why and until when it waits."""
        slots = [r for r in refs if r.limit.kind == CONCURRENCY]
        for ref in slots:
            state = self.slots[(ref.limit.name, ref.key)]
            if task.id not in state.reserved and len(state.holders) >= state.max_running:
                return Held(None, f"waits for a concurrency slot of {ref.label()} ({state.max_running} running)")
        for ref in (r for r in refs if r.limit.kind == RATE):
            until = self._rate(task, ref)
            if until is not None:
                return Held(until, f"rate limit {ref.label()}: starts at {iso(until)}")
        for ref in slots:
            state = self.slots[(ref.limit.name, ref.key)]
            state.holders.add(task.id)
            state.reserved.discard(task.id)
            _take_slot(self.tx, ref.limit.name, ref.key, task.id, None)
        return None

    def _rate(self, task: Task, ref: LimitRef) -> float | None:
        tx, name, key = self.tx, ref.limit.name, ref.key
        reserved = tx.rows("SELECT at FROM flow_reserved WHERE task_id = ? AND name = ? AND key = ?",
                           (task.id, name, key))
        if reserved:
            at = float(reserved[0][0])
            if tx.now < at - CLAIM_EARLY_SLACK_S:
                return at
            tx.run("DELETE FROM flow_reserved WHERE task_id = ? AND name = ? AND key = ?", (task.id, name, key))
            if tx.now <= at + RATE_STALE_S:
                return None  # its reserved start time: go
        until = _gcra(self.rates[(name, key)], self.effective(ref), tx.now)
        if until is not None:
            tx.run("INSERT INTO flow_reserved (task_id, name, key, at) VALUES (?, ?, ?, ?)",
                   (task.id, name, key, until))
        return until

    def save(self) -> None:
        for (name, key), state in self.rates.items():
            if state.changed:
                self.tx.run("UPDATE flow_buckets SET tat = ? WHERE kind = ? AND name = ? AND key = ?",
                            (state.tat, RATE, name, key))


def claim_limited(tx: FlowTx, requests: Sequence[tuple[uuid.UUID, int, Sequence[LimitRef]]], node: str,
                  lease_s: float, *, max_crashes: int) -> tuple[list[ClaimResult], list[Task]]:
    """Claim limited tasks (id, attempt m, the limits that apply) in one transaction: each starts,
    is held back (deferred or parked), or is left to the slow path (None: not claimable now).
    Returns the results in order, and tasks that now need a message (holders taken over)."""
    tasks = tx.tasks([r[0] for r in requests], lock=True)
    results: list[ClaimResult] = [None] * len(requests)
    seen: set[uuid.UUID] = set()
    candidates: list[int] = []
    for i, (task_id, attempt, _) in enumerate(requests):
        task = tasks.get(task_id)
        if task is not None and task_id not in seen and _claimable(task, attempt, tx.now):
            seen.add(task_id)
            candidates.append(i)
    if not candidates:
        return results, []
    admission = _Admission(tx, stored_limits(tx, {ref.limit.name for i in candidates for ref in requests[i][2]}),
                           max_crashes)
    admission.load(ref for i in candidates for ref in requests[i][2])
    admitted: list[int] = []
    for i in candidates:
        task_id, _, refs = requests[i]
        held = admission.decide(tasks[task_id], refs)
        if held is None:
            admitted.append(i)
        else:
            results[i] = held
            _hold(tx, tasks[task_id], held, refs)
    admission.save()
    started = tx.claim([(requests[i][0], requests[i][1]) for i in admitted], node, lease_s)
    for i, task in zip(admitted, started, strict=True):
        results[i] = task
    return results, admission.publish


def _hold(tx: FlowTx, task: Task, held: Held, refs: Sequence[LimitRef]) -> None:
    """Write the wait: the task is ``scheduled`` (eta = the reserved start, or none while parked)."""
    if held.until is None:
        ref = next(r for r in refs if r.limit.kind == CONCURRENCY)
        inserted = tx.run("INSERT INTO flow_parked (name, key, task_id, at) VALUES (?, ?, ?, ?) ON CONFLICT DO NOTHING",
                          (ref.limit.name, ref.key, task.id, tx.now))
        if not inserted and task.status is TaskStatus.SCHEDULED and task.eta is None:
            return  # a copy of the message of a task parked already
    if task.status is TaskStatus.QUEUED:
        tx.update(task, TaskStatus.SCHEDULED, detail=held.reason, eta=held.until)
    else:  # scheduled or retrying already: only the eta moves
        tx.update(task, None, eta=held.until)


def release_slots(tx: FlowTx, task_ids: Sequence[uuid.UUID], *, max_crashes: int) -> list[Task]:
    """After these tasks' outcomes (same transaction): free their slots, drop their rate
    reservations, and release parked tasks into the freed slots. Returns the released tasks
    (their outbox intents are written: publish them)."""
    buckets: set[tuple[str, str]] = set()
    for task_id in task_ids:
        for name, key in tx.rows("DELETE FROM flow_slots WHERE task_id = ? RETURNING name, key", (task_id,)):
            buckets.add((name, key))
    return release_parked(tx, sorted(buckets), max_crashes=max_crashes)


def release_parked(tx: FlowTx, buckets: Sequence[tuple[str, str]], *, max_crashes: int) -> list[Task]:
    """Fill the free slots of these concurrency keys with their oldest parked tasks."""
    if not buckets:
        return []
    limits = stored_limits(tx, {name for name, _ in buckets})
    tx.lock_buckets([(CONCURRENCY, name, key) for name, key in sorted(buckets)])
    publish: list[Task] = []
    for name, key in sorted(buckets):
        limit = limits.get((name, CONCURRENCY))
        max_running = limit.max_running if limit is not None and limit.max_running else 1_000_000
        state = _load_slots(tx, name, key, max_running, max_crashes, publish)
        free = state.max_running - len(state.holders)
        while free > 0:
            rows = tx.rows("SELECT task_id FROM flow_parked WHERE name = ? AND key = ? ORDER BY at, task_id LIMIT ?",
                           (name, key, free))
            if not rows:
                break
            for (raw_id,) in rows:
                task_id = as_uuid(raw_id)
                tx.run("DELETE FROM flow_parked WHERE name = ? AND key = ? AND task_id = ?", (name, key, task_id))
                task = tx.tasks([task_id]).get(task_id)
                if task is None or task.status not in _WAITING:
                    continue  # cancelled (or gone) while it waited
                _take_slot(tx, name, key, task_id, tx.now + RESERVE_S)
                tx.run(OUTBOX_UPSERT, (task_id, task.version, tx.now))
                publish.append(task)
                free -= 1
    return publish


def sweep_parked(tx: FlowTx, *, max_crashes: int, limit: int = 200) -> list[Task]:
    """Release parked tasks wherever a slot is free: slots freed by an expired lease, a cancel or
    a foreign worker's report (paths that do not release with the outcome)."""
    buckets = [(name, key) for name, key in tx.rows("SELECT DISTINCT name, key FROM flow_parked LIMIT ?", (limit,))]
    return release_parked(tx, buckets, max_crashes=max_crashes)
