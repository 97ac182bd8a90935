"""Dead letters for operators: list them with their reason, replay them to their queue, delete.

The ``Broker`` port only peeks at the dead-letter queue; replaying and deleting need each
adapter's own storage, so they live here, beside the adapters, reached through the broker
object (``dead_letters_of(broker)``):

- SQLite: rows of ``broker_dead``; the id is the row's seq. Replay moves a row back to
  ``broker_messages`` in one transaction.
- RabbitMQ: messages of ``<ns>.dead``; the id is a digest of the body and its dead-letter
  headers (a message has no id of its own). Replay publishes a copy to its queue (confirmed),
  then acks the dead one; messages not chosen are given back in place.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import orjson

from conveyor.broker.base import Broker

REASON = "x-conveyor-reason"
QUEUE = "x-conveyor-queue"
MAX_SCAN = 10_000  # messages looked at per call on RabbitMQ


@dataclass(frozen=True, slots=True)
class DeadLetter:
    id: str
    queue: str  # the queue it was dead-lettered from
    reason: str
    body: bytes
    headers: dict[str, str]
    at: float | None  # when, where the broker knows it

    @property
    def task_id(self) -> str | None:
        data = self._json()
        value = data.get("id") if isinstance(data, dict) else None
        return value if isinstance(value, str) else None

    @property
    def type(self) -> str | None:
        data = self._json()
        value = data.get("type") if isinstance(data, dict) else None
        return value if isinstance(value, str) else None

    def _json(self) -> Any:
        try:
            return orjson.loads(self.body)
        except orjson.JSONDecodeError:
            return None

    def to_dict(self) -> dict[str, Any]:
        from conveyor.model import iso

        return {"id": self.id, "queue": self.queue, "reason": self.reason, "task_id": self.task_id,
                "type": self.type, "at": iso(self.at), "body": self.body.decode("utf-8", "replace"),
                "headers": self.headers}


class DeadLetters(Protocol):
    def peek(self, limit: int = 100) -> list[DeadLetter]: ...

    def replay(self, ids: Sequence[str] | None, *, publish: Callable[[DeadLetter], bool] | None = None) -> int:
        """Send the dead letters named by ``ids`` (None: all) back to their queue; returns how
        many. ``publish``, when given, handles one instead (returns True when it did, e.g. by
        retrying its task); the dead letter is removed either way."""
        ...

    def delete(self, ids: Sequence[str] | None) -> int: ...


def dead_letters_of(broker: Broker) -> DeadLetters:
    """The dead letters of ``broker`` (or of the broker a lazy wrapper's ``target`` opens)."""
    from conveyor.broker.sqlite import SqliteBroker

    broker = getattr(broker, "target", broker)
    if isinstance(broker, SqliteBroker):
        return _SqliteDeadLetters(broker)
    from conveyor.broker.rabbitmq import RabbitmqBroker

    if isinstance(broker, RabbitmqBroker):
        return _RabbitmqDeadLetters(broker)
    raise TypeError(f"no dead letters for {type(broker).__name__}")


def _own_headers(headers: dict[str, str]) -> dict[str, str]:
    return {k: v for k, v in headers.items() if k not in (REASON, QUEUE)}


class _SqliteDeadLetters:
    def __init__(self, broker: Any) -> None:
        self._db = broker._db  # same package: the broker's own file

    def peek(self, limit: int = 100) -> list[DeadLetter]:
        with self._db.locked() as conn:
            rows = conn.execute("SELECT seq, queue, body, headers, at FROM broker_dead ORDER BY seq LIMIT ?",
                                (limit,)).fetchall()
        return [self._letter(row) for row in rows]

    @staticmethod
    def _letter(row: Sequence[Any]) -> DeadLetter:
        seq, queue, body, headers, at = row
        parsed = {str(k): str(v) for k, v in orjson.loads(headers).items()} if headers else {}
        return DeadLetter(str(seq), parsed.get(QUEUE, queue), parsed.get(REASON, ""), bytes(body), parsed, at)

    def _chosen(self, conn: Any, ids: Sequence[str] | None) -> list[DeadLetter]:
        sql = "SELECT seq, queue, body, headers, at FROM broker_dead"
        if ids is None:
            return [self._letter(r) for r in conn.execute(sql + " ORDER BY seq").fetchall()]
        seqs = [int(i) for i in ids if i.isdigit()]
        if not seqs:
            return []
        marks = ", ".join("?" * len(seqs))
        return [self._letter(r) for r in conn.execute(f"{sql} WHERE seq IN ({marks}) ORDER BY seq", seqs).fetchall()]

    def replay(self, ids: Sequence[str] | None, *, publish: Callable[[DeadLetter], bool] | None = None) -> int:
        with self._db.locked() as conn:
            letters = self._chosen(conn, ids)
        done = 0
        for letter in letters:  # one at a time: ``publish`` may write to the same file
            handled = publish(letter) if publish is not None else False
            with self._db.transaction() as conn:
                if not handled:
                    headers = _own_headers(letter.headers)
                    conn.execute(
                        "INSERT INTO broker_messages (queue, priority, available_at, body, headers)"
                        " VALUES (?, 0, ?, ?, ?)",
                        (letter.queue, time.time(), letter.body, orjson.dumps(headers).decode() if headers else None))
                conn.execute("DELETE FROM broker_dead WHERE seq = ?", (int(letter.id),))
            done += 1
        return done

    def delete(self, ids: Sequence[str] | None) -> int:
        with self._db.transaction() as conn:
            if ids is None:
                return int(conn.execute("DELETE FROM broker_dead").rowcount)
            seqs = [int(i) for i in ids if i.isdigit()]
            if not seqs:
                return 0
            return int(conn.execute(f"DELETE FROM broker_dead WHERE seq IN ({', '.join('?' * len(seqs))})",
                                    seqs).rowcount)


def _digest(body: bytes, headers: dict[str, str]) -> str:
    digest = hashlib.sha256(body)
    digest.update(orjson.dumps(headers, option=orjson.OPT_SORT_KEYS))
    return digest.hexdigest()[:16]


class _RabbitmqDeadLetters:
    def __init__(self, broker: Any) -> None:
        self._broker = broker  # same package: its session and loop thread

    def peek(self, limit: int = 100) -> list[DeadLetter]:
        return [self._letter(body, headers, None) for body, headers in self._broker.dead_letters(limit)]

    @staticmethod
    def _letter(body: bytes, headers: dict[str, str], at: float | None) -> DeadLetter:
        return DeadLetter(_digest(body, headers), headers.get(QUEUE, ""), headers.get(REASON, ""), body,
                          headers, at)

    def replay(self, ids: Sequence[str] | None, *, publish: Callable[[DeadLetter], bool] | None = None) -> int:
        return self._take(ids, republish=True, publish=publish)

    def delete(self, ids: Sequence[str] | None) -> int:
        return self._take(ids, republish=False, publish=None)

    def _take(self, ids: Sequence[str] | None, *, republish: bool,
              publish: Callable[[DeadLetter], bool] | None) -> int:
        """Take the chosen dead letters off the queue (``republish``: sending each back first)."""
        from aiormq import spec

        from conveyor.broker._amqp_loop import OUTAGE_S, Outgoing, str_headers
        from conveyor.broker.rabbitmq import OPERATION_TIMEOUT_S

        broker = self._broker
        link = broker.link
        wanted = None if ids is None else set(ids)

        async def take() -> int:
            name = await link.ensure_dead()
            await link.ready(OUTAGE_S)
            channel = await link._connection.channel(publisher_confirms=False)
            taken = 0
            try:
                chosen: list[tuple[DeadLetter, Any]] = []
                last_kept = 0
                for _ in range(MAX_SCAN):
                    message = await channel.basic_get(name, no_ack=False)
                    if not isinstance(message.delivery, spec.Basic.GetOk):
                        break
                    letter = self._letter(message.body, str_headers(message.header.properties.headers), None)
                    if wanted is None or letter.id in wanted:
                        if wanted is not None:
                            wanted.discard(letter.id)  # a duplicate body is another letter
                        chosen.append((letter, message))
                    else:
                        last_kept = message.delivery.delivery_tag or 0
                for letter, message in chosen:
                    if republish and not (publish is not None and await _off_loop(publish, letter)):
                        priority = min(message.header.properties.priority or 0, 9)
                        await link.publish_all([Outgoing(letter.body, letter.queue, priority, 0,
                                                         _own_headers(letter.headers))])
                    await channel.basic_ack(message.delivery.delivery_tag)
                    taken += 1
                if last_kept:  # the others go back in place (acked ones are not affected)
                    await channel.basic_nack(last_kept, multiple=True, requeue=True)
            finally:
                await channel.close()
            return taken

        result: int = broker._call(take(), OPERATION_TIMEOUT_S * 4, "dead letters")
        return result


async def _off_loop(publish: Callable[[DeadLetter], bool], letter: DeadLetter) -> bool:
    """Run ``publish`` (blocking: it may publish through this same broker) off the loop thread."""
    import asyncio

    return await asyncio.get_running_loop().run_in_executor(None, publish, letter)
