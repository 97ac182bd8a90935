"""The dashboard in a real browser (Debian's Chromium, headless, driven by Playwright), on the
embedded default with a real scheduler and real workers: sign in, watch tasks succeed, read a
failed task's traceback and retry it, cancel a scheduled task, run a schedule now, replay a
dead letter; no console errors on any page. Screenshots of every page go to
``artifacts/screenshots`` (``CONVEYOR_ARTIFACTS`` to change), kept by CI.

Chromium and its driver come from ``scripts/install-debian-packages.sh``; locally the test is
skipped without them, in CI (CI=true) that is a failure.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from conveyor.config import Settings
from conveyor.model import TaskStatus
from conveyor.scheduler.schedule_store import open_schedule_store
from conveyor.scheduler.schedules import Schedule
from tests.e2e.conftest import REPO_ROOT, Workers
from tests.processes import wait_for

pytestmark = pytest.mark.timeout(180)

CHROMIUM = os.environ.get("CONVEYOR_CHROMIUM", "/usr/bin/chromium")
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
                 "--disable-sync", "--no-first-run"]
TOKEN = "browser-test-token"
APP = "tests.e2e.apps.console_app"
ARTIFACTS = Path(os.environ.get("CONVEYOR_ARTIFACTS", REPO_ROOT / "artifacts")) / "screenshots"


def _need_browser() -> Any:
    missing = None
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        missing = "playwright is not installed"
        sync_playwright = None
    if missing is None and not Path(CHROMIUM).exists():
        missing = f"{CHROMIUM} is missing (scripts/install-debian-packages.sh installs it)"
    if missing:
        if os.environ.get("CI"):
            pytest.fail(missing + " (CI requires it)")
        pytest.skip(missing)
    return sync_playwright


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
def scheduler(workers: Workers, tmp_path: Path) -> Iterator[str]:
    port = _free_port()
    env = workers.env(extra={"CONVEYOR_API_TOKEN": TOKEN})
    log_path = tmp_path / "scheduler.log"
    with log_path.open("wb") as log_file:
        proc = subprocess.Popen([sys.executable, "-m", "conveyor", "scheduler", "--http", f"127.0.0.1:{port}"],
                                cwd=REPO_ROOT, env=env, stdout=log_file, stderr=subprocess.STDOUT,
                                start_new_session=True)
    base = f"http://127.0.0.1:{port}"
    try:
        wait_for(lambda: _answers(port) or proc.poll() is not None, 20, "the scheduler's HTTP API")
        assert proc.poll() is None, log_path.read_text()
        yield base
    finally:
        proc.terminate()
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
        if "Traceback" in log_path.read_text():
            sys.stderr.write(log_path.read_text()[-10_000:])


def _answers(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.2):
            return True
    except OSError:
        return False


@pytest.fixture
def app(settings: Settings) -> Iterator[Any]:
    from tests.e2e.apps import console_app

    console_app.app.close()
    console_app.app.use_settings(settings)
    yield console_app.app
    console_app.app.close()


class Browser:
    """One page in headless Chromium that records console errors and saves screenshots."""

    def __init__(self, page: Any, base: str) -> None:
        self.page = page
        self.base = base
        self.errors: list[str] = []
        page.on("console", lambda m: self.errors.append(f"{page.url}: {m.type}: {m.text}")
                if m.type in ("error", "warning") else None)
        page.on("pageerror", lambda e: self.errors.append(f"{page.url}: uncaught: {e}"))
        page.on("dialog", lambda d: d.accept())  # the "are you sure?" of dangerous buttons

    def go(self, path: str) -> None:
        self.page.goto(self.base + path)
        self.page.wait_for_load_state("networkidle")

    def shot(self, name: str) -> None:
        ARTIFACTS.mkdir(parents=True, exist_ok=True)
        self.page.screenshot(path=str(ARTIFACTS / f"{name}.png"), full_page=True)


def test_an_operator_works_through_the_dashboard(workers: Workers, scheduler: str, app: Any,
                                                 settings: Settings) -> None:
    sync_playwright = _need_browser()
    from playwright.sync_api import expect
    store = workers.store()
    old_code = workers.start(APP, node_id="web-node-1", concurrency=4)
    workers.start(APP, node_id="web-node-2", concurrency=2, queues="reports")
    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)
        try:
            context = chromium.new_context(viewport={"width": 1280, "height": 860})
            web = Browser(context.new_page(), scheduler)

            # Sign in: the dashboard sends a browser without a session to the form.
            web.go("/")
            assert "/login" in web.page.url
            web.shot("login")
            web.page.fill("#token", TOKEN)
            web.page.click("button[type=submit]")
            web.page.wait_for_url(scheduler + "/")
            cookie = next(c for c in context.cookies() if c["name"] == "conveyor_session")
            assert cookie["httpOnly"] and cookie["sameSite"] == "Strict"

            # Submitted tasks move to succeeded, live, on the tasks page.
            web.go("/tasks?type=console.ok")
            handles = [app.submit("console.ok", {"n": i, "sleep_s": 0.8}) for i in range(6)]
            handles.append(app.submit("console.ok", {"n": 99}, queue="reports"))
            web.page.wait_for_selector("table.tasks .s-running", timeout=15_000)
            # (Locators, not wait_for_function: the pages' CSP forbids evaluating strings.)
            expect(web.page.locator("table.tasks .badge.s-succeeded")).to_have_count(7, timeout=30_000)
            web.shot("tasks")
            assert all(h.status() is TaskStatus.SUCCEEDED for h in handles)

            # A failed task: its traceback, a retry, and it succeeds.
            failed = app.submit("console.fail_first", {"order": "W-42"})
            wait_for(lambda: store.get(failed.id).status is TaskStatus.FAILED, 20, "the failure")
            web.go("/tasks?status=failed")
            web.page.click(f"a[href='/tasks/{failed.id}']")
            web.page.wait_for_selector("pre.traceback")
            assert "the payment service said no" in web.page.inner_text("pre.traceback")
            web.shot("task-failed")
            web.page.click("button:has-text('Retry')")
            web.page.wait_for_selector("#task .task-title .badge.s-succeeded", timeout=20_000)
            assert store.get(failed.id).result == {"order": "W-42", "charged": "yes"}
            web.shot("task-retried")

            # A scheduled task is cancelled before it runs.
            later = app.submit("console.ok", {"n": 1}, delay=600)
            web.go(f"/tasks/{later.id}")
            web.page.click("button:has-text('Cancel')")
            web.page.wait_for_selector("#task .task-title .badge.s-cancelled")
            assert store.get(later.id).status is TaskStatus.CANCELLED

            # A schedule runs now.
            schedules = open_schedule_store(settings.store_url)
            schedules.create(Schedule.new("nightly-report", "console.ok", cron="0 3 * * *", params={"n": 3},
                                          queue="reports"))
            schedules.close()
            web.go("/schedules")
            web.page.click("button:has-text('Run now')")
            web.page.wait_for_selector("#schedules .flash")
            assert "submitted task" in web.page.inner_text("#schedules .flash")
            web.shot("schedules")

            # A dead letter (a type the running code does not know) is replayed once the fix is out.
            late = app.submit("console.late", {"n": 8})
            wait_for(lambda: store.get(late.id).status is TaskStatus.FAILED, 20, "the dead letter")
            web.go("/dead-letters")
            assert "unknown task type 'console.late'" in web.page.inner_text("#dead")
            web.shot("dead-letters")
            old_code.signal(15)
            old_code.wait(15)
            workers.start(APP, node_id="web-node-3", concurrency=4, extra_env={"CONSOLE_APP_V2": "1"})
            web.page.click("#dead button:has-text('Replay')")
            web.page.wait_for_selector("#dead .flash")
            assert "Replayed 1" in web.page.inner_text("#dead .flash")
            wait_for(lambda: store.get(late.id).status is TaskStatus.SUCCEEDED, 20, "the replayed task")

            # The other pages, and the API docs for a signed-in browser.
            web.go("/")
            web.page.wait_for_selector("#chart canvas")
            web.page.wait_for_timeout(2500)  # one live refresh of the figures
            assert web.page.inner_text("[data-status=succeeded]").strip() != "0"
            web.shot("overview")
            web.go("/nodes")
            assert "web-node-3" in web.page.inner_text("#nodes")
            web.shot("nodes")
            web.go("/docs")
            web.page.wait_for_selector(".swagger-ui .opblock", timeout=15_000)
            web.shot("api-docs")

            # Readable on a phone.
            phone = Browser(chromium.new_context(viewport={"width": 390, "height": 844}, is_mobile=True,
                                                 storage_state=context.storage_state()).new_page(), scheduler)
            for name, path in (("phone-overview", "/"), ("phone-tasks", "/tasks"),
                               ("phone-task", f"/tasks/{failed.id}")):
                phone.go(path)
                width = phone.page.locator("html").evaluate("element => element.scrollWidth")
                assert width <= 390 + 1, f"{path} scrolls sideways on a phone ({width}px)"
                phone.shot(name)
            assert web.errors + phone.errors == []
        finally:
            chromium.close()

