"""SqliteBroker: the embedded Broker, a table of messages in one SQLite file.

The processes of one machine share the file. A consumer takes messages by leasing them (one
``UPDATE ... RETURNING`` sets ``lease_owner`` and ``lease_until``); a message whose lease runs
out (its consumer died) is taken again by another consumer and marked redelivered. Acking
deletes the row. Leased-but-not-handed-out rows wait in the consumer's buffer, and a small
thread per consumer renews their leases; handed-out ones are renewed by the worker through
``Delivery.renew``. Every call made after its lease was lost is a logged no-op.

The store may live in the same file; this module's tables are prefixed ``broker_``.
"""

from __future__ import annotations

import logging
import sqlite3
import threading
import time
import uuid
from collections import deque
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

import orjson

from conveyor._sqlite import SqliteFile
from conveyor.broker.base import PublishItem
from conveyor.errors import BrokerError

logger = logging.getLogger(__name__)

_MIN_PAUSE_S = 0.01  # idle polling backs off from this...
_MAX_PAUSE_S = 0.2  # ...to this, so a new message waits at most about 0.2 s

_SCHEMA = """
CREATE TABLE IF NOT EXISTS broker_messages (
    seq INTEGER PRIMARY KEY AUTOINCREMENT, queue TEXT NOT NULL, priority INTEGER NOT NULL,
    available_at REAL NOT NULL, body BLOB NOT NULL, headers TEXT, lease_owner TEXT,
    lease_until REAL, delivery_count INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX IF NOT EXISTS broker_messages_next
    ON broker_messages (queue, priority DESC, available_at, seq);
CREATE TABLE IF NOT EXISTS broker_dead (
    seq INTEGER PRIMARY KEY AUTOINCREMENT, queue TEXT NOT NULL, body BLOB NOT NULL,
    headers TEXT NOT NULL, at REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS broker_queues (name TEXT PRIMARY KEY);
"""

# AUTOINCREMENT keeps seq from being reused, so a stale delivery can never touch a newer row.
_READY = "queue IN ({marks}) AND available_at <= ? AND (lease_until IS NULL OR lease_until < ?)"
_LEASE = (
    "UPDATE broker_messages SET lease_owner = ?, lease_until = ?, delivery_count = delivery_count + 1"
    " WHERE seq IN (SELECT seq FROM broker_messages WHERE " + _READY +
    " ORDER BY priority DESC, available_at, seq LIMIT ?)"
    " RETURNING seq, queue, body, headers, delivery_count, priority, available_at"
)
_PROBE = "SELECT 1 FROM broker_messages WHERE " + _READY + " LIMIT 1"


def _marks(n: int) -> str:
    return ", ".join("?" * n)


def _headers(text: str | None) -> dict[str, str]:
    return {} if text is None else dict(orjson.loads(text))


@dataclass(slots=True)
class Leased:
    seq: int
    queue: str
    body: bytes
    headers: dict[str, str]
    redelivered: bool
    lease_until: float


