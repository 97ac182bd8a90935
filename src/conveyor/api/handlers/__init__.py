"""Route handlers, one module per area; each stays thin and calls ``TaskService``.

Dependencies shared by every handler module (and by ``conveyor.api.schedules``) live here:
``ServiceDep`` / ``get_service`` give the app's ``TaskService``; ``SettingsDep`` its settings.
Both read ``request.app.state``, which ``create_app`` fills.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request

from conveyor.config import Settings
from conveyor.errors import StoreError
from conveyor.service import TaskService


def get_service(request: Request) -> TaskService:
    service: TaskService | None = request.app.state.service
    if service is None:  # the lifespan has not run (or failed): nothing to talk to yet
        raise StoreError("the API is not connected to its store yet")
    return service


def get_settings(request: Request) -> Settings:
    settings: Settings = request.app.state.settings
    return settings


ServiceDep = Annotated[TaskService, Depends(get_service)]
SettingsDep = Annotated[Settings, Depends(get_settings)]

__all__ = ["ServiceDep", "SettingsDep", "get_service", "get_settings"]
