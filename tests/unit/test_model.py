"""The task model (lifecycle table, ids) and the wire message codec."""

from __future__ import annotations

import time
import uuid

import orjson
import pytest

from conveyor.errors import InvalidTransition, SerializationError
from conveyor.message import MAX_MESSAGE_BYTES, Message, decode, encode
from conveyor.model import (
    FINAL_STATUSES,
    TRANSITIONS,
    Task,
    TaskStatus,
    can_transition,
    check_transition,
    iso,
    new_task_id,
    parse_iso,
)

S = TaskStatus


def test_every_status_has_a_row_in_the_transition_table() -> None:
    assert set(TRANSITIONS) == set(TaskStatus)


def test_succeeded_is_the_only_status_with_no_way_out() -> None:
    assert [s for s, targets in TRANSITIONS.items() if not targets] == [S.SUCCEEDED]


def test_final_statuses_are_succeeded_failed_and_cancelled() -> None:
    assert {s for s in TaskStatus if s.is_final} == FINAL_STATUSES == {S.SUCCEEDED, S.FAILED, S.CANCELLED}


@pytest.mark.parametrize(("from_status", "to_status"), [
    (S.QUEUED, S.RUNNING), (S.RUNNING, S.SUCCEEDED), (S.RUNNING, S.RETRYING), (S.RETRYING, S.QUEUED),
    (S.RUNNING, S.QUEUED), (S.SCHEDULED, S.QUEUED), (S.FAILED, S.QUEUED), (S.CANCELLED, S.QUEUED),
])
def test_allowed_transitions_pass_the_check(from_status: TaskStatus, to_status: TaskStatus) -> None:
    assert can_transition(from_status, to_status)
    check_transition(uuid.uuid4(), from_status, to_status)


@pytest.mark.parametrize(("from_status", "to_status"), [
    (S.SUCCEEDED, S.QUEUED), (S.SUCCEEDED, S.RUNNING), (S.QUEUED, S.SUCCEEDED), (S.FAILED, S.RUNNING),
    (S.RUNNING, S.RUNNING), (S.QUEUED, S.RETRYING), (S.SCHEDULED, S.SUCCEEDED),
])
def test_forbidden_transitions_raise_invalid_transition(
    from_status: TaskStatus, to_status: TaskStatus
) -> None:
    task_id = uuid.uuid4()

    assert not can_transition(from_status, to_status)
    with pytest.raises(InvalidTransition) as info:
        check_transition(task_id, from_status, to_status)
    assert (info.value.task_id, info.value.from_status, info.value.to_status) == (
        task_id, from_status.value, to_status.value)


def test_task_ids_are_uuid7_with_the_rfc_variant() -> None:
    task_id = new_task_id()

    assert task_id.version == 7
    assert task_id.variant == uuid.RFC_4122


def test_task_ids_carry_their_creation_millisecond() -> None:
    before = time.time_ns() // 1_000_000
    task_id = new_task_id()
    after = time.time_ns() // 1_000_000

    assert before <= task_id.int >> 80 <= after


def test_task_ids_sort_by_creation_time() -> None:
    ids = []
    for _ in range(5):
        ids.append(new_task_id())
        time.sleep(0.002)  # ids within one millisecond are ordered randomly

    assert sorted(ids) == ids
    assert sorted(str(i) for i in ids) == [str(i) for i in ids]  # as text too (stores key on it)


def test_task_ids_are_unique() -> None:
    assert len({new_task_id() for _ in range(10_000)}) == 10_000


def test_iso_round_trips_a_timestamp() -> None:
    assert iso(1_700_000_000.25) == "2023-11-14T22:13:20.250000Z"
    assert parse_iso(iso(1_700_000_000.25)) == 1_700_000_000.25
    assert iso(None) is None and parse_iso(None) is None


def test_message_round_trips_through_encode_and_decode() -> None:
    task = Task(type="report.build", params={"id": 7, "tags": ["a", "ü"], "opt": None}, queue="reports",
                priority=6, attempts=1, max_attempts=4, timeout=30.0, eta=1_700_000_000.5)
    message = Message.for_task(task, trace={"traceparent": "00-abc-def-01"})

    decoded = decode(encode(message))

    assert decoded == message
    assert decoded.attempt == 2
    assert decoded.to_task().id == task.id


def test_decode_fills_defaults_for_a_minimal_message() -> None:
    task_id = uuid.uuid4()

    message = decode(orjson.dumps({"protocol": 1, "id": str(task_id), "type": "ping", "params": {},
                                   "queue": "default"}))

    assert message == Message(id=task_id, type="ping", params={})


@pytest.mark.parametrize("missing", ["protocol", "id", "type", "params", "queue"])
def test_decode_requires_the_fields_the_schema_requires(missing: str) -> None:
    body = {"protocol": 1, "id": str(uuid.uuid4()), "type": "ping", "params": {}, "queue": "default"}
    del body[missing]
    with pytest.raises(SerializationError, match=missing):
        decode(orjson.dumps(body))


@pytest.mark.parametrize("body", [
    b"not json",
    b"[1, 2]",
    b'{"type": "ping"}',  # no id
    b'{"id": "not-a-uuid", "type": "ping"}',
    b'{"id": "0190f5a4-0000-7000-8000-000000000000", "type": ""}',
    b'{"id": "0190f5a4-0000-7000-8000-000000000000", "type": "ping", "params": [1]}',
    b'{"id": "0190f5a4-0000-7000-8000-000000000000", "type": "ping", "priority": 10}',
    b'{"id": "0190f5a4-0000-7000-8000-000000000000", "type": "ping", "protocol": 2}',
    b'{"id": "0190f5a4-0000-7000-8000-000000000000", "type": "ping", "trace": "x"}',
    b'{"id": "0190f5a4-0000-7000-8000-000000000000", "type": "ping", "eta": "yesterday"}',
])
def test_decode_rejects_bad_bodies_with_serialization_error(body: bytes) -> None:
    with pytest.raises(SerializationError):
        decode(body)


def test_decode_rejects_an_oversized_body() -> None:
    with pytest.raises(SerializationError, match="limit"):
        decode(b" " * (MAX_MESSAGE_BYTES + 1))


def test_encode_rejects_params_that_are_not_json() -> None:
    message = Message(id=uuid.uuid4(), type="ping", params={"when": object()})

    with pytest.raises(SerializationError):
        encode(message)


def test_encode_rejects_params_that_make_the_message_too_large() -> None:
    message = Message(id=uuid.uuid4(), type="ping", params={"blob": "x" * MAX_MESSAGE_BYTES})

    with pytest.raises(SerializationError, match="limit"):
        encode(message)
