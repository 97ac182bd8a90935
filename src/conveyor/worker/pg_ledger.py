"""The PostgreSQL side of the worker's hot path: one async connection on the worker's loop.

Each cycle is ONE statement (``postgres_batch.cycle_sql``): the outcomes that finished since the
last cycle are written (fenced, with their events and the retries' outbox intents) and the
deliveries that arrived are claimed, in one transaction, durable before the outcomes' deliveries
are acked. It returns only keys (id, status, version, eta): the worker has the rest of each task
from its message. Lease renewals (every ``lease_s / 3``) go on the same connection.

A connection that fails is replaced on the next call; the error goes to the caller
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
from conveyor.message import Message, dumps
from conveyor.model import Task
from conveyor.store import postgres_batch as batch
from conveyor.store.postgres import _EVENT_COLS, _STATUSES
from conveyor.worker.backend import Finished, started_task

_CYCLE_SQL = batch.cycle_sql(_EVENT_COLS)


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
        # Generic plans (planned once) that look every task up by primary key (``batch.BY_KEY``).
        self._conn = _Connection(url, " ".join(["-c plan_cache_mode=force_generic_plan",
                                                *(f"-c {s}=off" for s in batch.BY_KEY)]))

    async def cycle(self, finished: Sequence[Finished], claims: Sequence[Message], node: str,
                    lease_s: float) -> tuple[list[Task | None], list[Task | None]]:
        if not finished and not claims:
            return [], []
        keep_f = batch.first_of_each_id([f.outcome.task_id for f in finished])
        keep_c = batch.first_of_each_id([m.id for m in claims])
        params = batch.cycle_params([finished[k].outcome for k in keep_f], [(claims[k].id, claims[k].attempt)
                                                                            for k in keep_c], node, lease_s)
        rows = await self._conn.rows(_CYCLE_SQL, params)
        done = {row[1]: row for row in rows if row[0] == "f"}
        started = {row[1]: row for row in rows if row[0] == "c"}
        written: list[Task | None] = []
        for f in finished:
            row = done.pop(f.outcome.task_id, None)
            written.append(None if row is None else f.task.replace(
                status=_STATUSES[row[2]], version=row[3], eta=row[4], lease_until=None))
        tasks: list[Task | None] = []
        for m in claims:
            row = started.pop(m.id, None)
            tasks.append(None if row is None else started_task(m, node, row[3]))
        return written, tasks

    async def renew(self, leases: Sequence[tuple[uuid.UUID, int]], node: str, lease_s: float) -> set[uuid.UUID]:
        if not leases:
            return set()
        rows = await self._conn.rows(batch.RENEW_SQL, batch.renew_params(leases, node, lease_s))
        return {row[0] for row in rows}

    async def close(self) -> None:
        await self._conn.drop()
