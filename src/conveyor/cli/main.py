"""The ``conveyor`` command group. One module per subcommand family."""

from __future__ import annotations

import importlib
import sys
from dataclasses import dataclass

import click

from conveyor import config, log
from conveyor.config import Settings
from conveyor.errors import ConveyorError


@dataclass
class CliContext:
    settings: Settings
    json: bool


# Subcommand -> the module that defines it. Imported on first use, so a worker process never
# loads the scheduler, the API or the demo (lower idle memory, faster start).
_LAZY = {
    "demo": "conveyor.cli.demo", "worker": "conveyor.cli.worker", "db": "conveyor.cli.db",
    "submit": "conveyor.cli.tasks", "tasks": "conveyor.cli.tasks", "task": "conveyor.cli.tasks",
    "nodes": "conveyor.cli.tasks", "scheduler": "conveyor.cli.scheduler", "schedule": "conveyor.cli.scheduler",
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


@click.group(cls=_LazyGroup, context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.option("--broker", envvar="CONVEYOR_BROKER_URL", show_envvar=True,
              help="Broker URL: sqlite:///conveyor.db (default) or amqp://user:pass@host:5672/vhost")
@click.option("--store", envvar="CONVEYOR_STORE_URL", show_envvar=True,
              help="Store URL: sqlite:///conveyor.db (default) or postgresql://user@host/db")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable JSON output.")
@click.option("--log-level", envvar="CONVEYOR_LOG_LEVEL", show_envvar=True, default="INFO",
              type=click.Choice(["DEBUG", "INFO", "WARNING", "ERROR"], case_sensitive=False))
@click.option("--log-format", envvar="CONVEYOR_LOG_FORMAT", show_envvar=True, default="text",
              type=click.Choice(["text", "json"]))
@click.version_option(package_name="conveyor")
@click.pass_context
def cli(ctx: click.Context, broker: str | None, store: str | None, as_json: bool,
        log_level: str, log_format: str) -> None:
    """Conveyor: distributed task scheduling and dispatch."""
    log.configure(log_level, log_format)
    ctx.obj = CliContext(settings=config.load(broker_url=broker, store_url=store), json=as_json)


def main() -> None:
    try:
        cli(standalone_mode=True)
    except ConveyorError as exc:
        click.secho(f"error: {exc}", fg="red", err=True)
        sys.exit(1)
