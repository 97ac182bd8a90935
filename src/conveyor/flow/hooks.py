"""What a worker asks of flow control, and nothing for an ordinary task.

The worker's cycle stays one statement for ordinary tasks. A delivery of a *limited* task type
(a rate or concurrency limit, declared in code or set in the store), or the outcome of a
*tracked* task (a workflow step, or a task holding a concurrency slot), makes that cycle run as
one multi-statement transaction instead (``cycle``, or ``claim``/``finish`` inside the embedded
backend's transaction): the claims take their slots and tokens (or are held back) and the
outcomes free slots and release dependants, in the same transaction, on the store's clock.
Telling the two apart costs a set lookup per delivery.

Held claims are settled after the commit: a parked task's delivery is acked (the store releases
it later, with an outbox intent), a deferred one's goes back to the broker until its start time.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

from conveyor.config import Settings
from conveyor.errors import ConveyorError
from conveyor.flow import routing, workflows
from conveyor.flow.limits import (
    CONCURRENCY,
    Held,
    LimitDef,
    LimitRef,
    claim_limited,
    declared_limits,
    register_limits,
    release_slots,
    stored_limits,
    sweep_parked,
)
from conveyor.flow.options import key_value
from conveyor.flow.tx import FlowTx, flow_reading, flow_transaction
from conveyor.message import Message
from conveyor.model import Task
from conveyor.store.base import Outcome, Store
from conveyor.task import Registry

if TYPE_CHECKING:
    from conveyor.worker.backend import Claimed, Finished

log = logging.getLogger(__name__)

REFRESH_S = 5.0  # how often a worker re-reads the limits set in the store
SWEEP_S = 2.0  # how often a worker looks for parked tasks, waiting steps and pins to dead nodes
PINS_PER_SWEEP = 200


def hold_delay_s(until: float, now: float) -> float:
    """How long a deferred delivery waits in the broker. Whole seconds from 1 s (RabbitMQ rounds
    delays of a second or more UP to whole seconds): it comes back up to a second early and the
    claim waits out the rest (in 100 ms steps), instead of coming back up to a second late."""
    delay = max(0.0, until - now)
    return float(math.floor(delay)) if delay >= 1.0 else delay


class FlowHooks:
    def __init__(self, registry: Registry, settings: Settings) -> None:
        self.max_crashes = settings.max_crashes
        self.heartbeat_s = settings.heartbeat_s
        self._declared: dict[str, list[LimitDef]] = {}
        for name in registry.names():
            spec = registry.find(name)
            limits = declared_limits(name, spec.options.flow) if spec is not None else []
            if limits:
                self._declared[name] = limits
        self.limits: dict[str, list[LimitDef]] = dict(self._declared)
        self._concurrency = self._concurrency_types()
        self._next_refresh = 0.0
        self._next_sweep = 0.0

    def _concurrency_types(self) -> frozenset[str]:
        return frozenset(t for t, defs in self.limits.items() if any(d.kind == CONCURRENCY for d in defs))

    # -- per delivery and outcome (the hot path: a set lookup) ----------------------------
    def gates(self, msg: Message) -> bool:
        """Whether claims of this message go through the limits."""
        return msg.type in self.limits

    def tracks(self, task: Task) -> bool:
        """Whether this task's outcome frees a slot or releases workflow steps."""
        flow = task.flow
        return task.type in self._concurrency or (flow is not None and "workflow" in flow)

    def involved(self, finished: Sequence[Finished], claims: Sequence[Claimed]) -> bool:
        """Whether this cycle needs flow control's transaction (per task: an attribute test,
        plus set lookups only when some type is limited)."""
        concurrency = self._concurrency
        for f in finished:
            task = f.task
            if task.flow is not None and "workflow" in task.flow:
                return True
            if concurrency and task.type in concurrency:
                return True
        limits = self.limits
        return bool(limits) and any(c.message is not None and c.message.type in limits for c in claims)

    def refs(self, msg: Message) -> list[LimitRef]:
        return [LimitRef(d, key_value(msg.params, d.key_param)) for d in self.limits.get(msg.type, ())]

    # -- inside one transaction -----------------------------------------------------------
    def finish(self, tx: FlowTx, finished: Sequence[Finished], outcomes: Sequence[Outcome],
               node: str) -> tuple[list[Task | None], list[Task]]:
        """Record outcomes (fenced); free the slots and release the steps they unblock. Returns
        the tasks written and the tasks that now need their message (intents written)."""
        written = tx.finish(outcomes, node) if outcomes else []
        tracked = [w for f, w in zip(finished, written, strict=True) if w is not None and self.tracks(f.task)]
        if not tracked:
            return written, []
        publish = release_slots(tx, [w.id for w in tracked if w.type in self._concurrency],
                                max_crashes=self.max_crashes)
        publish += workflows.after_outcomes(tx, tracked)
        return written, publish

    def claim(self, tx: FlowTx, claims: Sequence[Claimed], node: str,
              lease_s: float) -> tuple[list[Task | None], list[Task]]:
        """Claim the deliveries (all with a message): limited ones through their limits (a held
        one gets ``Claimed.hold``), the others as the batch claim does."""
        started: list[Task | None] = [None] * len(claims)
        msgs: list[Message] = [c.message for c in claims if c.message is not None]
        plain = [i for i, m in enumerate(msgs) if m.type not in self.limits]
        limited = [i for i, m in enumerate(msgs) if m.type in self.limits]
        if plain:
            for i, task in zip(plain, tx.claim([(msgs[i].id, msgs[i].attempt) for i in plain], node, lease_s),
                               strict=True):
                started[i] = task
        publish: list[Task] = []
        if limited:
            results, publish = claim_limited(tx, [(msgs[i].id, msgs[i].attempt, self.refs(msgs[i])) for i in limited],
                                             node, lease_s, max_crashes=self.max_crashes)
            for i, result in zip(limited, results, strict=True):
                if isinstance(result, Held):
                    claims[i].hold = result
                    claims[i].hold_s = hold_delay_s(result.until, tx.now) if result.until is not None else None
                else:
                    started[i] = result
        return started, publish

    def cycle(self, store: Store, finished: Sequence[Finished], claims: Sequence[Claimed], node: str,
              lease_s: float) -> tuple[list[Task | None], list[Task | None], list[Task]]:
        """A whole worker cycle as one transaction (the split backend's flow path; blocking)."""
        with flow_transaction(store) as tx:
            written, released = self.finish(tx, finished, [f.outcome for f in finished], node)
            started, taken = self.claim(tx, claims, node, lease_s) if claims else ([], [])
        return written, started, released + taken

    # -- upkeep (on a store thread, from the worker's keep loop) --------------------------
    def start(self, store: Store) -> None:
        """Record the limits this app declares, and read those set in the store."""
        declared = [d for defs in self._declared.values() for d in defs]
        if declared:
            with flow_transaction(store) as tx:
                register_limits(tx, declared)
        self.refresh(store)

    def refresh(self, store: Store) -> None:
        with flow_reading(store) as tx:
            stored = stored_limits(tx)
        limits: dict[str, dict[str, LimitDef]] = {t: {d.kind: d for d in defs} for t, defs in self._declared.items()}
        for (name, kind), limit in stored.items():
            limits.setdefault(name, {})[kind] = limit
        self.limits = {t: list(by_kind.values()) for t, by_kind in limits.items() if by_kind}
        self._concurrency = self._concurrency_types()

    def upkeep(self, store: Store, publish: Callable[[Sequence[Task]], None]) -> int:
        """When due: re-read the limits; release parked tasks into free slots, catch up waiting
        workflow steps, move tasks pinned to dead nodes. Returns how many tasks it published."""
        now = time.monotonic()
        if now >= self._next_refresh:
            self._next_refresh = now + REFRESH_S
            self.refresh(store)
        if now < self._next_sweep:
            return 0
        self._next_sweep = now + SWEEP_S
        return sweep(store, publish, max_crashes=self.max_crashes, heartbeat_s=self.heartbeat_s)


