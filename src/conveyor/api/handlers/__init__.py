"""Route handlers, one module per area; each stays thin and calls ``TaskService``.

Dependencies shared by every handler module (and by ``conveyor.api.schedules``) live here:
``ServiceDep`` / ``get_service`` give the app's ``TaskService``; ``SettingsDep`` its settings;
``OpsDep`` the ``Operations`` over that service (opened on first use). They read
``request.app.state``, which ``create_app`` fills.
"""

from __future__ import annotations

import threading
from typing import Annotated, Any

from fastapi import Depends, Request

from conveyor.config import Settings
from conveyor.errors import StoreError
from conveyor.operations import Operations
from conveyor.service import TaskService

_ops_lock = threading.Lock()


def get_service(request: Request) -> TaskService:
    service: TaskService | None = request.app.state.service
    if service is None:  # the lifespan has not run (or failed): nothing to talk to yet
        raise StoreError("the API is not connected to its store yet")
    return service


def get_settings(request: Request) -> Settings:
    settings: Settings = request.app.state.settings
    return settings


def get_operations(request: Request) -> Operations:
    get_service(request)  # 503 until the lifespan connected
    ops = operations_of(request.app)
    assert ops is not None
    return ops


def operations_of(app: Any) -> Operations | None:
    """The app's ``Operations`` over its current ``TaskService`` (None before it connected)."""
    state = app.state
    service: TaskService | None = state.service
    if service is None:
        return None
    ops: Operations | None = getattr(state, "operations", None)
    if ops is None or ops.service is not service:
        with _ops_lock:
            ops = getattr(state, "operations", None)
            if ops is None or ops.service is not service:
                ops = Operations(service, state.settings)
                state.operations = ops
    return ops


ServiceDep = Annotated[TaskService, Depends(get_service)]
SettingsDep = Annotated[Settings, Depends(get_settings)]
Responses = dict[int | str, dict[str, Any]]  # a route's documented answers beside its 2xx
OpsDep = Annotated[Operations, Depends(get_operations)]

__all__ = ["OpsDep", "ServiceDep", "SettingsDep", "get_operations", "get_service", "get_settings", "operations_of"]
