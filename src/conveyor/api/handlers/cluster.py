"""Cluster endpoints: execution nodes and per-queue statistics."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Query

from conveyor.api.handlers import ServiceDep, SettingsDep
from conveyor.api.schemas import JsonResponse, NodesOut, QueuesOut
from conveyor.model import NodeInfo, TaskStatus, now
from conveyor.service import TaskService

router = APIRouter(tags=["cluster"])

RATE_WINDOW_S = 60.0
DEPTH_STATUSES = (TaskStatus.QUEUED.value, TaskStatus.SCHEDULED.value, TaskStatus.RETRYING.value)


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


def queue_rows(service: TaskService) -> list[dict[str, Any]]:
    stats = service.store.queue_stats(now() - RATE_WINDOW_S)
    for node in service.nodes():  # queues served but still empty are worth showing
        if node.status == "live":
            for name in node.queues:
                if not name.startswith("_node."):  # a node's own queue (routing) is no queue to show
                    stats.setdefault(name, {})
    rows = []
    for name in sorted(stats):
        raw = stats[name]
        counts = {s.value: int(raw.get(s.value, 0)) for s in TaskStatus}
        finished = int(raw.get("finished_since", 0))
        rows.append({
            "name": name,
            "depth": sum(counts[s] for s in DEPTH_STATUSES),
            "in_flight": counts[TaskStatus.RUNNING.value],
            "succeeded": counts[TaskStatus.SUCCEEDED.value],
            "failed": counts[TaskStatus.FAILED.value],
            "cancelled": counts[TaskStatus.CANCELLED.value],
            "finished_last_60s": finished,
            "rate_per_s": round(finished / RATE_WINDOW_S, 3),
            "counts": counts,
        })
    return rows


@router.get("/nodes", response_model=None, responses={200: {"model": NodesOut, "description": "Nodes"}})
def list_nodes(service: ServiceDep, settings: SettingsDep,
               include_stopped: Annotated[bool, Query(description="also list stopped nodes")] = False,
               ) -> JsonResponse:
    """Execution nodes: live, and lost (no heartbeat for 3 heartbeat periods)."""
    return JsonResponse({"nodes": node_rows(service, settings.heartbeat_s, include_stopped)})


@router.get("/queues", response_model=None, responses={200: {"model": QueuesOut, "description": "Queues"}})
def list_queues(service: ServiceDep) -> JsonResponse:
    """Per queue: depth (queued + scheduled + retrying), in flight (running), finished totals and
    the finish rate over the last 60 s."""
    return JsonResponse({"queues": queue_rows(service)})
