"""Schedules: fire-time arithmetic (cron in time zones, across DST; intervals), misfire
policies, validation, the lease compare-and-set, and tick idempotency on the embedded store."""

from __future__ import annotations

import warnings
from collections.abc import Iterator
from datetime import datetime
from itertools import pairwise
from typing import Any
from zoneinfo import ZoneInfo

import pytest

from conveyor.broker.sqlite import SqliteBroker
from conveyor.config import Settings
from conveyor.model import NodeInfo, TaskFilter, TaskStatus, now
from conveyor.scheduler.nodewatch import WatchResult, watch_nodes
from conveyor.scheduler.schedule_store import (
    DuplicateSchedule,
    ScheduleNotFound,
    SqliteScheduleStore,
)
from conveyor.scheduler.schedules import InvalidSchedule, Schedule, due_fires
from conveyor.scheduler.service import SchedulerService
from conveyor.service import SubmitRequest, TaskService
from conveyor.store.sqlite import SqliteStore

PARIS = ZoneInfo("Europe/Paris")


def at(year: int, month: int, day: int, hour: int, minute: int, tz: ZoneInfo = PARIS, fold: int = 0) -> float:
    return datetime(year, month, day, hour, minute, tzinfo=tz, fold=fold).timestamp()


def local(ts: float) -> datetime:
    return datetime.fromtimestamp(ts, PARIS)


def cron(expr: str, tz: str = "Europe/Paris", **fields: object) -> Schedule:
    return Schedule(name="s", type="t", cron=expr, timezone=tz, **fields)  # type: ignore[arg-type]


def every(seconds: float, **fields: object) -> Schedule:
    return Schedule(name="s", type="t", interval_s=seconds, **fields)  # type: ignore[arg-type]


# -- cron ----------------------------------------------------------------------------------
def test_cron_next_fire_is_strictly_after_and_in_the_schedules_time_zone() -> None:
    s = cron("0 9 * * *")
    nine = at(2024, 6, 1, 9, 0)
    assert s.next_fire(at(2024, 6, 1, 8, 59)) == nine
    assert s.next_fire(nine) == at(2024, 6, 2, 9, 0)
    assert cron("0 9 * * *", tz="UTC").next_fire(at(2024, 6, 1, 8, 0)) == at(2024, 6, 1, 9, 0, tz=ZoneInfo("UTC"))


def test_a_daily_cron_keeps_its_wall_clock_time_across_the_spring_dst_change() -> None:
    s = cron("0 9 * * *")
    before = s.next_fire(at(2024, 3, 30, 8, 0))
    after = s.next_fire(before)
    assert local(before).hour == local(after).hour == 9
    assert after - before == 23 * 3600  # the day of the change is one hour short


def test_a_wall_time_skipped_by_spring_forward_fires_right_after_the_gap() -> None:
    fire = cron("30 2 * * *").next_fire(at(2024, 3, 30, 12, 0))
    assert (local(fire).hour, local(fire).minute) == (3, 0)
    assert fire == at(2024, 3, 31, 3, 0)


def test_a_fixed_time_job_fires_once_when_fall_back_repeats_its_wall_time() -> None:
    s = cron("30 2 * * *")
    first = s.next_fire(at(2024, 10, 26, 12, 0))
    assert first == at(2024, 10, 27, 2, 30, fold=0)
    assert s.next_fire(first) == at(2024, 10, 28, 2, 30)
    assert s.prev_fire(at(2024, 10, 28, 2, 30)) == first


def test_a_wildcard_job_follows_elapsed_time_through_the_repeated_hour() -> None:
    s = cron("*/30 * * * *")
    t, fires = at(2024, 10, 27, 1, 45), []
    for _ in range(5):
        t = s.next_fire(t)
        fires.append(t)
    assert [b - a for a, b in pairwise(fires)] == [1800.0] * 4


# -- interval ------------------------------------------------------------------------------
def test_interval_fire_times_are_multiples_of_the_interval_since_the_epoch() -> None:
    s = every(10)
    assert s.next_fire(1000.0) == 1010.0
    assert s.next_fire(1003.7) == 1010.0
    assert s.prev_fire(1010.0) == 1000.0
    assert s.prev_fire(1010.5) == 1010.0


# -- planning and misfires -----------------------------------------------------------------
def test_nothing_is_due_before_the_next_fire_time_or_while_disabled() -> None:
    assert due_fires(every(10, next_fire_at=1010.0), 1009.9, grace_s=5) is None
    assert due_fires(every(10, next_fire_at=1010.0, enabled=False), 1020.0, grace_s=5) is None


