"""The acceptor. Rule 1: every promise and accept rule lives in this file.

Each function takes the durable state of one key and a request, and returns a ``Step``: the
next state, whether it must be persisted, and the reply. The caller must make ``state``
durable (fsync) BEFORE it sends ``reply`` whenever ``persist`` is true (docs/design.md invariant 1),
the same ordering rule as etcd-raft's ``Ready``.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Final

from paxoskv.core.ballot import Ballot
from paxoskv.core.messages import (
    Accept,
    Accepted,
    Collect,
    Collected,
    Nack,
    Prepare,
    Promise,
    Query,
    QueryReply,
    Reply,
)
from paxoskv.core.register import Value

__all__ = [
    "FLOOR_BUCKETS",
    "LEGACY_FLOOR_BUCKETS",
    "NO_FLOOR",
    "AcceptorState",
    "CollectStep",
    "Floor",
    "Step",
    "absent_state",
    "coarsen_floors",
    "floor_bucket",
    "on_accept",
    "on_collect",
    "on_prepare",
    "on_query",
]


@dataclass(frozen=True, slots=True)
class AcceptorState:
    ballot_promised: Ballot
    ballot_accepted: Ballot
    value: Value

    def __post_init__(self) -> None:
        assert self.ballot_accepted <= self.ballot_promised, "accepted above promise"


EMPTY_STATE = AcceptorState(Ballot.ZERO, Ballot.ZERO, Value(0, None))


# ------------------------------------------------------------ tombstone collection floors

FLOOR_BUCKETS: Final = 256
"""Keys are hashed into this many buckets, each with a durable floor (docs/gc.md). Each
bucket with a floor costs one row for ever, so few: 256 rows are 2 pages of the database,
against 1.7 MB for the 65,536 buckets of earlier releases, which alone kept a node that
had all its keys deleted ten times its empty size. What fewer buckets cost: a fresh key's
first prepare is refused by a floor it never needed (one round trip) whenever that floor
is above the proposer's ballot counter; the counter is node-wide and jumps past any refusal,
so that happens about once per rise of the floors, whatever the bucket count. And a
re-created key's version jumps to the highest of its bucket, not of its own tombstone.
Must divide ``LEGACY_FLOOR_BUCKETS`` (``coarsen_floors``)."""

LEGACY_FLOOR_BUCKETS: Final = 1 << 16
"""The bucket count of releases before: a floor table, or a peer's floor page, that does
not say its count has this many."""


@dataclass(frozen=True, slots=True)
class Floor:
    """What an acceptor keeps of the tombstones it removed in one bucket: the highest
    promise any of them held, and the highest version any of them had. A key of the bucket
    without a row reads as promised at ``ballot``, accepted at nothing, and absent at
    ``version`` (``absent_state``)."""

    ballot: Ballot
    version: int

    def __post_init__(self) -> None:
        assert self.version >= 0

    def raised(self, ballot: Ballot, version: int) -> Floor:
        return Floor(max(self.ballot, ballot), max(self.version, version))

    def merged(self, other: Floor) -> Floor:
        """Each part the higher of the two: floors only go up, whichever key raised them."""
        return self.raised(other.ballot, other.version)


NO_FLOOR: Final = Floor(Ballot.ZERO, 0)

assert LEGACY_FLOOR_BUCKETS % FLOOR_BUCKETS == 0


def floor_bucket(key: str) -> int:
    """The floor bucket of ``key``: the same on every node and every release."""
    digest = hashlib.blake2b(key.encode("utf-8", "surrogatepass"), digest_size=8).digest()
    return int.from_bytes(digest, "big") % FLOOR_BUCKETS


def coarsen_floors(floors: Iterable[tuple[int, Floor]], buckets: int
                   ) -> list[tuple[int, Floor]]:
    """Floors of a ``buckets``-bucket table as floors of ours, sorted by bucket; ValueError
    when ``buckets`` is not a multiple of ``FLOOR_BUCKETS``.

    A key's bucket there is its hash mod ``buckets``, and ours is the hash mod
    ``FLOOR_BUCKETS``, which then equals theirs mod ``FLOOR_BUCKETS``. Each of our buckets
    takes the highest of the floors that map to it, part by part: at least the floor any of
    its keys had, so no floor goes down (a higher one only costs a refused first prepare or
    a larger version jump). The other way, one coarse floor cannot be split back without
    copying it onto every finer bucket it covers."""
    if buckets < FLOOR_BUCKETS or buckets % FLOOR_BUCKETS:
        raise ValueError(f"floors of {buckets} buckets do not map onto {FLOOR_BUCKETS}")
    out: dict[int, Floor] = {}
    for bucket, floor in floors:
        if not 0 <= bucket < buckets:
            raise ValueError(f"bucket {bucket} out of range for {buckets} buckets")
        mine = bucket % FLOOR_BUCKETS
        out[mine] = out.get(mine, NO_FLOOR).merged(floor)
    return sorted(out.items())


def absent_state(floor: Floor) -> AcceptorState:
    """The state of a key without a row, in a bucket whose floor is ``floor``.

    Promised at the floor: every prepare or accept at or below a ballot that a removed row
    had promised is refused, as the row itself would have refused it (a delayed message, a
    proposer's cached phase 1). Accepted at ``Ballot.ZERO``: any acceptor that holds a real
    accept of the key outranks it in a promise quorum, so a value chosen after the removal
    is never hidden by it. Absent at the floor's version: a key re-created on it takes a
    version above every version it had (no ABA for If-Match).
    """
    if floor == NO_FLOOR:
        return EMPTY_STATE
    return AcceptorState(floor.ballot, Ballot.ZERO, Value(floor.version, None))


@dataclass(frozen=True, slots=True)
class CollectStep:
    """``remove``: delete the key's row and make ``floor`` its bucket's floor, in one
    durable step, before ``reply`` leaves."""

    remove: bool
    floor: Floor
    reply: Collected


def on_collect(state: AcceptorState, floor: Floor, msg: Collect, has_row: bool) -> CollectStep:
    """Remove the row of a tombstone that every acceptor accepted (docs/gc.md).

    Only the exact state the collection round left is removed: the tombstone of
    ``msg.version`` accepted at ``msg.ballot``. Anything accepted since (a re-created key, a
    later round) keeps its row, and a delayed ``Collect`` of an earlier round matches
    nothing. The bucket floor is raised to the row's promise and version in the same step,
    so the key's absent state promises at least what the row promised.
    """
    if not has_row:
        return CollectStep(False, floor, Collected(msg.key, msg.ballot, True))
    if (state.ballot_accepted != msg.ballot or state.value.exists
            or state.value.version != msg.version):
        return CollectStep(False, floor, Collected(msg.key, msg.ballot, False))
    new = floor.raised(state.ballot_promised, state.value.version)
    after = absent_state(new)
    assert after.ballot_promised >= state.ballot_promised  # invariant 2
    assert after.value.version >= state.value.version
    return CollectStep(True, new, Collected(msg.key, msg.ballot, True))


@dataclass(frozen=True, slots=True)
class Step:
    state: AcceptorState
    persist: bool
    """``state`` must be durable before ``reply`` leaves the node."""
    reply: Reply


def on_prepare(state: AcceptorState, msg: Prepare) -> Step:
    if msg.ballot < state.ballot_promised:
        return Step(state, False, Nack(msg.key, msg.ballot, state.ballot_promised))
    promise = Promise(msg.key, msg.ballot, state.ballot_accepted, state.value)
    if msg.ballot == state.ballot_promised:
        # A duplicate of a prepare we already made durable: answer it again, write nothing.
        return Step(state, False, promise)
    new = AcceptorState(msg.ballot, state.ballot_accepted, state.value)
    assert new.ballot_promised > state.ballot_promised  # invariant 2
    assert new.ballot_accepted == state.ballot_accepted
    return Step(new, True, promise)


def on_accept(state: AcceptorState, msg: Accept) -> Step:
    """Accept ``msg.value``; with ``msg.next``, also promise the proposer's next ballot in
    the same durable step (phase-1 skip, docs/design.md invariant 8).

    The promise is made only together with this accept: an acceptor that refuses the accept
    promises nothing, and one that has already accepted this ballot (a duplicate) does not
    promise again, since another proposer may have prepared in between.
    """
    if msg.base is not None:
        return _on_fast_accept(state, msg, msg.base)
    if (msg.next is not None and msg.ballot == state.ballot_accepted
            and msg.next == state.ballot_promised):
        # A duplicate of an accept that carried a prepare, and nothing since: answer again.
        assert msg.value == state.value, "two values proposed under one ballot"
        return Step(state, False, Accepted(msg.key, msg.ballot, msg.next))
    if msg.ballot < state.ballot_promised:
        return Step(state, False, Nack(msg.key, msg.ballot, state.ballot_promised))
    if msg.ballot == state.ballot_accepted:
        # A duplicate accept: one ballot carries one value, so nothing changes.
        assert msg.value == state.value, "two values proposed under one ballot"
        return Step(state, False, Accepted(msg.key, msg.ballot))
    promised = msg.ballot if msg.next is None else msg.next
    assert promised >= msg.ballot
    new = AcceptorState(promised, msg.ballot, msg.value)
    assert new.ballot_promised >= state.ballot_promised  # invariant 2
    assert new.ballot_accepted > state.ballot_accepted
    return Step(new, True, Accepted(msg.key, msg.ballot, msg.next))


def _on_fast_accept(state: AcceptorState, msg: Accept, base: Ballot) -> Step:
    """An accept at the fast ballot ``base.successor()`` (docs/design.md invariant 9).

    Accepted only on top of exactly what the proposer built on: ``base`` accepted here with
    the value whose digest the accept names, and no promise above the fast ballot. Nothing
    sorts between ``base`` and its successor, so such an acceptor has taken part in no
    round the fast one could override. Several proposers share one fast ballot, so it may
    come with several values: the first one is kept, a different one refused, and a
    duplicate of the first answered again without a write.
    """
    if state.ballot_promised > msg.ballot:
        return Step(state, False, Nack(msg.key, msg.ballot, state.ballot_promised))
    if msg.ballot == state.ballot_accepted:
        if msg.value == state.value:
            return Step(state, False, Accepted(msg.key, msg.ballot))
        return Step(state, False, Nack(msg.key, msg.ballot, state.ballot_promised))
    if state.ballot_accepted != base or state.value.digest() != msg.base_digest:
        return Step(state, False, Nack(msg.key, msg.ballot, state.ballot_promised))
    new = AcceptorState(msg.ballot, msg.ballot, msg.value)
    assert new.ballot_promised >= state.ballot_promised  # invariant 2
    assert new.ballot_accepted > state.ballot_accepted
    return Step(new, True, Accepted(msg.key, msg.ballot))


def on_query(state: AcceptorState, msg: Query) -> QueryReply:
    """Report the accepted value without promising: reads cost no fsync."""
    return QueryReply(msg.key, state.ballot_accepted, state.value)
