"""One SQLite file shared by the embedded adapters (store, broker, schedules): URL parsing, a
connection tuned for several processes, and the lock/transaction discipline they all follow.

Opening checks the whole file once per process (``PRAGMA quick_check``, about 1 s per GB), so
a damaged file is refused at start with a clear error instead of failing the first write that
touches the bad page. Read-only commands open inside ``existing_only()``: a missing file is an
error there, never a new empty database.
"""

from __future__ import annotations

import contextvars
import logging
import os
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from urllib.parse import quote

from conveyor.errors import ConfigError, ConveyorError

log = logging.getLogger(__name__)

BUSY_TIMEOUT_MS = 10_000

_existing_only: contextvars.ContextVar[bool] = contextvars.ContextVar("conveyor_sqlite_existing", default=False)
_checked: set[tuple[int, int]] = set()  # (device, inode) of the files checked by this process
_checked_lock = threading.Lock()


class MissingDatabase(ConfigError):
    """A read-only command found no database file where the URL points."""


class DamagedDatabase(ConfigError):
    """The SQLite file failed its integrity check."""


@contextmanager
def existing_only() -> Iterator[None]:
    """Inside the block, opening a SQLite URL whose file does not exist raises MissingDatabase
    instead of creating it (read commands must never leave a new database behind)."""
    token = _existing_only.set(True)
    try:
        yield
    finally:
        _existing_only.reset(token)


def sqlite_path(url: str) -> str:
    """``sqlite:///rel/path.db`` -> ``rel/path.db``; ``sqlite:////abs/path.db`` -> ``/abs/path.db``."""
    prefix = "sqlite:///"
    if not url.startswith(prefix) or len(url) == len(prefix):
        raise ConfigError(f"bad SQLite URL {url!r}: use sqlite:///relative/path or sqlite:////abs/path")
    return url[len(prefix):]


def connect(url: str) -> sqlite3.Connection:
    """An autocommit connection (transactions are explicit) tuned for several processes."""
    path = sqlite_path(url)
    if _existing_only.get():
        if not os.path.isfile(path):
            raise MissingDatabase(
                f"no Conveyor database at {os.path.abspath(path)}: check CONVEYOR_STORE_URL (or --store), "
                "or run a worker or submit a task first")
        conn = sqlite3.connect(f"file:{quote(os.path.abspath(path))}?mode=rw", uri=True, isolation_level=None,
                               check_same_thread=False, cached_statements=256)
    else:
        parent = os.path.dirname(path)
        if parent and not os.path.isdir(parent):
            os.makedirs(parent, exist_ok=True)
            log.info("created folder %s for the SQLite database", os.path.abspath(parent))
        conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False, cached_statements=256)
    try:
        # busy_timeout first: switching to WAL needs a lock another process may hold.
        conn.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
        _while_locked(lambda: conn.execute("PRAGMA journal_mode = WAL"))
        conn.execute("PRAGMA synchronous = NORMAL")
        check_integrity(conn, path)
    except BaseException:
        conn.close()
        raise
    return conn


def _while_locked(step: Callable[[], object]) -> None:
    """Run ``step``, again while it fails with "database is locked", up to the busy timeout.
    SQLite answers the switch to WAL with SQLITE_BUSY at once, without its busy handler, when
    another process is switching the same new file (seen with workers started together)."""
    deadline = time.monotonic() + BUSY_TIMEOUT_MS / 1000
    while True:
        try:
            step()
            return
        except sqlite3.OperationalError as exc:
            if "locked" not in str(exc) or time.monotonic() >= deadline:
                raise
        time.sleep(0.02)


def check_integrity(conn: sqlite3.Connection, path: str) -> None:
    """``PRAGMA quick_check`` once per file per process; DamagedDatabase if it finds damage."""
    try:
        stat = os.stat(path)
    except OSError:
        return
    key = (stat.st_dev, stat.st_ino)
    with _checked_lock:
        if key in _checked:
            return
    try:
        problems = [row[0] for row in conn.execute("PRAGMA quick_check(5)").fetchall()]
    except sqlite3.DatabaseError as exc:  # a damaged header or root page fails the check itself
        problems = [str(exc)]
    if problems != ["ok"]:
        raise DamagedDatabase(
            f"the SQLite database {os.path.abspath(path)} is damaged ({'; '.join(problems)}). Stop every "
            "process using it, keep a copy, and restore a backup (or salvage with the sqlite3 shell's .recover)")
    with _checked_lock:
        _checked.add(key)


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
