"""The embedded deployment's shortcut: when the store and the broker are one SQLite file, a
task change and its message commit in ONE transaction, so no outbox intent is needed and
nothing can be stored without its message. ``together(store, broker)`` says whether they are.
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Sequence
from typing import Any

from conveyor.model import Task
from conveyor.publisher import publish_item


class SqliteTogether:
    """A ``SqliteStore`` and a ``SqliteBroker`` on the same file."""

    def __init__(self, store: Any, broker: Any) -> None:
        self.store = store
        self.broker = broker

    def create_and_publish(self, tasks: Sequence[Task], *, detail: str | None) -> list[tuple[Task, bool]]:
        """Store the tasks and enqueue the messages of the new ones, in one transaction."""
        with self.store.transaction() as conn:
            results: list[tuple[Task, bool]] = self.store.insert(conn, tasks, detail, False)
            now = time.time()
            self.broker.insert_in(conn, [publish_item(t, now) for t, created in results if created])
        return results


def together(store: object, broker: object) -> SqliteTogether | None:
    # Neither SQLite module loaded: neither side is SQLite. Asking without importing them keeps
    # sqlite3 out of a distributed process (about 1 MiB of a worker's memory).
    if "conveyor.store.sqlite" not in sys.modules or "conveyor.broker.sqlite" not in sys.modules:
        return None
    from conveyor._sqlite import sqlite_path
    from conveyor.broker.sqlite import SqliteBroker
    from conveyor.store.sqlite import SqliteStore

    if not isinstance(store, SqliteStore) or not isinstance(broker, SqliteBroker):
        return None
    if os.path.realpath(sqlite_path(store.url)) != os.path.realpath(sqlite_path(broker.url)):
        return None
    return SqliteTogether(store, broker)
