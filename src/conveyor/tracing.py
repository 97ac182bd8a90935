"""Optional OpenTelemetry spans: submit, queue wait and run, linked into one trace.

No hard dependency, and no cost where unused: OpenTelemetry is only used once the application
has imported it (to configure a tracer provider, it must), so a worker that does not trace
never loads it; with the API but no SDK configured the spans are OpenTelemetry's own no-ops.
When an application configures a tracer provider (``opentelemetry-sdk``, an exporter), then:

- ``submit_span`` wraps a submit: span ``conveyor submit <type>`` (kind PRODUCER). The task
  message carries its W3C context (``trace.traceparent``, docs/protocol.md): messages are
  built later, on the publisher's thread (the outbox), so the submit ``remember``s the context
  of its task ids and ``trace_for`` finds it when the message is built (the current context
  first, if there is one).
- ``run_span`` wraps an attempt on a worker: span ``conveyor queue wait <type>`` (from when the
  task became due to the start, recorded after the fact) and span ``conveyor run <type>``
  (kind CONSUMER), both children of the submit span; the run span links to the queue wait.
  A retry published from inside the run carries the run's context, so the attempts of one
  task chain into one trace.
"""

from __future__ import annotations

import sys
import threading
import time
import uuid
from collections import OrderedDict
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from types import ModuleType
from typing import Any

TRACER_NAME = "conveyor"
REMEMBERED_MAX = 10_000  # task ids whose trace context waits for their message to be built

_remembered: OrderedDict[uuid.UUID, dict[str, str]] = OrderedDict()
_remembered_lock = threading.Lock()


def _otel() -> ModuleType | None:
    """``opentelemetry.trace`` if the application loaded it, else None."""
    return sys.modules.get("opentelemetry.trace")


def enabled() -> bool:
    return _otel() is not None


def message_trace() -> dict[str, str]:
    """The current trace context as message ``trace`` fields (empty without a recording span)."""
    trace = _otel()
    if trace is None or not trace.get_current_span().get_span_context().is_valid:
        return {}
    from opentelemetry import propagate

    carrier: dict[str, str] = {}
    propagate.inject(carrier)
    return carrier


def remember(task_ids: Iterable[uuid.UUID]) -> None:
    """Keep the current trace context for these tasks' next messages (a no-op untraced)."""
    trace = message_trace()
    if not trace:
        return
    with _remembered_lock:
        for task_id in task_ids:
            _remembered[task_id] = trace
            _remembered.move_to_end(task_id)
        while len(_remembered) > REMEMBERED_MAX:
            _remembered.popitem(last=False)


def trace_for(task_id: uuid.UUID) -> dict[str, str]:
    """The trace context for a message of ``task_id``: the current one, else the remembered one."""
    if _otel() is None:
        return {}
    current = message_trace()
    if current:
        return current
    with _remembered_lock:
        return dict(_remembered.get(task_id, {}))


@contextmanager
def submit_span(task_type: str, queue: str, count: int = 1) -> Iterator[None]:
    trace = _otel()
    if trace is None:
        yield
        return
    attributes = {"messaging.system": "conveyor", "messaging.operation.type": "send",
                  "messaging.destination.name": queue, "conveyor.task.type": task_type,
                  "messaging.batch.message_count": count}
    tracer: Any = trace.get_tracer(TRACER_NAME)
    with tracer.start_as_current_span(f"conveyor submit {task_type}", kind=trace.SpanKind.PRODUCER,
                                      attributes=attributes):
        yield


def _trace_of(message: bytes | Mapping[str, str]) -> dict[str, str]:
    """The ``trace`` of a task message (its body, or the mapping itself)."""
    if not isinstance(message, bytes | bytearray):
        return dict(message)
    import orjson

    try:
        trace = orjson.loads(message).get("trace")
    except (orjson.JSONDecodeError, AttributeError):
        return {}
    return {str(k): str(v) for k, v in trace.items()} if isinstance(trace, dict) else {}


@contextmanager
def run_span(message: bytes | Mapping[str, str], *, task_id: str, task_type: str, queue: str, attempt: int,
             node: str, due_at: float | None) -> Iterator[None]:
    """Spans of one attempt, children of the context the task message (body or its ``trace``)
    carries."""
    otel = _otel()
    if otel is None:
        yield
        return
    from opentelemetry import context, propagate

    trace = _trace_of(message)
    parent = propagate.extract(dict(trace)) if trace else None
    tracer: Any = otel.get_tracer(TRACER_NAME)
    attributes = {"messaging.system": "conveyor", "messaging.destination.name": queue,
                  "conveyor.task.id": task_id, "conveyor.task.type": task_type, "conveyor.attempt": attempt,
                  "conveyor.node": node}
    links = []
    if due_at is not None:
        start_ns = int(min(due_at, time.time()) * 1e9)
        wait = tracer.start_span(f"conveyor queue wait {task_type}", context=parent, start_time=start_ns,
                                 attributes=attributes)
        wait.end()
        links.append(otel.Link(wait.get_span_context()))
    token = context.attach(parent) if parent is not None else None
    try:
        with tracer.start_as_current_span(f"conveyor run {task_type}", kind=otel.SpanKind.CONSUMER,
                                          attributes=attributes, links=links):
            yield
    finally:
        if token is not None:
            context.detach(token)
