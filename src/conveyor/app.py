"""The Python API: ``Conveyor`` (task registry + connections) and ``TaskHandle``."""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Callable, Sequence
from datetime import datetime
from typing import Any, TypeVar

from conveyor import config
from conveyor.broker import open_broker
from conveyor.broker.base import Broker
from conveyor.config import Settings
from conveyor.errors import TaskFailed, WorkflowFailed
from conveyor.flow.canvas import to_spec
from conveyor.flow.options import FlowOptions
from conveyor.flow.service import FlowService
from conveyor.model import Task, TaskStatus
from conveyor.service import SubmitRequest, TaskService
from conveyor.store import open_store
from conveyor.store.base import Store
from conveyor.task import Registry, TaskOptions, TaskSpec

F = TypeVar("F", bound=Callable[..., Any])


class Conveyor:
    """A Conveyor application: the task types it knows and where its tasks live.

    ``Conveyor()`` reads ``CONVEYOR_BROKER_URL`` / ``CONVEYOR_STORE_URL`` and falls back to the
    embedded default (``sqlite:///conveyor.db``), so one module runs anywhere. Connections open
    on first use, so importing a module that defines an app costs nothing.
    """

    def __init__(self, broker: Broker | str | None = None, store: Store | str | None = None,
                 settings: Settings | None = None) -> None:
        self.settings = settings or config.load()
        self.registry = Registry()
        self._broker_arg = broker
        self._store_arg = store
        self._store: Store | None = None
        self._broker: Broker | None = None
        self._service: TaskService | None = None
        self._flow: FlowService | None = None
        self._lock = threading.RLock()
        self.periodic_specs: list[dict[str, Any]] = []  # filled by @app.periodic

    # -- connections ----------------------------------------------------------------------
    @property
    def service(self) -> TaskService:
        if self._service is None:
            with self._lock:
                if self._service is None:
                    self._service = TaskService(self.store, self.broker, self.registry,
                                                heartbeat_s=self.settings.heartbeat_s)
        return self._service

    @property
    def store(self) -> Store:
        """The store, opened on first use (without opening the broker)."""
        if self._store is None:
            with self._lock:
                if self._store is None:
                    self._store = self._open_store()
        return self._store

    @property
    def broker(self) -> Broker:
        if self._broker is None:
            with self._lock:
                if self._broker is None:
                    self._broker = self._open_broker()
        return self._broker

    def broker_source(self) -> tuple[str, Broker | None]:
        """(the broker's URL, the broker object if one was given or is open): lets a worker
        speak to the broker on its own event loop without opening this app's connection."""
        arg = self._broker_arg
        if arg is not None and not isinstance(arg, str):
            return getattr(arg, "url", ""), arg
        return arg or self.settings.broker_url, self._broker

    def store_source(self) -> tuple[str, Store | None]:
        """(the store's URL, the store object if one was given or is open): like ``broker_source``."""
        arg = self._store_arg
        if arg is not None and not isinstance(arg, str):
            return getattr(arg, "url", ""), arg
        return arg or self.settings.store_url, self._store

    def _open_store(self) -> Store:
        arg = self._store_arg
        if arg is None and self._broker_arg is None:  # both from the settings: they must work together
            config.check_deployment(self.settings)
        return open_store(arg or self.settings.store_url) if arg is None or isinstance(arg, str) else arg

    def _open_broker(self) -> Broker:
        arg = self._broker_arg
        if arg is None or isinstance(arg, str):
            return open_broker(arg or self.settings.broker_url, lease_s=self.settings.lease_s)
        return arg

    def use_settings(self, settings: Settings) -> None:
        """Adopt settings resolved by an entry point (CLI flags win over the module's URLs)."""
        with self._lock:
            if self._service is not None or self._store is not None or self._broker is not None:
                raise RuntimeError("use_settings() must come before the app connects")
            self.settings = settings
            if isinstance(self._broker_arg, str) or self._broker_arg is None:
                self._broker_arg = None
            if isinstance(self._store_arg, str) or self._store_arg is None:
                self._store_arg = None

    def close(self) -> None:
        """Publish what is still pending, then close the connections this app opened."""
        with self._lock:
            self._flow = None
            if self._service is not None:
                self._service.close()
                self._service = None
            if self._broker is not None:
                self._broker.close()
                self._broker = None
            if self._store is not None:
                self._store.close()
                self._store = None

    # -- task types -----------------------------------------------------------------------
    def task(self, name: str, *, queue: str = "default", priority: int = 0, max_attempts: int = 3,
             timeout: float | None = None, retry_backoff_s: float = 1.0,
             retry_backoff_max_s: float = 300.0, rate_limit: str | float | None = None, rate_burst: int = 1,
             rate_key: str | None = None, concurrency_limit: int | None = None,
             concurrency_key: str | None = None, unique: bool = False, unique_on: Sequence[str] | None = None,
             route: str = "fair", route_key: str | None = None,
             shards: int | None = None) -> Callable[[Callable[..., Any]], TaskSpec]:
        """Register a handler (sync or async) for task type ``name``. Flow control
        (docs/flow-control.md): ``rate_limit`` ("100/m"; per ``rate_key`` param value),
        ``concurrency_limit`` (per ``concurrency_key``), ``unique``/``unique_on`` (dedupe submits
        while one is waiting or running), ``route`` (fair | key | broadcast | sharded)."""
        flow = FlowOptions.build(rate_limit=rate_limit, rate_burst=rate_burst, rate_key=rate_key,
                                 concurrency_limit=concurrency_limit, concurrency_key=concurrency_key,
                                 unique=unique, unique_on=unique_on, route=route, route_key=route_key, shards=shards)
        options = TaskOptions(queue=queue, priority=priority, max_attempts=max_attempts, timeout=timeout,
                              retry_backoff_s=retry_backoff_s, retry_backoff_max_s=retry_backoff_max_s, flow=flow)

        def register(handler: Callable[..., Any]) -> TaskSpec:
            spec = TaskSpec(self, name, handler, options)
            self.registry.add(spec)
            return spec

        return register

    def periodic(self, *, cron: str | None = None, interval_s: float | None = None,
                 name: str | None = None, timezone: str = "UTC",
                 params: dict[str, Any] | None = None) -> Callable[[TaskSpec], TaskSpec]:
        """Declare a schedule for a registered task: ``@app.periodic(cron="*/5 * * * *")`` placed
        above ``@app.task(...)``. The scheduler creates or updates it on start."""
        if (cron is None) == (interval_s is None):
            raise ValueError("give exactly one of cron or interval_s")

        def declare(spec: TaskSpec) -> TaskSpec:
            self.periodic_specs.append({
                "name": name or spec.name, "type": spec.name, "cron": cron, "interval_s": interval_s,
                "timezone": timezone, "params": params or {},
            })
            return spec

        return declare

    # -- submitting and looking up --------------------------------------------------------
    def submit(self, type: str, params: dict[str, Any] | None = None, *, queue: str | None = None,
               priority: int | None = None, eta: datetime | float | None = None,
               delay: float | None = None, max_attempts: int | None = None,
               timeout: float | None = None, idempotency_key: str | None = None,
               unique_key: str | None = None, route: str | None = None) -> TaskHandle:
        """Submit a task. ``unique_key``: no new task while one with this key is waiting or
        running (that one is returned); ``route``: key | broadcast | sharded (docs/flow-control.md;
        broadcast and sharded return the handle of the workflow's first child)."""
        eta_s = eta.timestamp() if isinstance(eta, datetime) else eta
        request = SubmitRequest(type=type, params=params or {}, queue=queue, priority=priority, eta=eta_s,
                                delay_s=delay, max_attempts=max_attempts, timeout=timeout,
                                idempotency_key=idempotency_key, unique_key=unique_key, route=route)
        task, _ = self.service.submit(request)
        return TaskHandle(self, task.id)

    async def submit_async(self, type: str, params: dict[str, Any] | None = None, *, queue: str | None = None,
                           priority: int | None = None, eta: datetime | float | None = None,
                           delay: float | None = None, max_attempts: int | None = None,
                           timeout: float | None = None, idempotency_key: str | None = None,
                           unique_key: str | None = None) -> TaskHandle:
        """``submit`` for asyncio code (FastAPI handlers, say): never blocks the event loop, and
        concurrent calls share one transaction. Durable when it returns."""
        eta_s = eta.timestamp() if isinstance(eta, datetime) else eta
        request = SubmitRequest(type=type, params=params or {}, queue=queue, priority=priority, eta=eta_s,
                                delay_s=delay, max_attempts=max_attempts, timeout=timeout,
                                idempotency_key=idempotency_key, unique_key=unique_key)
        task, _ = await self.service.submit_async(request)
        return TaskHandle(self, task.id)

    def get(self, task_id: uuid.UUID | str) -> Task:
        return self.service.get(_uuid(task_id))

    # -- flow control (docs/flow-control.md) ----------------------------------------------
    @property
    def flow(self) -> FlowService:
        """Workflows, broadcast and sharded submits, limits."""
        if self._flow is None:
            with self._lock:
                if self._flow is None:
                    self._flow = FlowService(self.service, self.settings.heartbeat_s)
        return self._flow

    def submit_workflow(self, workflow: Any, name: str | None = None) -> WorkflowHandle:
        """Submit a ``chain``, ``group``, ``chord``, ``Workflow`` (or a JSON spec): stored at
        once with every step, its first steps published. Returns its handle."""
        spec = workflow if isinstance(workflow, dict) else to_spec(workflow, name)
        view = self.flow.submit_workflow(spec)
        return WorkflowHandle(self, uuid.UUID(view["id"]))

    def handle_workflow(self, workflow_id: uuid.UUID | str) -> WorkflowHandle:
        return WorkflowHandle(self, _uuid(workflow_id))

    def broadcast(self, type: str, params: dict[str, Any] | None = None, **options: Any) -> WorkflowHandle:
        """Run the task once on every live node of its queue (each copy a step, with its node)."""
        return WorkflowHandle(self, uuid.UUID(self.flow.broadcast(type, params, **options)["id"]))

    def shard(self, type: str, params: dict[str, Any] | None = None, *, shards: int | None = None,
              **options: Any) -> WorkflowHandle:
        """Run ``shards`` copies (default: one per live node) spread over the live nodes; each
        reads ``current_task().shard_index`` / ``shard_total``."""
        return WorkflowHandle(self, uuid.UUID(self.flow.shard(type, params, shards=shards, **options)["id"]))

    def cancel(self, task_id: uuid.UUID | str) -> Task:
        return self.service.cancel(_uuid(task_id))

    def retry(self, task_id: uuid.UUID | str) -> Task:
        return self.service.retry(_uuid(task_id))

    def handle(self, task_id: uuid.UUID | str) -> TaskHandle:
        return TaskHandle(self, _uuid(task_id))


