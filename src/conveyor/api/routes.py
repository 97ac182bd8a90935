"""The route table: the versioned API under ``/api/v1`` and the operations endpoints at the
root. Handlers live in ``conveyor.api.handlers``; ``conveyor.api.schedules`` (schedules CRUD)
is mounted when it is importable."""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from fastapi import APIRouter, Depends

from conveyor.api.auth import bearer_scheme
from conveyor.api.handlers import cluster, console, flow, foreign, ops, tasks
from conveyor.api.schemas import ERROR_RESPONSES

log = logging.getLogger(__name__)

API_PREFIX = "/api/v1"


def build_router() -> APIRouter:
    api = APIRouter(prefix=API_PREFIX, dependencies=[Depends(bearer_scheme)], responses=ERROR_RESPONSES)
    api.include_router(tasks.router)
    api.include_router(cluster.router)
    api.include_router(console.router)
    api.include_router(foreign.router)
    api.include_router(flow.router)
    root = APIRouter()
    root.include_router(api)
    for router in optional_routers():
        root.include_router(router, dependencies=[Depends(bearer_scheme)], responses=ERROR_RESPONSES)
    root.include_router(ops.router)
    return root


def optional_closers() -> list[Callable[[Any], None]]:
    """Shutdown hooks of the optional routers (each takes the app)."""
    try:
        from conveyor.api.schedules import close_schedule_store
    except ImportError:
        return []
    return [close_schedule_store]


def optional_routers() -> list[APIRouter]:
    """Routers written apart from this module; the API works without them."""
    try:
        from conveyor.api.schedules import router
    except ImportError as exc:
        log.debug("no schedules endpoints: %s", exc)
        return []
    return [router]
