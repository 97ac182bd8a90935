"""Retry policy: exponential backoff with equal jitter, and when to give up."""

from __future__ import annotations

import random

import pytest

from conveyor.errors import Abort, Retry, UnknownTask
from conveyor.model import Task
from conveyor.retry import backoff_s, retry_delay_s, should_retry
from conveyor.task import TaskOptions

OPTIONS = TaskOptions(retry_backoff_s=1.0, retry_backoff_max_s=60.0)


def ceiling(attempt: int, options: TaskOptions = OPTIONS) -> float:
    return min(options.retry_backoff_max_s, options.retry_backoff_s * 2.0 ** (attempt - 1))


@pytest.mark.parametrize("attempt", range(1, 12))
def test_backoff_stays_between_half_and_all_of_its_ceiling(attempt: int) -> None:
    rng = random.Random(attempt)
    delays = [backoff_s(attempt, OPTIONS, rng) for _ in range(200)]

    assert min(delays) >= ceiling(attempt) / 2
    assert max(delays) <= ceiling(attempt)


def test_backoff_doubles_with_each_attempt_until_the_cap() -> None:
    rng = random.Random(7)
    samples = {a: [backoff_s(a, OPTIONS, rng) for _ in range(50)] for a in range(1, 7)}  # 1..32 s: uncapped

    for attempt in range(1, 6):
        assert max(samples[attempt]) <= min(samples[attempt + 1]), "a later attempt never waits less"
    assert min(samples[6]) >= 16.0


def test_backoff_is_capped_by_the_maximum() -> None:
    options = TaskOptions(retry_backoff_s=1.0, retry_backoff_max_s=10.0)

    delays = [backoff_s(attempt, options) for attempt in range(5, 60)]

    assert max(delays) <= 10.0
    assert min(delays) >= 5.0


def test_backoff_is_jittered_so_failures_do_not_retry_in_lockstep() -> None:
    rng = random.Random(1)
    delays = [backoff_s(4, OPTIONS, rng) for _ in range(100)]

    assert len(set(delays)) > 90
    assert min(delays) < 4.0 + 0.5 and max(delays) > 8.0 - 0.5, "spread over the whole jitter range"


def test_backoff_with_the_same_seed_repeats() -> None:
    first = [backoff_s(3, OPTIONS, random.Random(42)) for _ in range(3)]
    second = [backoff_s(3, OPTIONS, random.Random(42)) for _ in range(3)]

    assert first == second


def test_backoff_before_any_attempt_uses_the_base_delay() -> None:
    assert 0.5 <= backoff_s(0, OPTIONS, random.Random(0)) <= 1.0


def test_a_failure_is_retried_while_attempts_remain() -> None:
    assert should_retry(Task(type="t", attempts=2, max_attempts=3), ValueError("x"))
    assert not should_retry(Task(type="t", attempts=3, max_attempts=3), ValueError("x"))
    assert not should_retry(Task(type="t", attempts=1, max_attempts=1), ValueError("x"))


def test_abort_and_unknown_types_are_never_retried() -> None:
    fresh = Task(type="t", attempts=1, max_attempts=5)

    assert not should_retry(fresh, Abort("no"))
    assert not should_retry(fresh, UnknownTask("t"))


def test_retry_requested_with_a_delay_waits_exactly_that_long() -> None:
    task = Task(type="t", attempts=1)

    assert retry_delay_s(task, Retry(delay_s=2.5), OPTIONS) == 2.5
    assert retry_delay_s(task, Retry(delay_s=-3), OPTIONS) == 0.0


def test_other_failures_and_retry_without_a_delay_use_the_backoff() -> None:
    task = Task(type="t", attempts=3)

    for exc in (Retry(), ConnectionError("down")):
        assert ceiling(3) / 2 <= retry_delay_s(task, exc, OPTIONS) <= ceiling(3)


@pytest.mark.parametrize("attempt", [1024, 1025, 4_270, 10_000])
def test_backoff_at_the_highest_attempts_is_the_cap_not_an_overflow(attempt: int) -> None:
    # Found by the wire fuzzing: 2.0 ** 4269 raised OverflowError in the outcome path.
    delay = backoff_s(attempt, OPTIONS, random.Random(attempt))
    assert OPTIONS.retry_backoff_max_s / 2 <= delay <= OPTIONS.retry_backoff_max_s
