"""Read-side queries of the console (dashboard, operator CLI, API filters): search with keyset
paging, id prefixes, the oldest waiting task per queue.

They sit beside the ``Store`` port rather than in it: the worker's hot path never needs them,
and each backend answers them from its own module (``sqlite_queries.py``,
``postgres_queries.py``) on the store's own connection. ``open_queries(store)`` picks one.

Paging is by keyset on the task id, newest first. Ids are UUIDv7, so they sort by creation
time and a creation-time range is an id range: every filter below walks one index in id order
and a page costs about ``limit`` index entries, however many tasks are stored. (A task whose
id is not a v7 UUID, adopted from a client that made its own id, is placed by its id bits.)
"""

from __future__ import annotations

import math
import re
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Any, Protocol

from conveyor.model import Page, TaskFilter, TaskStatus

MAX_PAGE = 1000
_HEX = re.compile(r"^[0-9a-f]{1,32}$")


class AmbiguousId(ValueError):
    """An id prefix that names more than one task."""

    def __init__(self, prefix: str, matches: Sequence[uuid.UUID]) -> None:
        shown = ", ".join(str(m) for m in matches[:5])
        super().__init__(f"id prefix {prefix!r} matches several tasks ({shown}{', ...' if len(matches) > 5 else ''}):"
                         " give more characters")
        self.prefix = prefix
        self.matches = list(matches)


@dataclass(frozen=True, slots=True)
class TaskSearch:
    """What the console filters on. Every field narrows; an empty search is every task."""

    status: TaskStatus | None = None
    type: str | None = None
    queue: str | None = None
    node: str | None = None
    created_after: float | None = None  # POSIX seconds, inclusive
    created_before: float | None = None  # exclusive
    id_prefix: str | None = None  # hex digits of the id (dashes ignored), 1-32
    idempotency_key: str | None = None  # exact

    @classmethod
    def of(cls, filter: TaskFilter) -> TaskSearch:
        return cls(status=filter.status, type=filter.type, queue=filter.queue, node=filter.node)

    def with_(self, **changes: Any) -> TaskSearch:
        return replace(self, **changes)

    def id_bounds(self) -> tuple[uuid.UUID | None, uuid.UUID | None]:
        """(lowest, highest) id the search can match, both inclusive; None = unbounded."""
        low: uuid.UUID | None = None
        high: uuid.UUID | None = None
        if self.created_after is not None:
            low = time_floor_id(self.created_after)
        if self.created_before is not None:
            high = _previous(time_floor_id(self.created_before))
        if self.id_prefix is not None:
            digits = normalize_prefix(self.id_prefix)
            plow, phigh = uuid.UUID(digits.ljust(32, "0")), uuid.UUID(digits.ljust(32, "f"))
            low = plow if low is None else max(low, plow)
            high = phigh if high is None else min(high, phigh)
        return low, high


def normalize_prefix(text: str) -> str:
    """Hex digits of an id prefix (dashes and case ignored); ValueError if it is not one."""
    digits = text.strip().lower().replace("-", "")
    if not _HEX.match(digits):
        raise ValueError(f"{text[:40]!r} is not a task id or id prefix (hex digits, 1-32)")
    return digits


def time_floor_id(at: float) -> uuid.UUID:
    """The smallest UUIDv7 of the millisecond ``at`` falls in."""
    ms = max(0, min(math.floor(at * 1000), (1 << 48) - 1))
    return uuid.UUID(int=ms << 80)


def _previous(value: uuid.UUID) -> uuid.UUID:
    return uuid.UUID(int=max(value.int - 1, 0))


def where_clause(search: TaskSearch, cursor: uuid.UUID | None, mark: str,
                 id_value: Any = lambda u: u) -> tuple[list[str], list[Any]]:
    """SQL conditions and parameters for ``search`` (``mark`` is the placeholder; ``id_value``
    turns a UUID into the id column's type)."""
    where: list[str] = []
    params: list[Any] = []
    for column in ("status", "type", "queue", "node", "idempotency_key"):
        value = getattr(search, column)
        if value is not None:
            where.append(f"{column} = {mark}")
            params.append(value.value if isinstance(value, TaskStatus) else value)
    low, high = search.id_bounds()
    if cursor is not None:
        high = _previous(cursor) if high is None else min(high, _previous(cursor))
    if low is not None:
        where.append(f"id >= {mark}")
        params.append(id_value(low))
    if high is not None:
        where.append(f"id <= {mark}")
        params.append(id_value(high))
    return where, params


class TaskQueries(Protocol):
    def search(self, search: TaskSearch, *, limit: int = 50, cursor: uuid.UUID | None = None) -> Page:
        """Tasks matching ``search``, newest first, keyset-paged after ``cursor``."""
        ...

    def ids_with_prefix(self, prefix: str, limit: int = 6) -> list[uuid.UUID]:
        """Up to ``limit`` ids starting with ``prefix`` (hex digits, dashes ignored)."""
        ...

    def oldest_waiting(self) -> dict[str, float]:
        """Per queue: ``queued_at`` of its oldest queued task (queues with none are absent)."""
        ...

    def finished_since(self, since: float) -> dict[str, int]:
        """Per queue: tasks that reached a final status at or after ``since`` (recent: cheap)."""
        ...


def open_queries(store: object) -> TaskQueries:
    """The console queries for ``store`` (a SqliteStore or PostgresStore), on its connection."""
    from conveyor.store.sqlite import SqliteStore

    if isinstance(store, SqliteStore):
        from conveyor.store.sqlite_queries import SqliteQueries

        return SqliteQueries(store)
    try:
        from conveyor.store.postgres import PostgresStore
    except ImportError:  # psycopg not installed: it cannot be a PostgresStore
        PostgresStore = None  # type: ignore[assignment,misc]  # noqa: N806
    if PostgresStore is not None and isinstance(store, PostgresStore):
        from conveyor.store.postgres_queries import PostgresQueries

        return PostgresQueries(store)
    raise TypeError(f"no console queries for {type(store).__name__}")


def resolve_id(queries: TaskQueries, text: str) -> uuid.UUID:
    """A full task id, or the one task whose id starts with ``text``. Raises ``TaskNotFound``
    (no match, or not an id at all) or ``AmbiguousId`` (several)."""
    from conveyor.errors import TaskNotFound

    try:
        return uuid.UUID(text.strip())
    except ValueError:
        pass
    try:
        normalize_prefix(text)
    except ValueError:
        raise TaskNotFound(text[:40]) from None
    matches = queries.ids_with_prefix(text)
    if not matches:
        raise TaskNotFound(text[:40])
    if len(matches) > 1:
        raise AmbiguousId(text, matches)
    return matches[0]
