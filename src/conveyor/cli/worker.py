"""``conveyor worker MODULE[:APP]``: run an execution node."""

from __future__ import annotations

import contextlib
import ctypes
import logging
import os
import sys

import click

from conveyor import log as conveyor_log
from conveyor.cli.main import CliContext, cli
from conveyor.config import check_deployment, mask_url
from conveyor.loader import load_app
from conveyor.worker import Worker

log = logging.getLogger(__name__)

M_ARENA_MAX = -8  # glibc's mallopt parameter


def _one_malloc_arena() -> None:
    """A worker's threads mostly wait for the GIL; glibc would still give each its own malloc
    arena (megabytes of resident memory for nothing). One arena, unless MALLOC_ARENA_MAX says."""
    if os.environ.get("MALLOC_ARENA_MAX") or not sys.platform.startswith("linux"):
        return
    with contextlib.suppress(OSError, AttributeError):  # not glibc (musl, say): nothing to tune
        ctypes.CDLL(None).mallopt(M_ARENA_MAX, 1)


@cli.command()
@click.argument("app_ref", metavar="MODULE[:APP]")
@click.option("-q", "--queues", default="default", show_default=True, envvar="CONVEYOR_QUEUES",
              show_envvar=True, help="Comma-separated queues to consume.")
@click.option("-c", "--concurrency", default=4, show_default=True, type=click.IntRange(1, 1024),
              envvar="CONVEYOR_CONCURRENCY", show_envvar=True, help="Tasks run at once.")
@click.option("--pool", type=click.Choice(["thread", "process"]), default="thread", show_default=True,
              envvar="CONVEYOR_POOL", show_envvar=True,
              help="thread: sync handlers in threads, async on the event loop; process: CPU-bound, hard timeout.")
@click.option("--node-id", envvar="CONVEYOR_NODE_ID", show_envvar=True, help="Node id (default host-pid-rand).")
@click.option("--grace", "grace_s", type=float, envvar="CONVEYOR_GRACE_S", show_envvar=True,
              help="Seconds in-flight tasks get to finish on SIGTERM/SIGINT [default 30].")
@click.pass_obj
def worker(ctx: CliContext, app_ref: str, queues: str, concurrency: int, pool: str,
           node_id: str | None, grace_s: float | None) -> None:
    """Run a worker node serving the tasks of MODULE[:APP] (APP defaults to `app`)."""
    _one_malloc_arena()
    app = load_app(app_ref)
    settings = ctx.settings.with_overrides(grace_s=grace_s)
    check_deployment(settings)
    app.use_settings(settings)
    names = [q.strip() for q in queues.split(",") if q.strip()]
    node = Worker(app, queues=names, concurrency=concurrency, pool=pool, app_ref=app_ref,
                  settings=settings, node_id=node_id)
    conveyor_log.bind_process(node=node.node_id)
    types = app.registry.names()
    log.info("worker %s: broker %s, store %s, queues %s, concurrency %d (%s pool); task types: %s",
             node.node_id, mask_url(settings.broker_url), mask_url(settings.store_url), ",".join(names),
             concurrency, pool, ", ".join(types) or "none registered")
    node.run()
    app.close()
