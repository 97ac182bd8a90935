"""Group commit: concurrent callers share one round trip.

``Combiner.call(item)`` blocks like a plain call, but while one caller's batch is being written,
the items of callers arriving meanwhile queue up and go together in the next batch: whoever finds
the combiner idle becomes the leader, takes every pending item and runs ``flush`` on them. One
caller alone pays one round trip, as before; N concurrent callers pay about one between them.
No extra thread: the leader is always a caller.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from typing import Generic, TypeVar

T = TypeVar("T")
R = TypeVar("R")


class _Slot(Generic[T, R]):
    __slots__ = ("done", "error", "item", "result", "taken")

    def __init__(self, item: T) -> None:
        self.item = item
        self.taken = False  # in a batch being written
        self.done = False
        self.result: R | None = None
        self.error: BaseException | None = None


class Combiner(Generic[T, R]):
    """``flush(items)`` returns one result per item, in order; an exception it raises goes
    to every caller of that batch. A result that is an exception instance is raised to its
    own caller only."""

    def __init__(self, flush: Callable[[Sequence[T]], Sequence[R | BaseException]], max_batch: int = 500,
                 max_in_flight: int = 1) -> None:
        self._flush = flush
        self._max_batch = max_batch
        # Batches written at once. One is best for a database on the same few cores (measured:
        # two in flight halve the batch size and lose ~20%); more suits a remote server.
        self._max_in_flight = max_in_flight
        self._pending: list[_Slot[T, R]] = []
        self._in_flight = 0
        self._cond = threading.Condition()

    def call(self, item: T) -> R:
        slot: _Slot[T, R] = _Slot(item)
        with self._cond:
            self._pending.append(slot)
        while True:
            with self._cond:
                while not slot.done and (slot.taken or self._in_flight >= self._max_in_flight):
                    self._cond.wait()
                if slot.done:
                    break
                # Lead: take the oldest pending items (ours among them unless over max_batch wait).
                self._in_flight += 1
                batch, self._pending = self._pending[: self._max_batch], self._pending[self._max_batch:]
                for taken in batch:
                    taken.taken = True
            self._lead(batch)
        if slot.error is not None:
            raise slot.error
        return slot.result  # type: ignore[return-value]

    def _lead(self, batch: list[_Slot[T, R]]) -> None:
        try:
            results = self._flush([s.item for s in batch])
            for s, r in zip(batch, results, strict=True):
                if isinstance(r, BaseException):
                    s.error = r
                else:
                    s.result = r
        except BaseException as exc:
            for s in batch:
                s.error = exc
        finally:
            with self._cond:
                for s in batch:
                    s.done = True
                self._in_flight -= 1
                self._cond.notify_all()
