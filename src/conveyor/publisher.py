"""Publishing task messages after the store commit: the outbox's fast half.

A submit (or a manual retry) writes the task and an outbox intent in one transaction and
returns: the task is durable. ``Publisher`` then sends the message: straight to the broker's
event loop when the broker can publish without a caller waiting (``publish_later``, RabbitMQ),
else from a background thread; what callers committed meanwhile goes in one pipelined,
confirmed publish. Once confirmed, the intents are removed in batches (a few times a second;
an intent removed late only risks a harmless duplicate). If this process dies first, or the
broker is down for longer than a publish waits, the intents stay and the reconciler
(``recovery.republish_unpublished``, run by the scheduler leader and the workers) publishes
them later: a committed task always gets its message. ``flush`` waits for everything handed
over so far (``Conveyor.close`` and interpreter exit call it), so a short-lived submitter does
not leave its tasks to the reconciler.
"""

from __future__ import annotations

import atexit
import concurrent.futures
import logging
import threading
import time
import weakref
from collections.abc import Sequence
from typing import Protocol, runtime_checkable

from conveyor import message, tracing
from conveyor.broker.base import Broker, PublishItem
from conveyor.errors import ConveyorError
from conveyor.flow.routing import publish_queue
from conveyor.message import Message
from conveyor.model import Task
from conveyor.store.base import Store

log = logging.getLogger(__name__)

MAX_BATCH = 1000
TRIES = 4  # then the reconciler takes over
FLUSH_AT_EXIT_S = 10.0
CLEAR_EVERY_S = 0.2  # published intents are removed in batches, this often


@runtime_checkable
class PublishesLater(Protocol):
    """A broker that can take a batch and confirm it later, without a thread waiting."""

    def publish_later(self, items: Sequence[PublishItem]) -> concurrent.futures.Future[None]: ...


def publish_item(task: Task, now: float) -> PublishItem:
    """The task's next message, due at its eta (``now``: the store's clock)."""
    delay_s = max(0.0, task.eta - now) if task.eta else 0.0
    queue = task.queue if task.flow is None else publish_queue(task)  # a task pinned to a node: its queue
    return (message.encode(Message.for_task(task, tracing.trace_for(task.id))), queue, task.priority,
            delay_s, None)


def publish_tasks(broker: Broker, tasks: Sequence[Task], *, at: float | None = None) -> None:
    """Send each task's message, due at its eta (``at``: now on the store's clock): the one
    way a task is (re)published, whether submitted, retried, given back or recovered."""
    if not tasks:
        return
    now = time.time() if at is None else at
    if not getattr(broker, "declares_on_publish", False):
        for queue in {t.queue if t.flow is None else publish_queue(t) for t in tasks}:
            broker.declare_queue(queue)
    broker.publish_many([publish_item(t, now) for t in tasks])


