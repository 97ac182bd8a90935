"""The bounds of every value that enters Conveyor, checked the same way at every entry point:
the Python API and the CLI (``TaskService.build_task``), the HTTP API (``api/schemas.py``),
task messages from the wire (``message.decode``), worker reports and claims (``reports``,
``foreign``).

The numbers are those of ``protocol/*.schema.json``; ``tests/unit/test_validation.py`` holds
the schemas and these constants equal. A value out of bounds is refused where it enters, with
a ``ValueError`` whose text starts with the field's name, so it is never stored, never
published, and never reaches a database that would refuse it later (PostgreSQL refuses NUL
characters and integers over 2^31 - 1; JSON has no NaN or Infinity).
"""

from __future__ import annotations

import math
import re
from datetime import UTC, datetime
from typing import Any

MAX_TYPE_LENGTH = 200
MAX_QUEUE_LENGTH = 200
MAX_KEY_LENGTH = 200
MAX_NODE_LENGTH = 200
MAX_PRIORITY = 9
# attempt and max_attempts: far below PostgreSQL's integer columns, far above any sane retry policy.
MAX_ATTEMPTS = 10_000
MAX_TIMEOUT_S = 366 * 86400.0  # a year: larger values overflow thread waits
MAX_DELAY_S = 100 * 366 * 86400.0  # a century: keeps eta inside datetime's range
MIN_ETA = datetime(1970, 1, 1, tzinfo=UTC).timestamp()
MAX_ETA = datetime(9000, 1, 1, tzinfo=UTC).timestamp()

# Queue names: a letter or digit, then letters, digits, "_", ".", ":" or "-"; 200 at most. A
# leading "_" is reserved for Conveyor's own queues (_reports). The AMQP name of a delay queue,
# "<namespace>.delay.<queue>.<ms>", then stays within AMQP's 255-byte limit.
QUEUE_PATTERN = rf"^[A-Za-z0-9][A-Za-z0-9_.:-]{{0,{MAX_QUEUE_LENGTH - 1}}}$"
QUEUE_NAME = re.compile(QUEUE_PATTERN)
QUEUE_RULE = (f"1-{MAX_QUEUE_LENGTH} letters, digits, '_', '.', ':' or '-', "
              "starting with a letter or digit")
# An instant on the wire: ISO-8601 with seconds, and Z or an offset; years 1970-8999.
INSTANT_PATTERN = (r"^(19[7-9][0-9]|[2-8][0-9]{3})-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2}(\.[0-9]+)?"
                   r"(Z|[+-][0-9]{2}:[0-9]{2})$")
UUID_PATTERN = r"^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$"

_NUL_ESCAPE = b"\\u0000"


def is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def is_number(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def check_text(value: object, field: str, *, max_length: int | None = None, allow_empty: bool = False) -> str:
    """A string a database can store: no NUL, no lone surrogate, within ``max_length``."""
    if not isinstance(value, str):
        raise ValueError(f"{field} must be a string")
    if not allow_empty and not value.strip():
        raise ValueError(f"{field} must be a non-empty string")
    if max_length is not None and len(value) > max_length:
        raise ValueError(f"{field} must be at most {max_length} characters")
    if "\x00" in value:
        raise ValueError(f"{field} must not contain NUL characters")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise ValueError(f"{field} must be valid Unicode text (no lone surrogates)") from None
    return value


def check_type(value: object) -> str:
    return check_text(value, "type", max_length=MAX_TYPE_LENGTH)


def check_queue(value: object) -> str:
    if not isinstance(value, str) or not QUEUE_NAME.fullmatch(value):
        raise ValueError(f"queue must be {QUEUE_RULE}")
    return value


def check_node(value: object) -> str:
    return check_text(value, "node", max_length=MAX_NODE_LENGTH)


def check_key(value: object) -> str:
    return check_text(value, "idempotency_key", max_length=MAX_KEY_LENGTH)


def check_int(value: object, field: str, low: int, high: int) -> int:
    # JSON Schema counts 2.0 as an integer (a number with no fraction), and so do we.
    if isinstance(value, float) and value.is_integer() and low <= value <= high:
        return int(value)
    if not is_int(value) or not low <= value <= high:  # type: ignore[operator]
        raise ValueError(f"{field} must be an integer from {low} to {high}")
    return value  # type: ignore[return-value]


def check_priority(value: object) -> int:
    return check_int(value, "priority", 0, MAX_PRIORITY)


def check_attempt(value: object, field: str = "attempt") -> int:
    return check_int(value, field, 1, MAX_ATTEMPTS)


def check_seconds(value: object, field: str, *, high: float, positive: bool) -> float:
    """A finite number of seconds: > 0 (``positive``) or >= 0, and at most ``high``."""
    if not is_number(value):
        raise ValueError(f"{field} must be a number of seconds")
    number = float(value)  # type: ignore[arg-type]
    low_ok = number > 0 if positive else number >= 0
    if not math.isfinite(number) or not low_ok or number > high:
        bound = "> 0" if positive else ">= 0"
        raise ValueError(f"{field} must be a number {bound} and at most {high:g} seconds")
    return number


def check_timeout(value: object) -> float | None:
    return None if value is None else check_seconds(value, "timeout", high=MAX_TIMEOUT_S, positive=True)


def check_delay(value: object, field: str = "delay") -> float:
    return check_seconds(value, field, high=MAX_DELAY_S, positive=False)


def check_eta(value: object) -> float | None:
    """POSIX seconds between 1970 and the year 9000, or None."""
    if value is None:
        return None
    if not is_number(value) or not MIN_ETA <= float(value) < MAX_ETA:  # type: ignore[arg-type]
        raise ValueError("eta must be a time between 1970 and the year 9000")
    return float(value)  # type: ignore[arg-type]


def check_json(value: Any, field: str) -> Any:
    """Plain JSON a database can store: objects with string keys, arrays, strings without NUL
    or lone surrogates, finite numbers, true/false/null. Returns ``value`` unchanged."""
    stack = [value]
    while stack:
        item = stack.pop()
        if item is None or isinstance(item, bool | int):
            continue
        if isinstance(item, str):
            _check_json_string(item, field)
        elif isinstance(item, float):
            if not math.isfinite(item):
                raise ValueError(f"{field} must not contain NaN or Infinity (not JSON)")
        elif isinstance(item, dict):
            for key in item:
                if not isinstance(key, str):
                    raise ValueError(f"{field} must have string keys (JSON objects)")
                _check_json_string(key, field)
            stack.extend(item.values())
        elif isinstance(item, list | tuple):
            stack.extend(item)
        else:
            raise ValueError(f"{field} must be JSON; {type(item).__name__} is not")
    return value


def _check_json_string(text: str, field: str) -> None:
    if "\x00" in text:
        raise ValueError(f"{field} must not contain NUL characters in strings")
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        raise ValueError(f"{field} must be valid Unicode text (no lone surrogates)") from None


def check_params(value: object) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise ValueError("params must be a JSON object")
    return check_json(value, "params")  # type: ignore[no-any-return]


def may_hold_nul(body: bytes) -> bool:
    """False when a JSON body parsed by orjson cannot hold a NUL in any string: orjson refuses
    raw control characters, NaN, Infinity and lone surrogates, so only an escaped NUL is left to
    look for. Lets the wire decoders skip walking large params in the common case."""
    return _NUL_ESCAPE in body
