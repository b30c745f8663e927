"""The acceptor. Rule 1: every promise and accept rule lives in this file.

Each function takes the durable state of one key and a request, and returns a ``Step``: the
next state, whether it must be persisted, and the reply. The caller must make ``state``
durable (fsync) BEFORE it sends ``reply`` whenever ``persist`` is true (docs/design.md invariant 1),
the same ordering rule as etcd-raft's ``Ready``.
"""

from __future__ import annotations

from dataclasses import dataclass

from paxoskv.core.ballot import Ballot
from paxoskv.core.messages import Accept, Accepted, Nack, Prepare, Promise, Query, QueryReply, Reply
from paxoskv.core.register import Value

__all__ = ["AcceptorState", "Step", "on_accept", "on_prepare", "on_query"]


@dataclass(frozen=True, slots=True)
class AcceptorState:
    ballot_promised: Ballot
    ballot_accepted: Ballot
    value: Value

    def __post_init__(self) -> None:
        assert self.ballot_accepted <= self.ballot_promised, "accepted above promise"


EMPTY_STATE = AcceptorState(Ballot.ZERO, Ballot.ZERO, Value(0, None))


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
