"""``conveyor scheduler`` (the scheduling center) and ``conveyor schedule add|list|rm|enable|disable``.

The scheduler process runs the loop (``SchedulerService``) in the main thread and, unless
``--no-http``, the HTTP API (uvicorn) in a thread; SIGTERM/SIGINT stop both, the loop handing
its leader lease over on the way out.
"""

from __future__ import annotations

import logging
import signal
import threading
from types import FrameType
from typing import Any

import click
from rich.table import Table

from conveyor.api.server import HttpServer, check_bind
from conveyor.cli import render
from conveyor.cli.main import CliContext, cli, json_option
from conveyor.config import Settings, check_deployment
from conveyor.errors import SerializationError
from conveyor.message import loads
from conveyor.operations import Operations
from conveyor.reports import open_report_consumer
from conveyor.scheduler.schedule_store import open_schedule_store
from conveyor.scheduler.service import SchedulerService
from conveyor.service import TaskService

log = logging.getLogger(__name__)


@cli.command()
@click.option("--http", "bind", default="127.0.0.1:8000", show_default=True, envvar="CONVEYOR_HTTP",
              show_envvar=True, metavar="HOST:PORT", help="Serve the HTTP API here.")
@click.option("--no-http", is_flag=True, help="Run the scheduling loop only.")
@click.option("--app", "app_ref", metavar="MODULE[:APP]", envvar="CONVEYOR_APP", show_envvar=True,
              help="Upsert the app's @app.periodic schedules on start and use its task defaults.")
@click.option("--lease", "lease_s", type=click.FloatRange(0.3), default=3.0, show_default=True,
              envvar="CONVEYOR_SCHEDULER_LEASE_S", show_envvar=True, help="Leader lease TTL, seconds.")
@click.option("--renew", "renew_s", type=click.FloatRange(0.1), default=1.0, show_default=True,
              envvar="CONVEYOR_SCHEDULER_RENEW_S", show_envvar=True, help="Lease renewal period, seconds.")
@click.option("--misfire-grace", "grace_s", type=click.FloatRange(0), envvar="CONVEYOR_MISFIRE_GRACE_S",
              show_envvar=True, help="Fires later than this are misfires [default: 2 * lease + 1].")
@click.option("--id", "holder", envvar="CONVEYOR_SCHEDULER_ID", show_envvar=True,
              help="Replica id in the lease row; unique per replica (default host-pid-rand).")
@click.option("--insecure-no-auth", is_flag=True,
              help="Serve the HTTP API on a non-loopback address without CONVEYOR_API_TOKEN (a proxy in front "
                   "must authenticate).")
@click.pass_obj
def scheduler(ctx: CliContext, bind: str, no_http: bool, app_ref: str | None, lease_s: float, renew_s: float,
              grace_s: float | None, holder: str | None, insecure_no_auth: bool) -> None:
    """Run the scheduling center: periodic schedules, node watch, statistics and retention, and
    (by default) the HTTP API and dashboard.

    Run several for high availability: one holds the lease and fires, the others stand by."""
    if renew_s >= lease_s:
        raise click.BadParameter("must be shorter than --lease", param_hint="--renew")
    settings = ctx.settings
    check_deployment(settings)
    host, port = _parse_bind(bind)
    if not no_http:
        check_bind(host, settings.api_token, insecure_no_auth)
    tasks, closers, specs = _task_service(settings, app_ref)
    schedules = open_schedule_store(settings.store_url)
    operations = Operations(tasks, settings)
    closers.insert(0, operations.close)
    service = SchedulerService(schedules, tasks, settings, holder=holder, lease_s=lease_s, renew_s=renew_s,
                               misfire_grace_s=grace_s, maintenance=operations.maintain)
    if specs:
        declared = service.declare(specs)
        log.info("declared %d schedule(s) from %s", len(declared), app_ref)
    stop = threading.Event()
    _on_signals(stop)
    server = None
    # Reports from workers in other languages (docs/protocol.md); every replica consumes them,
    # the store's compare-and-set keeps concurrent appliers safe.
    reports = open_report_consumer(tasks, settings)
    reports.start()
    try:
        server = None if no_http else _start_http(settings, host, port, tasks)
        service.run(stop)
    finally:
        reports.stop()
        if server is not None:
            server.stop()
        schedules.close()
        for close in closers:
            close()


def _task_service(settings: Settings, app_ref: str | None) -> tuple[TaskService, list[Any], list[Any]]:
    if app_ref:
        from conveyor.loader import load_app

        app = load_app(app_ref)
        app.use_settings(settings)
        return app.service, [app.close], list(app.periodic_specs)
    from conveyor.broker import open_broker
    from conveyor.store import open_store

    store = open_store(settings.store_url)
    broker = open_broker(settings.broker_url)
    return TaskService(store, broker), [broker.close, store.close], []


def _on_signals(stop: threading.Event) -> None:
    def handle(signum: int, frame: FrameType | None) -> None:
        log.info("received %s: stopping", signal.Signals(signum).name)
        stop.set()

    signal.signal(signal.SIGTERM, handle)
    signal.signal(signal.SIGINT, handle)


def _parse_bind(bind: str) -> tuple[str, int]:
    host, sep, port = bind.rpartition(":")
    if not sep or not port.isdigit():
        raise click.BadParameter("use HOST:PORT", param_hint="--http")
    return host.strip("[]") or "127.0.0.1", int(port)


