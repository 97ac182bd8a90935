"""What a distributed worker process loads: every module is resident memory (issue 9's idle RSS
target), so the embedded mode's sqlite3 must stay out of a worker on RabbitMQ + PostgreSQL."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from tests.processes import REPO_ROOT

PROBE = """
import sys
import conveyor.cli.worker, conveyor.worker.worker, conveyor.store.postgres_async, conveyor.broker.rabbitmq
from conveyor.embedded import together
from conveyor.service import TaskService

assert together(object(), object()) is None
print(sorted(m for m in sys.modules if "sqlite" in m))
"""


def test_a_distributed_worker_does_not_load_sqlite() -> None:
    done = subprocess.run([sys.executable, "-c", PROBE], cwd=REPO_ROOT, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]", done.stdout


def test_the_embedded_store_and_broker_on_one_file_still_go_together(tmp_path: Path) -> None:
    from conveyor.broker.sqlite import SqliteBroker
    from conveyor.embedded import SqliteTogether, together
    from conveyor.store.sqlite import SqliteStore

    url = f"sqlite:///{tmp_path}/c.db"
    store, broker = SqliteStore(url), SqliteBroker(url)
    try:
        assert isinstance(together(store, broker), SqliteTogether)
    finally:
        broker.close()
        store.close()
