"""Celery app for the benchmark: ``bench.noop`` on ``$BENCH_QUEUE`` over RabbitMQ.

``BENCH_CELERY_BACKEND``: empty (no results), ``redis://...`` or ``db+postgresql://...``
(with task_track_started, tables in schema ``$BENCH_PG_SCHEMA``). ``BENCH_CELERY_RESULTS=1``
marks results wanted: Celery puts ``ignore_result`` into each message from the sender's
configuration, so a client that sends without a backend connection must still say it. ``BENCH_CONFIRM=0`` turns
publisher confirms off (used only to fill queues quickly).
"""

from __future__ import annotations

import os

from benchlib.record import record
from celery import Celery

BACKEND = os.environ.get("BENCH_CELERY_BACKEND") or None
QUEUE = os.environ.get("BENCH_QUEUE", "bench")

app = Celery("bench", broker=os.environ.get("BENCH_CELERY_BROKER", "amqp://guest:guest@127.0.0.1:5672//"),
             backend=BACKEND)
app.conf.update(
    task_default_queue=QUEUE,
    broker_transport_options={"confirm_publish": os.environ.get("BENCH_CONFIRM", "1") == "1"},
    task_ignore_result=os.environ.get("BENCH_CELERY_RESULTS") != "1",
    task_track_started=bool(BACKEND and BACKEND.startswith("db+")),
    worker_enable_remote_control=False,  # no pidbox queues left behind
    worker_hijack_root_logger=False,
    broker_connection_retry_on_startup=True,
    # Producers a client may use at once (default 10): the "many in flight" client raises it
    # to its thread count so threads do not queue for a connection.
    broker_pool_limit=int(os.environ.get("BENCH_CELERY_POOL_LIMIT", "10")),
)
if BACKEND and BACKEND.startswith("db+"):
    schema = os.environ["BENCH_PG_SCHEMA"]
    app.conf.database_engine_options = {"connect_args": {"options": f"-csearch_path={schema}"}}


@app.task(name="bench.noop")
def noop(i: int = 0, sent: float = 0.0) -> None:
    record(sent)
