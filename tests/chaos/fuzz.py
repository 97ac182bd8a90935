"""Message fuzzing for the chaos suite: bodies generated from the protocol's JSON Schemas
(hypothesis-jsonschema), valid ones and mutated ones (a field missing or of the wrong type,
numbers out of bounds, NUL characters, huge strings, bodies that are not JSON or not an object),
each classified against the schema itself so a test can say what should have happened to it.

hypothesis-jsonschema resolves no recursive ``$ref``: the schemas' recursive ``#/$defs/json`` (any
JSON value without NUL) is unrolled to a fixed depth, and the report schema's reference to the
task-message schema is inlined.
"""

from __future__ import annotations

import copy
import json
import random
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import jsonschema
from hypothesis import HealthCheck, Phase, given, seed, settings
from hypothesis import strategies as st
from referencing import Registry, Resource

from conveyor.message import MAX_MESSAGE_BYTES

PROTOCOL = Path(__file__).resolve().parents[2] / "protocol"
TASK_SCHEMA: dict[str, Any] = json.loads((PROTOCOL / "task-message.schema.json").read_text())
REPORT_SCHEMA: dict[str, Any] = json.loads((PROTOCOL / "report-message.schema.json").read_text())
JSON_REF = "#/$defs/json"


def _leaf() -> dict[str, Any]:
    return {"anyOf": [{"type": ["number", "boolean", "null"]}, {"type": "string", "pattern": "^[^\\u0000]*$"}]}


def unrolled(schema: dict[str, Any], *, depth: int = 2, inline: dict[str, Any] | None = None) -> dict[str, Any]:
    """``schema`` without recursion: ``#/$defs/json`` expanded ``depth`` levels deep (then scalars
    only); other local ``$ref``s expanded in place; ``inline`` maps external refs to schemas."""
    defs = schema.get("$defs", {})

    def expand(node: Any, level: int) -> Any:
        if isinstance(node, list):
            return [expand(x, level) for x in node]
        if not isinstance(node, dict):
            return node
        ref = node.get("$ref")
        if ref is None:
            return {k: expand(v, level) for k, v in node.items() if k not in ("$defs", "$schema", "$id")}
        rest = {k: expand(v, level) for k, v in node.items() if k != "$ref"}
        if ref == JSON_REF:
            target = expand(copy.deepcopy(defs["json"]), level - 1) if level > 0 else _leaf()
        elif ref.startswith("#/$defs/"):
            target = expand(copy.deepcopy(defs[ref.removeprefix("#/$defs/")]), level)
        else:
            target = expand(unrolled((inline or {})[ref], depth=depth), level)
        return {"allOf": [target], **rest} if rest else target

    result: dict[str, Any] = expand(schema, depth)
    return result


def draw_examples(strategy: st.SearchStrategy[Any], count: int, fuzz_seed: int) -> list[Any]:
    """``count`` examples of ``strategy`` (fewer if it has fewer), reproducible from ``fuzz_seed``."""
    found: list[Any] = []

    @seed(fuzz_seed)
    @settings(max_examples=count, database=None, deadline=None, phases=[Phase.generate],
              suppress_health_check=list(HealthCheck))
    @given(strategy)
    def collect(example: Any) -> None:
        found.append(example)

    collect()
    return found[:count]


# -- judging a body against the schema ----------------------------------------------------------

# Formats asserted (an eta of February 30th is not a date-time), as the decoders do.
_FORMATS = jsonschema.Draft202012Validator.FORMAT_CHECKER
_TASK_VALIDATOR = jsonschema.Draft202012Validator(TASK_SCHEMA, format_checker=_FORMATS)
_REPORT_VALIDATOR = jsonschema.Draft202012Validator(
    REPORT_SCHEMA, registry=Registry().with_resource(TASK_SCHEMA["$id"], Resource.from_contents(TASK_SCHEMA)),
    format_checker=_FORMATS)


def parsed(body: bytes) -> Any:
    """The JSON value of ``body``, or None when it is not strict JSON (NaN, Infinity, 1e400 and
    invalid UTF-8 included)."""
    def refuse(token: str) -> Any:
        raise ValueError(token)
    try:
        value = json.loads(body.decode("utf-8"), parse_constant=refuse)
    except (UnicodeDecodeError, ValueError, RecursionError):
        return None
    return value if _plain(value) else None


def _plain(value: Any) -> bool:
    """Finite numbers, and strings that are Unicode (a lone surrogate escape is JSON syntax but
    no text: RFC 8259 section 8.2 leaves it to the receiver, and Conveyor refuses it)."""
    stack = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, float) and (item != item or item in (float("inf"), float("-inf"))):
            return False
        if isinstance(item, str):
            try:
                item.encode("utf-8")
            except UnicodeEncodeError:
                return False
        elif isinstance(item, dict):
            stack.extend(item)
            stack.extend(item.values())
        elif isinstance(item, list):
            stack.extend(item)
    return True


