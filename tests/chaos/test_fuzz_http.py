"""HTTP fuzzing (issue 11): schemathesis generates requests for every operation of the published
OpenAPI spec (docs/openapi.json, held current by tests/e2e/test_openapi.py), valid and invalid
ones, and sends them to a real ``conveyor scheduler --http`` on RabbitMQ + PostgreSQL (own vhost
and schema) with ``CONVEYOR_API_TOKEN`` set: once with the token, once without. No answer may be
a server error (schemathesis's ``not_a_server_error``); unauthenticated requests to a secured
operation get 401. The console's HTML forms are not in the spec, so not fuzzed here.
"""

from __future__ import annotations

import time
import uuid
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import quote

import psycopg
import pytest
import schemathesis
from hypothesis import HealthCheck, settings
from schemathesis.checks import not_a_server_error
from schemathesis.generation import GenerationMode

from tests.chaos.center import Center
from tests.chaos.harness import Tally, scale
from tests.conftest import POSTGRES_URL, RABBITMQ_URL, require_service
from tests.integration.conftest import Cluster, rabbitmqctl

pytestmark = [pytest.mark.chaos, pytest.mark.integration, pytest.mark.timeout(300)]

SPEC = Path(__file__).resolve().parents[2] / "docs" / "openapi.json"
TOKEN = "fuzz-" + uuid.uuid4().hex
schema = schemathesis.openapi.from_path(SPEC)
schema.config.generation.update(modes=[GenerationMode.POSITIVE, GenerationMode.NEGATIVE])
COUNTS: Counter[str] = Counter()


@pytest.fixture(scope="module")
def api(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Center]:
    """One scheduler with its HTTP API for the module, on its own vhost and schema."""
    require_service("RabbitMQ", "127.0.0.1", 5672)
    require_service("PostgreSQL", "127.0.0.1", 5432)
    name = f"fuzz_{uuid.uuid4().hex[:10]}"
    rabbitmqctl("add_vhost", name)
    with psycopg.connect(POSTGRES_URL, autocommit=True) as conn:
        conn.execute(f'CREATE SCHEMA "{name}"')
    center = None
    try:
        rabbitmqctl("set_permissions", "-p", name, "guest", ".*", ".*", ".*")
        cluster = Cluster(tmp_path_factory.mktemp("fuzz-http"), RABBITMQ_URL.rstrip("/") + "/" + quote(name, safe=""),
                          f"{POSTGRES_URL}{'&' if '?' in POSTGRES_URL else '?'}options=-csearch_path%3D{name}")
        center = Center(cluster, http=True, extra_env={"CONVEYOR_API_TOKEN": TOKEN})
        center.wait_ready()
        started = time.monotonic()
        yield center
        assert center.alive(), f"the scheduler died:\n{center.output()[-5000:]}"
        Tally(scenario="fuzz-http", submitted=COUNTS["requests"],
              succeeded=COUNTS["requests"] - COUNTS["server_errors"], failed=COUNTS["server_errors"],
              lost=0, ran_twice=0, stuck=0, time_s=time.monotonic() - started,
              notes={"operations": len(list(schema.get_all_operations())),
                     **{k: v for k, v in sorted(COUNTS.items()) if k not in ("requests", "server_errors")}}).publish()
    finally:
        if center is not None:
            center.close()
        rabbitmqctl("delete_vhost", name)
        with psycopg.connect(POSTGRES_URL, autocommit=True) as conn:
            conn.execute(f'DROP SCHEMA "{name}" CASCADE')


def fuzz_settings(examples: int) -> settings:
    return settings(max_examples=examples, deadline=None, database=None, suppress_health_check=list(HealthCheck))


@schema.parametrize()
@fuzz_settings(scale(15, 400))
def test_authenticated_requests_get_no_server_error(case: schemathesis.Case, api: Center) -> None:
    COUNTS["requests"] += 1
    response = case.call(base_url=api.url, headers={"Authorization": f"Bearer {TOKEN}"}, timeout=30)
    COUNTS[f"status_{response.status_code // 100}xx"] += 1
    COUNTS["server_errors"] += response.status_code >= 500
    case.validate_response(response, checks=[not_a_server_error])


@schema.parametrize()
@fuzz_settings(scale(4, 50))
def test_unauthenticated_requests_get_no_server_error_and_401_where_secured(
        case: schemathesis.Case, api: Center) -> None:
    COUNTS["requests"] += 1
    COUNTS["unauthenticated"] += 1
    response = case.call(base_url=api.url, timeout=30)
    COUNTS["server_errors"] += response.status_code >= 500
    assert response.status_code < 500, f"{case.method} {case.formatted_path}: {response.status_code}"
    if case.operation.definition.raw.get("security"):
        assert response.status_code == 401, f"{case.method} {case.formatted_path}: {response.status_code}"
