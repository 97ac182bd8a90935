"""Bad input gets a 4xx that says what is wrong, never a 500."""

from __future__ import annotations

import json
import random
import warnings
from collections.abc import Iterator
from typing import Any

import pytest

from conveyor.api import create_app
from conveyor.broker.sqlite import SqliteBroker
from conveyor.config import Settings
from conveyor.service import TaskService
from conveyor.store.sqlite import SqliteStore

with warnings.catch_warnings():  # starlette asks for httpx2, which is not a dependency
    warnings.simplefilter("ignore")
    from fastapi.testclient import TestClient

LIMIT = 4096


@pytest.fixture
def service(sqlite_url: str) -> Iterator[TaskService]:
    store, broker = SqliteStore(sqlite_url), SqliteBroker(sqlite_url)
    yield TaskService(store, broker)
    broker.close()
    store.close()


@pytest.fixture
def client(service: TaskService) -> Iterator[TestClient]:
    """An app with a small body limit, to reach it cheaply."""
    with TestClient(create_app(Settings(), service=service, max_body_bytes=LIMIT)) as c:
        yield c


@pytest.fixture
def roomy(service: TaskService) -> Iterator[TestClient]:
    """An app with the default 1 MiB body limit."""
    with TestClient(create_app(Settings(), service=service)) as c:
        yield c


def post(client: TestClient, body: bytes | str, path: str = "/api/v1/tasks",
         content_type: str = "application/json") -> Any:
    return client.post(path, content=body, headers={"Content-Type": content_type})


def assert_invalid(response: Any, *fields: str) -> str:
    assert response.status_code == 422, response.text[:500]
    error = response.json()["error"]
    assert error["type"] == "validation"
    for field in fields:
        assert field in error["fields"], error
        assert field in error["message"], error
    message: str = error["message"]
    return message


# -- 422 naming the field ------------------------------------------------------------------------
@pytest.mark.parametrize(("body", "field"), [
    ({}, "type"),
    ({"type": ""}, "type"),
    ({"type": "   "}, "type"),
    ({"type": 5}, "type"),
    ({"type": "x" * 201}, "type"),
    ({"type": "x", "params": [1, 2]}, "params"),
    ({"type": "x", "params": "{}"}, "params"),
    ({"type": "x", "params": {"n": 2**70}}, "params"),
    ({"type": "x", "params": {"s": "a\u0000b"}}, "params"),
    ({"type": "x", "priority": 10}, "priority"),
    ({"type": "x", "priority": -1}, "priority"),
    ({"type": "x", "priority": "5"}, "priority"),
    ({"type": "x", "priority": True}, "priority"),
    ({"type": "x", "priority": 1.5}, "priority"),
    ({"type": "x", "priority": 10**100}, "priority"),
    ({"type": "x", "delay": -1}, "delay"),
    ({"type": "x", "delay": 1e300}, "delay"),
    ({"type": "x", "delay": "soon"}, "delay"),
    ({"type": "x", "eta": "tomorrow"}, "eta"),
    ({"type": "x", "eta": 1700000000}, "eta"),
    ({"type": "x", "eta": "9999-12-31T23:59:59-14:00"}, "eta"),
    ({"type": "x", "delay": 5, "eta": "2030-01-01T00:00:00Z"}, "eta"),
    ({"type": "x", "max_attempts": 0}, "max_attempts"),
    ({"type": "x", "timeout": 0}, "timeout"),
    ({"type": "x", "timeout": 1e30}, "timeout"),
    ({"type": "x", "queue": "has space"}, "queue"),
    ({"type": "x", "queue": ""}, "queue"),
    ({"type": "x", "queue": "_reports"}, "queue"),
    ({"type": "x", "queue": "q" * 201}, "queue"),
    ({"type": "x", "idempotency_key": ""}, "idempotency_key"),
    ({"type": "x", "idempotency_key": "k" * 201}, "idempotency_key"),
    ({"type": "x", "surprise": 1}, "surprise"),
])
def test_invalid_field_is_422_naming_the_field(client: TestClient, body: dict[str, Any], field: str) -> None:
    assert_invalid(client.post("/api/v1/tasks", json=body), field)


def test_json_extensions_and_lone_surrogates_are_refused(client: TestClient) -> None:
    assert_invalid(post(client, '{"type": "x", "delay": Infinity}'), "delay")
    assert_invalid(post(client, '{"type": "x", "timeout": NaN}'), "timeout")
    assert_invalid(post(client, '{"type": "\\ud800"}'), "type")
    assert_invalid(post(client, '{"type": "x", "params": {"k": "\\udfff"}}'), "params")
    assert_invalid(post(client, '{"type": "x", "params": {"\\ud800": 1}}'), "params")


