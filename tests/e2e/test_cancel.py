"""Cancelling a running task: the handler is told (threads) or killed (process pool)."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from conveyor.app import Conveyor
from conveyor.config import Settings
from conveyor.model import TaskStatus
from tests.e2e.conftest import Workers, wait_for

CANCEL_APP = "tests.e2e.apps.cancel_app"


def _app(settings: Settings) -> Conveyor:
    from tests.e2e.apps import cancel_app

    cancel_app.app.close()
    cancel_app.app.use_settings(settings)
    return cancel_app.app


def _running(app: Conveyor, task_id: Any) -> bool:
    return app.get(task_id).status is TaskStatus.RUNNING


def test_a_cooperative_handler_sees_the_cancel_and_the_task_stays_cancelled(
        workers: Workers, settings: Settings, tmp_path: Path) -> None:
    app = _app(settings)
    workers.start(CANCEL_APP, concurrency=1)
    marker = tmp_path / "stopped"
    handle = app.submit("cancel.cooperative", {"limit_s": 20, "marker": str(marker)})
    wait_for(lambda: _running(app, handle.id), 10, "the task to start")
    app.cancel(handle.id)
    # The worker notices at its next lease renewal (lease_s / 3) and tells the handler, which
    # stops early; the result it returns is not recorded over the cancellation.
    wait_for(marker.exists, 10, "the handler to see the cancel")
    assert app.handle(handle.id).wait(timeout=5).status is TaskStatus.CANCELLED
    assert app.submit("cancel.cooperative", {"limit_s": 0.1}).result(timeout=10) == "ran to the end"
    task = app.get(handle.id)
    assert task.status is TaskStatus.CANCELLED
    assert task.result is None
    app.close()


def test_a_process_pool_handler_is_killed_when_its_task_is_cancelled(
        workers: Workers, settings: Settings, tmp_path: Path) -> None:
    app = _app(settings)
    worker = workers.start(CANCEL_APP, concurrency=1, pool="process")
    marker = tmp_path / "marker"
    handle = app.submit("cancel.stubborn", {"seconds": 4, "marker": str(marker)})
    wait_for(lambda: _running(app, handle.id), 15, "the task to start")
    app.cancel(handle.id)
    follow_up = app.submit("cancel.cooperative", {"limit_s": 0.1})
    assert follow_up.result(timeout=15) == "ran to the end"  # the slot got a fresh process
    time.sleep(4.5)  # past the stubborn handler's own end: it was killed, so no marker appears
    assert not marker.exists()
    assert app.get(handle.id).status is TaskStatus.CANCELLED
    assert worker.alive()
    app.close()
