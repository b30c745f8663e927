"""A proposer round whose prepare and accept sets differ: the ``mid`` config of an
acceptor-set change (docs/reconfiguration.md), prepares to the old set with its majority,
accepts to the new set with its majority."""

from __future__ import annotations

from paxoskv.core.ballot import Ballot
from paxoskv.core.messages import Accepted, Promise, Unavailable
from paxoskv.core.proposer import (
    Abort,
    Committed,
    Prepared,
    ProposerRound,
    SendAccept,
    Wait,
    prepared_after,
)
from paxoskv.core.quorum import QuorumConfig
from paxoskv.core.register import Set, Value

OLD = QuorumConfig(frozenset({1, 2, 3}), 2)
GROWN = QuorumConfig(frozenset({1, 2, 3, 4}), 3)
B = Ballot(5, 1, 1)
NEXT = Ballot(6, 1, 1)


def _promised(rnd: ProposerRound) -> SendAccept:
    assert isinstance(rnd.start(), object)
    assert isinstance(rnd.on_reply(1, Promise("k", B, Ballot.ZERO, Value(0, None))), Wait)
    step = rnd.on_reply(2, Promise("k", B, Ballot.ZERO, Value(0, None)))
    assert isinstance(step, SendAccept)
    return step


def test_an_add_needs_the_grown_sets_majority_of_accepts() -> None:
    """Goal: adding 4 to {1,2,3}: two promises of {1,2,3} make phase 1, and the value is
    chosen only with three accepts of {1,2,3,4}; the new acceptor's accept counts."""
    rnd = ProposerRound("k", B, Set(b"v"), OLD, accept_config=GROWN)
    _promised(rnd)
    assert isinstance(rnd.on_reply(1, Accepted("k", B)), Wait)
    assert isinstance(rnd.on_reply(2, Accepted("k", B)), Wait)  # 2 of 4: not yet
    assert isinstance(rnd.on_reply(4, Accepted("k", B)), Committed)


def test_a_remove_is_chosen_by_the_shrunk_sets_majority_and_ignores_the_removed() -> None:
    """Goal: removing 4 from {1,2,3,4}: promises need three of the four, accepts two of
    {1,2,3}; an accept reply from 4 (outside the accept set) counts for nothing."""
    rnd = ProposerRound("k", B, Set(b"v"), GROWN, accept_config=OLD)
    rnd.start()
    for a in (1, 2):
        assert isinstance(rnd.on_reply(a, Promise("k", B, Ballot.ZERO, Value(0, None))), Wait)
    assert isinstance(rnd.on_reply(4, Promise("k", B, Ballot.ZERO, Value(0, None))),
                      SendAccept)
    assert isinstance(rnd.on_reply(4, Accepted("k", B)), Wait)
    assert isinstance(rnd.on_reply(1, Accepted("k", B)), Wait)
    assert isinstance(rnd.on_reply(3, Accepted("k", B)), Committed)


def test_refusals_count_against_the_phase_own_set() -> None:
    """Goal: with accepts to {1,2,3,4} needing three, two refusals end the attempt."""
    rnd = ProposerRound("k", B, Set(b"v"), OLD, accept_config=GROWN)
    _promised(rnd)
    assert isinstance(rnd.on_reply(3, Unavailable("k", "down")), Wait)
    assert isinstance(rnd.on_reply(4, Unavailable("k", "down")), Abort)


def test_a_phase_1_skip_needs_a_prepare_quorum_of_promises() -> None:
    """Goal: the piggybacked promises kept for phase-1 skip must come from a prepare
    quorum (two of {1,2,3}); two promises where one is the new acceptor 4's are not one,
    even though they are two. Counting them as before (any two) would let the next
    round skip a phase 1 that no prepare quorum made."""
    rnd = ProposerRound("k", B, Set(b"v"), OLD, next_ballot=NEXT, accept_config=GROWN)
    _promised(rnd)
    rnd.on_reply(1, Accepted("k", B))
    rnd.on_reply(3, Accepted("k", B, NEXT))
    step = rnd.on_reply(4, Accepted("k", B, NEXT))
    assert isinstance(step, Committed)
    assert not rnd.next_promised
    assert prepared_after(rnd, step) is None
    rnd2 = ProposerRound("k", B, Set(b"v"), OLD, next_ballot=NEXT, accept_config=GROWN)
    _promised(rnd2)
    rnd2.on_reply(1, Accepted("k", B, NEXT))
    rnd2.on_reply(3, Accepted("k", B, NEXT))
    step2 = rnd2.on_reply(4, Accepted("k", B))
    assert isinstance(step2, Committed)
    assert prepared_after(rnd2, step2) == Prepared(NEXT, rnd2.accept.value if rnd2.accept
                                                   else Value(0, None))