def test_a_due_fire_is_planned_and_the_next_one_follows() -> None:
    plan = due_fires(every(10, next_fire_at=1010.0), 1010.2, grace_s=5)
    assert plan is not None
    assert (plan.fires, plan.next_fire_at, plan.skipped) == ([1010.0], 1020.0, 0)


def test_fires_late_within_the_grace_are_all_submitted() -> None:
    plan = due_fires(every(1, next_fire_at=100.0), 103.5, grace_s=7)
    assert plan is not None
    assert plan.fires == [100.0, 101.0, 102.0, 103.0]
    assert plan.next_fire_at == 104.0


def test_misfire_skip_fires_only_future_ticks_after_downtime() -> None:
    plan = due_fires(every(10, next_fire_at=1000.0, misfire="skip"), 4995.0, grace_s=5)
    assert plan is not None
    assert plan.fires == []
    assert plan.next_fire_at == 5000.0
    assert plan.skipped == 400


def test_misfire_run_once_fires_one_catch_up_run_for_all_missed_ticks() -> None:
    plan = due_fires(every(10, next_fire_at=1000.0, misfire="run_once"), 5003.0, grace_s=5)
    assert plan is not None
    assert plan.fires == [4990.0, 5000.0]  # 4990 stands for 1000..4990; 5000 is late within the grace
    assert plan.next_fire_at == 5010.0


def test_misfire_run_once_and_in_grace_fires_are_both_kept() -> None:
    plan = due_fires(every(1, next_fire_at=100.0, misfire="run_once"), 120.5, grace_s=2)
    assert plan is not None
    assert plan.fires == [118.0, 119.0, 120.0]  # 118 stands for 100..118


def test_misfire_of_a_cron_schedule_is_planned_by_wall_clock() -> None:
    s = cron("0 * * * *", misfire="run_once", next_fire_at=at(2024, 3, 31, 0, 0))
    plan = due_fires(s, at(2024, 3, 31, 6, 30), grace_s=60)
    assert plan is not None
    assert plan.fires == [at(2024, 3, 31, 6, 0)]
    assert plan.next_fire_at == at(2024, 3, 31, 7, 0)


# -- validation ----------------------------------------------------------------------------
@pytest.mark.parametrize(("fields", "field"), [
    ({"cron": "61 * * * *"}, "cron"),
    ({"cron": "not a cron"}, "cron"),
    ({"cron": "* * * * * *"}, "cron"),  # 6 fields: seconds are not supported
    ({"cron": "0 9 * * *", "timezone": "Mars/Olympus"}, "timezone"),
    ({"cron": "0 9 * * *", "timezone": "../etc/passwd"}, "timezone"),
    ({"cron": "0 9 * * *", "interval_s": 10}, "cron"),
    ({}, "cron"),
    ({"interval_s": 0.5}, "interval_s"),
    ({"interval_s": float("inf")}, "interval_s"),
    ({"interval_s": 10, "misfire": "always"}, "misfire"),
    ({"interval_s": 10, "priority": 10}, "priority"),
    ({"interval_s": 10, "params": [1]}, "params"),
])
def test_invalid_definitions_are_refused_naming_the_field(fields: dict[str, Any], field: str) -> None:
    with pytest.raises(InvalidSchedule) as info:
        Schedule.new("s", "t", **fields)
    assert info.value.field == field


def test_a_bad_name_is_refused() -> None:
    with pytest.raises(InvalidSchedule, match="name"):
        Schedule.new("bad name/with slash", "t", interval_s=5)


def test_a_new_schedule_first_fires_after_its_creation() -> None:
    s = Schedule.new("s", "t", interval_s=60, at=1000.0)
    assert s.next_fire_at == 1020.0


def test_redefining_the_timing_switches_kind_and_restarts_from_now() -> None:
    s = Schedule.new("s", "t", interval_s=60, at=1000.0)
    changed = s.redefine(at=2000.0, cron="0 * * * *")
    assert changed.interval_s is None
    assert changed.next_fire_at == 3600.0
    resumed = s.replace(enabled=False, next_fire_at=1020.0).redefine(at=9000.5, enabled=True)
    assert resumed.next_fire_at == 9060.0  # no catch-up for the paused time


# -- store, lease and tick (embedded SQLite file) ------------------------------------------
@pytest.fixture
def schedules(sqlite_url: str) -> Iterator[SqliteScheduleStore]:
    store = SqliteScheduleStore(sqlite_url)
    yield store
    store.close()


@pytest.fixture
def tasks(sqlite_url: str) -> Iterator[TaskService]:
    store, broker = SqliteStore(sqlite_url), SqliteBroker(sqlite_url)
    yield TaskService(store, broker)
    broker.close()
    store.close()