def schema_valid(body: bytes, validator: jsonschema.Draft202012Validator) -> bool:
    """Whether the protocol says this body is a valid message (schema plus the 1 MiB limit)."""
    if len(body) > MAX_MESSAGE_BYTES:
        return False
    value = parsed(body)
    if value is None:
        return False
    try:
        return bool(validator.is_valid(value))
    except RecursionError:
        return False


def task_valid(body: bytes) -> bool:
    return schema_valid(body, _TASK_VALIDATOR)


def report_valid(body: bytes) -> bool:
    return schema_valid(body, _REPORT_VALIDATOR)


# -- mutations ------------------------------------------------------------------------------------

WRONG_TYPES: list[Any] = [None, True, 1, -1, 1.5, "x", "", [], {}, [1, "a"], {"a": 1}]
HUGE = 1_100_000  # characters: the body is then over the 1 MiB limit


def _nul(rnd: random.Random, text: str) -> str:
    at = rnd.randint(0, len(text))
    return text[:at] + "\x00" + text[at:]


def _raw(text: str) -> bytes:
    return text.encode("utf-8")


def mutate(message: dict[str, Any], kind: str, rnd: random.Random, required: list[str],
           bounds: dict[str, list[Any]]) -> bytes:
    """One mutated body of ``message``: ``kind`` names the mutation (see MUTATIONS)."""
    msg = copy.deepcopy(message)
    strings = [k for k, v in msg.items() if isinstance(v, str)]
    if kind == "missing-field":
        msg.pop(rnd.choice(required), None)
    elif kind == "wrong-type":
        msg[rnd.choice(sorted(msg))] = rnd.choice(WRONG_TYPES)
    elif kind == "out-of-bounds":
        field = rnd.choice(sorted(bounds))
        msg[field] = rnd.choice(bounds[field])
    elif kind == "nul-in-string" and strings:
        field = rnd.choice(strings)
        msg[field] = _nul(rnd, msg[field])
    elif kind in ("nul-in-string", "nul-in-nested"):
        place = rnd.choice(["key", "value", "deep"])
        nested = {"k\x00ey": 1} if place == "key" else {"key": "va\x00lue"} if place == "value" else {
            "a": [{"b": ["\x00"]}]}
        target = "params" if "params" in msg else "result" if "status" in msg else "queues"
        msg[target] = nested if target != "queues" else ["q\x00"]
    elif kind == "huge-string":
        field = rnd.choice(strings or sorted(msg))
        msg[field] = "x" * rnd.choice([201, 70_000, HUGE])
    elif kind == "huge-body-padding":
        msg["zz_unknown"] = "p" * HUGE
    elif kind == "big-number":
        field = rnd.choice(sorted(bounds))
        token = rnd.choice(["1e400", "-1e400", "NaN", "Infinity", str(2**70), str(-(2**70)), "1.0", "1e2", "0.000001"])
        return _raw(json.dumps(msg)[:-1] + f', "{field}": {token}}}')
    elif kind == "deep-nesting":
        depth = rnd.choice([100, 600, 5000])
        return _raw(json.dumps(msg)[:-1] + ', "zz_deep": ' + "[" * depth + "]" * depth + "}")
    elif kind == "duplicate-key":
        field = rnd.choice(sorted(msg))
        return _raw(json.dumps(msg)[:-1] + f', "{field}": {json.dumps(rnd.choice(WRONG_TYPES))}}}')
    elif kind == "lone-surrogate":
        field = rnd.choice(strings or sorted(msg))
        return _raw(json.dumps({**msg, field: "PLACEHOLDER"}).replace('"PLACEHOLDER"', '"a\\ud800b"'))
    elif kind == "non-object-json":
        return _raw(json.dumps(rnd.choice([[], [msg], "task", 1, 0.5, None, True, False])))
    elif kind == "non-json":
        body = json.dumps(msg).encode()
        return rnd.choice([
            b"", b" ", b"\x00", b"\xff\xfe\x00{", bytes(rnd.getrandbits(8) for _ in range(rnd.randint(1, 64))),
            body[: max(1, len(body) // 2)], b"\xef\xbb\xbf" + body, body.replace(b'"', b"'"),
            body[:-1] + b",}", b"{" + body, body + b"garbage", body.replace(b"{", b"{\xff", 1),
            b'{"protocol": 1, "id": ', "{\"protocol\": 1, \"type\": \"\u00e9\"}".encode("latin-1"),
        ])
    return _raw(json.dumps(msg))


MUTATIONS = ["missing-field", "wrong-type", "out-of-bounds", "nul-in-string", "nul-in-nested", "huge-string",
             "huge-body-padding", "big-number", "deep-nesting", "duplicate-key", "lone-surrogate",
             "non-object-json", "non-json"]

TASK_REQUIRED = ["protocol", "id", "type", "params", "queue"]
TASK_BOUNDS: dict[str, list[Any]] = {
    "protocol": [0, 2, "1", 1.5, True, -1],
    "priority": [-1, 10, 2**31, 2**63, -(2**63), 99.5],
    "attempt": [0, -1, 10_001, 2**31, 2**64],
    "max_attempts": [0, -5, 10_001, 2**40],
    "timeout": [0, -1, -0.0, 31_622_401, 1e308, 2**80],
    "eta": ["2030-02-30T00:00:00Z", "9999-01-01T00:00:00Z", "1969-12-31T23:59:59Z", "2030-01-01T25:00:00Z",
            "2030-01-01T00:00:00+99:99", "2030-01-01", "now", "2030-01-01T00:00:00"],
    "id": ["not-a-uuid", "00000000-0000-0000-0000-00000000000", "g0000000-0000-0000-0000-000000000000",
           "{00000000-0000-0000-0000-000000000000}", "00000000000000000000000000000000"],
    "queue": ["", "_reports", "-x", "a b", "a/b", "é", "a" * 201],
    "type": ["", " ", "\t\n", "t" * 201],
    "trace": [{"traceparent": 1}, {"a": None}, {"a": ["x"]}, "00-x"],
    "flow": [{"node": 5}, {"node": "ghost-node"}, {"shard": "x"}, {"shard": [5, 2]}, {"shard": [-1, 0]},
             {"route": "broadcast"}, {"route": "nope"}, {"workflow": "not-a-uuid", "step": 1},
             {"workflow": "00000000-0000-0000-0000-000000000001", "step": "s"}, {"unique_key": {"a": 1}},
             {"unique_key": "k\x00"}, [], "flow"],
}

REPORT_REQUIRED = ["protocol", "id", "attempt", "node", "status", "at", "kind", "queues", "concurrency"]
REPORT_BOUNDS: dict[str, list[Any]] = {
    "protocol": [0, 2, "1", True],
    "kind": ["nope", "", 1, None, "TASK"],
    "attempt": [0, -1, 10_001, 2**64, 1.5],
    "status": ["nope", "", "queued", "cancelled", None, 3],
    "node": ["", " ", "n" * 201, 5],
    "at": ["2030-02-30T00:00:00Z", "9999-01-01T00:00:00Z", "yesterday", 0],
    "retry_delay_s": [-1, 1e308, 3_162_240_001, "5"],
    "concurrency": [0, -1, 2**31, 2**63],
    "in_flight": [-1, 2**31, 2**63],
    "done": [-1, 2**63],
    "pid": [-1, 2**31],
    "error": [None, "boom", {"type": "", "message": "m"}, {"message": "m"}, {"type": "t" * 201, "message": 1}],
    "message": [{"protocol": 1}, [], "task", {"protocol": 1, "id": "x", "type": "t", "params": [], "queue": "q"}],
    "queue": ["", "_x", "a b", "a" * 201],
    "queues": [[""], "q", [1], ["q" * 201]],
    "result": [float("nan")],
}


def mutated(valid: st.SearchStrategy[dict[str, Any]], required: list[str],
            bounds: dict[str, list[Any]]) -> st.SearchStrategy[tuple[str, bytes]]:
    """(mutation kind, body) pairs, the mutations applied to examples of ``valid``."""
    def apply(message: dict[str, Any], kind: str, rnd: random.Random) -> tuple[str, bytes]:
        try:
            return kind, mutate(message, kind, rnd, required, bounds)
        except ValueError:  # json.dumps of NaN in a bound: send it as the token it is
            return kind, json.dumps(message).encode()
    return st.builds(apply, valid, st.sampled_from(MUTATIONS), st.randoms(use_true_random=False))


def labelled(valid: st.SearchStrategy[dict[str, Any]], adjust: Callable[[dict[str, Any]], dict[str, Any]],
             required: list[str], bounds: dict[str, list[Any]], *,
             valid_share: float = 0.5) -> st.SearchStrategy[tuple[str, bytes]]:
    """Valid bodies (after ``adjust``, labelled "valid") and mutated ones, about ``valid_share`` valid."""
    good = valid.map(lambda m: ("valid", json.dumps(adjust(m)).encode()))
    bad = mutated(valid.map(adjust), required, bounds)
    weight = max(1, round(valid_share * 10))
    return st.one_of(*([good] * weight), *([bad] * (10 - weight)))


def fresh_id(body_id: str, seen: set[uuid.UUID]) -> str:
    """``body_id`` if no earlier body used it (ids compared as UUIDs), else a new random one."""
    try:
        parsed_id = uuid.UUID(body_id)
    except ValueError:
        return body_id
    if parsed_id in seen:
        parsed_id = uuid.uuid4()
        body_id = str(parsed_id)
    seen.add(parsed_id)
    return body_id
