"""Settings: defaults run the embedded mode with nothing to install.

Sources, lowest first: defaults < ``CONVEYOR_*`` environment < explicit overrides (CLI flags,
``Conveyor(...)`` arguments). Resolved once at an entry point and passed down.

Every setting is described once, here: the ``Settings`` fields carry their environment name and
help text, and ``COMMAND_SETTINGS`` lists those that only a command reads (``--queues``, ...).
``settings_table()`` renders both; ``docs/settings.md`` is generated from it (a test checks it is
current) and ``conveyor --help`` prints it.
"""

from __future__ import annotations

import dataclasses
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

from conveyor.errors import ConfigError

DEFAULT_URL = "sqlite:///conveyor.db"
DAY_S = 86400.0


def _setting(default: Any, help: str, *, env: str | None = None, shown: str | None = None,
             secret: bool = False) -> Any:
    """A Settings field with its documentation (``env`` defaults to CONVEYOR_<NAME>)."""
    return field(default=default, metadata={"help": help, "env": env, "shown": shown, "secret": secret})


@dataclass(frozen=True, slots=True)
class Settings:
    broker_url: str = _setting(DEFAULT_URL, "Broker: `sqlite:///PATH` (embedded) or `amqp://user:pass@host:5672/vhost`.",
                               secret=True)
    store_url: str = _setting(DEFAULT_URL, "Store: `sqlite:///PATH` (embedded) or `postgresql://user@host/db`.",
                              secret=True)
    lease_s: float = _setting(30.0, "Seconds a running task's lease lasts; a dead node's tasks run again "
                                    "within about this.")
    heartbeat_s: float = _setting(5.0, "Seconds between node heartbeats; a node silent for 3 is lost.")
    max_crashes: int = _setting(3, "Node deaths while running a task before it is failed as `crashed`.")
    grace_s: float = _setting(30.0, "Seconds in-flight tasks get to finish on SIGTERM/SIGINT.")
    prefetch: int | None = _setting(None, "Deliveries a worker holds beyond its slots (default: its concurrency).",
                                    shown="concurrency")
    ack_handoff_s: float = _setting(60.0, "RabbitMQ: a task running longer has its delivery acked early and "
                                          "the store lease alone guards it (docs/architecture.md).")
    outbox_grace_s: float = _setting(30.0, "Seconds after which a task stored but not yet published is "
                                           "published again (the outbox; docs/architecture.md).")
    api_token: str | None = _setting(None, "Token of the HTTP API and dashboard (bearer header or sign-in). "
                                           "Required to serve on a non-loopback address.", secret=True)
    retention_s: float = _setting(7 * DAY_S, "How long finished tasks and their timelines are kept: seconds "
                                             "or 90s, 30m, 12h, 7d. The scheduler leader prunes older ones.",
                                  env="CONVEYOR_RETENTION", shown="7d")
    node_retention_s: float = _setting(DAY_S, "How long lost and stopped nodes stay listed (same format).",
                                       env="CONVEYOR_NODE_RETENTION", shown="1d")

    def with_overrides(self, **overrides: Any) -> Settings:
        return dataclasses.replace(self, **{k: v for k, v in overrides.items() if v is not None})


@dataclass(frozen=True, slots=True)
class SettingDoc:
    env: str
    default: str
    where: str
    help: str


# Read by one command only (as the default of a flag); documented beside the Settings fields.
COMMAND_SETTINGS: tuple[SettingDoc, ...] = (
    SettingDoc("CONVEYOR_LOG_LEVEL", "INFO", "every command", "DEBUG, INFO, WARNING or ERROR."),
    SettingDoc("CONVEYOR_LOG_FORMAT", "text", "every command",
               "`text`, or `json`: one object a line with task_id, type, queue and node when known."),
    SettingDoc("CONVEYOR_API", "", "operator commands",
               "URL of a scheduler's HTTP API (`--api`): talk to it instead of the store and broker."),
    SettingDoc("CONVEYOR_QUEUES", "default", "worker", "Comma-separated queues to consume."),
    SettingDoc("CONVEYOR_CONCURRENCY", "4", "worker", "Tasks run at once."),
    SettingDoc("CONVEYOR_POOL", "thread", "worker", "`thread` or `process` (CPU-bound, hard timeout)."),
    SettingDoc("CONVEYOR_NODE_ID", "host-pid-rand", "worker", "Node id."),
    SettingDoc("CONVEYOR_QUEUE_TYPE", "classic", "RabbitMQ", "`classic` or `quorum` (clusters)."),
    SettingDoc("CONVEYOR_HTTP", "127.0.0.1:8000", "scheduler", "Serve the HTTP API and dashboard here."),
    SettingDoc("CONVEYOR_APP", "", "scheduler", "MODULE[:APP] whose @app.periodic schedules are declared."),
    SettingDoc("CONVEYOR_SCHEDULER_LEASE_S", "3", "scheduler", "Leader lease TTL, seconds."),
    SettingDoc("CONVEYOR_SCHEDULER_RENEW_S", "1", "scheduler", "Leader lease renewal period, seconds."),
    SettingDoc("CONVEYOR_SCHEDULER_ID", "host-pid-rand", "scheduler", "Replica id in the lease row."),
    SettingDoc("CONVEYOR_MISFIRE_GRACE_S", "2 * lease + 1", "scheduler", "Fires later than this are misfires."),
)


