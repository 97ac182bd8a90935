"""A worker app that configures OpenTelemetry (as a user's app would) and writes every
finished span as one JSON line to ``$TRACE_FILE``."""

from __future__ import annotations

import os
from collections.abc import Sequence

import orjson
from opentelemetry import trace
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor, SpanExporter, SpanExportResult

from conveyor import Conveyor


class FileExporter(SpanExporter):
    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        with open(os.environ["TRACE_FILE"], "ab") as out:
            for span in spans:
                context = span.get_span_context()
                out.write(orjson.dumps({
                    "name": span.name, "trace_id": f"{context.trace_id:032x}", "span_id": f"{context.span_id:016x}",
                    "parent_id": f"{span.parent.span_id:016x}" if span.parent else None,
                    "links": [f"{link.context.span_id:016x}" for link in span.links],
                    "attributes": dict(span.attributes or {}),
                }) + b"\n")
        return SpanExportResult.SUCCESS


provider = TracerProvider()
provider.add_span_processor(SimpleSpanProcessor(FileExporter()))
trace.set_tracer_provider(provider)

app = Conveyor()


@app.task("traced.job", max_attempts=2, retry_backoff_s=0.05, retry_backoff_max_s=0.1)
def job(fail_first: bool = False) -> str:
    from conveyor import current_task

    if fail_first and current_task().attempt == 1:
        raise RuntimeError("first attempt fails")
    return "done"
