"""Flow control from the shell (docs/flow-control.md), run as a user would: workflows, limits,
unique submits and fan-outs through ``python -m conveyor`` subprocesses on the embedded default."""

from __future__ import annotations

from pathlib import Path

import orjson
import pytest

from conveyor.flow.routing import node_queue
from conveyor.model import NodeInfo
from tests.e2e.conftest import Workers
from tests.e2e.test_cli import conveyor, json_out

pytestmark = pytest.mark.timeout(60)


def test_a_workflow_is_submitted_from_a_file_shown_and_cancelled(workers: Workers, tmp_path: Path) -> None:
    spec = tmp_path / "wf.json"
    spec.write_bytes(orjson.dumps({"name": "nightly", "steps": [
        {"name": "dump", "type": "db.dump"}, {"name": "upload", "type": "s3.put", "after": "dump"}]}))

    submitted = json_out(conveyor(workers, "--json", "workflow", "submit", str(spec)))
    assert (submitted["name"], submitted["status"]) == ("nightly", "running")
    assert {s["name"]: s["status"] for s in submitted["steps"]} == {"dump": "queued", "upload": "waiting"}

    shown = conveyor(workers, "workflow", "show", submitted["id"])
    assert shown.returncode == 0, shown.stderr
    assert "nightly" in shown.stdout and "upload" in shown.stdout and "waiting" in shown.stdout
    cancelled = json_out(conveyor(workers, "--json", "workflow", "cancel", submitted["id"]))
    assert cancelled["status"] == "cancelled"
    listed = json_out(conveyor(workers, "--json", "workflows"))
    assert [w["id"] for w in listed["workflows"]] == [submitted["id"]]


def test_a_bad_workflow_file_is_a_usage_error(workers: Workers, tmp_path: Path) -> None:
    spec = tmp_path / "bad.json"
    spec.write_text('{"steps": [{"name": "a", "type": "t", "after": "a"}]}')
    result = conveyor(workers, "workflow", "submit", str(spec))
    assert result.returncode == 2 and "cycle" in result.stderr


def test_limits_are_set_listed_and_removed(workers: Workers) -> None:
    assert conveyor(workers, "limit", "set", "email.send", "--rate", "100/m", "--key", "tenant").returncode == 0
    assert conveyor(workers, "limit", "set", "gpu.render", "--concurrency", "2").returncode == 0
    limits = json_out(conveyor(workers, "--json", "limits"))["limits"]
    assert [(x["name"], x["kind"], x["source"]) for x in limits] == [
        ("email.send", "rate", "manual"), ("gpu.render", "concurrency", "manual")]
    table = conveyor(workers, "limits")
    assert "1.66667/s burst 1" in table.stdout and "2 running" in table.stdout

    both = conveyor(workers, "limit", "set", "x", "--rate", "1/s", "--concurrency", "1")
    assert both.returncode == 2 and "exactly one" in both.stderr
    assert conveyor(workers, "limit", "rm", "gpu.render", "--kind", "concurrency").returncode == 0
    assert conveyor(workers, "limit", "rm", "gpu.render", "--kind", "concurrency").returncode == 1


def test_submit_with_a_unique_key_returns_the_waiting_task(workers: Workers) -> None:
    first = json_out(conveyor(workers, "--json", "submit", "report.build", "--unique-key", "r1"))
    again = json_out(conveyor(workers, "--json", "submit", "report.build", "--unique-key", "r1"))
    assert again["id"] == first["id"] and first["flow"] == {"unique_key": "r1"}


def test_broadcast_and_shard_need_live_nodes(workers: Workers) -> None:
    refused = conveyor(workers, "broadcast", "cache.flush")
    assert refused.returncode == 2 and "no live node" in refused.stderr
    store = workers.store()
    at = store.now()
    for name in ("n1", "n2"):
        store.upsert_node(NodeInfo(id=name, host="h", pid=1, queues=("default", node_queue(name)), concurrency=1,
                                   started_at=at, last_heartbeat=at))
    cast = json_out(conveyor(workers, "--json", "broadcast", "cache.flush", "--params", '{"all": true}'))
    assert sorted(s["name"] for s in cast["steps"]) == ["node:n1", "node:n2"]
    shards = json_out(conveyor(workers, "--json", "shard", "index.part", "--shards", "3"))
    assert [s["shard"] for s in shards["steps"]] == [[0, 3], [1, 3], [2, 3]]
