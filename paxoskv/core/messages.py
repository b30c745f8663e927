"""Peer messages, and their wire form (plain JSON-able dicts).

Messages are frozen, slotted dataclasses compared by value, so tests assert on lists of
them. Decoding is strict: anything malformed raises ``PeerProtocolError`` (the peer is to
blame) and never reaches the acceptor.
"""

from __future__ import annotations

import base64
import binascii
from dataclasses import dataclass
from typing import Any, Final, Literal, get_args

from paxoskv.core.ballot import WIRE_INT_MAX, Ballot
from paxoskv.core.reconfig import Config
from paxoskv.core.register import RECENT_MAX, Cas, Create, Delete, OutcomeKind, Set, Value

__all__ = [
    "Accept",
    "Accepted",
    "ClientChange",
    "Collect",
    "Collected",
    "Forward",
    "Forwarded",
    "Learn",
    "Learned",
    "Message",
    "Nack",
    "PeerProtocolError",
    "Prepare",
    "Promise",
    "Query",
    "QueryReply",
    "Reply",
    "Request",
    "Stale",
    "Unavailable",
    "config_from_wire",
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
    next: Ballot | None = None
    """A piggybacked prepare: once ``value`` is accepted, also promise ``next`` (above
    ``ballot``), so the proposer's next change to the key can skip phase 1."""
    base: Ballot | None = None
    """With a fast ``ballot`` (``base.successor()``): the accepted ballot the proposer built
    ``value`` on; an acceptor accepts only if it accepted ``base`` too (docs/design.md
    invariant 9)."""
    base_digest: int = 0
    """``Value.digest()`` of the value the proposer built on: a fast ``base`` may carry
    different values at different acceptors, and only the one built on may be extended."""

    def __post_init__(self) -> None:
        assert (self.base is not None) == self.ballot.is_fast, "a fast accept names its base"
        assert self.base is None or self.ballot == self.base.successor()
        assert self.base is None or self.next is None, "a fast accept promises nothing"


@dataclass(frozen=True, slots=True)
class Accepted:
    key: str
    ballot: Ballot
    next: Ballot | None = None
    """The piggybacked promise the acceptor made durable with the accept, if it made one."""


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
    epoch: int = 0
    """The config epoch the acceptor answered under (on the wire only above 0): an install
    counts an acceptor as holding its config only on this proof, which a release without
    epochs never gives (docs/reconfiguration.md, "Rolling upgrades")."""


@dataclass(frozen=True, slots=True)
class Unavailable:
    """The acceptor will not take part (e.g. it lost its state and has not rejoined)."""

    key: str
    reason: str
    epoch: int = 0
    """Above 0: the config epoch this acceptor holds, durably, though it votes in nothing
    now (a rejoin): adopting a config is not a vote, and an install that adds it counts it
    (paxoskv/reconfigure.py); without it a rejoin waiting for a change to finish and that
    change waiting for the rejoining acceptor would wait for each other."""


@dataclass(frozen=True, slots=True)
class Stale:
    """Refusal of a message sent under an older epoch than the acceptor holds: ``config``
    is the acceptor's, so the sender learns it (docs/reconfiguration.md, the fence)."""

    key: str
    config: Config


@dataclass(frozen=True, slots=True)
class Collect:
    """Remove ``key``'s row if it still holds exactly the tombstone of ``version`` accepted
    at ``ballot``: the one a garbage collection round had every acceptor accept
    (docs/gc.md). The acceptor raises its ballot and version floors in the same step."""

    key: str
    ballot: Ballot
    version: int


@dataclass(frozen=True, slots=True)
class Collected:
    """The answer to ``Collect``: ``done`` if the row is gone (removed now, or before)."""

    key: str
    ballot: Ballot
    done: bool


ClientChange = Set | Cas | Create | Delete
"""The changes a node forwards to a key's preferred proposer (client writes)."""


@dataclass(frozen=True, slots=True)
class Forward:
    """Run a client's change as the key's preferred proposer, under the client's request
    id (so a retry elsewhere can never apply it twice). ``to_boot`` names the process of
    the proposer it was sent to: a copy arriving at a later process is not run, since the
    one it was meant for may have run it, and only that one remembered so."""

    key: str
    change: ClientChange
    request_id: str
    to_boot: str


ForwardError = Literal["no_quorum", "unknown", "overloaded", "declined", "duplicate",
                       "restarted"]
"""``declined``: not run there at all; ``duplicate``: a second copy of a forward that is
running or ran there (its answer may overtake the first copy's); ``restarted``: sent to an
earlier process of the node, which may have run it before it stopped, but never will
again."""


@dataclass(frozen=True, slots=True)
class Forwarded:
    """A forwarded change's outcome: its kind, the version it produced or found and whether
    the key exists then (not the data: writers are told versions); or why it failed."""

    key: str
    kind: OutcomeKind | None
    version: int = 0
    exists: bool = False
    error: ForwardError | None = None
    detail: str = ""


@dataclass(frozen=True, slots=True)
class Learn:
    """A learner's notice (``paxoskv/watch.py``): ``version`` of ``key`` was chosen. ``data``
    is the value when small, ``exists`` False a deletion; ``inline`` False means the data was
    left out (too large) and a learner that wants it must read the key. Never touches
    acceptor state."""

    key: str
    version: int
    exists: bool
    inline: bool
    data: bytes | None = None


@dataclass(frozen=True, slots=True)
class Learned:
    """The receipt of a ``Learn`` (the peer channel answers every request)."""

    key: str


Request = Prepare | Accept | Query | Forward | Collect | Learn
Reply = (Promise | Accepted | Nack | QueryReply | Unavailable | Forwarded | Collected | Learned
         | Stale)
REPLY_TYPES: Final = (Promise, Accepted, Nack, QueryReply, Unavailable, Forwarded, Collected,
                      Learned, Stale)
"""Every ``Reply`` class, for a fast ``isinstance`` check."""
Message = Request | Reply


def _value_to_wire(value: Value, raw: bool = False) -> list[Any]:
    data: bytes | str | None = value.data
    if value.data is not None and not raw:
        data = base64.b64encode(value.data).decode("ascii")
    out = [value.version, data, [[rid, v] for rid, v in value.recent]]
    if value.expires_ms is not None:
        # A fourth element only when there is an expiry: a value without one is framed as
        # before, so a cluster that uses no TTL can still be upgraded one node at a time.
        out.append(value.expires_ms)
    return out


def _is_count(x: object) -> bool:
    return isinstance(x, int) and not isinstance(x, bool) and 0 <= x <= WIRE_INT_MAX


def _recent_from_wire(raw: object) -> tuple[tuple[str, int], ...]:
    if not isinstance(raw, list) or len(raw) > RECENT_MAX:
        raise PeerProtocolError(f"value recent must be a list of at most {RECENT_MAX} pairs")
    out: list[tuple[str, int]] = []
    for pair in raw:
        # _is_count inlined: this runs for up to 16 pairs of every value a frame carries.
        if not (isinstance(pair, list) and len(pair) == 2 and isinstance(pair[0], str)
                and isinstance(v := pair[1], int) and not isinstance(v, bool)
                and 0 <= v <= WIRE_INT_MAX):
            raise PeerProtocolError("value recent entries must be [request id, version]")
        out.append((pair[0], v))
    return tuple(out)


def _value_from_wire(raw: object) -> Value:
    if not isinstance(raw, list) or len(raw) not in (3, 4):
        raise PeerProtocolError("value must be [version, data, recent(, expires_ms)]")
    version, data, recent_raw = raw[:3]
    if not _is_count(version):
        raise PeerProtocolError(f"value version must be an integer within 0..{WIRE_INT_MAX}")
    recent = _recent_from_wire(recent_raw)
    expires: int | None = None
    if len(raw) == 4:
        expires = raw[3]
        if not _is_count(expires):
            raise PeerProtocolError("value expires_ms must be an integer count")
    if data is None:
        return Value(version, None, recent, expires)
    if isinstance(data, bytes):
        return Value(version, data, recent, expires)  # the binary peer codec's raw bytes
    if not isinstance(data, str):
        raise PeerProtocolError("value data must be base64 text or null")
    try:
        return Value(version, base64.b64decode(data, validate=True), recent, expires)
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
        case Accept(key=key, ballot=b, value=v, next=n, base=base, base_digest=digest):
            out: dict[str, Any] = {"t": "accept", "k": key, "b": b.to_wire(),
                                   "v": _value_to_wire(v, raw)}
            if n is not None:
                out["n"] = n.to_wire()
            if base is not None:
                out["fb"] = base.to_wire()
                out["fd"] = digest
            return out
        case Accepted(key=key, ballot=b, next=n):
            out = {"t": "accepted", "k": key, "b": b.to_wire()}
            if n is not None:
                out["n"] = n.to_wire()
            return out
        case Nack(key=key, ballot=b, ballot_promised=bp):
            return {"t": "nack", "k": key, "b": b.to_wire(), "bp": bp.to_wire()}
        case Query(key=key):
            return {"t": "query", "k": key}
        case QueryReply(key=key, ballot_accepted=ba, value=v, epoch=epoch):
            out = {"t": "query_reply", "k": key, "ba": ba.to_wire(),
                   "v": _value_to_wire(v, raw)}
            if epoch:
                out["ep"] = epoch
            return out
        case Unavailable(key=key, reason=reason, epoch=epoch):
            out = {"t": "unavailable", "k": key, "r": reason}
            if epoch:
                out["ep"] = epoch
            return out
        case Forward(key=key, change=change, request_id=rid, to_boot=boot):
            return {"t": "forward", "k": key, "c": _change_to_wire(change, raw), "id": rid,
                    "to": boot}
        case Collect(key=key, ballot=b, version=version):
            return {"t": "collect", "k": key, "b": b.to_wire(), "ver": version}
        case Collected(key=key, ballot=b, done=done):
            return {"t": "collected", "k": key, "b": b.to_wire(), "x": done}
        case Forwarded(key=key, kind=kind, version=version, exists=exists, error=error,
                       detail=detail):
            return {"t": "forwarded", "k": key, "o": kind, "ver": version, "x": exists,
                    "e": error, "d": detail}
        case Learn(key=key, version=version, exists=exists, inline=inline, data=data):
            wire_data: bytes | str | None = data
            if data is not None and not raw:
                wire_data = base64.b64encode(data).decode("ascii")
            return {"t": "learn", "k": key, "ver": version, "x": exists, "i": inline,
                    "d": wire_data}
        case Learned(key=key):
            return {"t": "learned", "k": key}
        case Stale(key=key, config=config):
            return {"t": "stale", "k": key, "cfg": config.to_json()}
    raise AssertionError(f"unknown message {msg!r}")


def _change_to_wire(change: ClientChange, raw: bool) -> list[Any]:
    def data_to_wire(data: bytes) -> bytes | str:
        return data if raw else base64.b64encode(data).decode("ascii")

    match change:
        case Set(data=data):
            return ["set", data_to_wire(data)]
        case Cas(expected_version=expected, data=data):
            return ["cas", data_to_wire(data), expected]
        case Create(data=data):
            return ["create", data_to_wire(data)]
        case Delete(expected_version=expected):
            return ["delete", None, expected]
    raise AssertionError(f"not a client change: {change!r}")


def _change_from_wire(raw: object) -> ClientChange:
    if not isinstance(raw, list) or not 2 <= len(raw) <= 3:
        raise PeerProtocolError("change must be [kind, data, expected version?]")
    kind, data, *rest = raw
    expected = rest[0] if rest else None
    if expected is not None and not _is_count(expected):
        raise PeerProtocolError("change's expected version must be a count or null")
    if kind == "delete":
        if data is not None:
            raise PeerProtocolError("a delete carries no data")
        return Delete(expected)
    if isinstance(data, bytes):
        payload = data  # the binary peer codec's raw bytes
    elif isinstance(data, str):
        try:
            payload = base64.b64decode(data, validate=True)
        except (binascii.Error, ValueError) as exc:
            raise PeerProtocolError("change data is not valid base64") from exc
    else:
        raise PeerProtocolError("change data must be bytes or base64 text")
    match kind:
        case "set" if expected is None:
            return Set(payload)
        case "cas" if expected is not None:
            return Cas(expected, payload)
        case "create" if expected is None:
            return Create(payload)
    raise PeerProtocolError(f"unknown change {kind!r}")


def _epoch(raw: dict[str, Any], what: str) -> int:
    """A reply's optional config epoch (``ep``; absent: 0, as from epoch 0 or an older
    release)."""
    epoch = raw.get("ep", 0)
    if not (isinstance(epoch, int) and not isinstance(epoch, bool)
            and 0 <= epoch <= WIRE_INT_MAX):
        raise PeerProtocolError(f"{what} 'ep' must be a non-negative integer")
    return int(epoch)


def _ballot(raw: dict[str, Any], field: str) -> Ballot:
    try:
        return Ballot.from_wire(raw.get(field))
    except ValueError as exc:
        raise PeerProtocolError(f"field {field!r}: {exc}") from exc


def _forwarded_from_wire(key: str, raw: dict[str, Any]) -> Forwarded:
    kind, version, exists = raw.get("o"), raw.get("ver"), raw.get("x")
    error, detail = raw.get("e"), raw.get("d")
    if kind is not None and kind not in get_args(OutcomeKind):
        raise PeerProtocolError(f"unknown outcome {kind!r}")
    if error is not None and error not in get_args(ForwardError):
        raise PeerProtocolError(f"unknown forward error {error!r}")
    if (kind is None) == (error is None):
        raise PeerProtocolError("a forwarded reply has an outcome or an error, not both")
    if not _is_count(version) or not isinstance(exists, bool) or not isinstance(detail, str):
        raise PeerProtocolError("forwarded version, exists or detail malformed")
    assert isinstance(version, int)
    return Forwarded(key, kind, version, exists, error, detail[:500])


def _next_ballot(raw: dict[str, Any], ballot: Ballot) -> Ballot | None:
    if "n" not in raw:
        return None
    nxt = _ballot(raw, "n")
    if nxt <= ballot:
        raise PeerProtocolError("a piggybacked prepare must be above the accept's ballot")
    return nxt


def _learn_from_wire(key: str, raw: dict[str, Any]) -> Learn:
    version, exists, inline, data = raw.get("ver"), raw.get("x"), raw.get("i"), raw.get("d")
    if not _is_count(version) or not isinstance(exists, bool) or not isinstance(inline, bool):
        raise PeerProtocolError("learn needs a version and the exists and inline flags")
    assert isinstance(version, int)
    if isinstance(data, str):
        try:
            data = base64.b64decode(data, validate=True)
        except (binascii.Error, ValueError) as exc:
            raise PeerProtocolError("learn data is not valid base64") from exc
    if data is not None and not isinstance(data, bytes):
        raise PeerProtocolError("learn data must be bytes, base64 text or null")
    if data is not None and not (exists and inline):
        raise PeerProtocolError("learn data only with an inline, existing value")
    if exists and inline and data is None:
        raise PeerProtocolError("an inline, existing learn needs its data")
    return Learn(key, version, exists, inline, data)


CONFIG_MEMBERS_MAX: Final = 64
"""Acceptors a config on the wire may name: far more than any cluster runs."""


def config_from_wire(raw: object) -> Config:
    """A ``Config.to_json`` from a peer, checked strictly (ids, quorum sizes, and that its
    own quorums intersect); PeerProtocolError otherwise."""
    if not isinstance(raw, list) or len(raw) not in (5, 6):
        raise PeerProtocolError("config must be [epoch, prepare set, quorum, accept set, "
                                "quorum] and the replication factor if any")
    epoch, ps, pq, acc, aq, *rest = raw
    r = rest[0] if rest else None
    if r is not None and not (_is_count(r) and r >= 2):
        raise PeerProtocolError("a config's replication factor must be a count of at least 2")
    assert r is None or isinstance(r, int)
    if not (_is_count(epoch) and _is_count(pq) and _is_count(aq)):
        raise PeerProtocolError("config epoch and quorum sizes must be counts")
    for ids in (ps, acc):
        if not (isinstance(ids, list) and 1 <= len(ids) <= CONFIG_MEMBERS_MAX
                and all(_is_count(i) for i in ids) and len(set(ids)) == len(ids)):
            raise PeerProtocolError("config sets must be lists of distinct node ids")
    assert isinstance(epoch, int) and isinstance(pq, int) and isinstance(aq, int)
    assert isinstance(ps, list) and isinstance(acc, list)
    if not (1 <= pq <= len(ps) and 1 <= aq <= len(acc) and pq + aq > len(set(ps) | set(acc))):
        raise PeerProtocolError("config quorum sizes out of range or not intersecting")
    return Config(epoch, frozenset(ps), pq, frozenset(acc), aq, r)


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
            ballot = _ballot(raw, "b")
            nxt = _next_ballot(raw, ballot)
            value = _value_from_wire(raw.get("v"))
            if not ballot.is_fast:
                if "fb" in raw or "fd" in raw:
                    raise PeerProtocolError("only an accept at a fast ballot names a base")
                return Accept(key, ballot, value, nxt)
            base, digest = _ballot(raw, "fb"), raw.get("fd")
            if base.successor() != ballot or nxt is not None or not _is_count(digest):
                raise PeerProtocolError("a fast accept needs its base ballot, the one right "
                                        "below it, and its base digest, and no next ballot")
            assert isinstance(digest, int)
            return Accept(key, ballot, value, None, base, digest)
        case "accepted":
            ballot = _ballot(raw, "b")
            return Accepted(key, ballot, _next_ballot(raw, ballot))
        case "nack":
            return Nack(key, _ballot(raw, "b"), _ballot(raw, "bp"))
        case "query":
            return Query(key)
        case "query_reply":
            epoch = _epoch(raw, "query_reply")
            return QueryReply(key, _ballot(raw, "ba"), _value_from_wire(raw.get("v")), epoch)
        case "unavailable":
            reason = raw.get("r")
            if not isinstance(reason, str):
                raise PeerProtocolError("unavailable reason must be a string")
            return Unavailable(key, reason, _epoch(raw, "unavailable"))
        case "forward":
            rid, boot = raw.get("id"), raw.get("to")
            if not isinstance(rid, str) or not 1 <= len(rid) <= 200:
                raise PeerProtocolError("forward request id must be a short string")
            if not isinstance(boot, str) or not 1 <= len(boot) <= 64:
                raise PeerProtocolError("forward boot id must be a short string")
            return Forward(key, _change_from_wire(raw.get("c")), rid, boot)
        case "forwarded":
            return _forwarded_from_wire(key, raw)
        case "collect":
            version = raw.get("ver")
            if not _is_count(version):
                raise PeerProtocolError("collect version must be a count")
            assert isinstance(version, int)
            return Collect(key, _ballot(raw, "b"), version)
        case "collected":
            done = raw.get("x")
            if not isinstance(done, bool):
                raise PeerProtocolError("collected done must be a boolean")
            return Collected(key, _ballot(raw, "b"), done)
        case "learn":
            return _learn_from_wire(key, raw)
        case "learned":
            return Learned(key)
        case "stale":
            return Stale(key, config_from_wire(raw.get("cfg")))
    raise PeerProtocolError(f"unknown message type {kind!r}")
