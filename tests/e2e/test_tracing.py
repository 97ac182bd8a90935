"""OpenTelemetry spans (optional dependency): a submit in one process and the run in a worker
process join one trace through the message's ``traceparent``."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest

from conveyor.config import Settings
from conveyor.model import TaskStatus
from tests.e2e.conftest import Workers
from tests.processes import wait_for

sdk = pytest.importorskip("opentelemetry.sdk.trace")
from opentelemetry import trace  # noqa: E402
from opentelemetry.sdk.trace import TracerProvider  # noqa: E402
from opentelemetry.sdk.trace.export import SimpleSpanProcessor  # noqa: E402
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter  # noqa: E402


@pytest.fixture(scope="module")
def exporter() -> Iterator[InMemorySpanExporter]:
    memory = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(memory))
    trace.set_tracer_provider(provider)  # once per process: OpenTelemetry refuses a second one
    yield memory


def test_submit_queue_wait_and_run_spans_share_one_trace(workers: Workers, settings: Settings, tmp_path: Path,
                                                        exporter: InMemorySpanExporter) -> None:
    trace_file = tmp_path / "spans.jsonl"
    workers.start("tests.e2e.apps.traced_app", node_id="traced", extra_env={"TRACE_FILE": str(trace_file)})
    from tests.e2e.apps import traced_app

    traced_app.app.close()
    traced_app.app.use_settings(settings)
    try:
        handle = traced_app.app.submit("traced.job", {"fail_first": True})
        assert handle.wait(timeout=20).status is TaskStatus.SUCCEEDED
    finally:
        traced_app.app.close()
    submit = next(s for s in exporter.get_finished_spans() if s.name == "conveyor submit traced.job")
    trace_id = f"{submit.context.trace_id:032x}"

    def worker_spans() -> list[dict[str, Any]] | None:
        if not trace_file.exists():
            return None
        spans = [orjson.loads(line) for line in trace_file.read_bytes().splitlines()]
        return spans if sum(s["name"] == "conveyor run traced.job" for s in spans) == 2 else None

    spans = wait_for(worker_spans, 10, "the worker's spans")
    assert {s["trace_id"] for s in spans} == {trace_id}
    first_run, second_run = [s for s in spans if s["name"] == "conveyor run traced.job"]
    waits = [s for s in spans if s["name"] == "conveyor queue wait traced.job"]
    assert first_run["parent_id"] == f"{submit.context.span_id:016x}"
    assert second_run["parent_id"] == first_run["span_id"], "the retry was published from inside the first run"
    assert first_run["links"] == [waits[0]["span_id"]]
    assert first_run["attributes"]["conveyor.task.id"] == str(handle.id)
    assert (first_run["attributes"]["conveyor.attempt"], second_run["attributes"]["conveyor.attempt"]) == (1, 2)
