"""``conveyor adopt QUEUE``: turn the messages of an existing RabbitMQ queue into Conveyor tasks
(``conveyor.adopt``), until SIGTERM/SIGINT."""

from __future__ import annotations

import signal
import threading
from types import FrameType

import click

from conveyor.adopt import QueueAdopter, json_decoder, plain_decoder
from conveyor.cli.main import CliContext, cli
from conveyor.errors import ConfigError


@cli.command()
@click.argument("queue")
@click.option("--type", "task_type", help="Task type of every message (plain: required; json: else --type-field).")
@click.option("--decoder", type=click.Choice(["plain", "json"]), default="plain", show_default=True,
              help="plain: the body as text in params.body; json: a JSON object.")
@click.option("--type-field", default="type", show_default=True, help="json: the field naming the task type.")
@click.option("--params-field", help="json: the field holding the params (default: the whole object).")
@click.option("--to-queue", "target", help="Conveyor queue of the adopted tasks (default: QUEUE's name).")
@click.option("--max-attempts", type=int, help="Attempts per task (default: 3).")
@click.option("--timeout", type=float, help="Seconds per attempt.")
@click.pass_obj
def adopt(ctx: CliContext, queue: str, task_type: str | None, decoder: str, type_field: str,
          params_field: str | None, target: str | None, max_attempts: int | None, timeout: float | None) -> None:
    """Adopt the existing RabbitMQ queue QUEUE (its exact name): every message becomes a tracked
    task, stored once even when redelivered (by its message_id), run by Conveyor workers. The queue
    is only declared passively; producers and other queues are left alone."""
    settings = ctx.settings
    if not settings.broker_url.startswith(("amqp://", "amqps://")):
        raise ConfigError("adopting a queue needs RabbitMQ (CONVEYOR_BROKER_URL=amqp://...)")
    if decoder == "plain" and task_type is None:
        raise click.UsageError("--decoder plain needs --type")
    chosen = plain_decoder(task_type or "") if decoder == "plain" else json_decoder(
        task_type, type_field=type_field, params_field=params_field)
    from conveyor.app import Conveyor

    app = Conveyor(settings=settings)
    service = app.service
    adopter = QueueAdopter(service, settings.broker_url, queue, chosen, target_queue=target,
                           max_attempts=max_attempts, timeout=timeout,
                           namespace=getattr(service.broker, "namespace", "conveyor"))
    stop = threading.Event()

    def on_signal(signum: int, frame: FrameType | None) -> None:
        stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    adopter.start()
    click.echo(f"adopting {queue} -> conveyor queue {adopter.target}", err=True)
    try:
        while not stop.wait(0.5):
            pass
    finally:
        adopter.stop()
        app.close()