class Publisher:
    def __init__(self, store: Store, broker: Broker) -> None:
        self._store = store
        self._broker = broker
        self._cond = threading.Condition()
        self._pending: list[Task] = []  # to publish (thread path)
        self._in_flight = 0  # tasks handed to the broker or the thread, not yet confirmed (or given up)
        self._published: list[Task] = []  # confirmed: their intents are to be removed
        self._thread: threading.Thread | None = None
        self._closed = False
        self._clear_now = False  # flush() wants the intents removed at once
        self._later = isinstance(broker, PublishesLater)  # a runtime Protocol check is slow: once
        _live.add(self)

    def send(self, tasks: Sequence[Task]) -> None:
        """Publish these committed tasks soon (without waiting)."""
        if not tasks:
            return
        with self._cond:
            if self._closed:
                raise ConveyorError("the publisher is closed")
            self._in_flight += len(tasks)
            self._ensure_thread()
        if self._later:
            self._publish_later(list(tasks), TRIES)
        else:
            with self._cond:
                self._pending.extend(tasks)
                self._cond.notify_all()

    def _publish_later(self, tasks: list[Task], tries: int) -> None:
        try:
            now = self._store.now()
            future = self._broker.publish_later([publish_item(t, now) for t in tasks])  # type: ignore[attr-defined]
        except ConveyorError as exc:
            self._done(tasks, exc)
            return
        future.add_done_callback(lambda f: self._confirmed(tasks, f, tries))

    def _confirmed(self, tasks: list[Task], future: concurrent.futures.Future[None], tries: int) -> None:
        error = future.exception()
        if error is not None and tries > 1 and isinstance(error, ConveyorError):
            threading.Timer(0.2, self._publish_later, (tasks, tries - 1)).start()
            return
        self._done(tasks, error)

    def _done(self, tasks: list[Task], error: BaseException | None) -> None:
        if error is not None:
            log.warning("could not publish %d task message(s): %s; the reconciler will send them",
                        len(tasks), error, extra={"action": "outbox"})
        with self._cond:
            if error is None:
                self._published.extend(tasks)
            self._in_flight -= len(tasks)
            self._cond.notify_all()

    def publish_now(self, tasks: Sequence[Task]) -> None:
        """Publish in the caller's thread (confirmed on return), then remove the intents."""
        publish_tasks(self._broker, tasks, at=self._store.now())
        self._clear(tasks)

    def flush(self, timeout_s: float = FLUSH_AT_EXIT_S) -> bool:
        """Wait until everything sent so far is published (or given up) and its intents are
        removed; False on timeout."""
        deadline = time.monotonic() + timeout_s
        with self._cond:
            while self._in_flight or self._published or self._pending:
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self._clear_now = True
                self._cond.notify_all()  # wake the thread: clear now, not at its next tick
                self._cond.wait(min(left, CLEAR_EVERY_S))
        return True

    def close(self, timeout_s: float = FLUSH_AT_EXIT_S) -> None:
        if not self.flush(timeout_s):
            log.warning("%d task message(s) not yet published at close: the reconciler will send them",
                        self._in_flight + len(self._pending))
        with self._cond:
            self._closed = True
            self._cond.notify_all()
        _live.discard(self)

    # -- the background thread: publishes (brokers without publish_later), removes intents ---
    def _ensure_thread(self) -> None:  # under self._cond
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="conveyor-publisher", daemon=True)
            self._thread.start()

    def _run(self) -> None:
        next_clear = 0.0
        while True:
            with self._cond:
                while True:
                    now = time.monotonic()
                    clear_due = bool(self._published) and (now >= next_clear or self._clear_now or self._closed)
                    if self._pending or clear_due or (self._closed and not self._published):
                        break
                    self._cond.wait(None if not self._published else max(0.0, next_clear - now))
                if self._closed and not (self._pending or self._published):
                    return
                batch, self._pending = self._pending[:MAX_BATCH], self._pending[MAX_BATCH:]
                cleared: list[Task] = []
                if clear_due:  # confirmations gather for a while: one delete for many intents
                    cleared, self._published = self._published, []
                    self._clear_now = False
                    next_clear = time.monotonic() + CLEAR_EVERY_S
            if cleared:
                self._clear(cleared)
            if batch:
                self._publish(batch)
            with self._cond:
                self._cond.notify_all()

    def _publish(self, batch: list[Task]) -> None:
        pause = 0.2
        for attempt in range(1, TRIES + 1):
            try:
                publish_tasks(self._broker, batch, at=self._store.now())
                self._done(batch, None)
                return
            except ConveyorError as exc:
                if attempt == TRIES:
                    self._done(batch, exc)
                    return
                time.sleep(pause)
                pause *= 2

    def _clear(self, tasks: Sequence[Task]) -> None:
        try:
            self._store.mark_published(tasks)
        except ConveyorError as exc:  # the reconciler will send a harmless duplicate
            log.debug("could not remove %d outbox intent(s): %s", len(tasks), exc)


_live: weakref.WeakSet[Publisher] = weakref.WeakSet()


@atexit.register
def _flush_at_exit() -> None:
    for publisher in list(_live):
        publisher.flush(FLUSH_AT_EXIT_S)
