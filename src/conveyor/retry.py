"""Retry policy: exponential backoff with jitter, and the give-up decision."""

from __future__ import annotations

import random

from conveyor.errors import Abort, Retry, UnknownTask
from conveyor.model import Task
from conveyor.task import TaskOptions


def backoff_s(attempt: int, options: TaskOptions, rng: random.Random | None = None) -> float:
    """Delay before attempt ``attempt + 1``: base * 2^(attempt-1), capped, with "equal jitter"
    (half fixed, half random) so a burst of failures does not retry in lockstep."""
    # The exponent is capped: 2.0 ** 1024 overflows, and attempts go up to 10,000 (found by the
    # wire fuzzing: a failure at attempt 4,270 raised OverflowError and left the task running).
    ceiling = min(options.retry_backoff_max_s, options.retry_backoff_s * 2.0 ** min(max(0, attempt - 1), 64))
    jitter: float = (rng or random).uniform(0, ceiling / 2)
    return ceiling / 2 + jitter


def should_retry(task: Task, exc: BaseException) -> bool:
    """Retry unless the handler aborted, the type is unknown, or attempts are used up."""
    if isinstance(exc, Abort | UnknownTask):
        return False
    return task.attempts < task.max_attempts


def retry_delay_s(task: Task, exc: BaseException, options: TaskOptions) -> float:
    if isinstance(exc, Retry) and exc.delay_s is not None:
        return max(0.0, exc.delay_s)
    return backoff_s(task.attempts, options)
