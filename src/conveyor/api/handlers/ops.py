"""Operations endpoints: ``/healthz`` (process up), ``/readyz`` (store reachable) and
``/metrics`` (Prometheus text). The health probes never need the token; /metrics does."""

from __future__ import annotations

import contextlib
import logging
import uuid
from collections.abc import Callable, Iterator

import anyio
import anyio.to_thread
from fastapi import APIRouter, Depends, Request, Response
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, generate_latest
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from conveyor.api.auth import bearer_scheme
from conveyor.api.handlers.cluster import node_rows, queue_rows
from conveyor.api.schemas import JsonResponse, error_response
from conveyor.errors import TaskNotFound
from conveyor.service import TaskService
from conveyor.store.base import Store

log = logging.getLogger(__name__)

router = APIRouter(tags=["operations"])

READY_TIMEOUT_S = 2.0
_NO_SUCH_TASK = uuid.UUID(int=0)


class ApiMetrics:
    """One registry per app (tests build many apps): an HTTP request counter plus task and node
    gauges read from the store at scrape time."""

    def __init__(self, service: Callable[[], TaskService | None], heartbeat_s: float) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter("conveyor_http_requests", "HTTP requests served",
                                ["method", "route", "status"], registry=self.registry)
        self.registry.register(_ClusterCollector(service, heartbeat_s))


class _ClusterCollector(Collector):
    def __init__(self, service: Callable[[], TaskService | None], heartbeat_s: float) -> None:
        self._service = service
        self._heartbeat_s = heartbeat_s

    def collect(self) -> Iterator[Metric]:
        service = self._service()
        if service is None:
            return
        tasks = GaugeMetricFamily("conveyor_tasks", "Tasks by queue and status", labels=["queue", "status"])
        rate = GaugeMetricFamily("conveyor_queue_finished_per_second",
                                 "Tasks finished per second over the last 60 s", labels=["queue"])
        for row in queue_rows(service):
            for status, count in row["counts"].items():
                tasks.add_metric([row["name"], status], count)
            rate.add_metric([row["name"]], row["rate_per_s"])
        nodes = GaugeMetricFamily("conveyor_nodes", "Execution nodes by status", labels=["status"])
        by_status = {"live": 0, "lost": 0}
        for node in node_rows(service, self._heartbeat_s):
            by_status[node["status"]] = by_status.get(node["status"], 0) + 1
        for status, count in sorted(by_status.items()):
            nodes.add_metric([status], count)
        yield from (tasks, rate, nodes)

    def describe(self) -> Iterator[Metric]:
        return iter(())  # names are dynamic; do not query the store at registration


@router.get("/healthz")
async def healthz() -> JsonResponse:
    """The process is up and serving (no I/O)."""
    return JsonResponse({"status": "ok"})


@router.get("/readyz", responses={503: {"description": "The store is unreachable"}})
async def readyz(request: Request) -> JsonResponse:
    """The store answers a cheap query within 2 s."""
    service: TaskService | None = request.app.state.service
    if service is None:
        return error_response(503, "unavailable", "not connected to the store yet")
    try:
        with anyio.fail_after(READY_TIMEOUT_S):
            await anyio.to_thread.run_sync(_ping, service.store, abandon_on_cancel=True)
    except TimeoutError:
        return error_response(503, "unavailable", f"the store did not answer within {READY_TIMEOUT_S:g} s")
    except Exception as exc:  # any failure means "not ready"; say why, keep serving
        log.warning("readiness check failed: %s", exc)
        return error_response(503, "unavailable", f"the store is unreachable: {exc}")
    return JsonResponse({"status": "ready"})


def _ping(store: Store) -> None:
    ping = getattr(store, "ping", None)
    if ping is not None:
        ping()
        return
    with contextlib.suppress(TaskNotFound):
        store.get(_NO_SUCH_TASK)  # a primary-key lookup: the cheapest query the port offers


@router.get("/metrics", dependencies=[Depends(bearer_scheme)], response_class=Response,
            responses={200: {"content": {"text/plain": {}}, "description": "Prometheus text format"}})
def metrics(request: Request) -> Response:
    """Prometheus metrics: tasks by queue and status, nodes by status, HTTP requests."""
    api_metrics: ApiMetrics = request.app.state.metrics
    return Response(generate_latest(api_metrics.registry), media_type=CONTENT_TYPE_LATEST)
