"""Run one handler: sync handlers in threads, async ones on the worker's event loop,
CPU-bound ones in a process (``--pool process``); enforce the timeout; capture errors."""

from __future__ import annotations

import asyncio
import contextvars
import threading
import traceback
from collections.abc import Callable
from concurrent.futures import Future
from concurrent.futures import TimeoutError as FutureTimeout
from typing import Any

from conveyor._loop_thread import EventLoopThread
from conveyor.errors import TaskTimeout
from conveyor.task import TaskSpec


def _run_on_loop(loop: EventLoopThread, handler: Callable[..., Any], params: dict[str, Any],
                 timeout: float | None) -> Any:
    context = contextvars.copy_context()  # carries current_task() onto the loop

    async def start() -> Any:
        task = asyncio.get_running_loop().create_task(_with_timeout(handler(**params), timeout), context=context)
        return await task

    return loop.run(start(), None)  # the timeout is enforced inside, where it cancels the handler


async def _with_timeout(coro: Any, timeout: float | None) -> Any:
    try:
        return await asyncio.wait_for(coro, timeout)
    except TimeoutError:
        raise TaskTimeout(timeout or 0) from None


class ThreadExecutor:
    """Runs sync handlers in the calling slot thread; with a timeout, in a helper thread that
    is abandoned when it overruns (Python cannot kill a thread: use --pool process for a hard
    timeout). Async handlers go to the shared event loop."""

    def __init__(self) -> None:
        self._loop: EventLoopThread | None = None
        self._lock = threading.Lock()

    def run(self, spec: TaskSpec, params: dict[str, Any], timeout: float | None) -> Any:
        if spec.is_async:
            return _run_on_loop(self._event_loop(), spec.handler, params, timeout)
        if timeout is None:
            return spec.handler(**params)
        return _run_in_thread(spec.handler, params, timeout)

    def _event_loop(self) -> EventLoopThread:
        with self._lock:
            if self._loop is None:
                self._loop = EventLoopThread(name="conveyor-async")
            return self._loop

    def close(self) -> None:
        if self._loop is not None:
            self._loop.stop()


def _run_in_thread(handler: Callable[..., Any], params: dict[str, Any], timeout: float) -> Any:
    future: Future[Any] = Future()

    def target() -> None:
        try:
            future.set_result(handler(**params))
        except BaseException as exc:
            future.set_exception(exc)

    context = contextvars.copy_context()  # carries current_task() into the helper thread
    threading.Thread(target=context.run, args=(target,), name="conveyor-handler", daemon=True).start()
    try:
        return future.result(timeout)
    except FutureTimeout:
        raise TaskTimeout(timeout) from None


def error_info(exc: BaseException) -> dict[str, Any]:
    """The error as recorded in the store and shown by the API."""
    kind = "timeout" if isinstance(exc, TaskTimeout) else type(exc).__name__
    return {
        "type": kind,
        "message": str(exc) or type(exc).__name__,
        "traceback": "".join(traceback.format_exception(exc)),
    }
