"""A writer that records the intent-named calls a projection makes instead of applying them."""

from __future__ import annotations

import inspect
from dataclasses import dataclass, field
from typing import Any, TypeVar, cast, get_args, get_origin

from projections.base import Projection

W = TypeVar("W")


@dataclass(frozen=True)
class Call:
    """One writer call: the log position of the event that caused it, the intent and its arguments by name."""

    position: int
    intent: str
    arguments: dict[str, Any]


@dataclass
class Recording:
    """The calls recorded so far; `position` is stamped on each (the caller sets it per event)."""

    position: int = 0
    calls: list[Call] = field(default_factory=list)

    def take(self) -> list[Call]:
        calls, self.calls = self.calls, []
        return calls


def recording_writer(interface: type[W], recording: Recording) -> W:
    """An implementation of the abstract writer `interface` whose every abstract method appends a
    `Call` to `recording`: the real projection code runs, and nothing is written anywhere. A call
    that does not match the interface's signature raises TypeError, as the real writer would."""
    methods: dict[str, Any] = {"flush": lambda _self: None}  # runners flush a batch; nothing to do here
    for name in getattr(interface, "__abstractmethods__", ()):
        methods[name] = _recorder(name, inspect.signature(getattr(interface, name)), recording)
    cls = type(f"Recording{interface.__name__}", (interface,), methods)
    return cast("W", cls())


def _recorder(name: str, signature: inspect.Signature, recording: Recording) -> Any:
    def record(self: object, *args: Any, **kwargs: Any) -> None:
        bound = signature.bind(self, *args, **kwargs)
        bound.apply_defaults()
        arguments = dict(bound.arguments)
        arguments.pop(next(iter(signature.parameters)))  # self
        recording.calls.append(Call(recording.position, name, arguments))

    record.__name__ = name
    return record


def writer_interface(projection: Projection[Any]) -> type:
    """The writer a projection calls: `W` of its `Projection[W]` base (e.g. `QueuesWriter`)."""
    for base in getattr(type(projection), "__orig_bases__", ()):
        if get_origin(base) is Projection and get_args(base) and isinstance(get_args(base)[0], type):
            return cast("type", get_args(base)[0])
    msg = f"{type(projection).__name__} does not name its writer (class ...(Projection[SomeWriter]))"
    raise TypeError(msg)
