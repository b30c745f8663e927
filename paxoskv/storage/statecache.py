"""The storage's cache of recently used acceptor states: packed records in a ``PackedMap``,
so the memory a write load filled goes back to the system once its keys are deleted and
collected (``paxoskv.packedmap`` says why a dict of objects did not).

Records leave oldest write first when the budget needs room (FIFO, not LRU: a state only
read goes when its segment is the oldest, and comes back from the disk on the next miss).
"""

from __future__ import annotations

import struct
from collections.abc import Callable
from typing import Final

from paxoskv.core.acceptor import AcceptorState
from paxoskv.core.ballot import Ballot
from paxoskv.core.register import Value
from paxoskv.packedmap import PackedMap

__all__ = ["StateCache", "decode_parts", "decode_state", "encode_parts", "encode_state"]

# Promised and accepted ballots (4 parts each), version, expiry in ms (-1: none), data
# bytes (-1: absent), recent entries; then the data, then each recent entry as
# (id bytes, version) + id.
_STATE: Final = struct.Struct("<11qH")
_RECENT: Final = struct.Struct("<Iq")

# Decoding makes objects from fields that were a valid object when encoded: their
# ``__init__`` checks are skipped (they cost half of a decode).
_new = object.__new__


def _setter(cls: type, field: str) -> Callable[[object, object], None]:
    """The slot's own setter, which a frozen dataclass's ``__setattr__`` does not guard."""
    setter: Callable[[object, object], None] = cls.__dict__[field].__set__
    return setter


_set_bc, _set_bn, _set_bi, _set_bf = (_setter(Ballot, f) for f in
                                      ("counter", "node_id", "incarnation", "fast"))
_set_vv, _set_vd, _set_vr, _set_ve = (_setter(Value, f) for f in
                                      ("version", "data", "recent", "expires_ms"))
_set_sp, _set_sa, _set_sv = (_setter(AcceptorState, f) for f in
                             ("ballot_promised", "ballot_accepted", "value"))


def _ballot(counter: int, node_id: int, incarnation: int, fast: int) -> Ballot:
    b: Ballot = _new(Ballot)
    _set_bc(b, counter)
    _set_bn(b, node_id)
    _set_bi(b, incarnation)
    _set_bf(b, fast)
    return b


def encode_parts(promised: Ballot, accepted: Ballot, v: Value) -> bytes:
    """Two ballots and a value, packed (what a state is, and a phase-1 skip entry too)."""
    bp, ba = promised, accepted
    data = v.data
    head = _STATE.pack(bp.counter, bp.node_id, bp.incarnation, bp.fast,
                       ba.counter, ba.node_id, ba.incarnation, ba.fast, v.version,
                       -1 if v.expires_ms is None else v.expires_ms,
                       -1 if data is None else len(data), len(v.recent))
    if not v.recent:
        return head if data is None else head + data
    parts = [head]
    if data is not None:
        parts.append(data)
    for rid, version in v.recent:
        rb = rid.encode("utf-8", "surrogatepass")
        parts.append(_RECENT.pack(len(rb), version))
        parts.append(rb)
    return b"".join(parts)


def decode_parts(raw: bytes, at: int = 0) -> tuple[Ballot, Ballot, Value]:
    """``encode_parts``'s ballots and value, from ``raw`` at ``at``."""
    (bpc, bpn, bpi, bpf, bac, ban, bai, baf, version, expires, dlen,
     nrecent) = _STATE.unpack_from(raw, at)
    at += _STATE.size
    data: bytes | None = None
    if dlen >= 0:
        data = raw[at:at + dlen]
        at += dlen
    recent: tuple[tuple[str, int], ...] = ()
    if nrecent:
        items = []
        for _ in range(nrecent):
            rlen, rversion = _RECENT.unpack_from(raw, at)
            at += _RECENT.size
            items.append((raw[at:at + rlen].decode("utf-8", "surrogatepass"), rversion))
            at += rlen
        recent = tuple(items)
    promised = _ballot(bpc, bpn, bpi, bpf)
    accepted = promised if (bac, ban, bai, baf) == (bpc, bpn, bpi, bpf) else \
        _ballot(bac, ban, bai, baf)
    value: Value = _new(Value)
    _set_vv(value, version)
    _set_vd(value, data)
    _set_vr(value, recent)
    _set_ve(value, None if expires < 0 else expires)
    return promised, accepted, value


def encode_state(state: AcceptorState) -> bytes:
    return encode_parts(state.ballot_promised, state.ballot_accepted, state.value)


def decode_state(raw: bytes) -> AcceptorState:
    promised, accepted, value = decode_parts(raw)
    state: AcceptorState = _new(AcceptorState)
    _set_sp(state, promised)
    _set_sa(state, accepted)
    _set_sv(state, value)
    return state


class StateCache:
    """At most ``max_bytes`` of packed states (``PackedMap`` segments mapped)."""

    def __init__(self, max_bytes: int) -> None:
        self._map = PackedMap(max_bytes)

    def __len__(self) -> int:
        return len(self._map)

    def __contains__(self, key: str) -> bool:
        return key in self._map

    @property
    def mapped_bytes(self) -> int:
        return self._map.mapped_bytes

    @property
    def table_bytes(self) -> int:
        return self._map.table_bytes

    def get(self, key: str) -> AcceptorState | None:
        raw = self._map.get(key)
        return None if raw is None else decode_state(raw)

    def put(self, key: str, state: AcceptorState) -> None:
        """Cache ``state`` as ``key``'s; one that does not fit is not cached, but still
        drops the older copy."""
        self._map.put(key, encode_state(state))

    def pop(self, key: str) -> bool:
        return self._map.pop(key)

    def clear(self) -> None:
        self._map.clear()

    def keys(self) -> list[str]:
        """Oldest write first (tests)."""
        return self._map.keys()
