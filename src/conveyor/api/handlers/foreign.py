"""Endpoints for workers outside Conveyor (docs/protocol.md §4-§5): discovery of the protocol's
terms, claims and reports over HTTP. They answer exactly what the center answers on AMQP
(``conveyor.foreign``, ``conveyor.reports``; protocol/answer-message.schema.json)."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Body

from conveyor import message, reports, validation
from conveyor.api.handlers import ServiceDep, SettingsDep
from conveyor.api.handlers.tasks import NOT_FOUND, parse_task_id
from conveyor.api.schemas import JsonResponse
from conveyor.foreign import LeaseTerms, claim, decode_claim
from conveyor.reports import REPORTS_QUEUE
from conveyor.service import TaskService

router = APIRouter(tags=["workers"])

CLAIM_EXAMPLE = {"attempt": 1, "node": "php-web-1-4242", "queue": "emails"}
REPORT_EXAMPLE = {"protocol": 1, "id": "0190c3e2-8f4a-7b21-9c3d-5e6f7a8b9c0d", "attempt": 1, "node": "php-web-1-4242",
                  "status": "running", "at": "2030-01-01T12:00:00Z"}
ANSWER = {"description": "The answer (protocol/answer-message.schema.json)",
          "content": {"application/json": {"schema": {"type": "object"}}}}


def _namespace(service: TaskService) -> str:
    return str(getattr(service.broker, "namespace", "conveyor"))


@router.get("/protocol", response_model=None,
            responses={200: {"description": "What a foreign worker needs to know",
                             "content": {"application/json": {"schema": {"type": "object"}}}}})
def protocol(service: ServiceDep, settings: SettingsDep) -> JsonResponse:
    """The wire protocol's version, lease terms (renew every ``renew_s``, heartbeat every
    ``heartbeat_s``), AMQP names and bounds, for workers and clients in other languages."""
    namespace = _namespace(service)
    return JsonResponse({
        "protocol": message.PROTOCOL_VERSION,
        **LeaseTerms.from_settings(settings).to_dict(),
        "max_crashes": settings.max_crashes,
        "amqp": {"exchange": namespace, "reports_routing_key": REPORTS_QUEUE,
                 "queue_prefix": f"{namespace}.", "dead_letter_queue": f"{namespace}.dead",
                 "queue_type": getattr(service.broker, "queue_type", None)},
        "limits": {"max_message_bytes": message.MAX_MESSAGE_BYTES, "queue_pattern": validation.QUEUE_PATTERN,
                   "max_type_length": validation.MAX_TYPE_LENGTH, "max_attempts": validation.MAX_ATTEMPTS,
                   "max_timeout_s": validation.MAX_TIMEOUT_S, "max_priority": validation.MAX_PRIORITY},
    })


@router.post("/tasks/{task_id}/claim", response_model=None, responses={200: ANSWER})
def claim_task(task_id: str, service: ServiceDep, settings: SettingsDep,
               body: dict[str, Any] = Body(examples=[CLAIM_EXAMPLE])) -> JsonResponse:  # noqa: B008
    """Ask to run a delivered task message: ``{"attempt", "node", "queue"?, "message"?}``.
    The answer's ``decision`` is ``run`` (with the ``attempt`` to report under), ``drop`` or
    ``later`` (with ``delay_s``); ``message`` lets the center adopt a task it never saw."""
    request = decode_claim(body, parse_task_id(task_id))
    return JsonResponse(claim(service, request, LeaseTerms.from_settings(settings)).to_dict())


@router.post("/reports", response_model=None, responses={200: ANSWER, **NOT_FOUND})
def post_report(service: ServiceDep, settings: SettingsDep,
                body: dict[str, Any] = Body(examples=[REPORT_EXAMPLE])) -> JsonResponse:  # noqa: B008
    """Apply a report (protocol/report-message.schema.json: a task report, a heartbeat or a
    claim) and return the center's answer; ``stop: true`` means this node should stop working
    on that attempt. A report for a task id the store never saw is a 404."""
    report = reports.decode_object(body)
    return JsonResponse(reports.answer(service, report, LeaseTerms.from_settings(settings)).to_dict())
