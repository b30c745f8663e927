"""Quorum arithmetic (paxoskv/core/quorum.py), joint quorums included, and a proposer round
counted on a joint quorum (the mid config of a change that swaps a key's group member)."""

from paxoskv.core.ballot import Ballot
from paxoskv.core.messages import Accept, Accepted, Promise, Unavailable
from paxoskv.core.proposer import Abort, Committed, ProposerRound, SendAccept, Wait
from paxoskv.core.quorum import QuorumConfig
from paxoskv.core.register import Set, Value

OLD = QuorumConfig.of([1, 2, 5])  # the key's group before: a, b, y
NEW = QuorumConfig.of([1, 2, 6])  # after: a, b, z
JOINT = QuorumConfig.joint(OLD, NEW)
B = Ballot(5, 1, 1)


def test_a_joint_quorum_needs_a_majority_of_each_part() -> None:
    """Goal: {a, b} is a joint quorum (no y, no z); {a, y} and {b, z} are majorities of one
    group only and are not; the union is every acceptor of both."""
    assert JOINT.acceptors == {1, 2, 5, 6}
    assert JOINT.is_quorum({1, 2}) and JOINT.met({1, 2})
    assert not JOINT.is_quorum({1, 5}) and not JOINT.met({1, 5})
    assert not JOINT.is_quorum({2, 6})
    assert JOINT.is_quorum({1, 5, 6}) and JOINT.is_quorum({5, 6, 2})
    assert not JOINT.is_quorum({5, 6})
    assert JOINT.is_quorum({1, 2, 7})  # an outsider neither helps nor hurts


def test_plain_thresholds_are_unchanged() -> None:
    q = QuorumConfig.of([1, 2, 3])
    assert not q.parts and q.quorum == 2
    assert q.met({1, 3}) and not q.met({1})
    assert q.is_quorum({1, 3, 9}) and not q.is_quorum({1, 9})


def test_everyone_is_every_acceptor_of_the_union() -> None:
    every = JOINT.everyone()
    assert every.acceptors == JOINT.acceptors and every.quorum == 4 and not every.parts
    assert not every.is_quorum({1, 2, 5})


def test_a_round_on_a_joint_quorum_counts_each_part() -> None:
    """Goal: promises from a and y (a majority of the old group only) do not finish the
    prepare; b's does. The accept commits on a and b, not on a and z."""
    rnd = ProposerRound("k", B, Set(b"v"), JOINT)
    assert rnd.on_reply(1, Promise("k", B, Ballot.ZERO, Value(0, None))) == Wait()
    assert rnd.on_reply(5, Promise("k", B, Ballot.ZERO, Value(0, None))) == Wait()
    step = rnd.on_reply(2, Promise("k", B, Ballot.ZERO, Value(0, None)))
    assert isinstance(step, SendAccept) and step.accept == Accept("k", B, Value(1, b"v"))
    assert rnd.on_reply(1, Accepted("k", B)) == Wait()
    assert rnd.on_reply(6, Accepted("k", B)) == Wait()
    assert isinstance(rnd.on_reply(2, Accepted("k", B)), Committed)


def test_a_round_on_a_joint_quorum_gives_up_once_no_quorum_is_left() -> None:
    """Goal: with a and b refusing, the two acceptors left (y and z) hold a majority of
    neither group: the round aborts although half the acceptors have not answered."""
    rnd = ProposerRound("k", B, Set(b"v"), JOINT)
    assert rnd.on_reply(1, Unavailable("k", "down")) == Wait()
    step = rnd.on_reply(2, Unavailable("k", "down"))
    assert isinstance(step, Abort) and not step.conflict
