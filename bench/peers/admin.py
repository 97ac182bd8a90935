"""Small chores in the peers' venv: ``python -m peers.admin info`` prints server and peer
versions as JSON; ``python -m peers.admin redis-clean DB`` deletes Celery's result keys."""

from __future__ import annotations

import json
import os
import sys
from importlib import metadata

PEERS = ["celery", "kombu", "dramatiq", "huey", "pika", "aio-pika", "redis", "SQLAlchemy", "pgqueuer", "asyncpg",
         "uvloop", "procrastinate", "psycopg", "matplotlib"]


def info() -> dict[str, object]:
    import pika
    import redis

    out: dict[str, object] = {"peers": {name: metadata.version(name) for name in PEERS}}
    try:
        url = os.environ.get("BENCH_AMQP_URL", "amqp://guest:guest@127.0.0.1:5672/%2F")
        connection = pika.BlockingConnection(pika.URLParameters(url))
        props = connection._impl.server_properties
        out["rabbitmq"] = props.get("version", b"?").decode() if isinstance(props.get("version"), bytes) \
            else str(props.get("version"))
        connection.close()
    except Exception as exc:
        out["rabbitmq"] = f"unknown ({exc!r})"
    try:
        out["redis"] = redis.Redis(host="127.0.0.1", port=6379).info("server")["redis_version"]
    except Exception as exc:
        out["redis"] = f"unknown ({exc!r})"
    return out


def redis_clean(db: int) -> int:
    import redis

    client = redis.Redis(host="127.0.0.1", port=6379, db=db)
    keys = list(client.scan_iter(match="celery-task-meta-*", count=1000))
    for low in range(0, len(keys), 1000):
        client.delete(*keys[low:low + 1000])
    return len(keys)


def main() -> None:
    if sys.argv[1:2] == ["info"]:
        print(json.dumps(info()))
    elif sys.argv[1:2] == ["redis-clean"]:
        print(json.dumps({"deleted": redis_clean(int(sys.argv[2]))}))
    else:
        raise SystemExit("usage: python -m peers.admin info | redis-clean DB")


if __name__ == "__main__":
    main()
