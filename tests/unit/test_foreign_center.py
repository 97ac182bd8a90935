"""The center's side of the protocol for foreign workers, on the embedded store: every claim and
report case of the conformance kit (protocol/conformance/claims.json, reports.json) gets the
answer the kit expects, and leaves the task as it says."""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from typing import Any

import pytest

from conveyor import reports
from conveyor.errors import SerializationError, TaskNotFound
from conveyor.foreign import ClaimRequest, LeaseTerms, claim, decode_claim
from conveyor.message import decode
from conveyor.model import TaskStatus, iso, now
from conveyor.service import SubmitRequest, TaskService
from conveyor.store.sqlite import SqliteStore
from tests.conformance.kit import runner
from tests.unit.test_protocol_schemas import RecordingBroker

TERMS = LeaseTerms(lease_s=runner.LEASE_S, heartbeat_s=runner.HEARTBEAT_S, max_crashes=3)
CLAIMS = runner.load("claims")
REPORTS = runner.load("reports")


@pytest.fixture
def service(sqlite_url: str) -> Iterator[TaskService]:
    store = SqliteStore(sqlite_url)
    yield TaskService(store, RecordingBroker())
    store.close()


def _get(service: TaskService, task_id: str) -> Any:
    try:
        return service.get(uuid.UUID(task_id))
    except TaskNotFound:
        return None


@pytest.mark.parametrize("case", CLAIMS, ids=[c["name"] for c in CLAIMS])
def test_claim_cases_of_the_kit(service: TaskService, case: dict[str, Any]) -> None:
    task_id = runner.fresh_id()
    runner.preset(service.store, task_id, case["store"])
    body = runner.claim_message(task_id, case["message_attempt"])
    request = decode_claim({"protocol": 1, "kind": "claim", "id": task_id, "attempt": case["message_attempt"],
                            "node": "conformance-node", "queue": "conformance", "message": body})
    answer = claim(service, request, TERMS).to_dict()
    assert runner.check_claim_answer(case, answer) == []
    task = _get(service, task_id)
    if answer["decision"] == "run":
        assert (task.status, task.node, task.attempts) == (TaskStatus.RUNNING, "conformance-node", answer["attempt"])
        assert task.lease_until == pytest.approx(now() + TERMS.lease_s, abs=1.0)
    if "crashes" in case["expect"]:
        assert task.crashes == case["expect"]["crashes"]


@pytest.mark.parametrize("case", REPORTS, ids=[c["name"] for c in REPORTS])
def test_report_cases_of_the_kit(service: TaskService, case: dict[str, Any]) -> None:
    task_id = runner.fresh_id()
    runner.preset(service.store, task_id, case["store"])
    body = json.dumps(runner.substitute(case["report"], task_id, iso(now()) or "")).encode()
    verdict = reports.process(service, body, TERMS)
    assert verdict.answer is not None
    assert runner.check_report_answer(case, verdict.answer) == []
    assert verdict.dead_letter == (None if "dead_letter" not in case["expect"] else verdict.dead_letter)
    if "dead_letter" in case["expect"]:
        assert case["expect"]["dead_letter"] in (verdict.dead_letter or "")
    assert runner.check_report_task(case, _get(service, task_id)) == []


def test_a_renewal_after_a_take_over_is_answered_stop_and_the_new_owner_keeps_the_task(
        service: TaskService) -> None:
    task, _ = service.submit(SubmitRequest(type="t", params={}, queue="foreign"))
    first = ClaimRequest(id=task.id, attempt=1, node="php-a")
    assert claim(service, first, LeaseTerms(lease_s=-1.0)).decision == "run"  # its lease lapses at once
    taken = claim(service, ClaimRequest(id=task.id, attempt=1, node="php-b"), TERMS)
    assert (taken.decision, taken.attempt) == ("run", 2)  # the attempt to report under is not the message's
    renewal = reports.TaskReport(id=task.id, attempt=1, node="php-a", status=TaskStatus.RUNNING, at=now())
    answer = reports.answer(service, renewal, TERMS)
    assert isinstance(answer, reports.ReportAnswer) and answer.stop and "superseded" in answer.reason
    late = reports.TaskReport(id=task.id, attempt=1, node="php-a", status=TaskStatus.SUCCEEDED, at=now(), result=1)
    assert reports.answer(service, late, TERMS).to_dict()["stop"] is True
    owner = reports.TaskReport(id=task.id, attempt=2, node="php-b", status=TaskStatus.SUCCEEDED, at=now(), result=2)
    assert reports.answer(service, owner, TERMS).to_dict()["applied"] is True
    done = service.get(task.id)
    assert (done.status, done.result, done.node, done.attempts, done.crashes) == (
        TaskStatus.SUCCEEDED, 2, "php-b", 2, 1)