def test_unicode_everywhere_it_is_allowed_round_trips(client: TestClient) -> None:
    body = {"type": "メール.送信", "params": {"emoji": "🚚", "ключ": "значение"}, "idempotency_key": "键-🔑"}
    created = client.post("/api/v1/tasks", json=body)
    assert created.status_code == 201
    fetched = client.get(f"/api/v1/tasks/{created.json()['id']}").json()
    assert (fetched["type"], fetched["params"], fetched["idempotency_key"]) == (
        body["type"], body["params"], body["idempotency_key"])


@pytest.mark.parametrize(("body", "hint"), [
    ("", "JSON object is required"),
    ("{", "not valid JSON"),
    ('{"type": "x",}', "not valid JSON"),
    ("[]", "valid dictionary"),
    ('"type"', "valid dictionary"),
    ("null", "valid dictionary"),
    ("[" * 50_000 + "]" * 50_000, "could not be parsed"),
])
def test_malformed_bodies_are_422_on_the_body(roomy: TestClient, body: str, hint: str) -> None:
    assert hint in assert_invalid(post(roomy, body), "body")


def test_deeply_nested_params_are_refused(roomy: TestClient) -> None:
    nested: Any = 1
    for _ in range(600):  # deeper than the JSON codec's limit for stored params
        nested = {"n": nested}
    assert_invalid(roomy.post("/api/v1/tasks", json={"type": "x", "params": nested}), "params")


def test_body_that_is_not_declared_json_gets_a_content_type_hint(client: TestClient) -> None:
    message = assert_invalid(post(client, '{"type": "x"}', content_type="text/plain"), "body")
    assert "Content-Type: application/json" in message
    form = client.post("/api/v1/tasks", data={"type": "x"})
    assert "Content-Type" in assert_invalid(form, "body")


def test_bad_query_parameters_name_the_parameter(client: TestClient) -> None:
    for params, field in (({"status": "done"}, "status"), ({"limit": 0}, "limit"), ({"limit": 1001}, "limit"),
                          ({"limit": "ten"}, "limit"), ({"limit": 10**30}, "limit"),
                          ({"cursor": "nope"}, "cursor"), ({"type": "a\u0000b"}, "type"),
                          ({"queue": "q" * 201}, "queue")):
        assert_invalid(client.get("/api/v1/tasks", params=params), field)
    assert client.get("/api/v1/tasks", params={"limit": 1000}).status_code == 200


# -- batches -------------------------------------------------------------------------------------
def test_batch_over_the_limit_is_422_naming_the_limit(roomy: TestClient) -> None:
    response = roomy.post("/api/v1/tasks:batch", json={"tasks": [{"type": "x"}] * 1001})
    assert "1000" in assert_invalid(response, "tasks")
    assert_invalid(roomy.post("/api/v1/tasks:batch", json={"tasks": []}), "tasks")
    assert_invalid(roomy.post("/api/v1/tasks:batch", json=[{"type": "x"}]), "body")


def test_batch_of_a_thousand_is_accepted(roomy: TestClient, service: TaskService) -> None:
    response = roomy.post("/api/v1/tasks:batch", json={"tasks": [{"type": "bulk", "params": {"i": i}}
                                                                 for i in range(1000)]})
    assert response.status_code == 201
    tasks = response.json()["tasks"]
    assert [t["params"]["i"] for t in tasks] == list(range(1000))
    assert all(t["created"] for t in tasks)
    assert service.counts()["queued"] == 1000


def test_batch_with_one_bad_item_stores_nothing(client: TestClient, service: TaskService) -> None:
    response = client.post("/api/v1/tasks:batch", json={"tasks": [
        {"type": "ok"}, {"type": "ok"}, {"type": "ok", "priority": 99}]})
    assert_invalid(response, "tasks[2].priority")
    assert service.counts()["queued"] == 0


def test_unknown_routes_and_methods_keep_the_error_shape(client: TestClient) -> None:
    missing = client.get("/api/v1/nothing")
    assert (missing.status_code, missing.json()["error"]["type"]) == (404, "not_found")
    wrong_method = client.delete("/api/v1/tasks")
    assert (wrong_method.status_code, wrong_method.json()["error"]["type"]) == (405, "method_not_allowed")
    assert client.get("/api/v1/tasks:batch").status_code == 405


# -- 413 -----------------------------------------------------------------------------------------
def test_body_over_the_limit_is_413_by_length_and_by_streamed_size(client: TestClient) -> None:
    body = json.dumps({"type": "x", "params": {"blob": "x" * LIMIT}}).encode()
    declared = post(client, body)
    assert declared.status_code == 413
    assert declared.json()["error"]["type"] == "too_large"
    assert str(LIMIT) in declared.json()["error"]["message"]

    def chunks() -> Iterator[bytes]:  # no Content-Length: sent chunked
        for start in range(0, len(body), 512):
            yield body[start:start + 512]

    streamed = client.post("/api/v1/tasks", content=chunks(), headers={"Content-Type": "application/json"})
    assert streamed.status_code == 413
    lying = client.post("/api/v1/tasks", content=body, headers={"Content-Type": "application/json",
                                                                  "Content-Length": "10"})
    assert lying.status_code in (413, 422)
    small = json.dumps({"type": "x", "params": {"blob": "x" * (LIMIT - 100)}}).encode()
    assert post(client, small).status_code == 201


