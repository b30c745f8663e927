"""Idempotency records: what one ``Idempotency-Key`` did, kept in a register of its own.

Every Idempotency-Key K gets its own CASPaxos register under a reserved storage key
(``RESERVED_PREFIX`` + "idem/" + K) that clients can neither read nor write. Its value is a
record, JSON bytes (orjson)::

    {"fp": <sha256 hex of the request>, "token": <the claim's random id>,
     "claimed_at_ms": <proposer wall clock>, "window_ms": <how long it is kept>,
     "state": "pending" | "done", "outcome": null | {"kind": ..., "version": ...}}

The three changes below are pure functions from the current record bytes to the next ones;
``register.apply_change`` runs them inside a normal round, so they are linearizable per
Idempotency-Key. Time is an argument (the proposer's wall clock in ms): nothing here reads
a clock.

- ``Claim``: absent or expired -> a fresh pending record (the caller now owns the key and
  runs the real write); otherwise unchanged, and the caller reads the record it found.
- ``Finish``: the owner's pending record -> done with the write's outcome; otherwise
  unchanged (the first recorded outcome is never overwritten).
- ``Release``: the owner's pending record -> absent (the write definitely did not happen,
  so a retry may run it afresh); otherwise unchanged.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Literal

import orjson

from paxoskv.core.reconfig import CONFIG_KEY

__all__ = [
    "RESERVED_PREFIX",
    "Claim",
    "Finish",
    "IdemChange",
    "Record",
    "RecordOutcome",
    "Release",
    "apply_record_change",
    "decode_record",
    "encode_record",
    "fingerprint",
    "is_reserved",
    "record_key",
]

RESERVED_PREFIX = "\U0010ffff"
"""Storage keys starting with this are internal; the API refuses client keys that do.

U+10FFFF is a Unicode noncharacter ("for internal use") and the largest code point, so
reserved keys sort after every client key: a listing from "" with a limit reaches every
client key before any reserved one (a prefix such as "\\x00" would sort first and could
fill a listing's limit with records that are then filtered out)."""



def is_reserved(key: str) -> bool:
    """Internal keys that clients can neither name, list nor watch: the idempotency records
    and the acceptor-set config register (``core.reconfig.CONFIG_KEY``, which sorts first,
    so a listing from "" may hold it and answers one key fewer than its limit)."""
    return key.startswith(RESERVED_PREFIX) or key == CONFIG_KEY


RecordState = Literal["pending", "done"]
OutcomeKind = Literal["applied", "rejected", "absent"]


def record_key(idempotency_key: str) -> str:
    """The storage key of ``idempotency_key``'s record register."""
    return RESERVED_PREFIX + "idem/" + idempotency_key


def fingerprint(method: str, key: str, body: bytes, if_match: int | None,
                if_none_match: bool) -> str:
    """sha256 over the request: method, key, conditions and body, unambiguously framed (a
    JSON array is self-delimiting, and the body follows it)."""
    h = hashlib.sha256()
    h.update(orjson.dumps([method.upper(), key, if_match, if_none_match, len(body)]))
    h.update(body)
    return h.hexdigest()


@dataclass(frozen=True, slots=True)
class RecordOutcome:
    """A write's definite outcome as the client saw it: ``applied`` (``version`` is the
    version it produced), ``rejected`` (a condition failed; ``version`` is the version
    then current, None if absent) or ``absent`` (delete of an absent key)."""

    kind: OutcomeKind
    version: int | None


@dataclass(frozen=True, slots=True)
class Record:
    fp: str
    token: str
    claimed_at_ms: int
    window_ms: int
    state: RecordState
    outcome: RecordOutcome | None = None

    def expired(self, now_ms: int) -> bool:
        return now_ms - self.claimed_at_ms >= self.window_ms

    def request_id(self, idempotency_key: str) -> str:
        """The request id the claim's write carries on the data register: unique per claim,
        so a key reused after its window never matches an old write's id."""
        return f"c:{idempotency_key}@{self.token}"


def encode_record(record: Record) -> bytes:
    outcome = None if record.outcome is None else {"kind": record.outcome.kind,
                                                   "version": record.outcome.version}
    return orjson.dumps({"fp": record.fp, "token": record.token,
                         "claimed_at_ms": record.claimed_at_ms, "window_ms": record.window_ms,
                         "state": record.state, "outcome": outcome})


def _int(raw: object) -> int | None:
    return raw if isinstance(raw, int) and not isinstance(raw, bool) else None


def decode_record(data: bytes | None) -> Record | None:
    """The record in ``data``; None when absent. Bytes that are not a well-formed record
    (never written by this module) also read as absent, so the functions stay total."""
    if data is None:
        return None
    try:
        raw = orjson.loads(data)
    except orjson.JSONDecodeError:
        return None
    if not isinstance(raw, dict):
        return None
    fp, token, state = raw.get("fp"), raw.get("token"), raw.get("state")
    claimed, window = _int(raw.get("claimed_at_ms")), _int(raw.get("window_ms"))
    if not isinstance(fp, str) or not isinstance(token, str) or claimed is None \
            or window is None:
        return None
    outcome: RecordOutcome | None = None
    raw_outcome = raw.get("outcome")
    if isinstance(raw_outcome, dict):
        kind, version = raw_outcome.get("kind"), raw_outcome.get("version")
        if kind not in ("applied", "rejected", "absent") or (
                version is not None and _int(version) is None):
            return None
        outcome = RecordOutcome(kind, version)
    elif raw_outcome is not None:
        return None
    if state == "pending" and outcome is None:
        return Record(fp, token, claimed, window, "pending")
    if state == "done" and outcome is not None:
        return Record(fp, token, claimed, window, "done", outcome)
    return None


@dataclass(frozen=True, slots=True)
class Claim:
    fp: str
    token: str
    now_ms: int
    window_ms: int


@dataclass(frozen=True, slots=True)
class Finish:
    token: str
    outcome: RecordOutcome


@dataclass(frozen=True, slots=True)
class Release:
    token: str


IdemChange = Claim | Finish | Release


def apply_record_change(data: bytes | None, change: IdemChange) -> tuple[bool, bytes | None]:
    """(changed, next bytes); when ``changed`` is False the record stays as it is. Pure."""
    current = decode_record(data)
    match change:
        case Claim(fp=fp, token=token, now_ms=now, window_ms=window):
            if current is None or current.expired(now):
                return True, encode_record(Record(fp, token, now, window, "pending"))
            return False, data
        case Finish(token=token, outcome=outcome):
            if current is not None and current.token == token and current.state == "pending":
                done = Record(current.fp, token, current.claimed_at_ms, current.window_ms,
                              "done", outcome)
                return True, encode_record(done)
            return False, data
        case Release(token=token):
            if current is not None and current.token == token and current.state == "pending":
                return True, None
            return False, data
    raise AssertionError(f"unknown change {change!r}")
