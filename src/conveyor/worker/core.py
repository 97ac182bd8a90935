"""The worker's hot path: one asyncio event loop owns the broker and store connections.

Two loops share it (docs/architecture.md, "The worker"):

- **cycle**: whenever outcomes finished or deliveries wait for free slots, ONE transaction
  records the outcomes (fenced, durable) and claims up to the free slots' worth of deliveries;
  then the recorded outcomes' deliveries are acked (in batches) and the claimed tasks' handlers
  start. What arrives while a cycle is in flight goes in the next one (group commit). Deliveries
  the batch claim left undecided go to the slow path (``worker/claim.py``, on a thread). A
  cycle that fails is retried (the store may be restarting): results are kept, the node reports
  itself unhealthy, and slots never wait on a write (they free when the handler returns).
- **keep**: renew the store leases of running tasks (a task whose lease this node lost, to a
  cancel or a take-over, has its handler stopped: a flag in threads, a kill in the process
  pool), hand long tasks' deliveries off to the lease, heartbeat, and run the reaper.

Sync handlers run on handler threads, async ones on this loop, ``--pool process`` ones in
child processes. Nothing on the per-task path crosses a thread but the handler call itself.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import logging
import os
import socket
import threading
import time
import uuid
from collections.abc import Callable, Coroutine, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from conveyor import log as log_context
from conveyor import tracing
from conveyor.context import TaskContext, flow_context, set_current
from conveyor.errors import ConveyorError, StoreRefused, TaskNotFound
from conveyor.model import NodeInfo, Task, TaskStatus
from conveyor.recovery import recover_expired, republish_unpublished
from conveyor.store.base import Outcome
from conveyor.task import TaskSpec
from conveyor.worker.backend import Arrival, Backend, Claimed, Finished
from conveyor.worker.claim import Drop, Later, Republish, Run, decide
from conveyor.worker.executor import HandlerThreads, run_async
from conveyor.worker.outcome import decide_outcome

if TYPE_CHECKING:
    from conveyor.worker.worker import Worker

log = logging.getLogger("conveyor.worker.worker")

TAKE_WAIT_S = 0.2
GATHER_MAX_S = 0.002
RETRY_PAUSE_S = 0.1
RECORD_RETRY_MAX_S = 0.5  # a store back after an outage gets the outcomes before the leases lapse further
LOCAL_HOLD_S = 1.0  # flow control: shorter waits for a rate limit are held on the node, not in the broker


@dataclass(eq=False)
class InFlight:
    """A task this node is running, with the delivery that brought it."""

    task: Task
    arrival: Arrival
    started: float = field(default_factory=time.monotonic)
    cancelled: threading.Event = field(default_factory=threading.Event)
    lost: bool = False  # the store says another node or a cancel took it: its outcome is fenced off
    returned: bool = False  # given back on shutdown: its outcome is no longer ours to record
    finished: bool = False  # the handler returned; the outcome may still be on its way to the store
    span: tracing.RunSpan | None = None  # OpenTelemetry spans of the attempt, when the app traces


@dataclass(eq=False, slots=True)
class _Done:
    flight: InFlight
    outcome: Outcome
    dead_letter: str | None = None  # unknown task type: the delivery goes to the dead letters


class WorkerCore:
    def __init__(self, worker: Worker, backend: Backend) -> None:
        self.worker = worker
        self.backend = backend
        self.settings = worker.settings
        self.node = worker.node_id
        self.registry = worker.app.registry
        self.flights: dict[uuid.UUID, InFlight] = {}
        self.unhealthy: str | None = None  # why outcomes cannot be written, while they cannot
        self._retry_pause = RETRY_PAUSE_S
        self._last_cycle_s = 0.0
        self._free = worker.concurrency
        self._slot_freed = asyncio.Event()
        self._finished: list[_Done] = []
        self._finished_ready = asyncio.Event()
        self._stopping = asyncio.Event()
        self._threads = HandlerThreads(worker.concurrency, asyncio.get_running_loop())
        self._store_calls = ThreadPoolExecutor(4, thread_name_prefix="conveyor-store-call")
        self._pool_calls = (ThreadPoolExecutor(worker.concurrency, thread_name_prefix="conveyor-pool")
                            if worker.process_pool is not None else None)
        self._loops: list[asyncio.Task[None]] = []
        self._spawned: set[asyncio.Task[Any]] = set()
        self._runs: set[asyncio.Task[None]] = set()  # handler calls: never waited for at shutdown
        self._last_heartbeat = 0.0
        self._last_reap = time.monotonic()
        self.stats = {"claim_batches": 0, "claimed": 0, "record_batches": 0, "recorded": 0}

    # -- lifecycle ------------------------------------------------------------------------
    async def start(self) -> None:
        # Beyond its slots a node holds a bounded number of deliveries (fair dispatch), as many as
        # its slots by default: enough that each cycle finds a full batch waiting.
        prefetch = self.settings.prefetch if self.settings.prefetch is not None else self.worker.concurrency
        await self.backend.start(self.worker.consumed_queues, self.worker.concurrency, prefetch)
        if self.backend.flow is not None:  # record the app's declared limits (docs/flow-control.md)
            await self._store_call(self.backend.flow.start, self.backend.store)
        await self.heartbeat()
        loop = asyncio.get_running_loop()
        self._loops = [loop.create_task(self._cycle_loop()), loop.create_task(self._keep_loop())]

    def stop(self) -> None:
        self._stopping.set()
        self._slot_freed.set()

    async def shutdown(self) -> None:
        """Stop taking; let in-flight tasks finish within the grace period; give back the rest."""
        self.stop()
        cycle_loop, keep_loop = self._loops
        await _logged(self.backend.stop_taking(), "stop consuming")
        deadline = time.monotonic() + self.settings.grace_s
        while any(not f.finished for f in self.flights.values()) and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        await self._give_back([f for f in self.flights.values() if not f.finished])
        while (self._finished or any(f.finished for f in self.flights.values())) \
                and time.monotonic() < deadline + 10:
            await asyncio.sleep(0.05)
        cycle_loop.cancel()
        keep_loop.cancel()
        await asyncio.gather(cycle_loop, keep_loop, return_exceptions=True)
        await _logged(self.heartbeat(status="stopped"), "final heartbeat")
        for run in self._runs:
            run.cancel()  # only returned tasks are left; a thread still running one is abandoned
        if self._spawned:
            await asyncio.wait(self._spawned, timeout=5)
        await _logged(self.backend.close(), "close")
        self._threads.close()
        self._store_calls.shutdown(wait=False)
        if self._pool_calls is not None:
            self._pool_calls.shutdown(wait=False)

    # -- cycle ----------------------------------------------------------------------------
    async def _cycle_loop(self) -> None:
        settings = self.settings
        while True:
            take = 0 if self._stopping.is_set() else self._free
            if not self._finished:
                await self._wait_for_work(take)
            await self._gather()
            take = 0 if self._stopping.is_set() else self._free
            batch, self._finished = self._finished, []
            self._finished_ready.clear()
            if not batch and take <= 0:
                continue
            await self._dead_letter_unknown(batch)
            finished = [Finished(d.flight.arrival, d.outcome, d.flight.task) for d in batch]
            started = time.monotonic()
            try:
                written, claimed = await self.backend.cycle(finished, take, self.node, settings.lease_s)
            except Exception as exc:  # a driver's own error too: the loop must live on
                if not isinstance(exc, ConveyorError):
                    log.exception("cycle failed unexpectedly; retrying", extra={"worker": self.node})
                self._finished[:0] = batch  # kept: written by the next cycle
                await self._cycle_failed(exc)
                continue
            if self.unhealthy is not None:
                log.info("the store takes writes again", extra={"worker": self.node, "action": "healthy"})
                self.unhealthy, self._retry_pause = None, RETRY_PAUSE_S
            self._last_cycle_s = time.monotonic() - started
            self._recorded(batch, written)
            if claimed:
                self.stats["claim_batches"] += 1
                self.stats["claimed"] += len(claimed)
            for one in claimed:
                self._dispatch(one)

    async def _gather(self) -> None:
        """Group commit: handlers the last cycle started usually finish within a fraction of
        a cycle; wait for them (at most about one cycle) so the next cycle records their
        outcomes and claims their slots' worth of deliveries in one statement, rather than
        alternating half-empty cycles. A node with every slot free starts at once."""
        if self._free >= self.worker.concurrency or self._stopping.is_set():
            return
        deadline = time.monotonic() + min(self._last_cycle_s, GATHER_MAX_S)
        while self._free < self.worker.concurrency and time.monotonic() < deadline:
            self._slot_freed.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._slot_freed.wait(), max(0.0, deadline - time.monotonic()))

    async def _wait_for_work(self, take: int) -> None:
        """Until an outcome is ready, or (with free slots) deliveries may be waiting."""
        if take <= 0:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._finished_ready.wait(), TAKE_WAIT_S)
            return
        waiters = [asyncio.ensure_future(self._finished_ready.wait()),
                   asyncio.ensure_future(self.backend.wait(TAKE_WAIT_S))]
        try:
            await asyncio.wait(waiters, timeout=TAKE_WAIT_S, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for waiter in waiters:
                waiter.cancel()

    async def _cycle_failed(self, exc: Exception) -> None:
        if self.unhealthy is None:
            log.warning("cannot write to the store: %s; retrying", exc, extra={"worker": self.node,
                                                                             "action": "unhealthy"})
        self.unhealthy = str(exc)
        await asyncio.sleep(self._retry_pause)
        self._retry_pause = min(self._retry_pause * 2, RECORD_RETRY_MAX_S)

    def _dispatch(self, claimed: Claimed) -> None:
        arrival = claimed.arrival
        if claimed.message is None:
            log.error("dead-lettering a malformed message from %s: %s", arrival.queue, claimed.error,
                      extra={"queue": arrival.queue, "action": "dead_letter"})
            self._spawn(self.backend.dead_letter(arrival, claimed.error or "malformed message"))
            return
        if claimed.hold is not None:  # flow control held it back: it waits in the store or the broker
            self._spawn(self._settle_hold(claimed))
            return
        self._free -= 1
        if claimed.task is not None:
            self._start(claimed.task, arrival)
        else:
            self._spawn(self._slow_claim(claimed))

    async def _slow_claim(self, claimed: Claimed) -> None:
        msg, arrival = claimed.message, claimed.arrival
        assert msg is not None
        settings = self.settings
        if msg.id in self.flights:  # a second copy of a task running here: look again after it
            self._release_slot()
            await _logged(self.backend.requeue(arrival, settings.lease_s), "requeue")
            return
        flow = self.backend.flow
        try:
            decision = await self._store_call(decide, self.backend.store, msg, self.node,
                                              lease_s=settings.lease_s, max_crashes=settings.max_crashes,
                                              gated=flow is not None and flow.gates(msg))
        except StoreRefused as exc:  # the same message would be refused again: no loop
            log.warning("the store refused task %s: %s; dead-lettered", msg.id, exc,
                        extra={"task_id": str(msg.id), "worker": self.node, "action": "dead_letter"})
            self._release_slot()
            await _logged(self.backend.dead_letter(arrival, f"the store refused the task's data: {exc}"),
                          "dead_letter")
            return
        except ConveyorError as exc:
            log.warning("store unavailable for task %s: %s; will retry", msg.id, exc,
                        extra={"task_id": str(msg.id), "worker": self.node})
            self._release_slot()
            await _logged(self.backend.requeue(arrival, 1.0), "requeue")
            return
        if isinstance(decision, Run):
            self._start(decision.task, arrival)
            return
        self._release_slot()
        if isinstance(decision, Drop):
            log.debug("dropping delivery of task %s: %s", msg.id, decision.reason)
            await _logged(self.backend.ack([arrival]), "ack")
        elif isinstance(decision, Later) and flow is not None and flow.gates(msg):
            await self._wait_then_claim(arrival, decision.delay_s)  # a limited task due in a moment
        elif isinstance(decision, Later):
            await _logged(self.backend.requeue(arrival, decision.delay_s), "requeue")
        elif isinstance(decision, Republish):  # a limited task taken over: its next message goes through its limits
            await _logged(self.backend.publish([decision.task]), "publish")
            await _logged(self.backend.ack([arrival]), "ack")

    async def _settle_hold(self, claimed: Claimed) -> None:
        """After the cycle that held it back committed: a parked task's delivery is acked (the
        store releases the task later), a deferred one's goes back until its start time."""
        hold = claimed.hold
        assert hold is not None
        log.debug("task %s: %s", claimed.message.id if claimed.message else "?", hold.reason,
                  extra={"worker": self.node, "action": "held"})
        if claimed.hold_s is None:
            await _logged(self.backend.ack([claimed.arrival]), "ack")
        else:
            await self._wait_then_claim(claimed.arrival, claimed.hold_s)

    async def _wait_then_claim(self, arrival: Arrival, delay_s: float) -> None:
        """A wait of under a second (a rate limit's start time) is held here, without a slot:
        a broker's delay would round it up (RabbitMQ: to 100 ms steps) and make starts bunch.
        Longer waits go back to the broker."""
        if delay_s >= LOCAL_HOLD_S or self._stopping.is_set():
            await _logged(self.backend.requeue(arrival, delay_s), "requeue")
            return
        await asyncio.sleep(delay_s)
        if self._stopping.is_set():
            await _logged(self.backend.requeue(arrival, 0.0), "requeue")
            return
        self.backend.retake(arrival)
        self._finished_ready.set()  # wake the cycle: it takes the delivery again

    # -- run --------------------------------------------------------------------------------
    def _start(self, task: Task, arrival: Arrival) -> None:
        flight = InFlight(task, arrival)
        flight.span = tracing.begin_run(arrival.body, task_id=task.id, task_type=task.type, queue=task.queue,
                                        attempt=task.attempts, node=self.node,
                                        due_at=max(task.queued_at or 0.0, task.eta or 0.0) or None)
        self.flights[task.id] = flight
        spec = self.registry.find(task.type)
        if spec is None:
            outcome = decide_outcome(task, None, None, None, self.node)
            self._finish(flight, outcome, dead_letter=(outcome.error or {}).get("message"))
            return
        if not spec.is_async and self.worker.process_pool is None:  # the common case: no task, no future
            def done(result: Any, error: BaseException | None) -> None:
                self._finish(flight, decide_outcome(task, spec, result, error, self.node))

            self._threads.submit(spec.handler, task.params, self._context(flight), self._timeout(task, spec), done)
            return
        run = asyncio.get_running_loop().create_task(self._run(flight, spec))
        self._runs.add(run)
        run.add_done_callback(self._runs.discard)

    def _context(self, flight: InFlight) -> contextvars.Context:
        """A context in which ``current_task()`` answers for this flight."""
        task = flight.task
        context = contextvars.copy_context()
        context.run(set_current, TaskContext(id=task.id, type=task.type, attempt=task.attempts,
                                             max_attempts=task.max_attempts, node=self.node,
                                             cancel_requested=flight.cancelled,
                                             **(flow_context(task.flow) if task.flow else {})))
        # The handler's own log lines carry the task (conveyor.log); its spans nest under the run's.
        context.run(log_context.set_fields, task_id=task.id, type=task.type, queue=task.queue)
        if flight.span is not None:
            flight.span.enter(context)
        return context

    @staticmethod
    def _timeout(task: Task, spec: TaskSpec) -> float | None:
        # A task submitted by a client that did not know the type's options gets the handler's.
        return task.timeout if task.timeout is not None else spec.options.timeout

    async def _run(self, flight: InFlight, spec: TaskSpec) -> None:
        """Async handlers (on this loop) and the process pool."""
        task = flight.task
        timeout = self._timeout(task, spec)
        result: Any = None
        error: BaseException | None = None
        try:
            pool = self.worker.process_pool
            if pool is not None and self._pool_calls is not None:
                context = {"id": str(task.id), "attempt": task.attempts, "max_attempts": task.max_attempts,
                           "node": self.node, "flow": task.flow}
                result = await asyncio.get_running_loop().run_in_executor(
                    self._pool_calls, pool.run, task.type, task.params, timeout, context, flight.cancelled)
            else:
                result = await run_async(spec.handler, task.params, timeout, self._context(flight))
        except Exception as exc:
            error = exc
        self._finish(flight, decide_outcome(task, spec, result, error, self.node))

    def _finish(self, flight: InFlight, outcome: Outcome, dead_letter: str | None = None) -> None:
        flight.finished = True
        if flight.span is not None:
            flight.span.end()
        self.worker.done += 1
        self._release_slot()
        if flight.returned:
            return
        self._finished.append(_Done(flight, outcome, dead_letter))
        self._finished_ready.set()

    def _release_slot(self) -> None:
        self._free += 1
        self._slot_freed.set()

    # -- record ---------------------------------------------------------------------------
    async def _dead_letter_unknown(self, batch: Sequence[_Done]) -> None:
        for item in batch:
            if item.dead_letter is not None and not item.flight.arrival.settled:
                log.error("task %s: %s; dead-lettered", item.flight.task.id, item.dead_letter,
                          extra=self._extra(item.flight.task, "dead_letter"))
                await _logged(self.backend.dead_letter(item.flight.arrival, item.dead_letter), "dead letter")

    def _recorded(self, batch: Sequence[_Done], written: Sequence[Task | None]) -> None:
        if batch:
            self.stats["record_batches"] += 1
            self.stats["recorded"] += len(batch)
        for item, task in zip(batch, written, strict=True):
            self.flights.pop(item.flight.task.id, None)
            if task is None:
                self._spawn(self._settle_fenced(item.flight))
            else:
                self._log_outcome(task, item.outcome)

    async def _settle_fenced(self, flight: InFlight) -> None:
        """The fence held this outcome off: the task was cancelled, finished or taken over
        (drop ours), or the store lost this node's claim (run it again)."""
        try:
            now: Task = await self._store_call(self.backend.store.get, flight.task.id)
        except TaskNotFound:
            await _logged(self.backend.ack([flight.arrival]), "ack")
            return
        except ConveyorError:
            await _logged(self.backend.requeue(flight.arrival, 1.0), "requeue")
            return
        if not now.status.is_final and now.status is not TaskStatus.RUNNING and now.attempts < flight.task.attempts:
            log.warning("task %s: the store lost the claim of attempt %d; running it again", now.id,
                        flight.task.attempts, extra=self._extra(now, "reclaim"))
            await _logged(self.backend.requeue(flight.arrival, 0.0), "requeue")
            return
        log.info("task %s attempt %d: outcome dropped, the task is now %s%s", now.id, flight.task.attempts,
                 now.status.value, f" (attempt {now.attempts} on {now.node})" if now.status is TaskStatus.RUNNING
                 else "", extra=self._extra(now, "superseded"))
        await _logged(self.backend.ack([flight.arrival]), "ack")

    def _log_outcome(self, task: Task, outcome: Outcome) -> None:
        error = outcome.error or {}
        if task.status is TaskStatus.RETRYING:
            log.warning("task %s attempt %d failed (%s); retrying in %.2f s", task.id, task.attempts,
                        error.get("message"), outcome.retry_in_s, extra=self._extra(task, "retry"))
        elif task.status is TaskStatus.FAILED:
            log.error("task %s failed after %d attempt(s): %s", task.id, task.attempts, error.get("message"),
                      extra=self._extra(task, "failed"))
        else:
            log.debug("task %s %s", task.id, task.status.value, extra=self._extra(task, task.status.value))

    # -- give back ----------------------------------------------------------------------------
    async def _give_back(self, flights: Sequence[InFlight]) -> None:
        """Unfinished at the end of the grace period: the attempt does not count; the task goes
        back to its queue (its delivery requeued, or a new message if it was acked early)."""
        if not flights:
            return
        for flight in flights:
            flight.returned = True
            flight.cancelled.set()
        items = [Finished(f.arrival, Outcome(f.task.id, f.task.attempts, TaskStatus.QUEUED,
                                             detail="returned on worker shutdown", publish=f.arrival.settled),
                          f.task, ack=False) for f in flights]
        try:
            written, _ = await self.backend.cycle(items, 0, self.node, self.settings.lease_s)
        except ConveyorError as exc:
            log.warning("could not return %d task(s): %s", len(flights), exc, extra={"worker": self.node})
            written = [None] * len(flights)
        for flight, task in zip(flights, written, strict=True):
            self.flights.pop(flight.task.id, None)
            if not flight.arrival.settled:
                await _logged(self.backend.requeue(flight.arrival, 0.0), "requeue")
            elif task is not None:
                await _logged(self.backend.publish([task]), "publish")
        log.info("gave back %d unfinished task(s)", len(flights), extra={"worker": self.node, "action": "return"})

    # -- keep ---------------------------------------------------------------------------------
    async def _keep_loop(self) -> None:
        settings = self.settings
        tick = max(0.05, min(settings.heartbeat_s, settings.lease_s / 3))
        while True:
            await asyncio.sleep(tick)
            for step in (self._renew, self._maybe_heartbeat, self._maybe_reap, self._flow_upkeep):
                try:
                    await step()
                except ConveyorError as exc:  # a store/broker hiccup must not stop the keeper
                    log.warning("keeper: %s", exc, extra={"worker": self.node})
                except Exception:
                    log.exception("keeper step failed unexpectedly", extra={"worker": self.node})

    async def _renew(self) -> None:
        running = [f for f in self.flights.values() if not f.returned]
        if not running:
            return
        settings = self.settings
        owned = await self.backend.renew([(f.task.id, f.task.attempts) for f in running],
                                         [f.arrival for f in running if not f.arrival.settled], self.node,
                                         settings.lease_s)
        for flight in running:
            if flight.task.id not in owned:
                if not flight.lost and not flight.finished:
                    flight.lost = True
                    flight.cancelled.set()
                    log.warning("task %s: this node no longer holds its lease (cancelled or taken over);"
                                " stopping its handler", flight.task.id, extra=self._extra(flight.task, "lease_lost"))
            elif (not self.backend.lease_based and not flight.arrival.settled
                  and time.monotonic() - flight.started >= settings.ack_handoff_s):
                log.info("task %s runs long: delivery acked, the store lease now guards it", flight.task.id,
                         extra=self._extra(flight.task, "handoff"))
                await self.backend.ack([flight.arrival])

    async def _maybe_heartbeat(self) -> None:
        if time.monotonic() - self._last_heartbeat >= self.settings.heartbeat_s:
            await self.heartbeat()

    async def heartbeat(self, status: str | None = None) -> None:
        worker, store = self.worker, self.backend.store
        state = status or ("unhealthy" if self.unhealthy else "live")

        def beat() -> None:
            store.upsert_node(NodeInfo(
                id=worker.node_id, host=socket.gethostname(), pid=os.getpid(), queues=worker.consumed_queues,
                concurrency=worker.concurrency, started_at=worker.started_at, last_heartbeat=store.now(),
                status=state, in_flight=len(self.flights), done=worker.done,
            ))

        await self._store_call(beat)
        self._last_heartbeat = time.monotonic()

    async def _maybe_reap(self) -> None:
        settings = self.settings
        if time.monotonic() - self._last_reap < settings.lease_s:
            return
        self._last_reap = time.monotonic()
        loop = asyncio.get_running_loop()

        def publish(tasks: Sequence[Task]) -> None:  # called on a store thread
            asyncio.run_coroutine_threadsafe(self.backend.publish(tasks), loop).result(60)

        store = self.backend.store
        await self._store_call(recover_expired, store, publish, lease_s=settings.lease_s,
                               max_crashes=settings.max_crashes)
        await self._store_call(republish_unpublished, store, publish, grace_s=settings.outbox_grace_s)

    async def _flow_upkeep(self) -> None:
        """Flow control's sweep, when due (``flow/hooks.py``): nothing to do for an app without it."""
        flow = self.backend.flow
        if flow is None:
            return
        loop = asyncio.get_running_loop()

        def publish(tasks: Sequence[Task]) -> None:  # called on a store thread
            asyncio.run_coroutine_threadsafe(self.backend.publish(tasks), loop).result(60)

        await self._store_call(flow.upkeep, self.backend.store, publish)

    # -- helpers ------------------------------------------------------------------------------
    async def _store_call(self, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        return await asyncio.get_running_loop().run_in_executor(self._store_calls, lambda: fn(*args, **kwargs))

    def _spawn(self, coro: Coroutine[Any, Any, Any]) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._spawned.add(task)
        task.add_done_callback(self._spawned.discard)

    def _extra(self, task: Task, action: str) -> dict[str, str]:
        return {"task_id": str(task.id), "type": task.type, "queue": task.queue, "worker": self.node,
                "action": action}


async def _logged(action: Coroutine[Any, Any, Any], what: str) -> None:
    try:
        await action
    except ConveyorError as exc:
        log.warning("%s failed: %s", what, exc)
