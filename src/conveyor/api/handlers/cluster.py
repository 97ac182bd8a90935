"""Cluster endpoints: execution nodes and per-queue statistics."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Query

from conveyor.api.handlers import OpsDep, ServiceDep, SettingsDep
from conveyor.api.schemas import JsonResponse, NodesOut, QueuesOut
from conveyor.model import NodeInfo, now
from conveyor.operations import Operations
from conveyor.service import TaskService

router = APIRouter(tags=["cluster"])



def shown_status(node: NodeInfo, at: float, heartbeat_s: float) -> str:
    """``lost`` for a node still registered live whose heartbeats stopped (it may have died
    before the reaper marked it); otherwise its stored status."""
    return "lost" if node.is_silent(at, heartbeat_s) else node.status


def node_rows(service: TaskService, heartbeat_s: float, include_stopped: bool = False) -> list[dict[str, Any]]:
    at = now()
    rows = []
    for node in service.nodes():
        row = {**node.to_dict(), "status": shown_status(node, at, heartbeat_s)}
        if include_stopped or row["status"] != "stopped":
            rows.append(row)
    return rows


def queue_rows(ops: Operations) -> list[dict[str, Any]]:
    """Per queue (from the statistics; see ``Operations.queues``)."""
    return ops.queues()


@router.get("/nodes", response_model=None, responses={200: {"model": NodesOut, "description": "Nodes"}})
def list_nodes(service: ServiceDep, settings: SettingsDep,
               include_stopped: Annotated[bool, Query(description="also list stopped nodes")] = False,
               ) -> JsonResponse:
    """Execution nodes: live, and lost (no heartbeat for 3 heartbeat periods)."""
    return JsonResponse({"nodes": node_rows(service, settings.heartbeat_s, include_stopped)})


@router.get("/queues", response_model=None, responses={200: {"model": QueuesOut, "description": "Queues"}})
def list_queues(ops: OpsDep) -> JsonResponse:
    """Per queue: depth (queued + scheduled + retrying), in flight (running), the age of the
    oldest queued task, consumers (live nodes serving it) and their slots, finished totals and
    the finish rate over the last 60 s."""
    return JsonResponse({"queues": queue_rows(ops)})
