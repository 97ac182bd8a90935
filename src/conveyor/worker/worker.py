"""The worker (execution node): register, take tasks with bounded prefetch, run them,
record outcomes, ack only after the outcome is stored, shut down gracefully.

``Worker`` is the public face; the work happens on one event loop (``worker/core.py``) fed by
the deployment's backend (``worker/backend.py``): RabbitMQ and PostgreSQL spoken natively on
that loop, or the embedded SQLite file.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import socket
import threading
import uuid
from collections.abc import Sequence
from types import FrameType
from typing import TYPE_CHECKING

from conveyor._loop_thread import EventLoopThread
from conveyor.config import Settings
from conveyor.flow.routing import node_queue
from conveyor.model import now
from conveyor.worker.backend import Backend, Intake, PortLedger, SplitBackend
from conveyor.worker.core import InFlight, WorkerCore

if TYPE_CHECKING:
    from conveyor.app import Conveyor
    from conveyor.worker.process_pool import ProcessPool

__all__ = ["InFlight", "Worker", "open_backend"]

log = logging.getLogger(__name__)

START_TIMEOUT_S = 60.0


class Worker:
    def __init__(self, app: Conveyor, *, queues: Sequence[str] = ("default",), concurrency: int = 4,
                 pool: str = "thread", app_ref: str | None = None, settings: Settings | None = None,
                 node_id: str | None = None) -> None:
        if pool not in ("thread", "process"):
            raise ValueError("pool must be 'thread' or 'process'")
        if pool == "process" and app_ref is None:
            raise ValueError("--pool process needs the app reference (MODULE:APP)")
        self.app = app
        self.node_id = node_id or f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:4]}"
        self.queues = tuple(queues)
        # Beside its queues, every node consumes its own (``_node.<id>``): tasks routed to it
        # by a key, a broadcast or a shard (docs/flow-control.md).
        self.consumed_queues = (*self.queues, node_queue(self.node_id))
        self.concurrency = max(1, concurrency)
        self.settings = settings or app.settings
        self.started_at = now()
        self.done = 0
        self.process_pool: ProcessPool | None = None  # --pool process
        self._pool_kind = pool
        self._app_ref = app_ref
        self._stop_requested = threading.Event()
        self._loop: EventLoopThread | None = None
        self._core: WorkerCore | None = None

    # -- lifecycle ------------------------------------------------------------------------
    def run(self) -> None:
        """Run until SIGTERM/SIGINT (or ``stop()``), then shut down gracefully."""
        self.install_signal_handlers()
        self.start()
        try:
            self.fetch_loop()
        finally:
            self.shutdown()

    def install_signal_handlers(self) -> None:
        def on_signal(signum: int, frame: FrameType | None) -> None:
            log.info("received %s: stopping (grace %.0f s)", signal.Signals(signum).name,
                     self.settings.grace_s, extra={"worker": self.node_id})
            self.stop()

        signal.signal(signal.SIGTERM, on_signal)
        signal.signal(signal.SIGINT, on_signal)

    def start(self) -> None:
        """Connect, register the node and start taking work (on the worker's event loop)."""
        if self._pool_kind == "process" and self._app_ref:
            from conveyor.worker.process_pool import ProcessPool  # multiprocessing only when asked for

            self.process_pool = ProcessPool(self._app_ref, self.concurrency)
        self._loop = EventLoopThread(name="conveyor-worker")
        try:
            self._core = self._loop.run(self._start_core(), START_TIMEOUT_S)
        except BaseException:
            self._loop.stop()
            if self.process_pool is not None:
                self.process_pool.close()
            raise
        log.info("worker %s started: queues=%s concurrency=%d pool=%s", self.node_id, ",".join(self.queues),
                 self.concurrency, self._pool_kind, extra={"worker": self.node_id})

    async def _start_core(self) -> WorkerCore:
        core = WorkerCore(self, await open_backend(self.app, self.settings))
        await core.start()
        return core

    def stop(self) -> None:
        self._stop_requested.set()
        loop, core = self._loop, self._core
        if loop is not None and core is not None:
            with contextlib.suppress(RuntimeError):  # the loop is already closed
                loop.loop.call_soon_threadsafe(core.stop)

    def fetch_loop(self) -> None:
        """Block until ``stop()``: the work happens on the worker's event loop."""
        while not self._stop_requested.wait(0.5):
            pass

    def shutdown(self) -> None:
        """Stop taking; let in-flight tasks finish within the grace period; give back the rest."""
        self._stop_requested.set()
        loop, core = self._loop, self._core
        if loop is None or core is None:
            return
        stats = core.stats
        log.debug("batches: %d claim(s) of %.1f deliveries, %d write(s) of %.1f outcomes", stats["claim_batches"],
                  stats["claimed"] / max(1, stats["claim_batches"]), stats["record_batches"],
                  stats["recorded"] / max(1, stats["record_batches"]), extra={"worker": self.node_id})
        try:
            loop.run(core.shutdown(), self.settings.grace_s + 60)
        finally:
            loop.stop()
            if self.process_pool is not None:
                self.process_pool.close()
            self._core = None
        log.info("worker %s stopped after %d task(s)", self.node_id, self.done, extra={"worker": self.node_id})

    def in_flight_snapshot(self) -> list[InFlight]:
        core = self._core
        return list(core.flights.values()) if core is not None else []


async def open_backend(app: Conveyor, settings: Settings) -> Backend:
    """The fastest backend for the app's broker and store (see ``worker/backend.py``), opened on
    the running loop. A broker or a PostgreSQL store given by URL is not opened through the app:
    the worker speaks AMQP and PostgreSQL on its own loop (and so never loads psycopg)."""
    from conveyor.embedded import together
    from conveyor.flow.hooks import FlowHooks

    flow = FlowHooks(app.registry, settings)  # flow control: a set lookup per task unless used
    broker_url, broker_obj = app.broker_source()
    store_url, store_obj = app.store_source()
    if broker_url.startswith("sqlite:") or (broker_obj is not None and not hasattr(broker_obj, "amqp_url")):
        store = store_obj or app.store
        fused = together(store, broker_obj or app.broker)
        if fused is not None:
            from conveyor.worker.sqlite_backend import SqliteBackend

            return SqliteBackend(fused, lease_s=settings.lease_s, flow=flow)
    intake = _intake(app, broker_url, broker_obj)
    if store_url.startswith(("postgresql:", "postgres:")):
        from conveyor.store.postgres_async import AsyncPostgres, LoopStore
        from conveyor.worker.pg_ledger import PostgresLedger

        db = AsyncPostgres(store_url)
        await db.open()
        await db.ensure_schema()
        return SplitBackend(intake, PostgresLedger(db), LoopStore(db, asyncio.get_running_loop()),  # type: ignore[arg-type]
                            flow)
    store = store_obj or app.store
    return SplitBackend(intake, PortLedger(store), store, flow)


def _intake(app: Conveyor, broker_url: str, broker_obj: object | None) -> Intake:
    from conveyor.worker.intake import AmqpIntake, PortIntake

    if broker_obj is None and broker_url.startswith(("amqp:", "amqps:")):
        from conveyor.broker._amqp_loop import resolve_url

        url, queue_type = resolve_url(broker_url, None)
        return AmqpIntake(url, "conveyor", queue_type, name="conveyor worker")
    broker = broker_obj if broker_obj is not None else app.broker
    amqp_url = getattr(broker, "amqp_url", None)
    if amqp_url is not None:  # a RabbitmqBroker object: the same server, namespace and queue type
        return AmqpIntake(amqp_url, broker.namespace, broker.queue_type, name="conveyor worker")  # type: ignore[attr-defined]
    return PortIntake(broker)  # type: ignore[arg-type]
