"""Serving the HTTP API (and dashboard) with uvicorn in a thread of the scheduler process.

Slow or half-sent requests are cut off: a connection must deliver a request's headers within
``HEADER_TIMEOUT_S`` of connecting (or of its first byte after a response), and the body
within ``BODY_TIMEOUT_S`` (``BodyLimitMiddleware``); idle keep-alive connections close after
uvicorn's ``timeout_keep_alive``. Without these, a client that opens connections and sends
half a request keeps them open for ever.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import threading
from typing import Any

import uvicorn
from uvicorn.protocols.http.h11_impl import H11Protocol

from conveyor.errors import ConfigError

log = logging.getLogger(__name__)

HEADER_TIMEOUT_S = 10.0
KEEP_ALIVE_S = 5


class GuardedH11Protocol(H11Protocol):
    """uvicorn's h11 protocol with a deadline for receiving each request's headers."""

    header_timeout_s = HEADER_TIMEOUT_S

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._header_timer: asyncio.TimerHandle | None = None
        self._arm()

    def _arm(self) -> None:
        if self._header_timer is None:
            self._header_timer = self.loop.call_later(self.header_timeout_s, self._headers_too_slow)

    def _disarm(self) -> None:
        if self._header_timer is not None:
            self._header_timer.cancel()
            self._header_timer = None

    def _between_requests(self) -> bool:
        return self.cycle is None or self.cycle.response_complete

    def data_received(self, data: bytes) -> None:
        if self._between_requests():
            self._arm()
        super().data_received(data)
        if not self._between_requests():
            self._disarm()  # the headers are in: the body has its own deadline

    def on_response_complete(self) -> None:
        self._disarm()
        super().on_response_complete()

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        super().connection_lost(exc)

    def _headers_too_slow(self) -> None:
        self._header_timer = None
        if self._between_requests() and not self.transport.is_closing():
            log.info("closing a connection from %s: request headers not received within %.0f s",
                     self.client, self.header_timeout_s)
            self.transport.write(b"HTTP/1.1 408 Request Timeout\r\ncontent-length: 0\r\nconnection: close\r\n\r\n")
            self.transport.close()


def is_loopback(host: str) -> bool:
    host = host.strip("[]")
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def check_bind(host: str, token: str | None, insecure_no_auth: bool) -> None:
    """Refuse to serve without a token anywhere but on the loopback interface."""
    if token or is_loopback(host):
        return
    if insecure_no_auth:
        log.warning("serving the HTTP API on %s WITHOUT authentication (--insecure-no-auth): anyone who can "
                    "reach it can submit, cancel and read every task", host)
        return
    raise ConfigError(f"refusing to serve the HTTP API on {host} without CONVEYOR_API_TOKEN: anyone on the network "
                      "could read and change every task. Set CONVEYOR_API_TOKEN, bind to 127.0.0.1, or pass "
                      "--insecure-no-auth if a proxy in front of it authenticates")


class HttpServer:
    """uvicorn in a daemon thread (it then leaves signal handling to the caller)."""

    def __init__(self, app: Any, host: str, port: int) -> None:
        config = uvicorn.Config(app, host=host, port=port, log_config=None, access_log=False,
                                http=GuardedH11Protocol, timeout_keep_alive=KEEP_ALIVE_S)
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, name="conveyor-http", daemon=True)

    def start(self, timeout_s: float = 15.0) -> None:
        self.thread.start()
        for _ in range(int(timeout_s / 0.05)):
            if self.server.started:
                return
            if not self.thread.is_alive():
                raise ConfigError("the HTTP API did not start (is the address in use?)")
            self.thread.join(0.05)
        raise ConfigError("the HTTP API did not start in time")

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=10)
