"""The worker (execution node): register, take tasks with bounded prefetch, run them,
record outcomes, ack only after the outcome is stored, shut down gracefully."""

from __future__ import annotations

import logging
import os
import queue
import signal
import socket
import threading
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from types import FrameType
from typing import TYPE_CHECKING, Any

from conveyor import log as log_context
from conveyor import message, tracing
from conveyor.broker.base import Consumer, Delivery
from conveyor.config import Settings
from conveyor.context import TaskContext, reset_current, set_current
from conveyor.errors import ConveyorError, SerializationError, StoreError
from conveyor.model import NodeInfo, Task, TaskStatus, now
from conveyor.service import publish_tasks
from conveyor.worker.claim import Drop, Later, Run, claim
from conveyor.worker.executor import ThreadExecutor
from conveyor.worker.heartbeat import Keeper
from conveyor.worker.outcome import record_outcome
from conveyor.worker.process_pool import ProcessPool

if TYPE_CHECKING:
    from conveyor.app import Conveyor

log = logging.getLogger(__name__)


@dataclass(eq=False)
class InFlight:
    """A task this node is running, with the delivery that brought it."""

    task: Task
    delivery: Delivery
    started: float = field(default_factory=time.monotonic)
    cancelled: threading.Event = field(default_factory=threading.Event)
    acked: bool = False
    returned: bool = False  # given back on shutdown; its outcome is no longer ours to record
    lock: threading.RLock = field(default_factory=threading.RLock)

    def ack(self) -> None:
        with self.lock:
            if not self.acked:
                self.acked = True
                self.delivery.ack()

    def hand_off(self) -> None:
        """Ack early: from here the store lease alone says this node owns the task."""
        if not self.acked:
            log.info("task %s runs long: delivery acked, the store lease now guards it", self.task.id,
                     extra={"task_id": str(self.task.id), "action": "handoff"})
            self.ack()


