"""Both worker implementations pass the conformance kit (protocol/conformance/): every fixture's
task message runs or is dead-lettered with its reason, and every claim scenario ends as the kit
says, with the worker started as a real process on RabbitMQ and PostgreSQL. One run per worker
(a module-scoped fixture) feeds one test per case, so a failure names its case."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conformance.kit import KIT_DIR, REPO_ROOT, runner
from tests.conftest import POSTGRES_URL, RABBITMQ_URL, require_service
from tests.integration.conftest import rabbitmqctl

pytestmark = [pytest.mark.integration, pytest.mark.timeout(180)]

PHP_WORKER = REPO_ROOT / "clients" / "php" / "tests" / "conformance" / "worker.php"
CASES = [c["name"] for c in runner.load("messages")] + [c["name"] for c in runner.load("claims")]

def php_binary() -> str:
    php = shutil.which("php")
    if php is None:
        if os.environ.get("CI"):
            pytest.fail("php is not installed (CI requires it: scripts/install-debian-packages.sh)")
        pytest.skip("php is not installed")
    return php


def worker_command(language: str) -> list[str]:
    if language == "python":
        return [sys.executable, "-m", "conveyor", "worker", "conformance_app", "--queues", "conformance",
                "--concurrency", "4", "--node-id", f"conformance-py-{uuid.uuid4().hex[:4]}"]
    return [php_binary(), str(PHP_WORKER)]


def delete_vhost(vhost: str) -> None:
    """Delete the run's vhost; rabbitmqctl sometimes fails while the worker's connections close."""
    for attempt in range(3):
        try:
            rabbitmqctl("delete_vhost", vhost)
            return
        except subprocess.CalledProcessError:
            if attempt == 2:
                raise
            time.sleep(1.0)


@pytest.fixture(scope="module", params=["python", "php"])
def results(request: pytest.FixtureRequest) -> Iterator[tuple[str, dict[str, list[str]]]]:
    language = str(request.param)
    command = worker_command(language)
    require_service("RabbitMQ", "127.0.0.1", 5672)
    require_service("PostgreSQL", "127.0.0.1", 5432)
    import psycopg

    vhost = f"conveyor-conformance-{uuid.uuid4().hex[:8]}"
    schema = f"t_{uuid.uuid4().hex[:12]}"
    rabbitmqctl("add_vhost", vhost)
    try:
        rabbitmqctl("set_permissions", "-p", vhost, "guest", ".*", ".*", ".*")
        with psycopg.connect(POSTGRES_URL, autocommit=True) as conn:
            conn.execute(f'CREATE SCHEMA "{schema}"')
        amqp = RABBITMQ_URL.rstrip("/") + "/" + vhost
        store = f"{POSTGRES_URL}?options=-csearch_path%3D{schema}"
        env = {"PYTHONPATH": os.pathsep.join([str(KIT_DIR / "workers"), str(REPO_ROOT)]), "PYTHONUNBUFFERED": "1",
               "CONVEYOR_LOG_LEVEL": "INFO"}
        yield language, runner.run_worker_suite(amqp, store, command, env=env, cwd=str(REPO_ROOT), timeout_s=90,
                                                log=lambda text: sys.stderr.write(text + "\n"))
    finally:
        delete_vhost(vhost)
        with psycopg.connect(POSTGRES_URL, autocommit=True) as conn:
            conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')


@pytest.mark.parametrize("case", CASES)
def test_the_worker_passes_the_case(results: tuple[str, dict[str, list[str]]], case: str) -> None:
    language, problems = results
    assert problems[case] == [], f"{language} worker, case {case!r}: {problems[case]}"


def test_the_kit_has_a_case_for_every_fixture() -> None:
    assert len(CASES) == len(set(CASES)) >= 50
    assert Path(KIT_DIR / "README.md").exists()
