"""The PostgreSQL side of the worker's hot path: two async connections on the worker's loop.

- **claims** run with ``synchronous_commit = off``: a claim lost in a server crash is redone
  from the message, which RabbitMQ still holds (the delivery is acked only after the outcome).
  Should the server lose a claim whose handler then finished, the fenced outcome write finds
  the task back in its queue and the worker hands the delivery back (``core.py``): the task
  runs again, nothing is lost.
- **outcomes** commit durably before their deliveries are acked.

One statement per batch (``postgres_batch``), so a batch of claims or outcomes costs one round
trip. A connection that fails is replaced on the next call; the error goes to the caller
(``StoreError``), which retries.
"""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import Sequence
from typing import Any

import orjson
import psycopg
from psycopg.conninfo import conninfo_to_dict, make_conninfo
from psycopg.types.json import set_json_dumps, set_json_loads

from conveyor.errors import ConveyorError, StoreError
from conveyor.message import dumps
from conveyor.model import Task
from conveyor.store import postgres_batch as batch
from conveyor.store.base import Outcome
from conveyor.store.postgres import _COLS, _EVENT_COLS, _FIELDS, _make_task

_CLAIMS_SQL = batch.claims_sql(_FIELDS, _COLS, _EVENT_COLS)
_OUTCOMES_SQL = batch.outcomes_sql(_FIELDS, _COLS, _EVENT_COLS)


class _Connection:
    def __init__(self, url: str, options: str) -> None:
        self._url = url
        self._options = options
        self._conn: psycopg.AsyncConnection[Any] | None = None

    async def get(self) -> psycopg.AsyncConnection[Any]:
        if self._conn is None or self._conn.closed:
            params = conninfo_to_dict(self._url)
            params["options"] = f"{params.get('options') or ''} {self._options}".strip()
            conn = await psycopg.AsyncConnection.connect(make_conninfo("", **params), autocommit=True,
                                                         prepare_threshold=0)
            set_json_dumps(dumps, conn)
            set_json_loads(orjson.loads, conn)
            self._conn = conn
        return self._conn

    async def rows(self, sql: str, params: dict[str, Any]) -> list[Any]:
        try:
            conn = await self.get()
            cursor = await conn.execute(sql, params)
            return await cursor.fetchall()
        except psycopg.Error as exc:
            await self.drop()
            raise StoreError(f"postgres store: {_first_line(exc)}") from exc
        except ConveyorError:
            raise

    async def drop(self) -> None:
        if self._conn is not None:
            with contextlib.suppress(psycopg.Error):
                await self._conn.close()
            self._conn = None


def _first_line(exc: psycopg.Error) -> str:
    """The server's message without its DETAIL/CONTEXT lines, which can quote row values
    (task params) that have no place in a worker's log."""
    diag = getattr(exc, "diag", None)
    primary = getattr(diag, "message_primary", None) if diag is not None else None
    return primary or str(exc).splitlines()[0]


class PostgresLedger:
    def __init__(self, url: str) -> None:
        generic = "-c plan_cache_mode=force_generic_plan"
        self._claims = _Connection(url, f"{generic} -c synchronous_commit=off")
        self._outcomes = _Connection(url, generic)

    async def claim(self, claims: Sequence[tuple[uuid.UUID, int]], node: str, lease_s: float) -> list[Task | None]:
        keep = batch.first_of_each_id([c[0] for c in claims])
        rows = await self._claims.rows(_CLAIMS_SQL, batch.claims_params([claims[k] for k in keep], node, lease_s))
        started = {t.id: t for t in map(_make_task, rows)}
        kept = set(keep)
        return [started.get(c[0]) if i in kept else None for i, c in enumerate(claims)]

    async def finish(self, outcomes: Sequence[Outcome], node: str) -> list[Task | None]:
        keep = batch.first_of_each_id([o.task_id for o in outcomes])
        rows = await self._outcomes.rows(_OUTCOMES_SQL, batch.outcomes_params([outcomes[k] for k in keep], node))
        written = {t.id: t for t in map(_make_task, rows)}
        kept = set(keep)
        return [written.get(o.task_id) if i in kept else None for i, o in enumerate(outcomes)]

    async def renew(self, leases: Sequence[tuple[uuid.UUID, int]], node: str, lease_s: float) -> set[uuid.UUID]:
        if not leases:
            return set()
        rows = await self._outcomes.rows(batch.RENEW_SQL, batch.renew_params(leases, node, lease_s))
        return {row[0] for row in rows}

    async def close(self) -> None:
        await self._claims.drop()
        await self._outcomes.drop()