def env_name(f: dataclasses.Field[Any]) -> str:
    return f.metadata.get("env") or f"CONVEYOR_{f.name.upper()}"


def settings_table() -> list[SettingDoc]:
    """Every setting: the Settings fields (read by every process), then the command ones."""
    rows = []
    for f in dataclasses.fields(Settings):
        shown = f.metadata.get("shown")
        if shown is None:
            shown = "" if f.default is None else (f"{f.default:g}" if isinstance(f.default, float) else str(f.default))
        rows.append(SettingDoc(env_name(f), shown, "all", f.metadata["help"]))
    return rows + list(COMMAND_SETTINGS)


def settings_markdown() -> str:
    """docs/settings.md, generated (``python -m conveyor.config > docs/settings.md``)."""
    lines = [
        "# Settings",
        "",
        "Generated from `src/conveyor/config.py` (`python -m conveyor.config > docs/settings.md`);",
        "a test fails when this file is stale. Every setting is an environment variable; a command",
        "line flag, where there is one, wins over it. Secrets (URLs with passwords, the API token)",
        "belong in the environment, never in code. Durations take seconds or `90s`, `30m`, `12h`, `7d`.",
        "",
        "| variable | default | read by | meaning |",
        "|---|---|---|---|",
    ]
    for row in settings_table():
        default = f"`{row.default}`" if row.default else ""
        lines.append(f"| `{row.env}` | {default} | {row.where} | {row.help} |")
    return "\n".join(lines) + "\n"


def settings_help() -> str:
    """The settings as plain text for ``--help``."""
    width = max(len(r.env) for r in settings_table())
    return "\n".join(f"{r.env.ljust(width)}  {r.help.replace('`', '')}" + (f" [{r.default}]" if r.default else "")
                     for r in settings_table())


def load(environ: Mapping[str, str] | None = None, **overrides: Any) -> Settings:
    env = os.environ if environ is None else environ
    values: dict[str, Any] = {}
    for f in dataclasses.fields(Settings):
        name = env_name(f)
        raw = env.get(name)
        if raw is None or raw == "":
            continue
        try:
            values[f.name] = _convert(f.name, f.type, raw)
        except ValueError as exc:
            shown = "***" if f.metadata.get("secret") else repr(raw)
            raise ConfigError(f"{name}={shown}: {exc}") from exc
    return Settings(**values).with_overrides(**overrides)


_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([smhd]?)\s*$")
_UNIT_S = {"": 1.0, "s": 1.0, "m": 60.0, "h": 3600.0, "d": DAY_S}


def parse_duration(text: str) -> float:
    """``"90"``, ``"90s"``, ``"30m"``, ``"12h"``, ``"7d"`` -> seconds."""
    match = _DURATION.match(text)
    if match is None:
        raise ValueError("use seconds or a number with s, m, h or d (e.g. 7d)")
    return float(match.group(1)) * _UNIT_S[match.group(2)]


def _convert(name: str, type_name: object, raw: str) -> Any:
    if name in ("retention_s", "node_retention_s"):
        return parse_duration(raw)
    text = str(type_name)
    if text.startswith("float"):
        return float(raw)
    if text.startswith("int"):
        return int(raw)
    return raw


# -- URLs and secrets -----------------------------------------------------------------------------
_URL_PASSWORD = re.compile(r"(?P<head>[a-zA-Z][a-zA-Z0-9+.-]*://[^:/@\s'\"]*:)(?P<secret>[^@\s'\"]+)(?=@)")
_KEY_PASSWORD = re.compile(r"(?P<head>\bpassword\s*=\s*)(?P<secret>'[^']*'|\S+)", re.IGNORECASE)


def mask_url(url: str) -> str:
    """``amqp://user:secret@host/`` -> ``amqp://user:***@host/``; other text unchanged."""
    return mask_secrets(url)


def mask_secrets(text: str) -> str:
    """Every URL password (``scheme://user:PASSWORD@``) and ``password=...`` in ``text`` masked."""
    text = _URL_PASSWORD.sub(lambda m: m.group("head") + "***", text)
    return _KEY_PASSWORD.sub(lambda m: m.group("head") + "***", text)


def url_kind(url: str) -> str:
    """``embedded`` (sqlite), ``network`` (amqp/postgresql) or ``unknown``."""
    scheme = urlsplit(url).scheme
    if scheme == "sqlite":
        return "embedded"
    if scheme in ("amqp", "amqps", "postgresql", "postgres"):
        return "network"
    return "unknown"


def check_deployment(settings: Settings) -> None:
    """Refuse a broker and store that cannot work together: one embedded SQLite file and one
    network service. Tasks would sit in a file that workers on other machines never read (or
    their records in a file the submitters never read)."""
    broker, store = url_kind(settings.broker_url), url_kind(settings.store_url)
    if {broker, store} != {"embedded", "network"}:
        return
    local, remote = ("broker", "store") if broker == "embedded" else ("store", "broker")
    local_url = settings.broker_url if local == "broker" else settings.store_url
    raise ConfigError(
        f"the {remote} is a network service but the {local} is the local SQLite file {mask_url(local_url)}: "
        f"workers on other machines would never see it. Set CONVEYOR_{local.upper()}_URL too "
        f"(distributed mode: amqp://... and postgresql://...), or use SQLite for both (embedded mode).")


if __name__ == "__main__":  # pragma: no cover - developer tool
    print(settings_markdown(), end="")