class TaskHandle:
    """A submitted task, by id."""

    def __init__(self, app: Conveyor, task_id: uuid.UUID) -> None:
        self.app = app
        self.id = task_id

    def get(self) -> Task:
        return self.app.get(self.id)

    def status(self) -> TaskStatus:
        return self.get().status

    def wait(self, timeout: float | None = None) -> Task:
        """Block until the task is final; raise TimeoutError after ``timeout`` seconds."""
        deadline = None if timeout is None else time.monotonic() + timeout
        pause = 0.005
        while True:
            task = self.get()
            if task.status.is_final:
                return task
            if deadline is not None and time.monotonic() >= deadline:
                raise TimeoutError(f"task {self.id} still {task.status.value} after {timeout} s")
            time.sleep(pause)
            pause = min(pause * 2, 0.2)

    def result(self, timeout: float | None = None) -> Any:
        """The handler's return value; raises TaskFailed if the task failed or was cancelled."""
        task = self.wait(timeout)
        if task.status is TaskStatus.SUCCEEDED:
            return task.result
        raise TaskFailed(task.id, task.status.value, task.error)

    def __repr__(self) -> str:
        return f"TaskHandle({self.id})"


class WorkflowHandle:
    """A submitted workflow (or broadcast, or sharded task), by id."""

    def __init__(self, app: Conveyor, workflow_id: uuid.UUID) -> None:
        self.app = app
        self.id = workflow_id

    def get(self) -> dict[str, Any]:
        """The workflow's view: status, result, and each step with its status and node."""
        return self.app.flow.get_workflow(self.id)

    def status(self) -> str:
        return str(self.get()["status"])

    def wait(self, timeout: float | None = None) -> dict[str, Any]:
        """Block until the workflow is final (succeeded, failed or cancelled)."""
        deadline = None if timeout is None else time.monotonic() + timeout
        pause = 0.01
        while True:
            view = self.get()
            if view["status"] != "running" and not (view["status"] == "cancelled" and _still_running(view)):
                return view
            if deadline is not None and time.monotonic() >= deadline:
                raise TimeoutError(f"workflow {self.id} still {view['status']} after {timeout} s")
            time.sleep(pause)
            pause = min(pause * 2, 0.25)

    def result(self, timeout: float | None = None) -> Any:
        """The workflow's result (the last step's, or a list for a group); raises
        WorkflowFailed if it failed or was cancelled."""
        view = self.wait(timeout)
        if view["status"] == "succeeded":
            return view["result"]
        raise WorkflowFailed(view)

    def cancel(self) -> dict[str, Any]:
        """Cancel the steps that have not started."""
        return self.app.flow.cancel_workflow(self.id)

    def __repr__(self) -> str:
        return f"WorkflowHandle({self.id})"


def _still_running(view: dict[str, Any]) -> bool:
    return any(s["status"] in ("running", "queued", "scheduled", "retrying") for s in view["steps"])


def _uuid(value: uuid.UUID | str) -> uuid.UUID:
    return value if isinstance(value, uuid.UUID) else uuid.UUID(str(value))
