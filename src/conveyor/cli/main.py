"""The ``conveyor`` command group. One module per subcommand family.

``--json`` may come before the subcommand or after it (``conveyor tasks --json``); in JSON mode
errors are JSON too (``{"error": {"type", "message"}}`` on stdout, exit status non-zero).
Every message is printed with credentials masked.
"""

from __future__ import annotations

import importlib
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, TypeVar

import click

from conveyor import config, log
from conveyor.config import Settings, mask_secrets
from conveyor.errors import ConveyorError

F = TypeVar("F", bound=Callable[..., Any])

# Exit statuses beyond 0/1: a usage error (click's own) and "not finished in time".
EXIT_USAGE = 2
EXIT_TIMEOUT = 3


@dataclass
class CliContext:
    settings: Settings
    json: bool
    api: str | None = None

    @contextmanager
    def backend(self) -> Iterator[Any]:
        """Where operator commands send their calls (the store and broker, or ``--api``)."""
        from conveyor.cli.backend import open_backend

        with open_backend(self.settings, self.api) as backend:
            yield backend


# Subcommand -> the module that defines it. Imported on first use, so a worker process never
# loads the scheduler, the API or the demo (lower idle memory, faster start).
_LAZY = {
    "demo": "conveyor.cli.demo", "worker": "conveyor.cli.worker", "db": "conveyor.cli.db",
    "submit": "conveyor.cli.tasks", "tasks": "conveyor.cli.tasks", "task": "conveyor.cli.tasks",
    "result": "conveyor.cli.tasks", "wait": "conveyor.cli.tasks",
    "nodes": "conveyor.cli.operate", "queues": "conveyor.cli.operate", "cancel": "conveyor.cli.operate",
    "retry": "conveyor.cli.operate", "purge": "conveyor.cli.operate", "dead": "conveyor.cli.operate",
    "scheduler": "conveyor.cli.scheduler", "schedule": "conveyor.cli.scheduler",
    "adopt": "conveyor.cli.adopt",
    "workflow": "conveyor.cli.flow", "workflows": "conveyor.cli.flow", "broadcast": "conveyor.cli.flow",
    "shard": "conveyor.cli.flow", "limits": "conveyor.cli.flow", "limit": "conveyor.cli.flow",
}


class _LazyGroup(click.Group):
    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted(set(super().list_commands(ctx)) | set(_LAZY))

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        if cmd_name not in self.commands and cmd_name in _LAZY:
            importlib.import_module(_LAZY[cmd_name])  # its decorators register it on this group
        return super().get_command(ctx, cmd_name)

    def format_epilog(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        with formatter.section("Settings (environment; a flag wins)"):
            formatter.write_text("See docs/settings.md for the full reference.")
            formatter.write("\n")
            for line in config.settings_help().splitlines():
                formatter.write(f"  {line}\n")


def json_option(func: F) -> F:
    """``--json`` accepted after the subcommand too (it sets the same flag as before it)."""

    def enable(ctx: click.Context, param: click.Parameter, value: bool) -> None:
        if value and ctx.find_object(CliContext) is not None:
            ctx.find_object(CliContext).json = True  # type: ignore[union-attr]

    return click.option("--json", "as_json", is_flag=True, expose_value=False, callback=enable,
                        is_eager=False, help="Machine-readable JSON output (errors too).")(func)


@click.group(cls=_LazyGroup, context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 110})
@click.option("--broker", envvar="CONVEYOR_BROKER_URL", show_envvar=True,
              help="Broker URL: sqlite:///conveyor.db (default) or amqp://user:pass@host:5672/vhost")
@click.option("--store", envvar="CONVEYOR_STORE_URL", show_envvar=True,
              help="Store URL: sqlite:///conveyor.db (default) or postgresql://user@host/db")
@click.option("--api", envvar="CONVEYOR_API", show_envvar=True, metavar="URL",
              help="Operator commands talk to this scheduler's HTTP API (token: CONVEYOR_API_TOKEN) "
                   "instead of the store and broker.")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable JSON output (errors too).")
@click.option("--log-level", envvar="CONVEYOR_LOG_LEVEL", show_envvar=True, default="INFO",
              type=click.Choice(["DEBUG", "INFO", "WARNING", "ERROR"], case_sensitive=False))
@click.option("--log-format", envvar="CONVEYOR_LOG_FORMAT", show_envvar=True, default="text",
              type=click.Choice(["text", "json"]))
@click.version_option(package_name="conveyor")
@click.pass_context
def cli(ctx: click.Context, broker: str | None, store: str | None, api: str | None, as_json: bool,
        log_level: str, log_format: str) -> None:
    """Conveyor: distributed task scheduling and dispatch."""
    log.configure(log_level, log_format)
    ctx.obj = CliContext(settings=config.load(broker_url=broker, store_url=store), json=as_json, api=api or None)


def _json_mode() -> bool:
    context = click.get_current_context(silent=True)
    obj = context.find_object(CliContext) if context is not None else None
    return bool(obj.json) if obj is not None else "--json" in sys.argv[1:]


def fail(message: str, *, kind: str = "error", code: int = 1) -> None:
    """Print an error (JSON in JSON mode) and exit with ``code``."""
    message = mask_secrets(message)
    if _json_mode():
        from conveyor.cli.render import emit_json

        emit_json({"error": {"type": kind, "message": message}})
    else:
        click.secho(f"error: {message}", fg="red", err=True)
    sys.exit(code)


def error_kind(exc: BaseException) -> str:
    from conveyor.errors import ConcurrentUpdate, ConfigError, InvalidTransition, StoreError, TaskNotFound
    from conveyor.scheduler.schedule_store import DuplicateSchedule, ScheduleChanged, ScheduleNotFound
    from conveyor.store.queries import AmbiguousId

    remote = getattr(exc, "type", None)
    if isinstance(remote, str):
        return remote
    for cls, kind in ((TaskNotFound, "not_found"), (ScheduleNotFound, "not_found"), (InvalidTransition, "conflict"),
                      (ConcurrentUpdate, "conflict"), (DuplicateSchedule, "conflict"), (ScheduleChanged, "conflict"),
                      (AmbiguousId, "ambiguous_id"), (ConfigError, "config"), (StoreError, "unavailable")):
        if isinstance(exc, cls):
            return kind
    return "error"


def main() -> None:
    from conveyor.store.queries import AmbiguousId

    try:
        cli(standalone_mode=False)
    except click.exceptions.Exit as exc:
        sys.exit(exc.exit_code)
    except click.exceptions.Abort:
        fail("aborted", kind="aborted")
    except click.ClickException as exc:
        if _json_mode():
            fail(exc.format_message(), kind="usage", code=EXIT_USAGE)
        exc.show()
        sys.exit(exc.exit_code)
    except (ConveyorError, AmbiguousId) as exc:
        fail(str(exc), kind=error_kind(exc))