def _start_http(settings: Settings, host: str, port: int, tasks: TaskService) -> HttpServer | None:
    try:
        from conveyor.api.app import create_app
    except ImportError as exc:
        log.warning("HTTP API unavailable (%s); running the scheduling loop only", exc)
        return None
    # The API shares the loop's TaskService (thread-safe): one set of connections, the app's task defaults.
    server = HttpServer(create_app(settings=settings, service=tasks), host, port)
    server.start()
    shown = f"[{host}]" if ":" in host else host
    log.info("HTTP API and dashboard on http://%s:%d/%s", shown, port,
             "" if settings.api_token else " (no CONVEYOR_API_TOKEN: open to anyone who can reach it)")
    return server


# -- conveyor schedule ... ------------------------------------------------------------------
@cli.group()
def schedule() -> None:
    """Manage periodic schedules (stored beside the tasks; the scheduler fires them).

    With --api URL they go through that scheduler's HTTP API, like the other operator commands."""


@schedule.command("add")
@click.argument("name")
@click.option("--type", "task_type", required=True, help="Task type each fire submits.")
@click.option("--params", default="{}", show_default=True, help="Task params as a JSON object.")
@click.option("--cron", help="5-field cron expression, e.g. '*/5 * * * *'.")
@click.option("--tz", "timezone", default="UTC", show_default=True, help="Time zone of --cron (IANA name).")
@click.option("--every", "interval_s", type=float, help="Fire every this many seconds instead of --cron.")
@click.option("--misfire", type=click.Choice(["skip", "run_once"]), default="skip", show_default=True,
              help="After downtime: skip the missed fires, or run one catch-up.")
@click.option("--queue", help="Queue (default: the type's).")
@click.option("--priority", type=click.IntRange(0, 9), help="0-9, higher first.")
@click.option("--disabled", is_flag=True, help="Create it paused.")
@json_option
@click.pass_obj
def schedule_add(ctx: CliContext, name: str, task_type: str, params: str, cron: str | None, timezone: str,
                 interval_s: float | None, misfire: str, queue: str | None, priority: int | None,
                 disabled: bool) -> None:
    """Create schedule NAME: --cron EXPR [--tz ZONE] or --every SECONDS."""
    try:
        parsed = loads(params)
    except SerializationError as exc:
        raise click.BadParameter(str(exc), param_hint="--params") from exc
    if not isinstance(parsed, dict):
        raise click.BadParameter("must be a JSON object", param_hint="--params")
    if (cron is None) == (interval_s is None):
        raise click.UsageError("give exactly one of --cron or --every")
    body = {"name": name, "type": task_type, "params": parsed, "cron": cron, "timezone": timezone,
            "interval_s": interval_s, "misfire": misfire, "queue": queue, "priority": priority,
            "enabled": not disabled}
    with ctx.backend() as backend:
        _show(ctx, [backend.schedule_create(body)], one=True)


@schedule.command("list")
@json_option
@click.pass_obj
def schedule_list(ctx: CliContext) -> None:
    """List the schedules."""
    with ctx.backend() as backend:
        _show(ctx, backend.schedules())


@schedule.command("rm")
@click.argument("name")
@json_option
@click.pass_obj
def schedule_rm(ctx: CliContext, name: str) -> None:
    """Delete schedule NAME (tasks it already submitted stay)."""
    with ctx.backend() as backend:
        backend.schedule_delete(name)
    if ctx.json:
        render.emit_json({"deleted": name})
    else:
        render.console.print(f"deleted {name}")


@schedule.command("run")
@click.argument("name")
@json_option
@click.pass_obj
def schedule_run(ctx: CliContext, name: str) -> None:
    """Submit one task of schedule NAME now (its fire times are left as they are)."""
    with ctx.backend() as backend:
        task = backend.schedule_run(name)
    render.emit_json(task) if ctx.json else render.say(f"{name}: submitted task {task['id']}")


@schedule.command("enable")
@click.argument("name")
@json_option
@click.pass_obj
def schedule_enable(ctx: CliContext, name: str) -> None:
    """Resume schedule NAME (from its next fire time; missed ones are not run)."""
    _set_enabled(ctx, name, True)


@schedule.command("disable")
@click.argument("name")
@json_option
@click.pass_obj
def schedule_disable(ctx: CliContext, name: str) -> None:
    """Pause schedule NAME."""
    _set_enabled(ctx, name, False)


def _set_enabled(ctx: CliContext, name: str, enabled: bool) -> None:
    with ctx.backend() as backend:
        _show(ctx, [backend.schedule_change(name, {"enabled": enabled})], one=True)


def _show(ctx: CliContext, schedules: list[dict[str, Any]], *, one: bool = False) -> None:
    """Schedules in the API's JSON shape (``Schedule.to_dict()``), as JSON or a table."""
    if ctx.json:
        render.emit_json(schedules[0] if one else schedules)
        return
    table = Table(show_header=True, header_style="bold")
    for col in ("name", "type", "when", "misfire", "enabled", "next fire", "last fired"):
        table.add_column(col)
    for s in schedules:
        when = f"{s['cron']} ({s['timezone']})" if s["cron"] else f"every {s['interval_s']:g} s"
        table.add_row(s["name"], s["type"], when, s["misfire"], "yes" if s["enabled"] else "[dim]no[/]",
                      s["next_fire_at"] or "", s["last_fired_at"] or "")
    render.show(table)
