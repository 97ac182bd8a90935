"""The embedded deployment's shortcut: when the store and the broker are one SQLite file, a
task change and its message commit in ONE transaction, so no outbox intent is needed and
nothing can be stored without its message. ``together(store, broker)`` says whether they are.
"""

from __future__ import annotations

import os
import time
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, cast

from conveyor._loaded import is_instance
from conveyor.model import Task
from conveyor.publisher import publish_item

if TYPE_CHECKING:
    from conveyor.broker.sqlite import SqliteBroker
    from conveyor.store.sqlite import SqliteStore


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
    # Asked without importing the SQLite modules: sqlite3 stays out of a distributed process
    # (about 1 MiB of a worker's memory).
    if not (is_instance(store, "conveyor.store.sqlite", "SqliteStore")
            and is_instance(broker, "conveyor.broker.sqlite", "SqliteBroker")):
        return None
    from conveyor._sqlite import sqlite_path

    file, broker_file = sqlite_path(cast("SqliteStore", store).url), sqlite_path(cast("SqliteBroker", broker).url)
    if os.path.realpath(file) != os.path.realpath(broker_file):
        return None
    return SqliteTogether(store, broker)
