"""Register values and the change functions that CASPaxos applies to them.

A write is a function from the current value to the next one. Every change, including a
failed condition and a read, is applied inside a full round by the proposer, so the value
that the round accepts is the value the caller is answered from (ANCHORS pitfall 3: a
failed CAS still finishes its round).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

__all__ = [
    "Cas",
    "Change",
    "Create",
    "Delete",
    "Outcome",
    "Read",
    "Set",
    "Value",
    "apply_change",
    "is_identity",
]


@dataclass(frozen=True, slots=True)
class Value:
    """A register value: ``data is None`` is absent (never written, or deleted)."""

    version: int
    data: bytes | None

    def __post_init__(self) -> None:
        assert self.version >= 0

    @property
    def exists(self) -> bool:
        return self.data is not None


EMPTY = Value(0, None)


@dataclass(frozen=True, slots=True)
class Set:
    data: bytes


@dataclass(frozen=True, slots=True)
class Cas:
    """Compare-and-set on the version (HTTP ``If-Match``); fails on an absent key."""

    expected_version: int
    data: bytes


@dataclass(frozen=True, slots=True)
class Create:
    """Create only if absent (HTTP ``If-None-Match: *``)."""

    data: bytes


@dataclass(frozen=True, slots=True)
class Delete:
    """Write a tombstone; ``expected_version`` makes it conditional."""

    expected_version: int | None = None


@dataclass(frozen=True, slots=True)
class Read:
    pass


Change = Set | Cas | Create | Delete | Read

OutcomeKind = Literal["applied", "rejected", "absent", "read"]


@dataclass(frozen=True, slots=True)
class Outcome:
    """What the caller is told once the round that carried the change commits.

    ``applied``: the change took effect and ``value`` is the new value. ``rejected``: a
    condition failed and ``value`` is the current one. ``absent``: delete of an absent key.
    ``read``: an identity read of ``value``.
    """

    kind: OutcomeKind
    value: Value


def is_identity(change: Change) -> bool:
    return isinstance(change, Read)


def apply_change(current: Value, change: Change) -> tuple[Value, Outcome]:
    """Return the value to accept and the outcome to report; pure and total."""
    match change:
        case Read():
            return current, Outcome("read", current)
        case Set(data=data):
            new = Value(current.version + 1, data)
            return new, Outcome("applied", new)
        case Cas(expected_version=expected, data=data):
            if current.exists and current.version == expected:
                new = Value(current.version + 1, data)
                return new, Outcome("applied", new)
            return current, Outcome("rejected", current)
        case Create(data=data):
            if not current.exists:
                new = Value(current.version + 1, data)
                return new, Outcome("applied", new)
            return current, Outcome("rejected", current)
        case Delete(expected_version=expected):
            if not current.exists:
                return current, Outcome("absent", current)
            if expected is not None and current.version != expected:
                return current, Outcome("rejected", current)
            new = Value(current.version + 1, None)
            return new, Outcome("applied", new)
    raise AssertionError(f"unknown change {change!r}")
