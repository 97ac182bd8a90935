"""One validation for every entry point, equal to the published schemas: the bounds in
``conveyor.validation`` are the schemas' numbers, and the wire decoder, ``TaskService`` and the
report decoder refuse the same values (the kit's invalid messages, NUL, NaN, out-of-range
integers) with a message naming the field."""

from __future__ import annotations

import json
import math
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest
from jsonschema import Draft202012Validator
from referencing import Registry, Resource

from conveyor import message, reports, validation
from conveyor.errors import SerializationError
from conveyor.service import SubmitRequest, TaskService
from conveyor.store.sqlite import SqliteStore
from tests.conformance.kit import runner
from tests.unit.test_protocol_schemas import RecordingBroker

PROTOCOL = Path(__file__).resolve().parents[2] / "protocol"
SCHEMAS = {name: json.loads((PROTOCOL / name).read_text()) for name in
           ("task-message.schema.json", "report-message.schema.json", "answer-message.schema.json")}
REGISTRY = Registry().with_resources(
    [(schema["$id"], Resource.from_contents(schema)) for schema in SCHEMAS.values()]
    + [(name, Resource.from_contents(schema)) for name, schema in SCHEMAS.items()])
TASK = SCHEMAS["task-message.schema.json"]["properties"]
REPORT = SCHEMAS["report-message.schema.json"]["$defs"]


def validator(name: str) -> Draft202012Validator:
    Draft202012Validator.check_schema(SCHEMAS[name])
    return Draft202012Validator(SCHEMAS[name], registry=REGISTRY)


def test_the_schemas_state_the_bounds_conveyor_enforces() -> None:
    assert TASK["queue"]["pattern"] == validation.QUEUE_PATTERN
    assert TASK["type"]["maxLength"] == validation.MAX_TYPE_LENGTH
    assert (TASK["priority"]["minimum"], TASK["priority"]["maximum"]) == (0, validation.MAX_PRIORITY)
    assert (TASK["attempt"]["minimum"], TASK["attempt"]["maximum"]) == (1, validation.MAX_ATTEMPTS)
    assert (TASK["max_attempts"]["minimum"], TASK["max_attempts"]["maximum"]) == (1, validation.MAX_ATTEMPTS)
    assert (TASK["timeout"]["exclusiveMinimum"], TASK["timeout"]["maximum"]) == (0, validation.MAX_TIMEOUT_S)
    assert TASK["eta"]["pattern"] == validation.INSTANT_PATTERN
    assert TASK["id"]["pattern"] == validation.UUID_PATTERN
    assert REPORT["attempt"]["maximum"] == validation.MAX_ATTEMPTS
    assert REPORT["node"]["maxLength"] == validation.MAX_NODE_LENGTH
    assert REPORT["claim"]["properties"]["queue"]["pattern"] == validation.QUEUE_PATTERN
    assert REPORT["taskReport"]["properties"]["retry_delay_s"]["maximum"] == validation.MAX_DELAY_S


MESSAGES = runner.load("messages")


@pytest.mark.parametrize("case", MESSAGES, ids=[c["name"] for c in MESSAGES])
def test_the_decoder_and_the_schema_agree_on_every_message_of_the_kit(case: dict[str, Any]) -> None:
    body = runner.message_body(case, runner.fresh_id())
    refused = case["expect"]["outcome"] == "dead_letter" and "unknown task type" not in case["expect"]["reason"]
    try:
        data = orjson.loads(body)  # strict JSON, as on the wire
    except orjson.JSONDecodeError:
        data = None
    if data is not None:
        schema_errors = list(validator("task-message.schema.json").iter_errors(data))
        assert bool(schema_errors) == refused, schema_errors
    if refused:
        with pytest.raises(SerializationError) as caught:
            message.decode(body)
        assert case["expect"]["reason"].lower() in str(caught.value).lower()
    else:
        message.decode(body)


def test_every_answer_the_center_gives_validates_against_the_answer_schema() -> None:
    check = validator("answer-message.schema.json")
    from conveyor.foreign import ClaimAnswer, LeaseTerms
    from conveyor.model import TaskStatus

    terms = LeaseTerms()
    task_id = uuid.uuid4()
    answers = [
        ClaimAnswer(task_id, "run", "attempt 1 is yours", terms, attempt=1, timeout=30.0).to_dict(),
        ClaimAnswer(task_id, "later", "not due yet", terms, delay_s=2.5).to_dict(),
        ClaimAnswer(task_id, "drop", "already succeeded", terms).to_dict(),
        reports.ReportAnswer(task_id, 1, "running", True, "lease renewed", TaskStatus.RUNNING).to_dict(),
        reports.ReportAnswer(task_id, 1, "returned", False, "ignored: superseded").to_dict(),
        reports.HeartbeatAnswer("php-1", terms).to_dict(),
        reports.error_answer("malformed report: 'node' must be a string"),
    ]
    for answer in answers:
        assert list(check.iter_errors(answer)) == [], answer
    assert list(check.iter_errors({**answers[0], "attempt": None})) != []