def sweep(store: Store, publish: Callable[[Sequence[Task]], None], *, max_crashes: int, heartbeat_s: float) -> int:
    """One pass of flow control's sweep (workers and the scheduler leader run it): cheap reads
    first, a write transaction only when there is something to do."""
    with flow_reading(store) as tx:
        parked = bool(tx.rows("SELECT 1 FROM flow_parked LIMIT 1"))
        waiting = bool(tx.rows("SELECT 1 FROM flow_steps WHERE state = 'waiting' LIMIT 1"))
        pinned = tx.pinned_nodes()
        nodes = tx.nodes() if pinned else []
    dead = set(routing.dead_pins(nodes, store.now(), heartbeat_s)) | (set(pinned) - {n.id for n in nodes})
    dead &= set(pinned)
    if not (parked or waiting or dead):
        return 0
    out: list[Task] = []
    with flow_transaction(store) as tx:
        if parked:
            out += sweep_parked(tx, max_crashes=max_crashes)
        if waiting:
            out += workflows.sweep(tx)
        for node in sorted(dead):
            out += routing.repin(tx, tx.pinned_waiting(node, PINS_PER_SWEEP), nodes, heartbeat_s)
    if out:
        try:
            publish(out)
        except ConveyorError as exc:  # the intents stay: the outbox reconciler publishes them
            log.warning("could not publish %d task(s) released by flow control: %s", len(out), exc)
    return len(out)
