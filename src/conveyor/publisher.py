"""Publishing task messages after the store commit: the outbox's fast half.

A submit (or a manual retry) writes the task and an outbox intent in one transaction and
returns: the task is durable. ``Publisher`` then sends the message from a background thread,
batching whatever callers committed meanwhile into one pipelined, confirmed publish, and
removes the intents. If this process dies first, or the broker is down longer than a few
tries, the intents stay and the reconciler (``recovery.republish_unpublished``, run by the
scheduler leader and the workers) publishes them later: a committed task always gets its
message. ``flush`` waits for everything handed over so far (``Conveyor.close`` and interpreter
exit call it), so a short-lived submitter does not leave its tasks to the reconciler.
"""

from __future__ import annotations

import atexit
import logging
import threading
import time
import weakref
from collections.abc import Sequence

from conveyor import message
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


def publish_item(task: Task, now: float) -> PublishItem:
    """The task's next message, due at its eta (``now``: the store's clock)."""
    delay_s = max(0.0, task.eta - now) if task.eta else 0.0
    queue = task.queue if task.flow is None else publish_queue(task)  # a task pinned to a node: its queue
    return (message.encode(Message.for_task(task)), queue, task.priority, delay_s, None)


def publish_tasks(broker: Broker, tasks: Sequence[Task], *, at: float | None = None) -> None:
    """Send each task's message, due at its eta (``at``: now on the store's clock): the one
    way a task is (re)published, whether submitted, retried, given back or recovered."""
    if not tasks:
        return
    now = time.time() if at is None else at
    for queue in {t.queue if t.flow is None else publish_queue(t) for t in tasks}:
        broker.declare_queue(queue)
    broker.publish_many([publish_item(t, now) for t in tasks])


class Publisher:
    def __init__(self, store: Store, broker: Broker) -> None:
        self._store = store
        self._broker = broker
        self._pending: list[Task] = []
        self._busy = 0  # tasks taken by the thread and not yet published (or given up)
        self._cond = threading.Condition()
        self._thread: threading.Thread | None = None
        self._closed = False
        _live.add(self)

    def send(self, tasks: Sequence[Task]) -> None:
        """Publish these committed tasks soon (in the background)."""
        if not tasks:
            return
        with self._cond:
            if self._closed:
                raise ConveyorError("the publisher is closed")
            self._pending.extend(tasks)
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="conveyor-publisher", daemon=True)
                self._thread.start()
            self._cond.notify_all()

    def publish_now(self, tasks: Sequence[Task]) -> None:
        """Publish in the caller's thread (confirmed on return), then remove the intents."""
        publish_tasks(self._broker, tasks, at=self._store.now())
        try:
            self._store.mark_published(tasks)
        except ConveyorError as exc:  # the reconciler will send a harmless duplicate
            log.debug("could not remove %d outbox intent(s): %s", len(tasks), exc)

    def flush(self, timeout_s: float = FLUSH_AT_EXIT_S) -> bool:
        """Wait until everything sent so far is published (or given up); False on timeout."""
        deadline = time.monotonic() + timeout_s
        with self._cond:
            while self._pending or self._busy:
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self._cond.wait(left)
        return True

    def close(self, timeout_s: float = FLUSH_AT_EXIT_S) -> None:
        if not self.flush(timeout_s):
            log.warning("%d task message(s) not yet published at close: the reconciler will send them",
                        len(self._pending) + self._busy)
        with self._cond:
            self._closed = True
            self._cond.notify_all()
        _live.discard(self)

    def _run(self) -> None:
        while True:
            with self._cond:
                while not self._pending and not self._closed:
                    self._cond.wait()
                if not self._pending:
                    return
                batch, self._pending = self._pending[:MAX_BATCH], self._pending[MAX_BATCH:]
                self._busy = len(batch)
            try:
                self._publish(batch)
            finally:
                with self._cond:
                    self._busy = 0
                    self._cond.notify_all()

    def _publish(self, batch: list[Task]) -> None:
        pause = 0.2
        for attempt in range(1, TRIES + 1):
            try:
                self.publish_now(batch)
                return
            except ConveyorError as exc:
                if attempt == TRIES:
                    log.warning("could not publish %d task message(s): %s; the reconciler will send them",
                                len(batch), exc, extra={"action": "outbox"})
                    return
                time.sleep(pause)
                pause *= 2


_live: weakref.WeakSet[Publisher] = weakref.WeakSet()


@atexit.register
def _flush_at_exit() -> None:
    for publisher in list(_live):
        publisher.flush(FLUSH_AT_EXIT_S)
