"""The worker's keeper thread: heartbeats, lease renewal, early ack of long tasks,
cancellation checks and the dead-node reaper, on one timer."""

from __future__ import annotations

import logging
import threading
import time
from typing import TYPE_CHECKING

from conveyor.errors import ConveyorError
from conveyor.model import TaskStatus, now
from conveyor.recovery import recover_expired

if TYPE_CHECKING:
    from conveyor.worker.worker import Worker

log = logging.getLogger(__name__)


class Keeper(threading.Thread):
    def __init__(self, worker: Worker) -> None:
        super().__init__(name="conveyor-keeper", daemon=True)
        self.worker = worker
        settings = worker.settings
        self.tick_s = max(0.05, min(settings.heartbeat_s, settings.lease_s / 3))
        self._stop_event = threading.Event()
        self._last_heartbeat = 0.0
        self._last_reap = time.monotonic()

    def stop(self) -> None:
        self._stop_event.set()
        self.join(timeout=5)

    def run(self) -> None:
        while not self._stop_event.wait(self.tick_s):
            try:
                self.tick()
            except ConveyorError as exc:  # a store/broker hiccup must not kill the keeper
                log.warning("keeper tick failed: %s", exc, extra={"worker": self.worker.node_id})

    def tick(self) -> None:
        worker, settings = self.worker, self.worker.settings
        renew_leases(worker)
        mono = time.monotonic()
        if mono - self._last_heartbeat >= settings.heartbeat_s:
            worker.heartbeat()
            self._last_heartbeat = mono
        if mono - self._last_reap >= settings.lease_s:
            recover_expired(worker.app.store, worker.app.broker, lease_s=settings.lease_s,
                            max_crashes=settings.max_crashes)
            self._last_reap = mono


def renew_leases(worker: Worker) -> None:
    """Extend the store lease (then the broker's, so the store's never outlives it) of every
    task in flight; ack long ones early where the broker holds deliveries under a deadline;
    notice cancellations."""
    in_flight = worker.in_flight_snapshot()
    if not in_flight:
        return
    settings, store = worker.settings, worker.app.store
    renewed = store.renew_leases([f.task.id for f in in_flight], worker.node_id, now() + settings.lease_s)
    lease_based = worker.app.broker.lease_based
    for flight in in_flight:
        if lease_based:
            flight.delivery.renew(settings.lease_s)
        elif time.monotonic() - flight.started >= settings.ack_handoff_s:
            flight.hand_off()
        # Only a task whose lease was not renewed can have been cancelled: read just those.
        if flight.task.id not in renewed and store.get(flight.task.id).status is TaskStatus.CANCELLED:
            flight.cancelled.set()