def test_a_repeated_claim_by_the_owner_runs_again_without_a_new_attempt(service: TaskService) -> None:
    task, _ = service.submit(SubmitRequest(type="t", params={}, queue="foreign"))
    request = ClaimRequest(id=task.id, attempt=1, node="php-a")
    assert claim(service, request, TERMS).decision == "run"
    again = claim(service, request, TERMS)
    assert (again.decision, again.attempt, again.reason) == ("run", 1, "already claimed by this node")
    assert [e.to_status for e in service.events(task.id)] == [TaskStatus.QUEUED, TaskStatus.RUNNING]


def test_an_adopted_task_takes_the_queue_its_delivery_came_from(service: TaskService) -> None:
    task_id = runner.fresh_id()
    body = {**runner.claim_message(task_id, 1), "queue": "nowhere"}
    request = decode_claim({"id": task_id, "attempt": 1, "node": "n", "queue": "conformance", "message": body})
    assert claim(service, request, TERMS).decision == "run"
    assert service.get(uuid.UUID(task_id)).queue == "conformance"


def test_a_claim_without_its_message_for_an_unknown_task_is_dropped(service: TaskService) -> None:
    answer = claim(service, ClaimRequest(id=uuid.uuid4(), attempt=1, node="n"), TERMS)
    assert (answer.decision, answer.reason) == ("drop", "unknown task id (send the task message to adopt it)")


@pytest.mark.parametrize(("data", "field"), [
    ({"attempt": 0, "node": "n"}, "attempt"),
    ({"attempt": 3_000_000_000, "node": "n"}, "attempt"),
    ({"attempt": 1, "node": "a\x00b"}, "node"),
    ({"attempt": 1, "node": "n" * 201}, "node"),
    ({"attempt": 1, "node": "n", "queue": "_reports"}, "queue"),
    ({"attempt": 1, "node": "n", "message": {"protocol": 1}}, "message"),
    ({"attempt": 1, "node": "n", "message": [1]}, "message"),
    ({"node": "n"}, "attempt"),
])
def test_malformed_claims_are_refused_naming_the_field(data: dict[str, Any], field: str) -> None:
    with pytest.raises(SerializationError, match=field):
        decode_claim({"id": str(uuid.uuid4()), **data})


def test_a_claim_whose_message_names_another_task_is_refused() -> None:
    body = runner.claim_message(runner.fresh_id(), 1)
    with pytest.raises(SerializationError, match="is for task"):
        decode_claim({"id": str(uuid.uuid4()), "attempt": 1, "node": "n", "message": body})


def test_claims_round_trip_through_the_report_codec() -> None:
    task_id = runner.fresh_id()
    msg = decode(json.dumps(runner.claim_message(task_id, 2)).encode())
    request = ClaimRequest(id=msg.id, attempt=2, node="n", queue="conformance", message=msg)
    assert reports.decode(reports.encode(request)) == request


def test_a_returned_attempt_goes_back_to_the_queue_and_does_not_count(service: TaskService) -> None:
    task, _ = service.submit(SubmitRequest(type="t", params={}, queue="foreign"))
    assert claim(service, ClaimRequest(id=task.id, attempt=1, node="php-a"), TERMS).decision == "run"
    assert service.publisher.flush(5.0)  # messages go out in the background (the outbox)
    published = len(service.broker.published)  # type: ignore[attr-defined]
    stranger = reports.TaskReport(id=task.id, attempt=1, node="php-b", status=TaskStatus.QUEUED, at=now())
    assert reports.answer(service, stranger, TERMS).to_dict()["stop"] is True
    body = reports.encode(reports.TaskReport(id=task.id, attempt=1, node="php-a", status=TaskStatus.QUEUED, at=now(),
                                             republish=True))
    assert b'"status":"returned"' in body
    verdict = reports.process(service, body, TERMS)
    assert verdict.answer is not None and verdict.answer["applied"] is True
    back = service.get(task.id)
    assert (back.status, back.attempts, back.lease_until) == (TaskStatus.QUEUED, 0, None)
    assert service.publisher.flush(5.0)
    assert len(service.broker.published) == published + 1  # type: ignore[attr-defined]
    again = claim(service, ClaimRequest(id=task.id, attempt=1, node="php-b"), TERMS)
    assert (again.decision, again.attempt) == ("run", 1)


def test_a_claim_message_s_unknown_fields_are_ignored_as_in_a_delivery() -> None:
    # Found by the full wire fuzzing run: a NUL inside an unknown field of the claim's message
    # refused the claim, while the same message delivered to a worker runs (unknown fields ignored).
    task_id = runner.fresh_id()
    body = {**runner.claim_message(task_id, 1), "diag": ["a\x00b", float("nan")]}
    request = decode_claim({"id": task_id, "attempt": 1, "node": "n", "message": body})
    assert request.message is not None and str(request.message.id) == task_id
    with pytest.raises(SerializationError, match="NUL"):
        decode_claim({"id": task_id, "attempt": 1, "node": "n",
                      "message": {**runner.claim_message(task_id, 1), "params": {"k": "a\x00b"}}})
