"""Building workflows in Python: ``chain``, ``group``, ``chord`` and the ``Workflow`` DAG builder.

Each compiles to the JSON workflow spec the HTTP API takes (``POST /api/v1/workflows``, see
docs/flow-control.md), so Python, HTTP and CLI submit through one path::

    chain(fetch.s(url=u), parse.s(), store.s())          # each gets the previous result
    group(resize.s(size=s) for s in (64, 128))           # in parallel; result: the list
    chord([score.s(id=i) for i in ids], total.s())       # total gets the list of scores

    wf = Workflow("etl")
    a = wf.add(extract.s(day="2030-01-01"))
    b = wf.add(transform.s(), after=a)                   # previous = extract's result
    wf.add(report.s(), after=[a, b], on_parent_failure="skip")   # previous = [a's, b's]

A step receives its parents' results in the param ``previous`` (``pass_as`` renames it, None
leaves the params alone): the result itself after one step, a list after a group or a list of
steps.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

Step = dict[str, Any]  # one step of the JSON spec


@dataclass(frozen=True)
class Signature:
    """A task to run as a step: its type, params and options."""

    type: str
    params: dict[str, Any] = field(default_factory=dict)
    options: dict[str, Any] = field(default_factory=dict)  # queue, priority, max_attempts, timeout
    pass_as: str | None = "previous"
    on_parent_failure: str = "fail"  # fail | skip
    name: str | None = None

    def set(self, *, name: str | None = None, pass_as: str | bool | None = True, on_parent_failure: str | None = None,
            **options: Any) -> Signature:
        """A copy with a step name, where the parents' results go (``pass_as``; None: nowhere),
        the failure policy, or task options (queue, priority, max_attempts, timeout)."""
        unknown = set(options) - {"queue", "priority", "max_attempts", "timeout"}
        if unknown:
            raise TypeError(f"unknown step option(s) {sorted(unknown)}")
        return dataclasses.replace(
            self, name=name if name is not None else self.name, options={**self.options, **options},
            pass_as=self.pass_as if pass_as is True else (pass_as or None),
            on_parent_failure=on_parent_failure or self.on_parent_failure)


@dataclass(frozen=True)
class Chain:
    items: tuple[Any, ...]


@dataclass(frozen=True)
class Group:
    items: tuple[Any, ...]


def chain(*items: Any) -> Chain:
    """Run ``items`` one after the other; each gets the previous one's result."""
    if not items:
        raise ValueError("chain() needs at least one step")
    return Chain(tuple(items))


def group(*items: Any) -> Group:
    """Run ``items`` in parallel; the group's result is the list of their results. Takes the
    items, or one iterable of them."""
    if len(items) == 1 and not isinstance(items[0], Signature | Chain | Group) and isinstance(items[0], Iterable):
        items = tuple(items[0])
    if not items:
        raise ValueError("group() needs at least one step")
    return Group(tuple(items))


def chord(header: Iterable[Any] | Group, body: Signature) -> Chain:
    """Run the header's steps in parallel, then ``body`` with the list of their results."""
    return Chain((header if isinstance(header, Group) else group(*header), body))


class _Compiler:
    def __init__(self) -> None:
        self.steps: list[Step] = []
        self.names: set[str] = set()

    def add(self, sig: Signature, after: list[str], as_list: bool) -> str:
        name = sig.name or f"{len(self.steps) + 1}.{sig.type}"
        if name in self.names:
            raise ValueError(f"two steps are named {name!r}")
        self.names.add(name)
        step: Step = {"name": name, "type": sig.type, "params": sig.params, "pass_as": sig.pass_as,
                      "on_parent_failure": sig.on_parent_failure, **sig.options}
        if after:
            step["after"] = after if as_list else after[0]
        self.steps.append(step)
        return name

    def compile(self, item: Any, parents: list[str], as_list: bool) -> tuple[list[str], bool]:
        """Add ``item`` after ``parents``; returns its last steps and whether they form a list."""
        if isinstance(item, Signature):
            return [self.add(item, parents, as_list)], False
        if isinstance(item, Chain):
            for sub in item.items:
                parents, as_list = self.compile(sub, parents, as_list)
            return parents, as_list
        if isinstance(item, Group):
            exits: list[str] = []
            for sub in item.items:
                exits += self.compile(sub, parents, as_list)[0]
            return exits, True
        raise TypeError(f"a workflow step must be a Signature, chain or group, not {type(item).__name__}")


def to_spec(item: Any, name: str | None = None) -> dict[str, Any]:
    """The JSON workflow spec of a ``Signature``, ``chain``, ``group`` or ``Workflow``."""
    if isinstance(item, Workflow):
        return item.to_spec()
    compiler = _Compiler()
    exits, as_list = compiler.compile(item, [], False)
    default = "group" if isinstance(item, Group) else "chain" if isinstance(item, Chain) else "task"
    return {"name": name or default, "steps": compiler.steps, "result": exits if as_list else exits[0]}


class Workflow:
    """A DAG built step by step: ``add`` returns the step's name, to pass as ``after``."""

    def __init__(self, name: str = "workflow") -> None:
        self.name = name
        self._compiler = _Compiler()
        self.result: str | list[str] | None = None  # default: the steps nothing waits for

    def add(self, sig: Signature, *, after: str | list[str] | None = None, name: str | None = None,
            pass_as: str | bool | None = True, on_parent_failure: str | None = None) -> str:
        """Add a step. ``after`` one step: it gets that step's result; a list: the list of results."""
        sig = sig.set(name=name, pass_as=pass_as, on_parent_failure=on_parent_failure)
        if after is None:
            return self._compiler.add(sig, [], False)
        if isinstance(after, str):
            return self._compiler.add(sig, [after], False)
        return self._compiler.add(sig, list(after), True)

    def to_spec(self) -> dict[str, Any]:
        spec: dict[str, Any] = {"name": self.name, "steps": self._compiler.steps}
        if self.result is not None:
            spec["result"] = self.result
        return spec
