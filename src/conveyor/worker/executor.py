"""Run one handler: sync handlers on handler threads, async ones on the worker's event loop,
CPU-bound ones in child processes (``--pool process``); enforce the timeout; capture errors.

Python cannot kill a thread, so a sync handler past its timeout is abandoned: the attempt fails
as ``timeout`` at once, its thread finishes the call in the background and then exits, and a
fresh thread takes its place so the node keeps its concurrency (``--pool process`` kills the
child instead: a hard timeout).
"""

from __future__ import annotations

import asyncio
import contextvars
import queue
import threading
import traceback
from collections.abc import Callable
from concurrent.futures import Future
from typing import Any

from conveyor.errors import TaskTimeout

Job = tuple[Future[Any], Callable[..., Any], dict[str, Any], contextvars.Context]


class HandlerThreads:
    """``size`` threads taking jobs from one queue; an abandoned job's thread is replaced."""

    def __init__(self, size: int, name: str = "conveyor-handler") -> None:
        self._jobs: queue.SimpleQueue[Job | None] = queue.SimpleQueue()
        self._name = name
        self._lock = threading.Lock()
        self._abandoned: set[int] = set()  # ids of futures whose thread must exit after the call
        self._count = 0
        for _ in range(max(1, size)):
            self._spawn()

    def _spawn(self) -> None:
        with self._lock:
            self._count += 1
            name = f"{self._name}-{self._count}"
        threading.Thread(target=self._loop, name=name, daemon=True).start()

    def submit(self, handler: Callable[..., Any], params: dict[str, Any], context: contextvars.Context) -> Future[Any]:
        future: Future[Any] = Future()
        self._jobs.put((future, handler, params, context))
        return future

    def abandon(self, future: Future[Any]) -> None:
        """The job behind ``future`` overran: let its thread finish and exit; start another."""
        with self._lock:
            if future.done():
                return
            self._abandoned.add(id(future))
        self._spawn()

    def _loop(self) -> None:
        while True:
            job = self._jobs.get()
            if job is None:
                return
            future, handler, params, context = job
            if not future.set_running_or_notify_cancel():
                continue
            try:
                future.set_result(context.run(handler, **params))
            except BaseException as exc:
                future.set_exception(exc)
            with self._lock:
                if id(future) in self._abandoned:
                    self._abandoned.discard(id(future))
                    return

    def close(self) -> None:
        with self._lock:
            count = self._count
        for _ in range(count):
            self._jobs.put(None)


async def run_sync(threads: HandlerThreads, handler: Callable[..., Any], params: dict[str, Any],
                   timeout: float | None, context: contextvars.Context) -> Any:
    future = threads.submit(handler, params, context)
    try:
        return await asyncio.wait_for(asyncio.wrap_future(future), timeout)
    except TimeoutError:
        threads.abandon(future)
        raise TaskTimeout(timeout or 0) from None


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
