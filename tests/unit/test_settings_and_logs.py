"""Settings reference, secret masking, deployment checks and the log formats."""

from __future__ import annotations

import logging
import re
from pathlib import Path

import orjson
import pytest

from conveyor import config, log
from conveyor.config import Settings, check_deployment, mask_secrets, parse_duration, settings_markdown
from conveyor.errors import ConfigError

ROOT = Path(__file__).resolve().parents[2]


def test_docs_settings_md_is_generated_from_the_table() -> None:
    committed = (ROOT / "docs" / "settings.md").read_text(encoding="utf-8")
    assert committed == settings_markdown(), "stale: run .venv/bin/python -m conveyor.config > docs/settings.md"


def test_every_conveyor_variable_the_code_reads_is_documented() -> None:
    documented = {row.env for row in config.settings_table()}
    used = set()
    for path in (ROOT / "src" / "conveyor").rglob("*.py"):
        used.update(re.findall(r"CONVEYOR_[A-Z_]+[A-Z]", path.read_text(encoding="utf-8")))
    assert used - documented == set()


def test_durations_take_seconds_or_a_unit() -> None:
    assert [parse_duration(t) for t in ("90", "90s", "30m", "12h", "7d", "1.5h")] == [
        90, 90, 1800, 43200, 7 * 86400, 5400]
    with pytest.raises(ValueError):
        parse_duration("7 days")


def test_retention_comes_from_the_environment() -> None:
    settings = config.load({"CONVEYOR_RETENTION": "2d", "CONVEYOR_NODE_RETENTION": "6h"})
    assert (settings.retention_s, settings.node_retention_s) == (2 * 86400, 6 * 3600)
    assert config.load({}).retention_s == 7 * 86400
    with pytest.raises(ConfigError, match="CONVEYOR_RETENTION"):
        config.load({"CONVEYOR_RETENTION": "soon"})


def test_a_bad_secret_setting_does_not_echo_its_value() -> None:
    with pytest.raises(ConfigError) as caught:
        config.load({"CONVEYOR_LEASE_S": "x"})
    assert "'x'" in str(caught.value)


@pytest.mark.parametrize(("text", "masked"), [
    ("unsupported store URL 'postgresq://postgres:secretpw@db/x'", "unsupported store URL 'postgresq://postgres:***@db/x'"),
    ("amqp://u:p%40ss@h:5672/v and postgresql://a:b@c/d", "amqp://u:***@h:5672/v and postgresql://a:***@c/d"),
    ("host=db password=hunter2 user=x", "host=db password=*** user=x"),
    ("postgresql://postgres@127.0.0.1/test", "postgresql://postgres@127.0.0.1/test"),
])
def test_secrets_are_masked_in_any_text(text: str, masked: str) -> None:
    assert mask_secrets(text) == masked


def test_a_network_store_with_the_embedded_broker_is_refused() -> None:
    with pytest.raises(ConfigError, match="CONVEYOR_BROKER_URL"):
        check_deployment(Settings(store_url="postgresql://x@h/db"))
    with pytest.raises(ConfigError, match="CONVEYOR_STORE_URL"):
        check_deployment(Settings(broker_url="amqp://u:secret@h/"))
    check_deployment(Settings())
    check_deployment(Settings(broker_url="amqp://h/", store_url="postgresql://h/db"))


def _record(message: str, **extra: object) -> logging.LogRecord:
    record = logging.LogRecord("conveyor.test", logging.INFO, __file__, 1, message, (), None)
    for key, value in extra.items():
        setattr(record, key, value)
    return record


def test_json_lines_carry_the_task_context_and_mask_secrets() -> None:
    log.bind_process(node="node-7")
    try:
        with log.bind(task_id="t-1", type="email.send", queue="mail"):
            line = orjson.loads(log.JsonFormatter().format(_record("to amqp://u:pw@h/ now")))
        outside = orjson.loads(log.JsonFormatter().format(_record("idle")))
    finally:
        log._process.clear()
    assert (line["task_id"], line["type"], line["queue"], line["node"]) == ("t-1", "email.send", "mail", "node-7")
    assert line["message"] == "to amqp://u:***@h/ now"
    assert (outside["task_id"], outside["node"]) == (None, "node-7")


def test_text_lines_show_the_task_and_an_extra_wins() -> None:
    with log.bind(task_id="t-1", queue="mail"):
        text = log.TextFormatter().format(_record("done", queue="other"))
    assert text.endswith("done [task_id=t-1 queue=other]")
