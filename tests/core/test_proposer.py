"""Proposer rounds (paxoskv/core/proposer.py) driven by hand, no event loop."""

from paxoskv.core.ballot import Ballot
from paxoskv.core.messages import Accept, Accepted, Nack, Promise, QueryReply, Unavailable
from paxoskv.core.proposer import (
    Abort,
    Committed,
    Phase,
    Previous,
    ProposerRound,
    QueryRound,
    SendAccept,
    Unknown,
    Wait,
    next_ballot,
)
from paxoskv.core.quorum import QuorumConfig, majority
from paxoskv.core.register import Cas, Create, Outcome, Read, Set, Value

Q3 = QuorumConfig.of([1, 2, 3])
B = Ballot(5, 1, 1)
EMPTY = Value(0, None)


def test_majority_sizes() -> None:
    """Goal: quorum = floor(n/2)+1 from the configured acceptor set (invariant 3)."""
    assert [majority(n) for n in (1, 2, 3, 4, 5)] == [1, 2, 2, 3, 3]
    assert Q3.quorum == 2


def test_happy_round_applies_change_to_highest_accepted_value() -> None:
    """Goal: CASPaxos §2.2: the value with the highest accepted ballot wins, the change is
    applied to it, and the round commits on a quorum of accepts."""
    rnd = ProposerRound("k", B, Set(b"new"), Q3)
    old, newer = Value(1, b"old"), Value(2, b"newer")
    assert rnd.on_reply(1, Promise("k", B, Ballot(1, 2, 1), old)) == Wait()
    step = rnd.on_reply(2, Promise("k", B, Ballot(3, 3, 1), newer))
    assert step == SendAccept(Accept("k", B, Value(3, b"new")))
    assert rnd.on_reply(3, Accepted("k", B)) == Wait()
    assert rnd.on_reply(1, Accepted("k", B)) == Committed(Outcome("applied", Value(3, b"new")))


def test_failed_cas_still_runs_the_accept_phase() -> None:
    """Goal: ANCHORS pitfall 3: a failed condition accepts the current value, so two reads
    in a row can never disagree."""
    rnd = ProposerRound("k", B, Cas(9, b"x"), Q3)
    cur = Value(2, b"cur")
    rnd.on_reply(1, Promise("k", B, Ballot(1, 1, 1), cur))
    step = rnd.on_reply(2, Promise("k", B, Ballot(1, 1, 1), cur))
    assert step == SendAccept(Accept("k", B, cur))
    rnd.on_reply(1, Accepted("k", B))
    assert rnd.on_reply(2, Accepted("k", B)) == Committed(Outcome("rejected", cur))


def test_nacks_from_a_majority_abort_with_the_highest_ballot_seen() -> None:
    """Goal: ballot fast-forward: the abort names the highest promise that refused us."""
    rnd = ProposerRound("k", B, Set(b"x"), Q3)
    assert rnd.on_reply(1, Nack("k", B, Ballot(8, 2, 1))) == Wait()
    step = rnd.on_reply(2, Nack("k", B, Ballot(9, 3, 1)))
    assert step == Abort(Phase.PREPARE, Ballot(9, 3, 1), conflict=True)


def test_unavailable_majority_aborts_without_conflict() -> None:
    """Goal: no quorum is told apart from contention (503 no_quorum, not a retry storm)."""
    rnd = ProposerRound("k", B, Set(b"x"), Q3)
    rnd.on_reply(1, Unavailable("k", "down"))
    step = rnd.on_reply(2, Unavailable("k", "down"))
    assert isinstance(step, Abort)
    assert step.conflict is False


def test_stale_replies_and_strangers_are_ignored() -> None:
    """Goal: replies for another ballot or from outside the acceptor set change nothing."""
    rnd = ProposerRound("k", B, Set(b"x"), Q3)
    assert rnd.on_reply(1, Promise("k", Ballot(4, 1, 1), Ballot.ZERO, EMPTY)) == Wait()
    assert rnd.on_reply(7, Promise("k", B, Ballot.ZERO, EMPTY)) == Wait()
    assert rnd.on_reply(2, Promise("k", B, Ballot.ZERO, EMPTY)) == Wait()


def test_retry_finishes_our_own_unconfirmed_accept_instead_of_reapplying() -> None:
    """Goal: a retried write whose earlier accept is the newest value is completed, not
    applied twice (a CAS must not report 'rejected' for its own write)."""
    prev_ballot = Ballot(4, 1, 1)
    mine = Value(3, b"mine")
    prev = Previous(prev_ballot, mine, Outcome("applied", mine))
    rnd = ProposerRound("k", B, Cas(2, b"mine"), Q3, [prev])
    rnd.on_reply(1, Promise("k", B, prev_ballot, mine))
    step = rnd.on_reply(2, Promise("k", B, Ballot(1, 1, 1), Value(2, b"old")))
    assert step == SendAccept(Accept("k", B, mine))


