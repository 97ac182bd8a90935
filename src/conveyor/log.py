"""Logging setup for entry points only (library modules just call getLogger(__name__)).

Two formats: ``text`` for people and ``json`` (one object a line) for log pipelines. Every
record gets the task context it was logged in (``task_id``, ``type``, ``queue``, ``node``):
the worker binds it around each task with ``bind(...)``, and binds ``node`` for the whole
process with ``bind_process(node=...)``; an ``extra=`` on the call wins. Both formats mask
credentials (URL passwords, ``password=...``) in every message, whoever logged it.
"""

from __future__ import annotations

import contextvars
import logging
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import orjson

from conveyor.config import mask_secrets

CONTEXT_KEYS = ("task_id", "type", "queue", "node")
_EXTRA_KEYS = ("worker", "action")  # older extra= names, kept in JSON output

_context: contextvars.ContextVar[dict[str, str] | None] = contextvars.ContextVar("conveyor_log_context", default=None)
_process: dict[str, str] = {}


@contextmanager
def bind(**fields: object) -> Iterator[None]:
    """Attach ``fields`` (task_id, type, queue, node) to every record logged inside the block."""
    token = _context.set({**(_context.get() or {}), **{k: str(v) for k, v in fields.items() if v is not None}})
    try:
        yield
    finally:
        _context.reset(token)


def set_fields(**fields: object) -> None:
    """Attach ``fields`` to the records of the current context from now on (for a context that
    is run once, such as a handler's ``contextvars.Context``)."""
    _context.set({**(_context.get() or {}), **{k: str(v) for k, v in fields.items() if v is not None}})


def bind_process(**fields: object) -> None:
    """Attach ``fields`` to every record of this process (a worker's node id)."""
    _process.update({k: str(v) for k, v in fields.items() if v is not None})


def context_of(record: logging.LogRecord) -> dict[str, str]:
    """The record's context fields: process-wide, then the bound block, then ``extra=``."""
    fields = {**_process, **(_context.get() or {})}
    for key in (*CONTEXT_KEYS, *_EXTRA_KEYS):
        value = getattr(record, key, None)
        if value is not None:
            fields[key] = str(value)
    if "node" not in fields and "worker" in fields:
        fields["node"] = fields["worker"]
    return fields


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        data: dict[str, Any] = {
            "at": self.formatTime(record), "level": record.levelname, "logger": record.name,
            "message": mask_secrets(record.getMessage()),
        }
        context = context_of(record)
        for key in CONTEXT_KEYS:
            data[key] = context.get(key)
        for key in _EXTRA_KEYS:
            if key in context:
                data[key] = context[key]
        if record.exc_info:
            data["exc"] = mask_secrets(self.formatException(record.exc_info))
        return orjson.dumps(data).decode()


class TextFormatter(logging.Formatter):
    """``time level logger: message [task=... type=... queue=... node=...]``, secrets masked."""

    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)-7s %(name)s: %(message)s")

    def format(self, record: logging.LogRecord) -> str:
        text = super().format(record)
        context = context_of(record)
        shown = " ".join(f"{key}={context[key]}" for key in CONTEXT_KEYS if key in context and key != "node")
        return mask_secrets(f"{text} [{shown}]" if shown else text)


def configure(level: str = "INFO", fmt: str = "text") -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter() if fmt == "json" else TextFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    logging.getLogger("httpx").setLevel(max(logging.WARNING, root.level))  # one line per request otherwise