class SqliteBroker:
    """The Broker port on one SQLite file, with a visibility lease of ``lease_s``."""

    lease_based = True  # an unacked delivery stays ours for as long as it is renewed

    def __init__(self, url: str, *, lease_s: float = 30.0) -> None:
        self.url = url
        self.lease_s = lease_s
        self._consumers: list[_SqliteConsumer] = []
        self._db = SqliteFile(url, BrokerError, "broker", _SCHEMA)
        self._lock = self._db.lock

    def declare_queue(self, queue: str) -> None:
        """Queues need no declaring here; the name is recorded for listing."""
        with self._db.locked() as conn:
            conn.execute("INSERT OR IGNORE INTO broker_queues (name) VALUES (?)", (queue,))

    def publish(self, body: bytes, *, queue: str, priority: int = 0, delay_s: float = 0.0,
                headers: Mapping[str, str] | None = None) -> None:
        self.publish_many([(body, queue, priority, delay_s, headers)])

    def publish_many(self, items: Iterable[PublishItem]) -> None:
        """Publish (body, queue, priority, delay_s, headers) items in one transaction."""
        with self._db.transaction() as conn:
            self.insert_in(conn, items)

    @staticmethod
    def insert_in(conn: sqlite3.Connection, items: Iterable[PublishItem]) -> None:
        """``publish_many`` inside the caller's transaction on the same file (the embedded
        store commits a task change and its message together)."""
        at = time.time()
        rows = []
        for body, queue, priority, delay_s, headers in items:
            if not 0 <= priority <= 9:
                raise ValueError(f"priority must be 0-9, not {priority}")
            encoded = orjson.dumps(dict(headers)).decode() if headers else None
            rows.append((queue, priority, at + max(delay_s, 0.0), bytes(body), encoded))
        conn.executemany(
            "INSERT INTO broker_messages (queue, priority, available_at, body, headers) VALUES (?, ?, ?, ?, ?)",
            rows,
        )

    def consume(self, queues: Sequence[str], *, prefetch: int) -> _SqliteConsumer:
        if not queues:
            raise ValueError("consume() needs at least one queue")
        consumer = _SqliteConsumer(self, tuple(queues), max(prefetch, 1))
        with self._lock:
            self._consumers.append(consumer)
        return consumer

    def dead_letters(self, limit: int = 100) -> list[tuple[bytes, dict[str, str]]]:
        with self._db.locked() as conn:
            rows = conn.execute(
                "SELECT body, headers FROM broker_dead ORDER BY seq LIMIT ?", (limit,)
            ).fetchall()
        return [(bytes(body), _headers(headers)) for body, headers in rows]

    def close(self) -> None:
        with self._lock:
            consumers, self._consumers = self._consumers, []
        for consumer in consumers:
            consumer.close()
        self._db.close()

    # -- used by consumers and deliveries ------------------------------------------------

    def _lease(self, owner: str, queues: tuple[str, ...], limit: int) -> list[Leased]:
        with self._db.locked() as conn:
            return lease_in(conn, owner, queues, limit, self.lease_s)

    def _has_ready(self, queues: tuple[str, ...]) -> bool:
        """A read-only look, so idle consumers do not take the write lock every poll."""
        with self._db.locked() as conn:
            return has_ready_in(conn, queues)

    def _renew(self, seqs: Sequence[int], owner: str, lease_s: float) -> tuple[set[int], float]:
        """Extend the leases ``owner`` still holds; returns those seqs and the new deadline."""
        with self._db.locked() as conn:
            return renew_in(conn, seqs, owner, lease_s)

    def _release(self, seqs: Sequence[int], owner: str) -> None:
        """Give back leased rows never handed out: they do not count as delivered."""
        with self._db.locked() as conn:
            conn.execute(
                "UPDATE broker_messages SET lease_owner = NULL, lease_until = NULL,"
                " delivery_count = delivery_count - 1"
                f" WHERE seq IN ({_marks(len(seqs))}) AND lease_owner = ?",
                (*seqs, owner),
            )

    def _delete(self, seq: int, owner: str) -> bool:
        with self._db.locked() as conn:
            return delete_in(conn, [seq], owner) == 1

    def _requeue(self, seq: int, owner: str, delay_s: float) -> bool:
        with self._db.locked() as conn:
            return requeue_in(conn, seq, owner, delay_s)

    def _dead_letter(self, leased: Leased, owner: str, reason: str) -> bool:
        with self._db.transaction() as conn:
            return dead_letter_in(conn, leased, owner, reason)


# -- the broker's statements, on any connection to the file (the embedded worker runs them in
# -- the same transactions as the store's claims and outcomes: ``worker/sqlite_backend.py``) ----
def lease_in(conn: sqlite3.Connection, owner: str, queues: Sequence[str], limit: int,
             lease_s: float) -> list[Leased]:
    """Lease up to ``limit`` ready messages of ``queues`` to ``owner``, best first."""
    now = time.time()
    until = now + lease_s
    sql = _LEASE.format(marks=_marks(len(queues)))
    rows = conn.execute(sql, (owner, until, *queues, now, now, limit)).fetchall()
    rows.sort(key=lambda r: (-r[5], r[6], r[0]))  # RETURNING order is unspecified
    return [Leased(seq, q, bytes(body), _headers(h), count > 1, until)
            for seq, q, body, h, count, _, _ in rows]


