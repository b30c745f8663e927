"""Register values and the change functions that CASPaxos applies to them.

A write is a function from the current value to the next one. Every change, including a
failed condition and a read, is applied inside a full round by the proposer, so the value
that the round accepts is the value the caller is answered from (docs/design.md pitfall 3: a
failed CAS still finishes its round).

Exactly-once: a value remembers the request ids of the last ``RECENT_MAX`` changes applied
to it, with the version each produced. A change whose request id is already there is not
applied again; its original outcome is reported. A retried round therefore never applies a
write twice, and can tell whether its earlier attempt took effect. A client retrying with an
``Idempotency-Key`` is covered beyond that bound by a record register per key
(``core/idempotency.py``, whose changes Claim / Finish / Release are applied here too).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Literal

from paxoskv.core.idempotency import Claim, Finish, Release, apply_record_change

__all__ = [
    "RECENT_MAX",
    "Cas",
    "Change",
    "Create",
    "Delete",
    "Expire",
    "Outcome",
    "Read",
    "Renew",
    "Set",
    "Value",
    "apply_change",
    "expire",
]


RECENT_MAX = 16
"""Request ids a value remembers. A retry happens within one request timeout (seconds), so
16 other writes to the same key in between would mean a very hot key; then the retry
answers "unknown outcome" rather than guess."""


@dataclass(frozen=True, slots=True)
class Value:
    """A register value: ``data is None`` is absent (never written, or deleted).

    ``recent``: (request id, version it produced) of the latest applied changes, newest
    first, at most RECENT_MAX. ``expires_ms``: with a TTL, the wall-clock time (Unix ms,
    on the clock of the proposer that applied the write) from which the value counts as
    absent (docs/ttl.md); None (the default, and every value written before TTLs) never.
    """

    version: int
    data: bytes | None
    recent: tuple[tuple[str, int], ...] = ()
    expires_ms: int | None = None

    def __post_init__(self) -> None:
        assert self.version >= 0
        assert len(self.recent) <= RECENT_MAX

    @property
    def exists(self) -> bool:
        return self.data is not None

    def expired(self, now_ms: int) -> bool:
        """Present, but its TTL ran out at ``now_ms``."""
        return self.data is not None and self.expires_ms is not None and \
            now_ms >= self.expires_ms

    def applied_version(self, request_id: str) -> int | None:
        """The version the change with ``request_id`` produced, if this value remembers it."""
        for rid, version in self.recent:
            if rid == request_id:
                return version
        return None

    def remembers_from(self, version: int) -> bool:
        """True if every change that produced a version >= ``version`` is in ``recent``.

        Every applied change records its id and bumps the version by one, so ``recent``
        covers a contiguous run of versions ending at ``self.version``, from its oldest
        entry. With no entry at all, nothing up to ``self.version`` is remembered: a key
        whose tombstone was collected reads as absent at its floor's version with no
        request ids (docs/gc.md), and a retry whose earlier attempt may have produced one
        of those versions cannot tell whether it did.
        """
        oldest = self.recent[-1][1] if self.recent else self.version + 1
        return oldest <= version

    def digest(self) -> int:
        """A 56-bit hash of the whole value (it fits a wire count). A fast accept names its
        base value by it: values accepted under one fast ballot may differ, and an acceptor
        may build on its own only if it is the one the proposer built on."""
        h = hashlib.blake2b(digest_size=7)
        h.update(self.version.to_bytes(8, "big"))
        if self.data is None:
            h.update(b"\x00")
        else:
            h.update(b"\x01" + len(self.data).to_bytes(8, "big") + self.data)
        for rid, version in self.recent:
            raw = rid.encode("utf-8", "surrogatepass")
            h.update(len(raw).to_bytes(4, "big") + raw + version.to_bytes(8, "big"))
        if self.expires_ms is not None:  # (a value without one hashes as it always did)
            h.update(b"\x02" + self.expires_ms.to_bytes(8, "big"))
        return int.from_bytes(h.digest(), "big")



@dataclass(frozen=True, slots=True)
class Set:
    """Write ``data``; ``ttl_ms`` gives it an expiry (None: none, clearing an earlier one)."""

    data: bytes
    ttl_ms: int | None = None


@dataclass(frozen=True, slots=True)
class Cas:
    """Compare-and-set on the version (HTTP ``If-Match``); fails on an absent key."""

    expected_version: int
    data: bytes
    ttl_ms: int | None = None


@dataclass(frozen=True, slots=True)
class Create:
    """Create only if absent (HTTP ``If-None-Match: *``); an expired key is absent."""

    data: bytes
    ttl_ms: int | None = None


@dataclass(frozen=True, slots=True)
class Renew:
    """Give a present key a new expiry, ``ttl_ms`` from the round's time, keeping its data
    (the version bumps like any change, so watchers and If-Match see it);
    ``expected_version`` makes it conditional."""

    ttl_ms: int
    expected_version: int | None = None


@dataclass(frozen=True, slots=True)
class Delete:
    """Write a tombstone; ``expected_version`` makes it conditional."""

    expected_version: int | None = None


@dataclass(frozen=True, slots=True)
class Read:
    pass


@dataclass(frozen=True, slots=True)
class Expire:
    """The sweeper's compare-and-delete: delete the key only if its version is still
    ``expected_version`` and that value's TTL ran out at the round's time. A key renewed or
    rewritten since has another version (and expiry): it is left alone."""

    expected_version: int


Change = Set | Cas | Create | Delete | Read | Renew | Expire | Claim | Finish | Release
"""Claim / Finish / Release act on idempotency records (core/idempotency.py)."""

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


def _next(current: Value, data: bytes | None, request_id: str | None,
          expires_ms: int | None = None) -> Value:
    version = current.version + 1
    recent = current.recent
    if request_id is not None:
        recent = ((request_id, version), *current.recent[: RECENT_MAX - 1])
    return Value(version, data, recent, expires_ms)


def _expiry(ttl_ms: int | None, now_ms: int | None) -> int | None:
    if ttl_ms is None:
        return None
    assert now_ms is not None, "a change with a TTL needs the round's time"
    return now_ms + ttl_ms


def _record_expiry(current: Value, change: Claim | Finish | Release) -> int | None:
    """An idempotency record expires, as a TTL key does, when its window ends: the TTL
    sweeper then deletes it and tombstone collection removes its row, so records do not
    pile up forever. A claim's window counts from the claim; finishing keeps it (and a
    release leaves a tombstone, which has none)."""
    match change:
        case Claim(now_ms=now, window_ms=window):
            return now + window
        case Finish():
            return current.expires_ms
        case Release():
            return None


def expire(current: Value, now_ms: int | None) -> Value:
    """``current`` as a round at ``now_ms`` must build on it: a value whose TTL ran out
    becomes a tombstone (the next version, no request id), which the round's accept
    commits with whatever else it carries. So the first round that treats a key as expired
    deletes it before anyone is answered, and no later round can see the value again,
    whatever its own clock says (docs/ttl.md)."""
    if now_ms is None or not current.expired(now_ms):
        return current
    return _next(current, None, None)


def apply_change(current: Value, change: Change, request_id: str | None = None,
                 now_ms: int | None = None) -> tuple[Value, Outcome]:
    """Return the value to accept and the outcome to report; pure and total.

    With a ``request_id`` that ``current`` remembers, nothing is applied: the outcome is the
    original one (``value.version`` is the version that change produced; ``value.data`` is
    the current data, meaningful only when that version is still the current one).
    ``now_ms``: the round's wall-clock time; a value expired at it is deleted first
    (``expire``), and a TTL counts from it. None (no clock) leaves expiry alone.
    """
    if request_id is not None and not isinstance(change, Read):
        done = current.applied_version(request_id)
        if done is not None:
            return current, Outcome("applied", Value(done, current.data))
    before, current = current, expire(current, now_ms)
    match change:
        case Read():
            return current, Outcome("read", current)
        case Expire(expected_version=expected):
            if current is not before and before.version == expected:
                return current, Outcome("applied", current)
            return current, Outcome("rejected", current)
        case Set(data=data, ttl_ms=ttl):
            new = _next(current, data, request_id, _expiry(ttl, now_ms))
            return new, Outcome("applied", new)
        case Cas(expected_version=expected, data=data, ttl_ms=ttl):
            if current.exists and current.version == expected:
                new = _next(current, data, request_id, _expiry(ttl, now_ms))
                return new, Outcome("applied", new)
            return current, Outcome("rejected", current)
        case Create(data=data, ttl_ms=ttl):
            if not current.exists:
                new = _next(current, data, request_id, _expiry(ttl, now_ms))
                return new, Outcome("applied", new)
            return current, Outcome("rejected", current)
        case Renew(ttl_ms=ttl, expected_version=expected):
            if not current.exists:
                return current, Outcome("absent", current)
            if expected is not None and current.version != expected:
                return current, Outcome("rejected", current)
            new = _next(current, current.data, request_id, _expiry(ttl, now_ms))
            return new, Outcome("applied", new)
        case Delete(expected_version=expected):
            if not current.exists:
                return current, Outcome("absent", current)
            if expected is not None and current.version != expected:
                return current, Outcome("rejected", current)
            new = _next(current, None, request_id)
            return new, Outcome("applied", new)
        case Claim() | Finish() | Release():
            # "rejected": the record is unchanged, and ``value`` is the record found
            changed, record = apply_record_change(current.data, change)
            if not changed:
                return current, Outcome("rejected", current)
            new = _next(current, record, request_id, _record_expiry(current, change))
            return new, Outcome("applied", new)
    raise AssertionError(f"unknown change {change!r}")