@pytest.fixture
def service(sqlite_url: str) -> Iterator[TaskService]:
    store = SqliteStore(sqlite_url)
    yield TaskService(store, RecordingBroker())
    store.close()


@pytest.mark.parametrize(("changes", "field"), [
    ({"type": "a\x00b"}, "type"),
    ({"type": "x" * 201}, "type"),
    ({"params": {"x": math.nan}}, "params"),
    ({"params": {"x": [math.inf]}}, "params"),
    ({"params": {"x": "a\x00b"}}, "params"),
    ({"params": {"x\x00": 1}}, "params"),
    ({"queue": "q" * 201}, "queue"),
    ({"queue": "-starts-with-a-dash"}, "queue"),
    ({"priority": True}, "priority"),
    ({"priority": 10}, "priority"),
    ({"max_attempts": 0}, "max_attempts"),
    ({"max_attempts": 10**12}, "max_attempts"),
    ({"timeout": -1}, "timeout"),
    ({"timeout": 1e10}, "timeout"),
    ({"timeout": math.inf}, "timeout"),
    ({"timeout": math.nan}, "timeout"),
    ({"delay_s": math.nan}, "delay"),
    ({"eta": math.inf}, "eta"),
    ({"idempotency_key": "k\x00"}, "idempotency_key"),
])
def test_the_python_api_refuses_out_of_bounds_values_naming_the_field(
        service: TaskService, changes: dict[str, Any], field: str) -> None:
    request = SubmitRequest(**{"type": "t", "params": {}, **changes})
    with pytest.raises(ValueError, match=f"^{field}"):
        service.build_task(request)


def test_params_that_are_not_json_at_all_are_a_serialization_error(service: TaskService) -> None:
    with pytest.raises(SerializationError, match="not JSON"):
        service.build_task(SubmitRequest(type="t", params={"x": object()}))


def test_the_largest_values_in_bounds_are_accepted(service: TaskService) -> None:
    task = service.build_task(SubmitRequest(
        type="t" * 200, params={"big": 2**62}, queue="q" * 200, priority=9, max_attempts=validation.MAX_ATTEMPTS,
        timeout=validation.MAX_TIMEOUT_S, delay_s=validation.MAX_DELAY_S))
    assert (task.queue, task.max_attempts, task.timeout) == ("q" * 200, 10_000, validation.MAX_TIMEOUT_S)


def _report(**changes: Any) -> bytes:
    body = {"protocol": 1, "id": str(uuid.uuid4()), "attempt": 1, "node": "n", "status": "failed",
            "at": "2030-01-01T00:00:00Z", "error": {"type": "E", "message": "m"}, **changes}
    return orjson.dumps(body)


@pytest.mark.parametrize(("body", "field"), [
    (_report(attempt=3_000_000_000), "attempt"),
    (_report(attempt=0), "attempt"),
    (_report(node="a\x00"), "node"),
    (_report(error={"type": "E\x00", "message": "m"}), "error.type"),
    (_report(error={"type": "E", "message": "m\x00"}), "error.message"),
    (_report(error={"type": "E", "message": "m", "traceback": "\x00"}), "error.traceback"),
    (_report(status="succeeded", result={"k": "\x00"}), "result"),
    (_report(retry_delay_s=-1), "retry_delay_s"),
    (_report(retry_delay_s=1e300), "retry_delay_s"),
    (_report(at="9999-01-01T00:00:00Z"), "at"),
    (_report(at="yesterday"), "at"),
    (orjson.dumps({"protocol": 1, "kind": "heartbeat", "node": "n", "queues": ["q\x00"], "concurrency": 1,
                   "in_flight": 0, "done": 0}), "queues"),
    (orjson.dumps({"protocol": 1, "kind": "heartbeat", "node": "n", "queues": [], "concurrency": 1,
                   "in_flight": 0, "done": 2**40}), "done"),
])
def test_reports_out_of_bounds_are_refused_naming_the_field(body: bytes, field: str) -> None:
    with pytest.raises(SerializationError, match=field):
        reports.decode(body)


def test_the_nul_shortcut_only_skips_bodies_that_cannot_hold_a_nul() -> None:
    assert not validation.may_hold_nul(orjson.dumps({"a": "b"}))
    assert validation.may_hold_nul(orjson.dumps({"a": "\x00"}))


@pytest.mark.parametrize("queue", ["emails\n", "q\n", "_reports"])
def test_a_trailing_newline_or_a_leading_underscore_is_not_a_queue_name(queue: str) -> None:
    with pytest.raises(ValueError, match=r"^queue"):
        validation.check_queue(queue)
    body = orjson.dumps({"protocol": 1, "id": str(uuid.uuid4()), "type": "t", "params": {}, "queue": queue})
    with pytest.raises(SerializationError, match="queue"):
        message.decode(body)