def has_ready_in(conn: sqlite3.Connection, queues: Sequence[str]) -> bool:
    now = time.time()
    return conn.execute(_PROBE.format(marks=_marks(len(queues))), (*queues, now, now)).fetchone() is not None


def renew_in(conn: sqlite3.Connection, seqs: Sequence[int], owner: str, lease_s: float) -> tuple[set[int], float]:
    until = time.time() + lease_s
    rows = conn.execute(
        f"UPDATE broker_messages SET lease_until = ? WHERE seq IN ({_marks(len(seqs))})"
        " AND lease_owner = ? RETURNING seq",
        (until, *seqs, owner),
    ).fetchall()
    return {r[0] for r in rows}, until


def delete_in(conn: sqlite3.Connection, seqs: Sequence[int], owner: str) -> int:
    """Ack: remove the rows ``owner`` still leases; returns how many."""
    if not seqs:
        return 0
    cursor = conn.execute(
        f"DELETE FROM broker_messages WHERE seq IN ({_marks(len(seqs))}) AND lease_owner = ?", (*seqs, owner))
    return cursor.rowcount


def requeue_in(conn: sqlite3.Connection, seq: int, owner: str, delay_s: float) -> bool:
    cursor = conn.execute(
        "UPDATE broker_messages SET lease_owner = NULL, lease_until = NULL, available_at = ?"
        " WHERE seq = ? AND lease_owner = ?",
        (time.time() + max(delay_s, 0.0), seq, owner),
    )
    return cursor.rowcount == 1


def dead_letter_in(conn: sqlite3.Connection, leased: Leased, owner: str, reason: str) -> bool:
    headers = {**leased.headers, "x-conveyor-reason": reason, "x-conveyor-queue": leased.queue}
    cursor = conn.execute("DELETE FROM broker_messages WHERE seq = ? AND lease_owner = ?", (leased.seq, owner))
    if cursor.rowcount != 1:
        return False
    conn.execute(
        "INSERT INTO broker_dead (queue, body, headers, at) VALUES (?, ?, ?, ?)",
        (leased.queue, leased.body, orjson.dumps(headers).decode(), time.time()),
    )
    return True


