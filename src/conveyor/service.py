"""TaskService: submit, cancel, retry and look up tasks. The Python API, the CLI and the
HTTP API all go through it, so validation and the store-then-publish order live here once.

A submit returns once the task is durable in the store. Its message follows at once from a
background publisher (``publisher.py``) and is guaranteed by the outbox intent written with the
task: should this process die first, the reconciler publishes it. On the embedded default
(store and broker in one SQLite file) the task and its message commit together instead.
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from conveyor import message, tracing, validation
from conveyor.broker.base import Broker
from conveyor.embedded import together
from conveyor.errors import ConcurrentUpdate, InvalidTransition, SerializationError
from conveyor.flow.options import submit_flow
from conveyor.flow.routing import pin_keyed
from conveyor.model import (
    NodeInfo,
    Page,
    Task,
    TaskEvent,
    TaskFilter,
    TaskStatus,
)
from conveyor.publisher import Publisher
from conveyor.publisher import publish_tasks as publish_tasks  # re-exported: reports, worker
from conveyor.store.base import Store
from conveyor.task import Registry, TaskOptions
from conveyor.validation import MAX_KEY_LENGTH, MAX_TYPE_LENGTH, QUEUE_NAME

__all__ = ["MAX_KEY_LENGTH", "MAX_TYPE_LENGTH", "QUEUE_NAME", "SubmitRequest", "TaskService", "publish_tasks"]

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class SubmitRequest:
    """What a caller asks for; ``None`` fields take the task type's defaults."""

    type: str
    params: dict[str, Any]
    queue: str | None = None
    priority: int | None = None
    eta: float | None = None  # POSIX seconds
    delay_s: float | None = None
    max_attempts: int | None = None
    timeout: float | None = None
    idempotency_key: str | None = None
    unique_key: str | None = None  # flow control (docs/flow-control.md): dedupe while one is waiting or running
    route: str | None = None  # fair | key (None: the type's)
    route_key: str | None = None  # route "key": the param whose value picks the node


