"""Settings: defaults run the embedded mode with nothing to install.

Sources, lowest first: defaults < ``CONVEYOR_*`` environment < explicit overrides (CLI flags,
``Conveyor(...)`` arguments). Resolved once at an entry point and passed down.
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass
from typing import Any

from conveyor.errors import ConfigError

DEFAULT_URL = "sqlite:///conveyor.db"


@dataclass(frozen=True, slots=True)
class Settings:
    broker_url: str = DEFAULT_URL  # CONVEYOR_BROKER_URL
    store_url: str = DEFAULT_URL  # CONVEYOR_STORE_URL
    lease_s: float = 30.0  # CONVEYOR_LEASE_S: a dead node's tasks run again within about this
    heartbeat_s: float = 5.0  # CONVEYOR_HEARTBEAT_S: node heartbeat; lost after 3 silent ones
    max_crashes: int = 3  # CONVEYOR_MAX_CRASHES: node deaths before a task is failed "crashed"
    grace_s: float = 30.0  # CONVEYOR_GRACE_S: shutdown grace for in-flight tasks
    prefetch: int | None = None  # CONVEYOR_PREFETCH: deliveries held beyond the slots (default: concurrency)
    ack_handoff_s: float = 60.0  # CONVEYOR_ACK_HANDOFF_S: see docs/architecture.md ("long tasks")
    outbox_grace_s: float = 30.0  # CONVEYOR_OUTBOX_GRACE_S: an unpublished task is republished after this
    api_token: str | None = None  # CONVEYOR_API_TOKEN

    def with_overrides(self, **overrides: Any) -> Settings:
        return dataclasses.replace(self, **{k: v for k, v in overrides.items() if v is not None})


def load(environ: dict[str, str] | None = None, **overrides: Any) -> Settings:
    env = os.environ if environ is None else environ
    values: dict[str, Any] = {}
    for f in dataclasses.fields(Settings):
        raw = env.get(f"CONVEYOR_{f.name.upper()}")
        if raw is None or raw == "":
            continue
        try:
            values[f.name] = _convert(f.type, raw)
        except ValueError as exc:
            raise ConfigError(f"CONVEYOR_{f.name.upper()}={raw!r}: {exc}") from exc
    return Settings(**values).with_overrides(**overrides)


def _convert(type_name: object, raw: str) -> Any:
    text = str(type_name)
    if text.startswith("float"):
        return float(raw)
    if text.startswith("int"):
        return int(raw)
    return raw
