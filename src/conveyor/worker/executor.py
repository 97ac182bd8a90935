"""Run one handler: sync handlers on handler threads, async ones on the worker's event loop,
CPU-bound ones in child processes (``--pool process``); enforce the timeout; capture errors.

Handler threads report back in batches: a finished call is appended to a list, and the event
loop is woken once for whatever finished meanwhile (not once per call), with no future or task
per call on the loop's side. Python cannot kill a thread, so a sync handler past its timeout is
abandoned: the attempt fails as ``timeout`` at once, its thread finishes the call in the
background and then exits, and a fresh thread takes its place so the node keeps its
concurrency (``--pool process`` kills the child instead: a hard timeout).
"""

from __future__ import annotations

import asyncio
import contextvars
import queue
import threading
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from conveyor.errors import TaskTimeout

Done = Callable[[Any, BaseException | None], None]  # (result, error): the call ended


@dataclass(eq=False, slots=True)
class _Job:
    handler: Callable[..., Any]
    params: dict[str, Any]
    context: contextvars.Context
    done: Done
    state: str = "queued"  # queued | running | over (reported: finished, or timed out)
    timer: asyncio.TimerHandle | None = field(default=None)


class HandlerThreads:
    """``size`` threads taking jobs from one queue; ``done`` callbacks run on ``loop``."""

    def __init__(self, size: int, loop: asyncio.AbstractEventLoop, name: str = "conveyor-handler") -> None:
        self._jobs: queue.SimpleQueue[_Job | None] = queue.SimpleQueue()
        self._loop = loop
        self._name = name
        self._lock = threading.Lock()
        self._finished: list[tuple[_Job, Any, BaseException | None]] = []
        self._wake_pending = False
        self._count = 0
        for _ in range(max(1, size)):
            self._spawn()

    def _spawn(self) -> None:
        with self._lock:
            self._count += 1
            name = f"{self._name}-{self._count}"
        threading.Thread(target=self._work, name=name, daemon=True).start()

    def submit(self, handler: Callable[..., Any], params: dict[str, Any], context: contextvars.Context,
               timeout: float | None, done: Done) -> None:
        """Run ``handler(**params)`` in ``context`` on a handler thread; ``done`` gets the
        outcome on the loop (``TaskTimeout`` once ``timeout`` passed, the call abandoned)."""
        job = _Job(handler, params, context, done)
        if timeout is not None:
            job.timer = self._loop.call_later(timeout, self._expire, job, timeout)
        self._jobs.put(job)

    def _expire(self, job: _Job, timeout: float) -> None:  # on the loop
        with self._lock:
            if job.state == "over":
                return
            abandoned = job.state == "running"
            job.state = "over"
        if abandoned:
            self._spawn()  # the stuck thread exits after the call; this one takes its place
        job.done(None, TaskTimeout(timeout))

    def _work(self) -> None:
        while True:
            job = self._jobs.get()
            if job is None:
                return
            with self._lock:
                if job.state != "queued":
                    continue  # timed out while it waited
                job.state = "running"
            result: Any = None
            error: BaseException | None = None
            try:
                result = job.context.run(job.handler, **job.params)
            except BaseException as exc:
                error = exc
            with self._lock:
                if job.state == "over":
                    return  # abandoned: a fresh thread replaced this one
                job.state = "over"
                self._finished.append((job, result, error))
                wake = not self._wake_pending
                self._wake_pending = True
            if wake:
                self._loop.call_soon_threadsafe(self._report)

    def _report(self) -> None:  # on the loop: everything that finished since the last wake-up
        with self._lock:
            finished, self._finished = self._finished, []
            self._wake_pending = False
        for job, result, error in finished:
            if job.timer is not None:
                job.timer.cancel()
            job.done(result, error)

    def close(self) -> None:
        with self._lock:
            count = self._count
        for _ in range(count):
            self._jobs.put(None)


async def run_async(handler: Callable[..., Any], params: dict[str, Any], timeout: float | None,
                    context: contextvars.Context) -> Any:
    task = asyncio.get_running_loop().create_task(handler(**params), context=context)
    try:
        return await asyncio.wait_for(task, timeout)
    except TimeoutError:
        raise TaskTimeout(timeout or 0) from None


def error_info(exc: BaseException) -> dict[str, Any]:
    """The error as recorded in the store and shown by the API."""
    kind = "timeout" if isinstance(exc, TaskTimeout) else type(exc).__name__
    return {
        "type": kind,
        "message": str(exc) or type(exc).__name__,
        "traceback": "".join(traceback.format_exception(exc)),
    }
