"""Where the operator commands send their calls: straight to the store and broker (local), or
to a scheduler's HTTP API (``--api URL`` / ``CONVEYOR_API``, token from
``CONVEYOR_API_TOKEN``), so an operator needs no database or broker credentials.

Both answer with the API's JSON shapes (``Task.to_dict()`` and friends), so the commands
render one thing whichever backend they have. Local read commands never create a store:
they open the SQLite file only if it exists (``_sqlite.existing_only``) and the broker only
when a command needs it.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager, nullcontext
from typing import Any, Protocol
from urllib.parse import quote

import httpx

from conveyor.config import Settings, check_deployment, mask_secrets
from conveyor.errors import ConveyorError
from conveyor.model import iso
from conveyor.service import SubmitRequest

HTTP_TIMEOUT_S = 30.0


class RemoteError(ConveyorError):
    """The HTTP API refused a call; ``type`` is its error type (not_found, conflict, ...)."""

    def __init__(self, status: int, type_: str, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.type = type_


class Backend(Protocol):
    def submit(self, request: SubmitRequest) -> dict[str, Any]: ...
    def task(self, text: str) -> dict[str, Any]: ...
    def tasks(self, filters: dict[str, Any], limit: int, cursor: str | None) -> dict[str, Any]: ...
    def cancel(self, text: str) -> dict[str, Any]: ...
    def retry(self, text: str) -> dict[str, Any]: ...
    def bulk(self, action: str, ids: list[str] | None, filters: dict[str, Any] | None,
             limit: int) -> dict[str, Any]: ...
    def nodes(self) -> list[dict[str, Any]]: ...
    def queues(self) -> list[dict[str, Any]]: ...
    def dead_letters(self, limit: int) -> list[dict[str, Any]]: ...
    def dead_action(self, action: str, ids: list[str] | None) -> int: ...
    def purge(self, finished_before: float) -> int: ...
    def schedules(self) -> list[dict[str, Any]]: ...
    def schedule_create(self, body: dict[str, Any]) -> dict[str, Any]: ...
    def schedule_change(self, name: str, changes: dict[str, Any]) -> dict[str, Any]: ...
    def schedule_delete(self, name: str) -> None: ...
    def schedule_run(self, name: str) -> dict[str, Any]: ...
    def close(self) -> None: ...


# -- local ----------------------------------------------------------------------------------------
class LocalBackend:
    """The store and broker named by the settings, opened on first use."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self._store: Any = None
        self._broker: Any = None
        self._ops: Any = None
        self._schedules: Any = None

    def ops(self) -> Any:
        """The Operations over the store (opened only if it exists) and a lazily opened broker."""
        if self._ops is None:
            from conveyor import _sqlite
            from conveyor.operations import Operations
            from conveyor.service import TaskService
            from conveyor.store import open_store

            check_deployment(self.settings)
            with _sqlite.existing_only():
                self._store = open_store(self.settings.store_url)
            self._ops = Operations(TaskService(self._store, _LazyBroker(self)), self.settings)
        return self._ops

    def broker(self, *, existing: bool = False) -> Any:
        if self._broker is None:
            from conveyor import _sqlite
            from conveyor.broker import open_broker

            with _sqlite.existing_only() if existing else nullcontext():
                self._broker = open_broker(self.settings.broker_url, lease_s=self.settings.lease_s)
        return self._broker

    def submit(self, request: SubmitRequest) -> dict[str, Any]:
        from conveyor.app import Conveyor

        check_deployment(self.settings)
        app = Conveyor(settings=self.settings)
        try:
            task, created = app.service.submit(request)
        finally:
            app.close()
        return {**task.to_dict(), "created": created}

    def task(self, text: str) -> dict[str, Any]:
        ops = self.ops()
        task_id = ops.resolve(text)
        task = ops.service.get(task_id)
        return {**task.to_dict(), "events": [e.to_dict() for e in ops.service.events(task_id)]}

    def tasks(self, filters: dict[str, Any], limit: int, cursor: str | None) -> dict[str, Any]:
        page = self.ops().search(search_of(filters), limit=limit, cursor=uuid.UUID(cursor) if cursor else None)
        return {"tasks": [t.to_dict() for t in page.tasks],
                "next_cursor": str(page.next_cursor) if page.next_cursor else None}

    def cancel(self, text: str) -> dict[str, Any]:
        ops = self.ops()
        return dict(ops.service.cancel(ops.resolve(text)).to_dict())

    def retry(self, text: str) -> dict[str, Any]:
        ops = self.ops()
        return dict(ops.service.retry(ops.resolve(text)).to_dict())

    def bulk(self, action: str, ids: list[str] | None, filters: dict[str, Any] | None, limit: int) -> dict[str, Any]:
        ops = self.ops()
        if ids is not None:
            return dict(ops.apply_to_ids(ids, action).to_dict())
        search = search_of(filters or {})
        result = ops.retry_matching(search, limit) if action == "retry" else ops.cancel_matching(search, limit)
        return dict(result.to_dict())

    def nodes(self) -> list[dict[str, Any]]:
        at = time.time()
        return [{**node.to_dict(), "status": "lost" if node.is_silent(at, self.settings.heartbeat_s) else node.status}
                for node in self.ops().service.nodes()]

    def queues(self) -> list[dict[str, Any]]:
        return list(self.ops().queues())

    def dead_letters(self, limit: int) -> list[dict[str, Any]]:
        self.broker(existing=True)
        return [d.to_dict() for d in self.ops().dead_letters(limit)]

    def dead_action(self, action: str, ids: list[str] | None) -> int:
        self.broker(existing=True)
        ops = self.ops()
        return int(ops.replay_dead(ids) if action == "replay" else ops.delete_dead(ids))

    def purge(self, finished_before: float) -> int:
        return int(self.ops().purge(finished_before))

    def schedule_store(self, *, existing: bool = False) -> Any:
        """The schedule store beside the tasks (reads never create it). Schedules need no broker,
        so a store URL alone will do (no deployment check, as before ``--api`` came to them)."""
        if self._schedules is None:
            from conveyor import _sqlite
            from conveyor.scheduler.schedule_store import open_schedule_store

            with _sqlite.existing_only() if existing else nullcontext():
                self._schedules = open_schedule_store(self.settings.store_url)
        return self._schedules

    def schedules(self) -> list[dict[str, Any]]:
        return [s.to_dict() for s in self.schedule_store(existing=True).all()]

    def schedule_create(self, body: dict[str, Any]) -> dict[str, Any]:
        from conveyor.scheduler.schedules import Schedule

        fields = {k: v for k, v in body.items() if k not in ("name", "type")}
        return dict(self.schedule_store().create(Schedule.new(body["name"], body["type"], **fields)).to_dict())

    def schedule_change(self, name: str, changes: dict[str, Any]) -> dict[str, Any]:
        store = self.schedule_store()
        return dict(store.update(store.get(name).redefine(**changes)).to_dict())

    def schedule_delete(self, name: str) -> None:
        self.schedule_store().delete(name)

    def schedule_run(self, name: str) -> dict[str, Any]:
        from conveyor.app import Conveyor
        from conveyor.scheduler.manual import run_now

        schedule = self.schedule_store().get(name)
        app = Conveyor(settings=self.settings)
        try:
            return dict(run_now(app.service, schedule).to_dict())
        finally:
            app.close()

    def close(self) -> None:
        if self._schedules is not None:
            self._schedules.close()
        if self._ops is not None:
            if self._broker is not None:
                self._ops.service.close()  # publish what a retry or replay handed to the outbox
            self._ops.close()
        if self._broker is not None:
            self._broker.close()
        if self._store is not None:
            self._store.close()