def test_retry_after_a_newer_value_reports_unknown() -> None:
    """Goal: invariant 5: when a newer value may have been built on ours we cannot tell."""
    prev = Previous(Ballot(4, 1, 1), Value(3, b"m"), Outcome("applied", Value(3, b"m")))
    rnd = ProposerRound("k", B, Set(b"m"), Q3, [prev])
    rnd.on_reply(1, Promise("k", B, Ballot(4, 2, 1), Value(4, b"other")))
    assert rnd.on_reply(2, Promise("k", B, Ballot.ZERO, EMPTY)) == Unknown()


def test_retry_where_our_accept_was_lost_reapplies_the_change() -> None:
    """Goal: when the quorum never saw our accept it can never be chosen: apply afresh."""
    prev = Previous(Ballot(4, 1, 1), Value(3, b"m"), Outcome("applied", Value(3, b"m")))
    rnd = ProposerRound("k", B, Set(b"m"), Q3, [prev])
    rnd.on_reply(1, Promise("k", B, Ballot(2, 1, 1), Value(2, b"base")))
    step = rnd.on_reply(2, Promise("k", B, Ballot(2, 1, 1), Value(2, b"base")))
    assert step == SendAccept(Accept("k", B, Value(3, b"m")))


def test_query_round_commits_when_a_quorum_agrees() -> None:
    """Goal: one-round-trip reads when a quorum reports the same accepted ballot."""
    q = QueryRound("k", Q3)
    v = Value(2, b"v")
    assert q.on_reply(1, QueryReply("k", Ballot(3, 1, 1), v)) == Wait()
    assert q.on_reply(2, QueryReply("k", Ballot(3, 1, 1), v)) == Committed(Outcome("read", v))


def test_query_round_falls_back_when_acceptors_disagree() -> None:
    """Goal: disagreement (a write in flight, or a lagging acceptor) forces a full round."""
    q = QueryRound("k", Q3)
    q.on_reply(1, QueryReply("k", Ballot(3, 1, 1), Value(2, b"a")))
    q.on_reply(2, QueryReply("k", Ballot(4, 1, 1), Value(3, b"b")))
    step = q.on_reply(3, QueryReply("k", Ballot(5, 1, 1), Value(4, b"c")))
    assert isinstance(step, Abort)
    assert q.disagreed()


def test_identity_round_of_a_read_ignores_previous() -> None:
    """Goal: reads may always be retried from scratch (they change nothing)."""
    prev = Previous(Ballot(4, 1, 1), Value(3, b"m"), Outcome("read", Value(3, b"m")))
    rnd = ProposerRound("k", B, Read(), Q3, [prev])
    rnd.on_reply(1, Promise("k", B, Ballot(9, 2, 1), Value(5, b"z")))
    step = rnd.on_reply(2, Promise("k", B, Ballot.ZERO, EMPTY))
    assert step == SendAccept(Accept("k", B, Value(5, b"z")))


def test_next_ballot_is_above_everything_seen_and_unique_per_incarnation() -> None:
    """Goal: ballots jump past nacks and never repeat across restarts (incarnation)."""
    b = next_ballot(3, Ballot(10, 2, 7), node_id=1, incarnation=4)
    assert b == Ballot(11, 1, 4)
    assert b > Ballot(10, 2, 7)
    assert next_ballot(0, Ballot.ZERO, 1, 5) != next_ballot(0, Ballot.ZERO, 1, 6)


def test_retry_finishes_an_older_accept_of_ours_not_just_the_latest() -> None:
    """Goal: the chaos-found bug (seed 1182905457): with two failed attempts, a quorum whose
    newest value is our FIRST accept finishes that value instead of applying the change
    again on top of it."""
    b1, b2 = Ballot(2, 1, 1), Ballot(3, 1, 1)
    first = Value(1, b"x")
    prevs = [Previous(b1, first, Outcome("applied", first)),
             Previous(b2, first, Outcome("applied", first))]
    rnd = ProposerRound("k", B, Create(b"x"), Q3, prevs)
    rnd.on_reply(1, Promise("k", B, b1, first))
    step = rnd.on_reply(2, Promise("k", B, Ballot.ZERO, EMPTY))
    assert step == SendAccept(Accept("k", B, first))
    assert rnd.outcome == Outcome("applied", first)


def test_retry_seeing_a_foreign_value_between_our_accepts_is_unknown() -> None:
    """Goal: a value of someone else newer than our oldest accept may include our change."""
    b1, b2 = Ballot(2, 1, 1), Ballot(4, 1, 1)
    prevs = [Previous(b1, Value(1, b"x"), Outcome("applied", Value(1, b"x"))),
             Previous(b2, Value(1, b"x"), Outcome("applied", Value(1, b"x")))]
    rnd = ProposerRound("k", B, Create(b"x"), Q3, prevs)
    rnd.on_reply(1, Promise("k", B, Ballot(3, 2, 1), Value(2, b"other")))
    assert rnd.on_reply(2, Promise("k", B, Ballot.ZERO, EMPTY)) == Unknown()
