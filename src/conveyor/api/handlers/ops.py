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
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.registry import Collector

from conveyor.api.auth import bearer_scheme
from conveyor.api.handlers.cluster import node_rows, queue_rows
from conveyor.api.schemas import JsonResponse, error_response
from conveyor.errors import TaskNotFound
from conveyor.operations import Operations
from conveyor.service import TaskService
from conveyor.stats import BUCKETS_S
from conveyor.store.base import Store

log = logging.getLogger(__name__)

router = APIRouter(tags=["operations"])

READY_TIMEOUT_S = 2.0
_NO_SUCH_TASK = uuid.UUID(int=0)


class ApiMetrics:
    """One registry per app (tests build many apps): an HTTP request counter plus the task,
    queue and node figures read from the statistics at scrape time (``conveyor.stats``: exact
    across every process, kept across restarts)."""

    def __init__(self, operations: Callable[[], Operations | None], heartbeat_s: float) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter("conveyor_http_requests", "HTTP requests served",
                                ["method", "route", "status"], registry=self.registry)
        self.registry.register(_ClusterCollector(operations, heartbeat_s))


_COUNTER_HELP = {
    "submitted": "Tasks submitted (stored)",
    "started": "Attempts started",
    "succeeded": "Tasks that succeeded",
    "failed": "Tasks that failed for good",
    "cancelled": "Tasks cancelled",
    "retried": "Retries: automatic (after a failed attempt) and manual",
    "dead_lettered": "Tasks dead-lettered (no node knows their type)",
}
_HISTOGRAM_HELP = {
    "run_seconds": "Run time of an attempt, seconds",
    "queue_wait_seconds": "Time from due (queued or eta) to the start of an attempt, seconds",
}


class _ClusterCollector(Collector):
    def __init__(self, operations: Callable[[], Operations | None], heartbeat_s: float) -> None:
        self._operations = operations
        self._heartbeat_s = heartbeat_s

    def collect(self) -> Iterator[Metric]:
        ops = self._operations()
        if ops is None:
            return
        yield from self._queues(ops)
        yield from self._totals(ops)
        nodes = GaugeMetricFamily("conveyor_nodes", "Execution nodes by state", labels=["status"])
        by_status = {"live": 0, "lost": 0}
        for node in node_rows(ops.service, self._heartbeat_s):
            by_status[node["status"]] = by_status.get(node["status"], 0) + 1
        for status, count in sorted(by_status.items()):
            nodes.add_metric([status], count)
        yield nodes
        lag = GaugeMetricFamily("conveyor_stats_pending_events", "Task events not yet folded into the statistics")
        lag.add_metric([], ops.stats.pending())
        yield lag

    @staticmethod
    def _queues(ops: Operations) -> Iterator[Metric]:
        tasks = GaugeMetricFamily("conveyor_tasks", "Tasks by queue and status", labels=["queue", "status"])
        depth = GaugeMetricFamily("conveyor_queue_depth", "Tasks waiting (queued, scheduled, retrying)",
                                  labels=["queue"])
        in_flight = GaugeMetricFamily("conveyor_queue_in_flight", "Tasks running", labels=["queue"])
        oldest = GaugeMetricFamily("conveyor_queue_oldest_waiting_seconds", "Age of the oldest queued task",
                                   labels=["queue"])
        consumers = GaugeMetricFamily("conveyor_queue_consumers", "Live nodes serving the queue", labels=["queue"])
        rate = GaugeMetricFamily("conveyor_queue_finished_per_second",
                                 "Tasks finished per second over the last 60 s", labels=["queue"])
        for row in queue_rows(ops):
            name = row["name"]
            for status, count in row["counts"].items():
                tasks.add_metric([name, status], count)
            depth.add_metric([name], row["depth"])
            in_flight.add_metric([name], row["in_flight"])
            oldest.add_metric([name], row["oldest_waiting_s"] or 0.0)
            consumers.add_metric([name], row["consumers"])
            rate.add_metric([name], row["rate_per_s"])
        yield from (tasks, depth, in_flight, oldest, consumers, rate)

    @staticmethod
    def _totals(ops: Operations) -> Iterator[Metric]:
        counters = {name: CounterMetricFamily(f"conveyor_tasks_{name}", help_text, labels=["queue", "type"])
                    for name, help_text in _COUNTER_HELP.items()}
        sums: dict[tuple[str, str, str], float] = {}
        values: dict[tuple[str, str], dict[str, float]] = {}
        for queue, type_, name, n in ops.stats.totals():
            if name in counters:
                values.setdefault((queue, type_), {})[name] = n
            elif name.endswith("_sum"):
                sums[(queue, type_, name[:-4])] = n
        # Every counter for every (queue, type) seen, zeros included: rate() needs the series.
        for (queue, type_), by_name in sorted(values.items()):
            for name, counter in counters.items():
                counter.add_metric([queue, type_], by_name.get(name, 0.0))
        yield from counters.values()
        buckets: dict[tuple[str, str, str], list[float]] = {}
        for queue, type_, name, bucket, n in ops.stats.buckets():
            counts = buckets.setdefault((queue, type_, name), [0.0] * (len(BUCKETS_S) + 1))
            counts[min(bucket, len(BUCKETS_S))] += n
        for name, help_text in _HISTOGRAM_HELP.items():
            family = HistogramMetricFamily(f"conveyor_task_{name}", help_text, labels=["queue", "type"])
            for (queue, type_, hist), counts in sorted(buckets.items()):
                if hist != name:
                    continue
                cumulative, running = [], 0.0
                for bound, count in zip([*map(str, BUCKETS_S), "+Inf"], counts, strict=True):
                    running += count
                    cumulative.append((bound, running))
                family.add_metric([queue, type_], cumulative, sums.get((queue, type_, name), 0.0))
            yield family

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
    """Prometheus metrics: task counters and histograms by queue and type, tasks by queue and
    status, queue depth and oldest age, nodes by state, HTTP requests (docs/console.md)."""
    api_metrics: ApiMetrics = request.app.state.metrics
    return Response(generate_latest(api_metrics.registry), media_type=CONTENT_TYPE_LATEST)
