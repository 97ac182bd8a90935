"""The ``conveyor`` command group. One module per subcommand family."""

from __future__ import annotations

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


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
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
    from conveyor.cli import db, demo, tasks, worker  # noqa: F401 - registers subcommands

    try:
        _register_optional()
        cli(standalone_mode=True)
    except ConveyorError as exc:
        click.secho(f"error: {exc}", fg="red", err=True)
        sys.exit(1)


def _register_optional() -> None:
    """Subcommands of the scheduling center, when present."""
    import contextlib
    import importlib

    with contextlib.suppress(ImportError):
        importlib.import_module("conveyor.cli.scheduler")