def test_the_store_refuses_a_duplicate_name_and_reports_an_unknown_one(schedules: SqliteScheduleStore) -> None:
    schedules.create(Schedule.new("a", "t", interval_s=5))
    with pytest.raises(DuplicateSchedule):
        schedules.create(Schedule.new("a", "t", interval_s=9))
    with pytest.raises(ScheduleNotFound):
        schedules.get("b")
    with pytest.raises(ScheduleNotFound):
        schedules.delete("b")
    schedules.delete("a")
    assert schedules.all() == []


def test_the_lease_goes_to_one_holder_until_it_expires_or_is_released(schedules: SqliteScheduleStore) -> None:
    assert schedules.acquire_lease("scheduler", "a", 100.0, 3.0)
    assert not schedules.acquire_lease("scheduler", "b", 101.0, 3.0)
    assert schedules.acquire_lease("scheduler", "a", 102.0, 3.0)  # renewed to 105
    assert not schedules.acquire_lease("scheduler", "b", 104.9, 3.0)
    assert schedules.acquire_lease("scheduler", "b", 105.1, 3.0)  # a stopped renewing
    assert schedules.lease("scheduler") == ("b", 108.1)
    schedules.release_lease("scheduler", "b")
    assert schedules.acquire_lease("scheduler", "a", 105.2, 3.0)


def test_tick_is_idempotent_per_fire_time(schedules: SqliteScheduleStore, tasks: TaskService) -> None:
    schedules.create(Schedule.new("job", "demo.add", params={"a": 1}, interval_s=10, at=995.0))
    service = SchedulerService(schedules, tasks, Settings())
    assert [f.fire_at for f in service.tick(1000.1)] == [1000.0]
    assert service.tick(1000.2) == []  # already advanced
    # A crash before the schedule was advanced: the replayed fire finds its task.
    schedules.update(schedules.get("job").replace(next_fire_at=1000.0))
    replay = service.tick(1000.3)
    assert [(f.fire_at, f.created) for f in replay] == [(1000.0, False)]
    keys = [t.idempotency_key for t in tasks.query(TaskFilter(type="demo.add")).tasks]
    assert keys == ["schedule:job:1000"]
    assert schedules.get("job").last_fired_at == 1000.0


def test_code_declared_schedules_are_upserted_keeping_the_enabled_flag(
        schedules: SqliteScheduleStore, tasks: TaskService) -> None:
    service = SchedulerService(schedules, tasks, Settings())
    spec = {"name": "nightly", "type": "demo.add", "cron": "0 3 * * *", "interval_s": None,
            "timezone": "Europe/Paris", "params": {"a": 1}}
    service.declare([spec])
    schedules.update(schedules.get("nightly").redefine(enabled=False))
    service.declare([{**spec, "cron": "0 4 * * *"}])
    stored = schedules.get("nightly")
    assert (stored.cron, stored.enabled) == ("0 4 * * *", False)


# -- HTTP API ------------------------------------------------------------------------------
@pytest.fixture
def client(sqlite_url: str, tasks: TaskService) -> Iterator[Any]:
    from conveyor.api.app import create_app

    with warnings.catch_warnings():  # starlette asks for httpx2, which is not a dependency
        warnings.simplefilter("ignore")
        from fastapi.testclient import TestClient

    settings = Settings(store_url=sqlite_url, broker_url=sqlite_url)
    with TestClient(create_app(settings, service=tasks)) as test_client:
        yield test_client


def test_the_api_creates_lists_shows_changes_and_deletes_a_schedule(client: Any) -> None:
    created = client.post("/api/v1/schedules", json={"name": "tick", "type": "demo.add", "interval_s": 60,
                                                      "params": {"a": 1}, "misfire": "run_once"})
    assert created.status_code == 201, created.text
    assert created.json()["interval_s"] == 60.0
    assert [s["name"] for s in client.get("/api/v1/schedules").json()["schedules"]] == ["tick"]
    changed = client.patch("/api/v1/schedules/tick", json={"cron": "0 9 * * 1-5", "timezone": "Europe/Paris",
                                                           "enabled": False})
    assert changed.status_code == 200, changed.text
    body = changed.json()
    assert (body["cron"], body["interval_s"], body["enabled"]) == ("0 9 * * 1-5", None, False)
    assert client.get("/api/v1/schedules/tick").json()["timezone"] == "Europe/Paris"
    assert client.delete("/api/v1/schedules/tick").status_code == 204
    assert client.get("/api/v1/schedules/tick").status_code == 404


