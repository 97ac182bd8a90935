"""The Python API: ``Conveyor`` (task registry + connections) and ``TaskHandle``."""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Callable
from datetime import datetime
from typing import Any, TypeVar

from conveyor import config
from conveyor.broker import open_broker
from conveyor.broker.base import Broker
from conveyor.config import Settings
from conveyor.errors import TaskFailed
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
        self._lock = threading.RLock()
        self.periodic_specs: list[dict[str, Any]] = []  # filled by @app.periodic

    # -- connections ----------------------------------------------------------------------
    @property
    def service(self) -> TaskService:
        if self._service is None:
            with self._lock:
                if self._service is None:
                    self._service = TaskService(self.store, self.broker, self.registry)
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
             retry_backoff_max_s: float = 300.0) -> Callable[[Callable[..., Any]], TaskSpec]:
        """Register a handler (sync or async) for task type ``name``."""
        options = TaskOptions(queue=queue, priority=priority, max_attempts=max_attempts, timeout=timeout,
                              retry_backoff_s=retry_backoff_s, retry_backoff_max_s=retry_backoff_max_s)

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
               timeout: float | None = None, idempotency_key: str | None = None) -> TaskHandle:
        eta_s = eta.timestamp() if isinstance(eta, datetime) else eta
        request = SubmitRequest(type=type, params=params or {}, queue=queue, priority=priority, eta=eta_s,
                                delay_s=delay, max_attempts=max_attempts, timeout=timeout,
                                idempotency_key=idempotency_key)
        task, _ = self.service.submit(request)
        return TaskHandle(self, task.id)

    async def submit_async(self, type: str, params: dict[str, Any] | None = None, *, queue: str | None = None,
                           priority: int | None = None, eta: datetime | float | None = None,
                           delay: float | None = None, max_attempts: int | None = None,
                           timeout: float | None = None, idempotency_key: str | None = None) -> TaskHandle:
        """``submit`` for asyncio code (FastAPI handlers, say): never blocks the event loop, and
        concurrent calls share one transaction. Durable when it returns."""
        eta_s = eta.timestamp() if isinstance(eta, datetime) else eta
        request = SubmitRequest(type=type, params=params or {}, queue=queue, priority=priority, eta=eta_s,
                                delay_s=delay, max_attempts=max_attempts, timeout=timeout,
                                idempotency_key=idempotency_key)
        task, _ = await self.service.submit_async(request)
        return TaskHandle(self, task.id)

    def get(self, task_id: uuid.UUID | str) -> Task:
        return self.service.get(_uuid(task_id))

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


def _uuid(value: uuid.UUID | str) -> uuid.UUID:
    return value if isinstance(value, uuid.UUID) else uuid.UUID(str(value))
