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
- ``begin_run`` starts an attempt's spans on a worker: span ``conveyor queue wait <type>``
  (from when the task became due to the start, recorded after the fact) and span
  ``conveyor run <type>`` (kind CONSUMER, ended when the attempt ends), both children of the
  submit span; the run span links to the queue wait. The task's next message (a retry)
  carries the run's context, so the attempts of one task chain into one trace.
"""

from __future__ import annotations

import contextvars
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
    if trace:
        for task_id in task_ids:
            _keep(task_id, trace)


def _keep(task_id: uuid.UUID, trace: dict[str, str]) -> None:
    with _remembered_lock:
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


class RunSpan:
    """The spans of one attempt on a worker (see ``begin_run``)."""

    def __init__(self, span: Any, context: Any) -> None:
        self._span = span
        self._context = context

    def enter(self, handler_context: contextvars.Context) -> None:
        """Make the run span current inside the handler's context (its own spans nest under it)."""
        from opentelemetry import context

        handler_context.run(context.attach, self._context)

    def end(self) -> None:
        self._span.end()


def begin_run(message: bytes | Mapping[str, str], *, task_id: uuid.UUID, task_type: str, queue: str,
              attempt: int, node: str, due_at: float | None) -> RunSpan | None:
    """Start the spans of an attempt, children of the context the task message (its body, or
    its ``trace``) carries: the queue wait (already over) and the run (ended by ``end``). The
    run's context is remembered for the task's next message (a retry). None untraced."""
    otel = _otel()
    if otel is None:
        return None
    from opentelemetry import propagate

    trace = _trace_of(message)
    parent = propagate.extract(trace) if trace else None
    tracer: Any = otel.get_tracer(TRACER_NAME)
    attributes = {"messaging.system": "conveyor", "messaging.destination.name": queue,
                  "conveyor.task.id": str(task_id), "conveyor.task.type": task_type, "conveyor.attempt": attempt,
                  "conveyor.node": node}
    links = []
    if due_at is not None:
        wait = tracer.start_span(f"conveyor queue wait {task_type}", context=parent,
                                 start_time=int(min(due_at, time.time()) * 1e9), attributes=attributes)
        wait.end()
        links.append(otel.Link(wait.get_span_context()))
    span = tracer.start_span(f"conveyor run {task_type}", context=parent, kind=otel.SpanKind.CONSUMER,
                             attributes=attributes, links=links)
    context = otel.set_span_in_context(span, parent)
    carrier: dict[str, str] = {}
    propagate.inject(carrier, context=context)
    _keep(task_id, carrier)
    return RunSpan(span, context)


@contextmanager
def run_span(message: bytes | Mapping[str, str], *, task_id: uuid.UUID, task_type: str, queue: str, attempt: int,
             node: str, due_at: float | None) -> Iterator[None]:
    """``begin_run`` for a block that runs the handler in the current context."""
    run = begin_run(message, task_id=task_id, task_type=task_type, queue=queue, attempt=attempt, node=node,
                    due_at=due_at)
    if run is None:
        yield
        return
    from opentelemetry import context

    token = context.attach(run._context)
    try:
        yield
    finally:
        context.detach(token)
        run.end()