class Worker:
    def __init__(self, app: Conveyor, *, queues: Sequence[str] = ("default",), concurrency: int = 4,
                 pool: str = "thread", app_ref: str | None = None, settings: Settings | None = None,
                 node_id: str | None = None) -> None:
        if pool not in ("thread", "process"):
            raise ValueError("pool must be 'thread' or 'process'")
        if pool == "process" and app_ref is None:
            raise ValueError("--pool process needs the app reference (MODULE:APP)")
        self.app = app
        self.queues = tuple(queues)
        self.concurrency = max(1, concurrency)
        self.settings = settings or app.settings
        self.node_id = node_id or f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:4]}"
        self.started_at = now()
        self.done = 0
        self._pool_kind = pool
        self._app_ref = app_ref
        self._in_flight: set[InFlight] = set()
        self._lock = threading.Lock()
        self._stopping = threading.Event()
        self._stopped = threading.Event()
        self._slots = threading.Semaphore(self.concurrency)
        self._work: queue.Queue[Delivery | None] = queue.Queue()
        self._threads: list[threading.Thread] = []
        self._consumer: Consumer | None = None
        self._keeper: Keeper | None = None
        self.executor: ThreadExecutor = ThreadExecutor()
        self.process_pool: ProcessPool | None = None

    # -- lifecycle ------------------------------------------------------------------------
    def run(self) -> None:
        """Run until SIGTERM/SIGINT (or ``stop()``), then shut down gracefully."""
        self.install_signal_handlers()
        self.start()
        try:
            self.fetch_loop()
        finally:
            self.shutdown()

    def install_signal_handlers(self) -> None:
        def on_signal(signum: int, frame: FrameType | None) -> None:
            log.info("received %s: stopping (grace %.0f s)", signal.Signals(signum).name,
                     self.settings.grace_s, extra={"worker": self.node_id})
            self.stop()

        signal.signal(signal.SIGTERM, on_signal)
        signal.signal(signal.SIGINT, on_signal)

    def start(self) -> None:
        broker = self.app.broker
        for q in self.queues:
            broker.declare_queue(q)
        if self._pool_kind == "process" and self._app_ref:
            self.process_pool = ProcessPool(self._app_ref, self.concurrency)
        self.heartbeat()
        self._consumer = broker.consume(self.queues, prefetch=self.concurrency + self.settings.prefetch)
        for i in range(self.concurrency):
            thread = threading.Thread(target=self._slot_loop, name=f"conveyor-slot-{i}", daemon=True)
            thread.start()
            self._threads.append(thread)
        self._keeper = Keeper(self)
        self._keeper.start()
        log.info("worker %s started: queues=%s concurrency=%d pool=%s", self.node_id, ",".join(self.queues),
                 self.concurrency, self._pool_kind, extra={"worker": self.node_id})

    def stop(self) -> None:
        self._stopping.set()

    def fetch_loop(self) -> None:
        """Take a delivery only when a slot is free: the node never holds more than its free
        slots plus the consumer's small prefetch."""
        assert self._consumer is not None
        while not self._stopping.is_set():
            if not self._slots.acquire(timeout=0.2):
                continue
            try:
                delivery = self._consumer.get(timeout_s=0.2)
            except ConveyorError as exc:
                log.warning("consume failed: %s", exc, extra={"worker": self.node_id})
                delivery = None
                time.sleep(0.5)
            if delivery is None:
                self._slots.release()
                continue
            self._work.put(delivery)

    def shutdown(self) -> None:
        """Stop taking; let in-flight tasks finish within the grace period; give back the rest."""
        self._stopping.set()
        if self._consumer is not None:
            self._consumer.close()
        for _ in self._threads:
            self._work.put(None)
        deadline = time.monotonic() + self.settings.grace_s
        while self.in_flight_snapshot() and time.monotonic() < deadline:
            time.sleep(0.05)
        for flight in self.in_flight_snapshot():
            self._give_back(flight)
        if self._keeper is not None:
            self._keeper.stop()
        self.heartbeat(status="stopped")
        self.executor.close()
        if self.process_pool is not None:
            self.process_pool.close()
        self._stopped.set()
        log.info("worker %s stopped after %d task(s)", self.node_id, self.done, extra={"worker": self.node_id})

    def _give_back(self, flight: InFlight) -> None:
        with flight.lock:
            flight.returned = True
            returned: Task | None = None
            try:
                returned = self.app.store.update(flight.task, TaskStatus.QUEUED, node=self.node_id,
                                                 detail="returned on worker shutdown", lease_until=None)
            except StoreError as exc:
                log.warning("could not return task %s: %s", flight.task.id, exc)
            if not flight.acked:
                flight.acked = True
                flight.delivery.nack(requeue=True)
            elif returned is not None:  # acked early (long task): the store is the only record
                publish_tasks(self.app.broker, [returned])

    def heartbeat(self, status: str = "live") -> None:
        self.app.store.upsert_node(NodeInfo(
            id=self.node_id, host=socket.gethostname(), pid=os.getpid(), queues=self.queues,
            concurrency=self.concurrency, started_at=self.started_at, last_heartbeat=now(),
            status=status, in_flight=len(self._in_flight), done=self.done,
        ))

    def in_flight_snapshot(self) -> list[InFlight]:
        with self._lock:
            return list(self._in_flight)

    # -- one delivery -----------------------------------------------------------------------
    def _slot_loop(self) -> None:
        while True:
            delivery = self._work.get()
            if delivery is None:
                return
            try:
                self.process(delivery)
            except Exception:
                log.exception("unexpected error handling a delivery; returning it", extra={"worker": self.node_id})
                _safe(lambda d=delivery: d.nack(requeue=True, delay_s=1.0))
            finally:
                self._slots.release()

    def process(self, delivery: Delivery) -> None:
        try:
            msg = message.decode(delivery.body)
        except SerializationError as exc:
            log.error("dead-lettering a malformed message from %s: %s", delivery.queue, exc,
                      extra={"queue": delivery.queue, "action": "dead_letter"})
            delivery.dead_letter(f"malformed message: {exc}")
            return
        try:
            outcome = claim(self.app.store, msg, self.node_id, lease_s=self.settings.lease_s,
                            max_crashes=self.settings.max_crashes)
        except StoreError as exc:
            log.warning("store unavailable for task %s: %s; will retry", msg.id, exc)
            delivery.nack(requeue=True, delay_s=1.0)
            return
        if isinstance(outcome, Drop):
            log.debug("dropping delivery of task %s: %s", msg.id, outcome.reason)
            delivery.ack()
        elif isinstance(outcome, Later):
            delivery.nack(requeue=True, delay_s=outcome.delay_s)
        elif isinstance(outcome, Run):
            task = outcome.task
            # Every log line of the attempt carries the task (log.bind); its spans join the submitter's trace.
            with log_context.bind(task_id=task.id, type=task.type, queue=task.queue), tracing.run_span(
                    msg.trace, task_id=str(task.id), task_type=task.type, queue=task.queue, attempt=task.attempts,
                    node=self.node_id, due_at=task.eta if task.eta and task.eta > (task.queued_at or 0)
                    else task.queued_at):
                self._run(task, delivery)

    def _run(self, task: Task, delivery: Delivery) -> None:
        flight = InFlight(task=task, delivery=delivery)
        with self._lock:
            self._in_flight.add(flight)
        try:
            spec = self.app.registry.find(task.type)
            result: Any = None
            exc: BaseException | None = None
            if spec is not None:
                try:
                    result = self._execute(spec, flight)
                except Exception as error:
                    exc = error
            record_outcome(self, flight, spec, result, exc)
        finally:
            with self._lock:
                self._in_flight.discard(flight)
                self.done += 1

    def _execute(self, spec: Any, flight: InFlight) -> Any:
        task = flight.task
        # A task submitted by a client that did not know the type's options gets the handler's.
        timeout = task.timeout if task.timeout is not None else spec.options.timeout
        if self.process_pool is not None:
            context = {"id": str(task.id), "attempt": task.attempts, "max_attempts": task.max_attempts,
                       "node": self.node_id}
            return self.process_pool.run(task.type, task.params, timeout, context, flight.cancelled)
        token = set_current(TaskContext(id=task.id, type=task.type, attempt=task.attempts,
                                        max_attempts=task.max_attempts, node=self.node_id,
                                        cancel_requested=flight.cancelled))
        try:
            return self.executor.run(spec, task.params, timeout)
        finally:
            reset_current(token)


def _safe(action: Any) -> None:
    try:
        action()
    except Exception:
        log.debug("ignored error", exc_info=True)