class _SqliteConsumer:
    """Hands out leased rows one at a time, leasing up to ``prefetch`` minus those held."""

    def __init__(self, broker: SqliteBroker, queues: tuple[str, ...], prefetch: int) -> None:
        self._broker = broker
        self._queues = queues
        self._prefetch = prefetch
        self._owner = uuid.uuid4().hex
        self._lock = threading.Lock()
        self._buffer: deque[Leased] = deque()
        self._handed_out: set[int] = set()
        self._closed = threading.Event()
        self._renewer: threading.Thread | None = None

    def get(self, timeout_s: float) -> _SqliteDelivery | None:
        deadline = time.monotonic() + timeout_s
        pause = _MIN_PAUSE_S
        probe = False  # after an empty lease, look before taking the write lock again
        while not self._closed.is_set():
            delivery = self._next_buffered()
            if delivery is not None:
                return delivery
            if self._room() > 0 and (not probe or self._broker._has_ready(self._queues)) and self._fill():
                pause, probe = _MIN_PAUSE_S, False
                continue
            probe = True
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return None
            self._closed.wait(min(pause, remaining))
            pause = min(pause * 2, _MAX_PAUSE_S)
        return None

    def _room(self) -> int:
        with self._lock:
            return self._prefetch - len(self._handed_out) - len(self._buffer)

    def _fill(self) -> bool:
        """Lease as many rows as prefetch allows; False if there was no room or nothing ready."""
        with self._lock:
            room = self._prefetch - len(self._handed_out) - len(self._buffer)
            if room <= 0 or self._closed.is_set():
                return False
            leased = self._broker._lease(self._owner, self._queues, room)
            self._buffer.extend(leased)
            if leased and self._renewer is None:
                self._renewer = threading.Thread(target=self._renew_loop, name="conveyor-sqlite-renew",
                                                 daemon=True)
                self._renewer.start()
        return bool(leased)

    def _next_buffered(self) -> _SqliteDelivery | None:
        lease_s = self._broker.lease_s
        with self._lock:
            while self._buffer:
                leased = self._buffer.popleft()
                if leased.lease_until - time.time() < lease_s / 2:
                    # The renewer fell behind: make sure the row is still ours before handing it out.
                    renewed, leased.lease_until = self._broker._renew([leased.seq], self._owner, lease_s)
                    if leased.seq not in renewed:
                        continue
                self._handed_out.add(leased.seq)
                return _SqliteDelivery(self, leased)
        return None

    def _renew_loop(self) -> None:
        lease_s = self._broker.lease_s
        while not self._closed.wait(lease_s / 3):
            with self._lock:
                seqs = {leased.seq for leased in self._buffer}
            if not seqs:
                continue
            try:
                renewed, until = self._broker._renew(sorted(seqs), self._owner, lease_s)
            except BrokerError:
                logger.warning("could not renew buffered leases", exc_info=True)
                continue
            with self._lock:
                kept = [leased for leased in self._buffer if leased.seq in renewed or leased.seq not in seqs]
                for leased in kept:
                    if leased.seq in renewed:
                        leased.lease_until = until
                self._buffer = deque(kept)

    def _settled(self, seq: int) -> None:
        with self._lock:
            self._handed_out.discard(seq)

    def close(self) -> None:
        """Stop; buffered rows go back to their queue at once. Handed-out deliveries stay
        valid, so in-flight work can still be acked during a graceful shutdown."""
        if self._closed.is_set():
            return
        self._closed.set()
        if self._renewer is not None:
            self._renewer.join()
        with self._lock:
            seqs = [leased.seq for leased in self._buffer]
            self._buffer.clear()
        if seqs:
            self._broker._release(seqs, self._owner)


class _SqliteDelivery:
    def __init__(self, consumer: _SqliteConsumer, leased: Leased) -> None:
        self.body = leased.body
        self.headers: Mapping[str, str] = leased.headers
        self.queue = leased.queue
        self.redelivered = leased.redelivered
        self._consumer = consumer
        self._leased = leased
        self._done = False

    def _settle(self, action: str, done: bool) -> None:
        self._done = True
        self._consumer._settled(self._leased.seq)
        if not done:
            logger.debug("%s of message %d ignored: its lease was lost", action, self._leased.seq,
                         extra={"queue": self.queue, "action": action})

    def _owner_call(self) -> tuple[SqliteBroker, str] | None:
        if self._done:
            return None
        return self._consumer._broker, self._consumer._owner

    def ack(self) -> None:
        if (call := self._owner_call()) is not None:
            broker, owner = call
            self._settle("ack", broker._delete(self._leased.seq, owner))

    def nack(self, *, requeue: bool, delay_s: float = 0.0) -> None:
        if (call := self._owner_call()) is None:
            return
        broker, owner = call
        if requeue:
            self._settle("nack", broker._requeue(self._leased.seq, owner, delay_s))
        else:
            self._settle("nack", broker._delete(self._leased.seq, owner))

    def dead_letter(self, reason: str) -> None:
        if (call := self._owner_call()) is not None:
            broker, owner = call
            self._settle("dead_letter", broker._dead_letter(self._leased, owner, reason))

    def renew(self, lease_s: float) -> None:
        if (call := self._owner_call()) is None:
            return
        broker, owner = call
        renewed, _ = broker._renew([self._leased.seq], owner, lease_s)
        if not renewed:
            logger.debug("renew of message %d ignored: its lease was lost", self._leased.seq,
                         extra={"queue": self.queue, "action": "renew"})

    def __repr__(self) -> str:
        return f"<SqliteDelivery queue={self.queue!r} seq={self._leased.seq} redelivered={self.redelivered}>"
