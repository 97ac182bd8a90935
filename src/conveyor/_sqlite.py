"""One SQLite file shared by the embedded adapters (store, broker, schedules): URL parsing, a
connection tuned for several processes, and the lock/transaction discipline they all follow."""

from __future__ import annotations

import os
import sqlite3
import threading
from collections.abc import Iterator
from contextlib import contextmanager

from conveyor.errors import ConfigError, ConveyorError

BUSY_TIMEOUT_MS = 10_000


def sqlite_path(url: str) -> str:
    """``sqlite:///rel/path.db`` -> ``rel/path.db``; ``sqlite:////abs/path.db`` -> ``/abs/path.db``."""
    prefix = "sqlite:///"
    if not url.startswith(prefix) or len(url) == len(prefix):
        raise ConfigError(f"bad SQLite URL {url!r}: use sqlite:///relative/path or sqlite:////abs/path")
    return url[len(prefix):]


def connect(url: str) -> sqlite3.Connection:
    """An autocommit connection (transactions are explicit) tuned for several processes."""
    path = sqlite_path(url)
    parent = os.path.dirname(path)
    if parent:
        os.makedirs(parent, exist_ok=True)
    conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False, cached_statements=256)
    try:
        # busy_timeout first: switching to WAL needs a lock another process may hold.
        conn.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
        conn.execute("PRAGMA journal_mode = WAL")
        conn.execute("PRAGMA synchronous = NORMAL")
    except sqlite3.Error:
        conn.close()
        raise
    return conn


class SqliteFile:
    """One connection guarded by a lock; ``sqlite3`` errors become ``error`` (StoreError or
    BrokerError) so callers never see driver types."""

    def __init__(self, url: str, error: type[ConveyorError], what: str, schema: str) -> None:
        self.url = url
        self.lock = threading.RLock()
        self._error = error
        self._what = what
        try:
            self.conn = connect(url)
        except sqlite3.Error as exc:
            raise error(f"cannot open SQLite {what} {url!r}: {exc}") from exc
        with self.transaction() as conn:
            for statement in schema.split(";"):
                if statement.strip():
                    conn.execute(statement)

    @contextmanager
    def locked(self) -> Iterator[sqlite3.Connection]:
        with self.lock:
            try:
                yield self.conn
            except sqlite3.Error as exc:
                raise self._error(f"SQLite {self._what} {self.url!r}: {exc}") from exc

    @contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        """Several statements under SQLite's write lock, taken up front (``BEGIN IMMEDIATE``), so
        two processes never both read and then fail to upgrade to writing."""
        with self.locked() as conn:
            conn.execute("BEGIN IMMEDIATE")
            try:
                yield conn
            except BaseException:
                conn.execute("ROLLBACK")
                raise
            conn.execute("COMMIT")

    def close(self) -> None:
        with self.lock:
            self.conn.close()