@pytest.mark.parametrize(("body", "field"), [
    ({"cron": "61 * * * *"}, "cron"),
    ({"cron": "0 9 * * *", "timezone": "Mars/Olympus"}, "timezone"),
    ({"cron": "0 9 * * *", "interval_s": 5}, "cron"),
    ({}, "cron"),
    ({"interval_s": 0.1}, "interval_s"),
    ({"interval_s": 5, "misfire": "always"}, "misfire"),
    ({"interval_s": 5, "params": "x"}, "params"),
])
def test_the_api_refuses_a_bad_schedule_naming_the_field(client: Any, body: dict[str, Any], field: str) -> None:
    response = client.post("/api/v1/schedules", json={"name": "s", "type": "t", **body})
    assert response.status_code == 422, response.text
    assert field in response.json()["error"]["fields"]


def test_the_api_answers_404_for_an_unknown_name_and_409_for_a_taken_one(client: Any) -> None:
    assert client.patch("/api/v1/schedules/nope", json={"enabled": False}).status_code == 404
    assert client.delete("/api/v1/schedules/nope").status_code == 404
    body = {"name": "dup", "type": "t", "interval_s": 5}
    assert client.post("/api/v1/schedules", json=body).status_code == 201
    conflict = client.post("/api/v1/schedules", json=body)
    assert conflict.status_code == 409
    assert conflict.json()["error"]["fields"] == ["name"]
    bad_patch = client.patch("/api/v1/schedules/dup", json={"cron": "nope"})
    assert (bad_patch.status_code, bad_patch.json()["error"]["fields"]) == (422, ["cron"])


# -- CLI -----------------------------------------------------------------------------------
def test_the_cli_adds_lists_and_removes_schedules(sqlite_url: str) -> None:
    import json

    from click.testing import CliRunner

    from conveyor.cli.main import cli
    from conveyor.cli.scheduler import schedule  # noqa: F401 - registers the commands

    def run(*args: str) -> Any:
        return CliRunner().invoke(cli, ["--store", sqlite_url, "--broker", sqlite_url, "--json", *args])

    added = run("schedule", "add", "report", "--type", "reports.daily", "--params", '{"to": "ops"}',
                "--cron", "0 7 * * 1-5", "--tz", "Europe/Paris", "--misfire", "run_once")
    assert added.exit_code == 0, added.output
    assert run("schedule", "add", "tick", "--type", "t", "--every", "30").exit_code == 0
    listed = json.loads(run("schedule", "list").output)
    assert [(s["name"], s["cron"], s["interval_s"]) for s in listed] == [
        ("report", "0 7 * * 1-5", None), ("tick", None, 30.0)]
    assert run("schedule", "rm", "tick").exit_code == 0
    assert [s["name"] for s in json.loads(run("schedule", "list").output)] == ["report"]
    bad = run("schedule", "add", "x", "--type", "t", "--cron", "0 7 * *")
    assert isinstance(bad.exception, InvalidSchedule) and bad.exception.field == "cron"
    assert run("schedule", "add", "x", "--type", "t", "--cron", "0 7 * * *", "--every", "5").exit_code == 2
    assert isinstance(run("schedule", "rm", "nope").exception, ScheduleNotFound)
    disabled = run("schedule", "disable", "report")
    assert disabled.exit_code == 0 and json.loads(disabled.output)["enabled"] is False
    assert json.loads(run("schedule", "enable", "report").output)["enabled"] is True


# -- node watch ----------------------------------------------------------------------------
def test_the_node_watch_marks_silent_nodes_lost_and_recovers_their_expired_tasks(tasks: TaskService) -> None:
    settings = Settings(heartbeat_s=1.0, lease_s=5.0)
    clock = now()
    silent = NodeInfo("silent", "h", 1, ("default",), 1, clock - 60, clock - 3.5)
    fresh = NodeInfo("fresh", "h", 2, ("default",), 1, clock - 60, clock - 0.5)
    for node in (silent, fresh):
        tasks.store.upsert_node(node)
    task, _ = tasks.submit(SubmitRequest(type="demo.add", params={}))
    tasks.store.update(task, TaskStatus.RUNNING, node="silent", attempts=1, started_at=clock - 4,
                       lease_until=clock - 1)
    result = watch_nodes(tasks.store, tasks.publisher.publish_now, settings, clock)
    assert result == WatchResult(lost=["silent"], recovered=1)
    assert {n.id: n.status for n in tasks.store.nodes()} == {"silent": "lost", "fresh": "live"}
    recovered = tasks.store.get(task.id)
    assert (recovered.status, recovered.crashes) == (TaskStatus.QUEUED, 1)
    assert "lease of node silent expired" in (tasks.store.events(task.id)[-1].detail or "")