class TaskService:
    def __init__(self, store: Store, broker: Broker, registry: Registry | None = None, *,
                 heartbeat_s: float = 5.0) -> None:
        self.store = store
        self.heartbeat_s = heartbeat_s  # how live nodes are told apart, for routing (flow/routing.py)
        self.broker = broker
        self.registry = registry or Registry()
        self.publisher = Publisher(store, broker)
        self._together = together(store, broker)
        self._batchers: dict[asyncio.AbstractEventLoop, _AsyncSubmitter] = {}

    # -- submit -------------------------------------------------------------------------
    def submit(self, request: SubmitRequest) -> tuple[Task, bool]:
        """Store the task (durable on return); its message follows. Returns (task, created);
        ``created`` is False when the idempotency key already named a task (that task is
        returned)."""
        return self.submit_task(self.build_task(request))

    def submit_task(self, task: Task) -> tuple[Task, bool]:
        """``submit`` for a task already built (and so validated) by ``build_task``."""
        return self.submit_tasks([task])[0]

    async def submit_async(self, request: SubmitRequest) -> tuple[Task, bool]:
        """``submit`` for asyncio callers: concurrent calls on one event loop share a
        transaction (group commit) and never block the loop."""
        task = self.build_task(request)
        loop = asyncio.get_running_loop()
        batcher = self._batchers.get(loop)
        if batcher is None:
            batcher = self._batchers[loop] = _AsyncSubmitter(self)
        return await batcher.submit(task)

    def build_task(self, request: SubmitRequest) -> Task:
        """Validate a request into a Task (raises ValueError / SerializationError) with the
        bounds of ``conveyor.validation``, the same at every entry point."""
        task_type = validation.check_type(request.type)
        if not isinstance(request.params, dict):
            raise SerializationError("params must be a JSON object")
        params = message.loads(message.dumps(request.params))  # refuse non-JSON early, keep JSON types
        validation.check_params(request.params)  # what dumps lets through: NaN, Infinity (as null), NUL
        spec = self.registry.find(task_type)
        defaults = spec.options if spec else TaskOptions()
        queue = validation.check_queue(request.queue or defaults.queue)
        priority = validation.check_priority(defaults.priority if request.priority is None else request.priority)
        max_attempts = validation.check_attempt(
            defaults.max_attempts if request.max_attempts is None else request.max_attempts, "max_attempts")
        timeout = validation.check_timeout(defaults.timeout if request.timeout is None else request.timeout)
        if request.idempotency_key is not None:
            validation.check_key(request.idempotency_key)
        created_at = self.store.now()
        eta = validation.check_eta(request.eta)
        if request.delay_s is not None:
            eta = created_at + validation.check_delay(request.delay_s)
        scheduled = eta is not None and eta > created_at
        flow = submit_flow(request.type, params, defaults.flow, unique_key=request.unique_key, route=request.route,
                           route_key=request.route_key)
        return Task(
            type=task_type, params=params, queue=queue,
            priority=priority, max_attempts=max_attempts, timeout=timeout,
            eta=eta if scheduled else None, idempotency_key=request.idempotency_key,
            status=TaskStatus.SCHEDULED if scheduled else TaskStatus.QUEUED,
            created_at=created_at, queued_at=None if scheduled else created_at, flow=flow,
        )

    # -- control ------------------------------------------------------------------------
    def cancel(self, task_id: uuid.UUID) -> Task:
        """Cancel a task that has not finished. A queued or scheduled task never runs; a
        running one is told to stop (its worker sees the status at its next lease renewal).
        Raises InvalidTransition for a finished task."""
        for _ in range(5):
            task = self.store.get(task_id)
            try:
                return self.store.update(task, TaskStatus.CANCELLED, finished_at=self.store.now(),
                                         detail="cancelled on request")
            except ConcurrentUpdate:
                continue
        raise ConcurrentUpdate(task_id)

    def retry(self, task_id: uuid.UUID) -> Task:
        """Run a failed or cancelled task again: same id, attempts continue."""
        for _ in range(5):
            task = self.store.get(task_id)
            if task.status not in (TaskStatus.FAILED, TaskStatus.CANCELLED):
                raise InvalidTransition(task_id, task.status.value, TaskStatus.QUEUED.value)
            if task.attempts >= validation.MAX_ATTEMPTS:  # its next message would be refused as invalid
                raise InvalidTransition(task_id, f"{task.status.value} after {task.attempts} attempts",
                                        TaskStatus.QUEUED.value)
            try:
                updated = self.store.update(
                    task, TaskStatus.QUEUED, detail="retried on request", queued_at=self.store.now(),
                    max_attempts=max(task.max_attempts, task.attempts + 1), eta=None,
                    finished_at=None, lease_until=None, crashes=0, publish=True,
                )
            except ConcurrentUpdate:
                continue
            self.publisher.send([updated])
            return updated
        raise ConcurrentUpdate(task_id)

    # -- queries ------------------------------------------------------------------------
    def get(self, task_id: uuid.UUID) -> Task:
        return self.store.get(task_id)

    def events(self, task_id: uuid.UUID) -> list[TaskEvent]:
        return self.store.events(task_id)

    def query(self, filter: TaskFilter, *, limit: int = 50, cursor: uuid.UUID | None = None) -> Page:
        return self.store.query(filter, limit=limit, cursor=cursor)

    def nodes(self) -> list[NodeInfo]:
        return self.store.nodes()

    def counts(self, queue: str | None = None) -> dict[str, int]:
        return self.store.count_by_status(queue)

    def submit_many(self, requests: Sequence[SubmitRequest]) -> list[tuple[Task, bool]]:
        """Validate all, store all in one transaction, publish the new ones pipelined."""
        return self.submit_tasks([self.build_task(r) for r in requests])

    def submit_tasks(self, tasks: Sequence[Task]) -> list[tuple[Task, bool]]:
        """``submit_many`` for tasks already built by ``build_task``."""
        kinds = {t.type for t in tasks}
        with tracing.submit_span(kinds.pop() if len(kinds) == 1 else "batch", tasks[0].queue if tasks else "",
                                 count=len(tasks)):
            tracing.remember(t.id for t in tasks)  # their messages are built on the publisher's thread
            return self._submit_tasks(tasks)

    def _submit_tasks(self, tasks: Sequence[Task]) -> list[tuple[Task, bool]]:
        if any(t.flow is not None for t in tasks):  # key routing: pin each to its node (flow/routing.py)
            tasks = pin_keyed(self.store, tasks, self.heartbeat_s)
        if self._together is not None:
            return self._together.create_and_publish(tasks, detail="submitted")
        results = self.store.create_many(tasks, detail="submitted", publish=True)
        self.publisher.send([task for task, created in results if created])
        # An idempotent repeat of a task that never started may find it still without its
        # message (its submitter died before publishing): send it again. A duplicate is
        # harmless, the claim drops it. (A unique key's holder is no repeat: it has its message.)
        repeats = [t for (t, created), submitted in zip(results, tasks, strict=True) if not created
                   and (submitted.idempotency_key is not None or submitted.flow is None) and t.attempts == 0
                   and t.status in (TaskStatus.QUEUED, TaskStatus.SCHEDULED)]
        if repeats:
            self.publisher.send(repeats)
        return results

    def close(self) -> None:
        """Publish what is still pending (bounded wait)."""
        self.publisher.close()


class _AsyncSubmitter:
    """Group commit for one event loop: submits that arrive while a batch is being written
    wait and go together in the next one (one thread hop and one transaction per batch)."""

    def __init__(self, service: TaskService) -> None:
        self._service = service
        self._pending: list[tuple[Task, asyncio.Future[tuple[Task, bool]]]] = []
        self._running = False

    async def submit(self, task: Task) -> tuple[Task, bool]:
        future: asyncio.Future[tuple[Task, bool]] = asyncio.get_running_loop().create_future()
        self._pending.append((task, future))
        if not self._running:
            self._running = True
            asyncio.get_running_loop().create_task(self._drain())
        return await future

    async def _drain(self) -> None:
        try:
            while self._pending:
                batch, self._pending = self._pending[:500], self._pending[500:]
                try:
                    results = await asyncio.to_thread(self._service.submit_tasks, [t for t, _ in batch])
                except Exception as exc:
                    for _, future in batch:
                        if not future.done():
                            future.set_exception(exc)
                    continue
                for (_, future), result in zip(batch, results, strict=True):
                    if not future.done():
                        future.set_result(result)
        finally:
            self._running = False

