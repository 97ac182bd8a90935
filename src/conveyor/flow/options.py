"""What a task type (or a submit) asks of flow control, and the small helpers every part shares.

A task type declares its limits, its uniqueness and its routing in ``@app.task(...)``
(``FlowOptions``); a task carries what applies to it in ``Task.flow`` (a JSON object, None for
an ordinary task): ``unique_key``, ``workflow``/``step``, ``route``/``node`` or ``shard``.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from conveyor import message
from conveyor.model import Task

ACTIVE_STATUSES = ("queued", "scheduled", "retrying", "running")  # a unique key is taken while in these
ROUTES = ("fair", "key", "broadcast", "sharded")
MAX_KEY_LENGTH = 200

_RATE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*/\s*(\d+(?:\.\d+)?)?\s*(s|sec|second|m|min|minute|h|hour|d|day)s?\s*$")
_UNIT_S = {"s": 1.0, "sec": 1.0, "second": 1.0, "m": 60.0, "min": 60.0, "minute": 60.0, "h": 3600.0,
           "hour": 3600.0, "d": 86400.0, "day": 86400.0}


def parse_rate(text: str) -> float:
    """``"100/m"`` -> 1.667 tasks per second. Forms: ``N/s``, ``N/m``, ``N/h``, ``N/d``, and
    ``N/Ks`` (N per K seconds, e.g. ``5/10s``)."""
    match = _RATE.match(text)
    if match is None:
        raise ValueError(f"rate limit {text!r}: write it as N/s, N/m, N/h or N/d (e.g. 100/m)")
    count, per, unit = float(match.group(1)), float(match.group(2) or 1), match.group(3)
    if count <= 0 or per <= 0:
        raise ValueError(f"rate limit {text!r} must be positive")
    return count / (per * _UNIT_S[unit])


@dataclass(frozen=True, slots=True)
class FlowOptions:
    """Flow control declared by a task type (all off by default)."""

    rate_limit: float | None = None  # tasks started per second, across every node
    rate_burst: int = 1  # how many may start at once before the rate applies
    rate_key: str | None = None  # the param that keys the rate limit (None: one per type)
    concurrency_limit: int | None = None  # tasks running at once, across every node
    concurrency_key: str | None = None  # the param that keys the concurrency limit
    unique: bool = False  # dedupe submits while one with the same key is waiting or running
    unique_on: tuple[str, ...] | None = None  # the params that make the unique key (None: all)
    route: str = "fair"  # fair | key | broadcast | sharded
    route_key: str | None = None  # route="key": the param whose value picks the node
    shards: int | None = None  # route="sharded": how many (None: one per live node)

    @classmethod
    def build(cls, *, rate_limit: str | float | None = None, rate_burst: int = 1, rate_key: str | None = None,
              concurrency_limit: int | None = None, concurrency_key: str | None = None, unique: bool = False,
              unique_on: Sequence[str] | None = None, route: str = "fair", route_key: str | None = None,
              shards: int | None = None) -> FlowOptions | None:
        """Validated options, or None when nothing is asked (an ordinary task type)."""
        rate = parse_rate(rate_limit) if isinstance(rate_limit, str) else rate_limit
        if rate is not None and rate <= 0:
            raise ValueError("rate_limit must be positive")
        if rate_burst < 1:
            raise ValueError("rate_burst must be at least 1")
        if concurrency_limit is not None and concurrency_limit < 1:
            raise ValueError("concurrency_limit must be at least 1")
        check_route(route, route_key, shards)
        options = cls(rate, rate_burst, rate_key, concurrency_limit, concurrency_key, unique or unique_on is not None,
                      tuple(unique_on) if unique_on is not None else None, route, route_key, shards)
        return None if options == cls() else options


def check_route(route: str, route_key: str | None, shards: int | None) -> None:
    if route not in ROUTES:
        raise ValueError(f"route must be one of {', '.join(ROUTES)}")
    if route == "key" and not route_key:
        raise ValueError("route='key' needs route_key (the param whose value picks the node)")
    if shards is not None and not 1 <= shards <= 1000:
        raise ValueError("shards must be between 1 and 1000")


def key_value(params: dict[str, Any], name: str | None) -> str:
    """The limit/route key a task's params give: the param's value as text ("" when the limit
    is per type, or the param is missing)."""
    if name is None:
        return ""
    value = params.get(name)
    if value is None:
        return ""
    text = value if isinstance(value, str) else message.dumps(value).decode()
    return text[:MAX_KEY_LENGTH]


def unique_key_for(task_type: str, params: dict[str, Any], on: tuple[str, ...] | None) -> str:
    """The unique key a type's ``unique``/``unique_on`` gives: the type and the chosen params."""
    chosen = params if on is None else {name: params.get(name) for name in on}
    body = message.dumps(dict(sorted(chosen.items()))).decode()
    return f"{task_type}:{body}"[:MAX_KEY_LENGTH]


def unique_key_of(task: Task) -> str | None:
    flow = task.flow
    if not flow:
        return None
    key = flow.get("unique_key")
    return key if isinstance(key, str) else None


def with_flow(task: Task, **fields: Any) -> Task:
    """``task`` with these ``flow`` fields added (None values are left out)."""
    flow = {**(task.flow or {}), **{k: v for k, v in fields.items() if v is not None}}
    return task.replace(flow=flow or None)


def submit_flow(task_type: str, params: dict[str, Any], declared: FlowOptions | None, *,
                unique_key: str | None = None, route: str | None = None,
                route_key: str | None = None) -> dict[str, Any] | None:
    """The ``flow`` a submitted task gets from its type's declaration and the submit's options
    (the submit's win); None for an ordinary task."""
    flow: dict[str, Any] = {}
    if unique_key is not None:
        if not 0 < len(unique_key) <= MAX_KEY_LENGTH:
            raise ValueError(f"unique_key must be 1-{MAX_KEY_LENGTH} characters")
        flow["unique_key"] = unique_key
    elif declared is not None and declared.unique:
        flow["unique_key"] = unique_key_for(task_type, params, declared.unique_on)
    route = route or (declared.route if declared is not None else "fair")
    if route in ("broadcast", "sharded"):
        raise ValueError(f"route {route!r} makes one task per node or shard: submit it with broadcast()/shard()"
                         " (HTTP: POST /api/v1/workflows)")
    if route == "key":
        route_key = route_key or (declared.route_key if declared is not None else None)
        check_route(route, route_key, None)
        flow["route"] = "key"
        flow["route_key"] = key_value(params, route_key)
    elif route != "fair":
        check_route(route, route_key, None)
    return flow or None
