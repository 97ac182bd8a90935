"""Plumbing for the RabbitMQ adapter: its private event-loop thread, URL handling, headers.

``EventLoopThread`` runs one asyncio loop in a daemon thread; the synchronous broker facade
submits coroutines to it. Nothing here imports aio-pika, so it stays testable on its own.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import os
import threading
from collections.abc import Coroutine, Mapping
from typing import Any, TypeVar
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

from conveyor.errors import ConfigError

logger = logging.getLogger(__name__)

T = TypeVar("T")

QUEUE_TYPES = ("classic", "quorum")
# Headers RabbitMQ adds when it dead-letters or redelivers; not ours to pass on.
_BROKER_HEADER_PREFIXES = ("x-death", "x-first-death-", "x-last-death-", "x-delivery-count")


class EventLoopThread:
    """One asyncio event loop running forever in a daemon thread until ``stop()``."""

    def __init__(self, name: str) -> None:
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        asyncio.set_event_loop(self.loop)
        try:
            self.loop.run_forever()
            self._cancel_leftover_tasks()
            self.loop.run_until_complete(self.loop.shutdown_asyncgens())
            self.loop.run_until_complete(self.loop.shutdown_default_executor())
        finally:
            self.loop.close()

    def _cancel_leftover_tasks(self) -> None:
        tasks = [t for t in asyncio.all_tasks(self.loop) if not t.done()]
        for task in tasks:
            task.cancel()
        if tasks:
            self.loop.run_until_complete(asyncio.gather(*tasks, return_exceptions=True))

    def run(self, coro: Coroutine[Any, Any, T], timeout_s: float) -> T:
        """Run ``coro`` on the loop and wait for its result; TimeoutError after ``timeout_s``."""
        if threading.current_thread() is self._thread:
            coro.close()
            raise RuntimeError("EventLoopThread.run() called from its own loop thread")
        future = asyncio.run_coroutine_threadsafe(coro, self.loop)
        try:
            return future.result(timeout_s)
        except concurrent.futures.TimeoutError:
            future.cancel()
            raise TimeoutError(f"no result within {timeout_s:g} s") from None

    def submit(self, coro: Coroutine[Any, Any, None]) -> concurrent.futures.Future[None]:
        """Schedule ``coro`` without waiting; its exceptions are logged, never raised."""
        future = asyncio.run_coroutine_threadsafe(coro, self.loop)
        future.add_done_callback(_log_failure)
        return future

    def stop(self, timeout_s: float = 10.0) -> None:
        if self.loop.is_closed():
            return
        try:
            self.loop.call_soon_threadsafe(self.loop.stop)
        except RuntimeError:  # closed between the check and the call
            return
        self._thread.join(timeout_s)


def _log_failure(future: concurrent.futures.Future[None]) -> None:
    if not future.cancelled() and (exc := future.exception()) is not None:
        logger.warning("background AMQP operation failed: %r", exc)


def resolve_url(url: str, queue_type: str | None,
                environ: Mapping[str, str] | None = None) -> tuple[str, str]:
    """Split conveyor's own query parameters off an AMQP URL.

    Returns (URL for aio-pika, queue type). The queue type comes from the argument, else
    ``?queue_type=``, else env ``CONVEYOR_QUEUE_TYPE``, else "classic".
    """
    parts = urlsplit(url)
    if parts.scheme not in ("amqp", "amqps"):
        raise ConfigError(f"not an AMQP URL: {redact(url)}")
    query = parse_qsl(parts.query, keep_blank_values=True)
    from_url = next((v for k, v in query if k == "queue_type"), None)
    kept = [(k, v) for k, v in query if k != "queue_type"]
    env = os.environ if environ is None else environ
    chosen = queue_type or from_url or env.get("CONVEYOR_QUEUE_TYPE") or "classic"
    if chosen not in QUEUE_TYPES:
        raise ConfigError(f"queue_type must be one of {', '.join(QUEUE_TYPES)}, not {chosen!r}")
    return urlunsplit(parts._replace(query=urlencode(kept))), chosen


def redact(url: str) -> str:
    """The URL without its password, fit for error messages and logs."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    host = parts.hostname or ""
    if ":" in host:  # IPv6 literal
        host = f"[{host}]"
    netloc = f"{parts.username or ''}@{host}"
    if parts.port is not None:
        netloc += f":{parts.port}"
    return urlunsplit(parts._replace(netloc=netloc))


def str_headers(headers: Mapping[str, Any] | None) -> dict[str, str]:
    """Message headers as strings, minus RabbitMQ's own bookkeeping (x-death and the like).

    bytes are decoded as UTF-8; numbers and booleans become their text; tables, arrays
    and timestamps are dropped.
    """
    result: dict[str, str] = {}
    for key, value in (headers or {}).items():
        if key.startswith(_BROKER_HEADER_PREFIXES):
            continue
        if isinstance(value, str):
            result[key] = value
        elif isinstance(value, bytes | bytearray):
            result[key] = bytes(value).decode("utf-8", errors="replace")
        elif isinstance(value, int | float):  # bool is an int
            result[key] = str(value)
    return result
