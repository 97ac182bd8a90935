"""``--pool process``: handlers run in child processes, one per slot, for CPU-bound work.

A handler past its timeout is killed with its process (a hard timeout) and the slot gets a
fresh child. Parent and child speak JSON over a pipe (never pickle).
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import multiprocessing
import queue
import threading
import time
import traceback
import uuid
from multiprocessing.connection import Connection
from multiprocessing.process import BaseProcess
from typing import Any

import orjson

from conveyor.errors import HandlerError, TaskError, TaskTimeout

log = logging.getLogger(__name__)

CANCEL_POLL_S = 0.1  # how soon a cancel reaches a running handler process
START_TIMEOUT_S = 60.0


class _Child:
    def __init__(self, app_ref: str) -> None:
        ctx = multiprocessing.get_context("spawn")
        self.conn, child_conn = ctx.Pipe()
        self.process: BaseProcess = ctx.Process(target=_child_main, args=(app_ref, child_conn), daemon=True)
        self.process.start()
        child_conn.close()
        # Wait until it has imported the app, so a task's timeout never pays for the start-up.
        if not self.conn.poll(START_TIMEOUT_S) or orjson.loads(self.conn.recv_bytes()) != {"ready": True}:
            self.kill()
            raise TaskError(f"handler process for {app_ref} did not start within {START_TIMEOUT_S:g} s")

    def kill(self) -> None:
        self.process.kill()
        self.process.join(timeout=5)
        self.conn.close()


class ProcessPool:
    def __init__(self, app_ref: str, size: int) -> None:
        self.app_ref = app_ref
        self._idle: queue.Queue[_Child] = queue.Queue()
        self._all: set[_Child] = set()
        for _ in range(size):
            self._add()

    def _add(self) -> None:
        child = _Child(self.app_ref)
        self._all.add(child)
        self._idle.put(child)

    def run(self, task_type: str, params: dict[str, Any], timeout: float | None,
            context: dict[str, Any] | None = None, cancel: threading.Event | None = None) -> Any:
        """Run in a free child; ``context`` (id, attempt, max_attempts, node) backs current_task().
        The child is killed when ``timeout`` passes (TaskTimeout) or ``cancel`` is set."""
        child = self._idle.get()
        try:
            child.conn.send_bytes(orjson.dumps({"type": task_type, "params": params, "context": context},
                                               default=str))
            _wait_for_reply(child.conn, timeout, cancel)
            reply = orjson.loads(child.conn.recv_bytes())
        except (TaskTimeout, TaskCancelled, EOFError, OSError) as exc:
            self._replace(child)
            if isinstance(exc, TaskTimeout | TaskCancelled):
                raise
            raise HandlerError({"type": "crashed", "message": f"handler process died: {exc!r}"}) from exc
        self._idle.put(child)
        if reply["ok"]:
            return reply["result"]
        raise HandlerError(reply["error"])

    def _replace(self, child: _Child) -> None:
        child.kill()
        self._all.discard(child)
        self._add()

    def close(self) -> None:
        for child in list(self._all):
            child.kill()
        self._all.clear()


class TaskCancelled(TaskError):
    """The task was cancelled while it ran; its process was killed."""


def _wait_for_reply(conn: Connection, timeout: float | None, cancel: threading.Event | None) -> None:
    deadline = None if timeout is None else time.monotonic() + timeout
    while True:
        step = CANCEL_POLL_S if deadline is None else min(CANCEL_POLL_S, max(0.0, deadline - time.monotonic()))
        if conn.poll(step):
            return
        if cancel is not None and cancel.is_set():
            raise TaskCancelled("cancelled while running: handler process killed")
        if deadline is not None and time.monotonic() >= deadline:
            raise TaskTimeout(timeout or 0)


def _child_main(app_ref: str, conn: Connection) -> None:
    import signal

    from conveyor.loader import load_app

    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent decides when we stop
    app = load_app(app_ref)
    conn.send_bytes(b'{"ready":true}')
    while True:
        try:
            request = orjson.loads(conn.recv_bytes())
        except (EOFError, OSError):
            return
        conn.send_bytes(_run_one(app, request))


def _run_one(app: Any, request: dict[str, Any]) -> bytes:
    from conveyor.context import TaskContext, flow_context, reset_current, set_current

    ctx = request.get("context") or {}
    token = set_current(TaskContext(id=uuid.UUID(ctx["id"]), type=request["type"], attempt=ctx["attempt"],
                                    max_attempts=ctx["max_attempts"], node=ctx["node"],
                                    **flow_context(ctx.get("flow")))) if ctx else None
    try:
        handler = app.registry.get(request["type"]).handler
        result = handler(**request["params"])
        if inspect.isawaitable(result):
            result = asyncio.run(_await(result))
        return orjson.dumps({"ok": True, "result": result})
    except Exception as exc:
        info = {"type": type(exc).__name__, "message": str(exc) or type(exc).__name__,
                "traceback": "".join(traceback.format_exception(exc)),
                "retry_delay_s": getattr(exc, "delay_s", None), "abort": type(exc).__name__ == "Abort"}
        return orjson.dumps({"ok": False, "error": info})
    finally:
        if token is not None:
            reset_current(token)


async def _await(awaitable: Any) -> Any:
    return await awaitable
