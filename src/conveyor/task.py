"""Task types: the ``@app.task`` decorator, ``TaskSpec``, and the name -> handler registry.

The registry is an explicit object owned by a ``Conveyor`` app, never a module global.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from conveyor.errors import UnknownTask
from conveyor.flow.options import FlowOptions

if TYPE_CHECKING:
    from conveyor.app import Conveyor, TaskHandle
    from conveyor.flow.canvas import Signature

Handler = Callable[..., Any]


@dataclass(frozen=True, slots=True)
class TaskOptions:
    queue: str = "default"
    priority: int = 0
    max_attempts: int = 3
    timeout: float | None = None  # seconds per attempt
    retry_backoff_s: float = 1.0  # first retry delay; doubles each attempt, with jitter
    retry_backoff_max_s: float = 300.0
    flow: FlowOptions | None = None  # limits, uniqueness, routing (docs/flow-control.md)


class TaskSpec:
    """A registered task type. Call it to run the handler inline; ``delay`` to submit it."""

    def __init__(self, app: Conveyor, name: str, handler: Handler, options: TaskOptions) -> None:
        self.app = app
        self.name = name
        self.handler = handler
        self.options = options
        self.is_async = inspect.iscoroutinefunction(handler)

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return self.handler(*args, **kwargs)

    def delay(self, **params: Any) -> TaskHandle:
        """Submit with these params and the type's default options."""
        return self.app.submit(self.name, params)

    def submit(self, params: dict[str, Any] | None = None, **options: Any) -> TaskHandle:
        """Submit with per-call options (eta, delay, priority, idempotency_key, ...)."""
        return self.app.submit(self.name, params or {}, **options)

    def s(self, **params: Any) -> Signature:
        """A signature of this task with these params: a step for ``chain``/``group``/``chord``."""
        from conveyor.flow.canvas import Signature

        return Signature(self.name, params)

    def __repr__(self) -> str:
        return f"TaskSpec({self.name!r}, queue={self.options.queue!r})"


class Registry:
    def __init__(self) -> None:
        self._specs: dict[str, TaskSpec] = {}

    def add(self, spec: TaskSpec) -> None:
        if spec.name in self._specs and self._specs[spec.name].handler is not spec.handler:
            raise ValueError(f"task type {spec.name!r} is registered twice")
        self._specs[spec.name] = spec

    def get(self, name: str) -> TaskSpec:
        try:
            return self._specs[name]
        except KeyError:
            raise UnknownTask(name) from None

    def find(self, name: str) -> TaskSpec | None:
        return self._specs.get(name)

    def names(self) -> list[str]:
        return sorted(self._specs)

    def __len__(self) -> int:
        return len(self._specs)
