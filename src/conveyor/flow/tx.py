"""One store transaction as flow control sees it (``FlowTx``), on either store.

Flow control's writes span several rows and tables (a claim, the limit's slot, a parked task's
release; a step's outcome and the tasks of the steps it unblocks), so they run as ordinary
multi-statement transactions rather than as the hot path's single statements. The logic is
written once against this protocol; ``store/postgres_flow.py`` and ``store/sqlite_flow.py``
implement it.

SQL given to ``rows``/``run`` uses ``?`` placeholders and plain SQL both stores accept; task
ids are passed as ``uuid.UUID`` and come back as ``UUID`` (PostgreSQL) or ``str`` (SQLite):
read them with ``as_uuid``.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager
from typing import Any, Protocol

from conveyor._loaded import is_instance
from conveyor.model import NodeInfo, Task, TaskStatus
from conveyor.store.base import Outcome, Store

OUTBOX_UPSERT = ("INSERT INTO task_outbox (task_id, version, at) VALUES (?, ?, ?)"
                 " ON CONFLICT (task_id) DO UPDATE SET version = excluded.version, at = excluded.at")


class FlowTx(Protocol):
    now: float  # the store's clock when the transaction began

    def rows(self, sql: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        """Run one statement; its rows (``RETURNING`` rows for a write)."""
        ...

    def run(self, sql: str, params: Sequence[Any] = ()) -> int:
        """Run one statement; the number of rows it changed."""
        ...

    def tasks(self, ids: Sequence[uuid.UUID], *, lock: bool = False) -> dict[uuid.UUID, Task]:
        """The tasks that exist among ``ids`` (with ``lock``, locked for this transaction, in id order)."""
        ...

    def claim(self, claims: Sequence[tuple[uuid.UUID, int]], node: str, lease_s: float) -> list[Task | None]:
        """``Store.claim_many`` inside this transaction."""
        ...

    def finish(self, outcomes: Sequence[Outcome], node: str) -> list[Task | None]:
        """``Store.finish_many`` inside this transaction."""
        ...

    def update(self, task: Task, to_status: TaskStatus | None, *, node: str | None = None,
               detail: str | None = None, publish: bool = False, **changes: Any) -> Task:
        """``Store.update`` (compare-and-set, event, outbox intent) inside this transaction."""
        ...

    def insert(self, tasks: Sequence[Task], *, detail: str | None, publish: bool) -> list[tuple[Task, bool]]:
        """``Store.create_many`` inside this transaction."""
        ...

    def pinned_nodes(self) -> list[str]:
        """The nodes that tasks waiting to start are pinned to (routing)."""
        ...

    def pinned_waiting(self, node: str, limit: int) -> list[Task]:
        """Tasks pinned to ``node`` that have not started."""
        ...

    def nodes(self) -> list[NodeInfo]:
        """The node registry (``Store.nodes``)."""
        ...

    def lock_buckets(self, buckets: Sequence[tuple[str, str, str]]) -> None:
        """Create (if new) and lock the ``flow_buckets`` rows (kind, name, key), in the order given
        (callers sort them, so two transactions never wait for each other in a circle)."""
        ...


def as_uuid(value: Any) -> uuid.UUID:
    return value if isinstance(value, uuid.UUID) else uuid.UUID(str(value))


def flow_transaction(store: Store) -> AbstractContextManager[FlowTx]:
    """A flow transaction on ``store`` (committed when the block ends, rolled back on error)."""
    return _flow_tx(store, write=True)


def flow_reading(store: Store) -> AbstractContextManager[FlowTx]:
    """Reads outside a transaction (each statement on its own): a cheap look before a sweep
    opens a write transaction (on SQLite, one that takes the whole file's write lock)."""
    return _flow_tx(store, write=False)


@contextmanager
def _flow_tx(store: Store, *, write: bool) -> Iterator[FlowTx]:
    if is_instance(store, "conveyor.store.sqlite", "SqliteStore"):
        from conveyor.store.sqlite_flow import SqliteFlowTx

        with store.transaction() if write else store.locked() as conn:  # type: ignore[attr-defined]
            yield SqliteFlowTx(store, conn)  # type: ignore[arg-type]
    elif is_instance(store, "conveyor.store.postgres", "PostgresStore"):
        from conveyor.store.postgres_flow import PostgresFlowTx

        with store.transaction() if write else store.connection() as conn:  # type: ignore[attr-defined]
            yield PostgresFlowTx(conn)
    elif is_instance(store, "conveyor.store.postgres_async", "LoopStore"):  # a worker process: asyncpg on its loop
        from conveyor.store.postgres_async_flow import loop_transaction

        with loop_transaction(store, write=write) as atx:  # type: ignore[arg-type]
            yield atx
    else:
        raise TypeError(f"flow control needs the SQLite or PostgreSQL store, not {type(store).__name__}")
