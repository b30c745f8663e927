"""Peer messages, and their wire form (plain JSON-able dicts).

Messages are frozen, slotted dataclasses compared by value, so tests assert on lists of
them. Decoding is strict: anything malformed raises ``PeerProtocolError`` (the peer is to
blame) and never reaches the acceptor.
"""

from __future__ import annotations

import base64
import binascii
from dataclasses import dataclass
from typing import Any

from paxoskv.core.ballot import WIRE_INT_MAX, Ballot
from paxoskv.core.register import RECENT_MAX, Value

__all__ = [
    "Accept",
    "Accepted",
    "Message",
    "Nack",
    "PeerProtocolError",
    "Prepare",
    "Promise",
    "Query",
    "QueryReply",
    "Reply",
    "Request",
    "Unavailable",
    "from_wire",
    "to_wire",
]


class PeerProtocolError(ValueError):
    """A frame from a peer that does not follow the protocol: drop it, count it, log it."""


@dataclass(frozen=True, slots=True)
class Prepare:
    key: str
    ballot: Ballot


@dataclass(frozen=True, slots=True)
class Promise:
    key: str
    ballot: Ballot
    ballot_accepted: Ballot
    value: Value


@dataclass(frozen=True, slots=True)
class Accept:
    key: str
    ballot: Ballot
    value: Value


@dataclass(frozen=True, slots=True)
class Accepted:
    key: str
    ballot: Ballot


@dataclass(frozen=True, slots=True)
class Nack:
    """Refusal of ``ballot`` because the acceptor has promised ``ballot_promised``."""

    key: str
    ballot: Ballot
    ballot_promised: Ballot


@dataclass(frozen=True, slots=True)
class Query:
    """Ask for the accepted value without promising anything (one-round-trip reads)."""

    key: str


@dataclass(frozen=True, slots=True)
class QueryReply:
    key: str
    ballot_accepted: Ballot
    value: Value


@dataclass(frozen=True, slots=True)
class Unavailable:
    """The acceptor will not take part (e.g. it lost its state and has not rejoined)."""

    key: str
    reason: str


Request = Prepare | Accept | Query
Reply = Promise | Accepted | Nack | QueryReply | Unavailable
Message = Request | Reply


def _value_to_wire(value: Value, raw: bool = False) -> list[Any]:
    data: bytes | str | None = value.data
    if value.data is not None and not raw:
        data = base64.b64encode(value.data).decode("ascii")
    return [value.version, data, [[rid, v] for rid, v in value.recent]]


def _is_count(x: object) -> bool:
    return isinstance(x, int) and not isinstance(x, bool) and 0 <= x <= WIRE_INT_MAX


def _recent_from_wire(raw: object) -> tuple[tuple[str, int], ...]:
    if not isinstance(raw, list) or len(raw) > RECENT_MAX:
        raise PeerProtocolError(f"value recent must be a list of at most {RECENT_MAX} pairs")
    out: list[tuple[str, int]] = []
    for pair in raw:
        if not (isinstance(pair, list) and len(pair) == 2 and isinstance(pair[0], str)
                and _is_count(pair[1])):
            raise PeerProtocolError("value recent entries must be [request id, version]")
        out.append((pair[0], pair[1]))
    return tuple(out)


def _value_from_wire(raw: object) -> Value:
    if not isinstance(raw, list) or len(raw) != 3:
        raise PeerProtocolError("value must be [version, data, recent]")
    version, data, recent_raw = raw
    if not _is_count(version):
        raise PeerProtocolError(f"value version must be an integer within 0..{WIRE_INT_MAX}")
    recent = _recent_from_wire(recent_raw)
    if data is None:
        return Value(version, None, recent)
    if isinstance(data, bytes):
        return Value(version, data, recent)  # the binary peer codec's raw value bytes
    if not isinstance(data, str):
        raise PeerProtocolError("value data must be base64 text or null")
    try:
        return Value(version, base64.b64decode(data, validate=True), recent)
    except (binascii.Error, ValueError) as exc:
        raise PeerProtocolError("value data is not valid base64") from exc


def to_wire(msg: Message, raw: bool = False) -> dict[str, Any]:
    """The dict form; with ``raw``, value data stays ``bytes`` instead of base64 text (for
    the binary peer codec, which carries bytes beside the metadata; ``from_wire`` takes
    either)."""
    match msg:
        case Prepare(key=key, ballot=b):
            return {"t": "prepare", "k": key, "b": b.to_wire()}
        case Promise(key=key, ballot=b, ballot_accepted=ba, value=v):
            return {"t": "promise", "k": key, "b": b.to_wire(), "ba": ba.to_wire(),
                    "v": _value_to_wire(v, raw)}
        case Accept(key=key, ballot=b, value=v):
            return {"t": "accept", "k": key, "b": b.to_wire(), "v": _value_to_wire(v, raw)}
        case Accepted(key=key, ballot=b):
            return {"t": "accepted", "k": key, "b": b.to_wire()}
        case Nack(key=key, ballot=b, ballot_promised=bp):
            return {"t": "nack", "k": key, "b": b.to_wire(), "bp": bp.to_wire()}
        case Query(key=key):
            return {"t": "query", "k": key}
        case QueryReply(key=key, ballot_accepted=ba, value=v):
            return {"t": "query_reply", "k": key, "ba": ba.to_wire(),
                    "v": _value_to_wire(v, raw)}
        case Unavailable(key=key, reason=reason):
            return {"t": "unavailable", "k": key, "r": reason}
    raise AssertionError(f"unknown message {msg!r}")


def _ballot(raw: dict[str, Any], field: str) -> Ballot:
    try:
        return Ballot.from_wire(raw.get(field))
    except ValueError as exc:
        raise PeerProtocolError(f"field {field!r}: {exc}") from exc


def from_wire(raw: object) -> Message:
    """Decode one message; raises PeerProtocolError on anything malformed."""
    if not isinstance(raw, dict):
        raise PeerProtocolError("message must be an object")
    kind = raw.get("t")
    key = raw.get("k")
    if not isinstance(key, str) or not key:
        raise PeerProtocolError("message key must be a non-empty string")
    match kind:
        case "prepare":
            return Prepare(key, _ballot(raw, "b"))
        case "promise":
            value = _value_from_wire(raw.get("v"))
            return Promise(key, _ballot(raw, "b"), _ballot(raw, "ba"), value)
        case "accept":
            return Accept(key, _ballot(raw, "b"), _value_from_wire(raw.get("v")))
        case "accepted":
            return Accepted(key, _ballot(raw, "b"))
        case "nack":
            return Nack(key, _ballot(raw, "b"), _ballot(raw, "bp"))
        case "query":
            return Query(key)
        case "query_reply":
            return QueryReply(key, _ballot(raw, "ba"), _value_from_wire(raw.get("v")))
        case "unavailable":
            reason = raw.get("r")
            if not isinstance(reason, str):
                raise PeerProtocolError("unavailable reason must be a string")
            return Unavailable(key, reason)
    raise PeerProtocolError(f"unknown message type {kind!r}")