def test_default_limit_is_one_mebibyte(roomy: TestClient, service: TaskService) -> None:
    body = json.dumps({"type": "x", "params": {"blob": "x" * (1024 * 1024)}}).encode()
    assert post(roomy, body).status_code == 413
    near = json.dumps({"type": "x", "params": {"blob": "x" * (1024 * 1024 - 60)}}).encode()
    assert len(near) <= 1024 * 1024
    response = post(roomy, near)  # fits the body limit, not the message limit once enveloped
    assert_invalid(response, "params")
    assert service.counts()["queued"] == 0


# -- fuzz ----------------------------------------------------------------------------------------
VALID: dict[str, Any] = {"type": "fuzz.me", "params": {"a": 1}, "queue": "default", "priority": 3,
                         "delay": 1.5, "max_attempts": 2, "timeout": 10.0, "idempotency_key": "k"}
ODD_VALUES: list[Any] = [
    None, True, False, 0, -1, 1.5, -0.0, 2**63, 2**64, -(2**63) - 1, 10**400, 1e308, "", " ", "0", "x" * 5000,
    "\u0000", "\u202e", "🚚", "null", [], [None], {}, {"": {}}, [[[[[]]]]], {"a": [1, {"b": None}]},
    "2030-01-01T00:00:00Z", "2030-13-45T99:99:99", "9999-12-31T23:59:59Z", "0001-01-01T00:00:00+14:00",
]
RAW_FRAGMENTS = ["NaN", "Infinity", "-Infinity", '"\\ud800"', '"\\udc00\\ud800"', "1e999", "-1e999", "01",
                 "0x10", "'single'", "true", "[", "]", "{", "}", ",", '"\\u0000"', "1" * 500]


def _bad_bodies(rng: random.Random, count: int) -> Iterator[bytes]:
    keys = [*VALID, "extra", "", "type ", "TYPE", "params.a"]
    for i in range(count):
        body = {k: v for k, v in VALID.items() if rng.random() < 0.7}
        for _ in range(rng.randint(1, 3)):
            body[rng.choice(keys)] = rng.choice(ODD_VALUES)
        text = json.dumps(body)
        shape = i % 6
        if shape == 1:  # a raw token JSON encoders would never write
            key = rng.choice(list(VALID))
            text = text[:-1] + f', "{key}": {rng.choice(RAW_FRAGMENTS)}}}'
        elif shape == 2:  # truncated
            text = text[: rng.randint(0, len(text))]
        elif shape == 3:  # wrapped in another shape
            text = rng.choice(["[{}]", '{{"tasks": {}}}', "[[{}]]", '"{}"']).format(text)
        elif shape == 4:  # random bytes
            yield bytes(rng.randrange(256) for _ in range(rng.randint(0, 64)))
            continue
        yield text.encode("utf-8", "surrogatepass")


def test_hundreds_of_generated_bad_bodies_never_cause_a_500(client: TestClient) -> None:
    rng = random.Random(20240611)
    seen: dict[int, int] = {}
    for body in _bad_bodies(rng, 400):
        for path in ("/api/v1/tasks", "/api/v1/tasks:batch"):
            if path.endswith("batch") and rng.random() < 0.5:
                body = b'{"tasks": [' + body + b"]}"
            response = post(client, body, path=path)
            seen[response.status_code] = seen.get(response.status_code, 0) + 1
            assert response.status_code in (200, 201, 413, 422), (body[:300], response.text)
            assert "error" in response.json() or response.status_code < 300
    assert seen.get(422, 0) > 400  # the generator mostly makes bad bodies


def test_odd_paths_and_query_strings_never_cause_a_500(client: TestClient) -> None:
    rng = random.Random(7)
    pieces = ["%00", "%ff", "%F0%9F%9A%9A", "..", "%2F", "{id}", "x" * 3000, "'", "%", "?", "#", "🚚"]
    for _ in range(150):
        piece = "".join(rng.choice(pieces) for _ in range(rng.randint(1, 4)))
        for path in (f"/api/v1/tasks/{piece}", f"/api/v1/tasks/{piece}/cancel",
                     f"/api/v1/tasks?status={piece}&limit={piece}&cursor={piece}&type={piece}"):
            method = client.post if path.endswith("cancel") else client.get
            response = method(path)
            assert response.status_code in (200, 404, 405, 422), (path[:200], response.text)