class _LazyBroker:
    """The broker, opened when first used (read commands never open it)."""

    def __init__(self, backend: LocalBackend) -> None:
        self._backend = backend

    @property
    def target(self) -> Any:
        return self._backend.broker()

    def __getattr__(self, name: str) -> Any:
        return getattr(self.target, name)


def search_of(filters: dict[str, Any]) -> Any:
    from conveyor.model import TaskStatus
    from conveyor.store.queries import TaskSearch

    status = filters.get("status")
    return TaskSearch(status=TaskStatus(status) if status else None, type=filters.get("type"),
                      queue=filters.get("queue"), node=filters.get("node"), created_after=filters.get("since"),
                      created_before=filters.get("until"), id_prefix=filters.get("id"),
                      idempotency_key=filters.get("idempotency_key"))


# -- remote ---------------------------------------------------------------------------------------
class HttpBackend:
    """A scheduler's HTTP API at ``url``."""

    def __init__(self, url: str, token: str | None) -> None:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        self.url = url.rstrip("/")
        self._client = httpx.Client(base_url=self.url, headers=headers, timeout=HTTP_TIMEOUT_S)

    def _call(self, method: str, path: str, **kwargs: Any) -> Any:
        try:
            response = self._client.request(method, path, **kwargs)
        except httpx.HTTPError as exc:
            raise RemoteError(0, "unavailable", f"cannot reach the API at {mask_secrets(self.url)}: {exc}") from exc
        if response.status_code >= 400:
            try:
                error = response.json()["error"]
                raise RemoteError(response.status_code, error["type"], error["message"])
            except (ValueError, KeyError, TypeError):
                raise RemoteError(response.status_code, "http", f"HTTP {response.status_code} from {path}") from None
        return response.json() if response.content else None

    def submit(self, request: SubmitRequest) -> dict[str, Any]:
        body = {k: v for k, v in {
            "type": request.type, "params": request.params, "queue": request.queue, "priority": request.priority,
            "delay": request.delay_s, "max_attempts": request.max_attempts, "timeout": request.timeout,
            "idempotency_key": request.idempotency_key, "unique_key": request.unique_key}.items() if v is not None}
        result: dict[str, Any] = self._call("POST", "/api/v1/tasks", json=body)
        return result

    def task(self, text: str) -> dict[str, Any]:
        result: dict[str, Any] = self._call("GET", f"/api/v1/tasks/{text}")
        return result

    def tasks(self, filters: dict[str, Any], limit: int, cursor: str | None) -> dict[str, Any]:
        params = {**_wire_filters(filters), "limit": limit, **({"cursor": cursor} if cursor else {})}
        result: dict[str, Any] = self._call("GET", "/api/v1/tasks", params=params)
        return result

    def cancel(self, text: str) -> dict[str, Any]:
        result: dict[str, Any] = self._call("POST", f"/api/v1/tasks/{text}/cancel")
        return result

    def retry(self, text: str) -> dict[str, Any]:
        result: dict[str, Any] = self._call("POST", f"/api/v1/tasks/{text}/retry")
        return result

    def bulk(self, action: str, ids: list[str] | None, filters: dict[str, Any] | None, limit: int) -> dict[str, Any]:
        body: dict[str, Any] = {"limit": limit}
        if ids is not None:
            body["ids"] = ids
        else:
            body["filter"] = _wire_filters(filters or {})
        result: dict[str, Any] = self._call("POST", f"/api/v1/tasks:{action}", json=body)
        return result

    def nodes(self) -> list[dict[str, Any]]:
        return list(self._call("GET", "/api/v1/nodes")["nodes"])

    def queues(self) -> list[dict[str, Any]]:
        return list(self._call("GET", "/api/v1/queues")["queues"])

    def dead_letters(self, limit: int) -> list[dict[str, Any]]:
        return list(self._call("GET", "/api/v1/dead-letters", params={"limit": limit})["dead_letters"])

    def dead_action(self, action: str, ids: list[str] | None) -> int:
        body = {"all": True} if ids is None else {"ids": ids}
        result = self._call("POST", f"/api/v1/dead-letters:{action}", json=body)
        return int(result["replayed" if action == "replay" else "deleted"])

    def purge(self, finished_before: float) -> int:
        result = self._call("POST", "/api/v1/tasks:purge", json={"finished_before": iso(finished_before)})
        return int(result["deleted"])

    def schedules(self) -> list[dict[str, Any]]:
        return list(self._call("GET", "/api/v1/schedules")["schedules"])

    def schedule_create(self, body: dict[str, Any]) -> dict[str, Any]:
        wire = {k: v for k, v in body.items() if v is not None}
        result: dict[str, Any] = self._call("POST", "/api/v1/schedules", json=wire)
        return result

    def schedule_change(self, name: str, changes: dict[str, Any]) -> dict[str, Any]:
        result: dict[str, Any] = self._call("PATCH", _schedule_path(name), json=changes)
        return result

    def schedule_delete(self, name: str) -> None:
        self._call("DELETE", _schedule_path(name))

    def schedule_run(self, name: str) -> dict[str, Any]:
        result: dict[str, Any] = self._call("POST", f"{_schedule_path(name)}/run")
        return result

    def close(self) -> None:
        self._client.close()


def _schedule_path(name: str) -> str:
    return f"/api/v1/schedules/{quote(name, safe='')}"  # names may hold ':' and '@'


def _wire_filters(filters: dict[str, Any]) -> dict[str, Any]:
    """CLI filters as the API's query/filter fields (times as ISO-8601)."""
    wire: dict[str, Any] = {}
    for key, value in filters.items():
        if value is None:
            continue
        wire[key] = iso(value) if key in ("since", "until") else value
    return wire


@contextmanager
def open_backend(settings: Settings, api_url: str | None) -> Iterator[Backend]:
    backend: Backend = HttpBackend(api_url, settings.api_token) if api_url else LocalBackend(settings)
    try:
        yield backend
    finally:
        backend.close()
