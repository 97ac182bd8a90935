"""Where things are: the services' URLs, the peers' virtualenv (made on first use), machine
and server versions, and the per-case PostgreSQL schemas and AMQP queues cleaned up after."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import os
import platform
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import psycopg

BENCH = Path(__file__).resolve().parent.parent
PEERS_VENV = BENCH / ".peers" / "venv"
PEERS_PYTHON = str(PEERS_VENV / "bin" / "python")
REQUIREMENTS = BENCH / "peers" / "requirements.txt"

AMQP = "amqp://guest:guest@127.0.0.1:5672/"
PG = "postgresql://postgres@127.0.0.1:5432/test"
REDIS_DB = 9  # Celery's results go to this Redis database; its keys are deleted after each case
REDIS = f"redis://127.0.0.1:6379/{REDIS_DB}"
SERVICES = {"RabbitMQ": 5672, "PostgreSQL": 5432, "Redis": 6379}


def log(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


def ensure_peers_venv() -> None:
    """Create bench/.peers/venv and install the peers when requirements.txt changed."""
    stamp = PEERS_VENV / ".installed"
    digest = hashlib.sha256(REQUIREMENTS.read_bytes()).hexdigest()
    if stamp.exists() and stamp.read_text() == digest:
        return
    log(f"setting up the peers' virtualenv in {PEERS_VENV} (once)")
    if not (PEERS_VENV / "bin" / "python").exists():
        subprocess.run([sys.executable, "-m", "venv", str(PEERS_VENV)], check=True)
    subprocess.run([PEERS_PYTHON, "-m", "pip", "install", "-q", "--upgrade", "pip"], check=True)
    subprocess.run([PEERS_PYTHON, "-m", "pip", "install", "-q", "-r", str(REQUIREMENTS)], check=True)
    stamp.write_text(digest)


def base_env(record_dir: Path, queue: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("CONVEYOR_", "BENCH_"))}
    env.update(PYTHONPATH=str(BENCH), BENCH_RECORD_DIR=str(record_dir), BENCH_QUEUE=queue,
               PYTHONUNBUFFERED="1")
    return env


def wait_for_services(timeout_s: float = 90.0) -> None:
    """Block until RabbitMQ, PostgreSQL and Redis accept connections (another user of this
    machine may be restarting one); raise after ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    for name, port in SERVICES.items():
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=2).close()
                break
            except OSError as exc:
                if time.monotonic() > deadline:
                    raise RuntimeError(f"{name} on 127.0.0.1:{port} is not reachable") from exc
                time.sleep(1.0)


def pg_url(schema: str) -> str:
    return f"{PG}?options=-csearch_path%3D{schema}"


def create_schema(schema: str, migrate: bool) -> None:
    with psycopg.connect(PG, autocommit=True) as conn:
        conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')
        conn.execute(f'CREATE SCHEMA "{schema}"')
    if migrate:  # once here, not raced by several workers starting together
        from conveyor.store.postgres import PostgresStore

        PostgresStore(pg_url(schema)).close()


def drop_schema(schema: str) -> None:
    with psycopg.connect(PG, autocommit=True) as conn:
        conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')


def delete_queues(names: list[str], exchanges: tuple[str, ...] = ()) -> None:
    """Delete AMQP queues and exchanges (missing ones are fine)."""
    import aio_pika

    async def go() -> None:
        connection = await aio_pika.connect(AMQP)
        async with connection:
            for name in names:
                channel = await connection.channel()
                with contextlib.suppress(Exception):  # a missing queue closes the channel: fine
                    await channel.queue_delete(name)
            for name in exchanges:
                channel = await connection.channel()
                with contextlib.suppress(Exception):
                    await channel.exchange_delete(name)

    asyncio.run(go())


def machine_info() -> dict[str, Any]:
    info: dict[str, Any] = {"cores": os.cpu_count(), "python": platform.python_version(),
                            "platform": platform.platform()}
    meminfo = Path("/proc/meminfo").read_text().split()
    info["ram_gib"] = round(int(meminfo[meminfo.index("MemTotal:") + 1]) / 2**20, 1)
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            info["cpu"] = line.split(":", 1)[1].strip()
            break
    with psycopg.connect(PG) as conn:
        row = conn.execute("SHOW server_version").fetchone()
        info["postgresql"] = row[0] if row else "?"
    from importlib import metadata

    info["conveyor"] = metadata.version("conveyor")
    try:
        out = subprocess.run([PEERS_PYTHON, "-m", "peers.admin", "info"], capture_output=True, text=True,
                             env={**os.environ, "PYTHONPATH": str(BENCH)}, timeout=60, check=True).stdout
        info.update(json.loads(out))
    except (subprocess.SubprocessError, json.JSONDecodeError) as exc:
        info["peers_info_error"] = repr(exc)
    return info
