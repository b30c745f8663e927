"""Proposer rounds (paxoskv/core/proposer.py) driven by hand, no event loop."""

from paxoskv.core.ballot import Ballot
from paxoskv.core.messages import Accept, Accepted, Nack, Promise, QueryReply, Unavailable
from paxoskv.core.proposer import (
    Abort,
    Committed,
    Pending,
    Phase,
    Prepared,
    ProposerRound,
    QueryRound,
    SendAccept,
    Unknown,
    Wait,
    next_ballot,
    prepared_after,
)
from paxoskv.core.quorum import QuorumConfig, majority
from paxoskv.core.register import RECENT_MAX, Cas, Outcome, Read, Set, Value, apply_change

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
    """Goal: docs/design.md pitfall 3: a failed condition accepts the current value, so two reads
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


def test_retry_finishes_a_value_that_remembers_the_request() -> None:
    """Goal: exactly-once: a retry whose quorum's newest value already holds this request
    re-accepts that value unchanged and reports the original outcome (a CAS must not be
    told 'rejected' for its own write)."""
    mine = Value(3, b"mine", (("r1", 3),))
    rnd = ProposerRound("k", B, Cas(2, b"mine"), Q3, "r1", sent_from_version=3)
    rnd.on_reply(1, Promise("k", B, Ballot(4, 1, 1), mine))
    step = rnd.on_reply(2, Promise("k", B, Ballot(1, 1, 1), Value(2, b"old")))
    assert step == SendAccept(Accept("k", B, mine))
    assert rnd.outcome == Outcome("applied", Value(3, b"mine"))


def test_retry_finds_the_request_under_later_writes() -> None:
    """Goal: a write built on top of ours still remembers ours: the outcome is ours."""
    newer = Value(5, b"other", (("r9", 5), ("r1", 4)))
    rnd = ProposerRound("k", B, Set(b"m"), Q3, "r1", sent_from_version=4)
    rnd.on_reply(1, Promise("k", B, Ballot(4, 2, 1), newer))
    step = rnd.on_reply(2, Promise("k", B, Ballot.ZERO, EMPTY))
    assert step == SendAccept(Accept("k", B, newer))
    assert rnd.outcome is not None
    assert (rnd.outcome.kind, rnd.outcome.value.version) == ("applied", 4)


def test_retry_where_the_newest_value_has_forgotten_requests_is_unknown() -> None:
    """Goal: invariant 5: when the newest value no longer remembers every request and ours
    is not there, we cannot tell whether our earlier accept took effect."""
    full = tuple((f"r{i}", 100 - i) for i in range(RECENT_MAX))
    rnd = ProposerRound("k", B, Set(b"m"), Q3, "mine", sent_from_version=50)
    rnd.on_reply(1, Promise("k", B, Ballot(4, 2, 1), Value(100, b"x", full)))
    assert rnd.on_reply(2, Promise("k", B, Ballot.ZERO, EMPTY)) == Unknown()


def test_a_full_memory_that_still_covers_our_versions_is_conclusive() -> None:
    """Goal: with 16 remembered ids whose oldest is below the version our change would have
    produced, ours would be there had it been applied: apply it (no needless 504)."""
    full = tuple((f"r{i}", 100 - i) for i in range(RECENT_MAX))  # versions 85..100
    rnd = ProposerRound("k", B, Set(b"m"), Q3, "mine", sent_from_version=90)
    rnd.on_reply(1, Promise("k", B, Ballot(4, 2, 1), Value(100, b"x", full)))
    step = rnd.on_reply(2, Promise("k", B, Ballot.ZERO, EMPTY))
    assert isinstance(step, SendAccept)
    assert step.accept.value.version == 101


def test_retry_where_the_request_was_never_applied_applies_it_once() -> None:
    """Goal: when the newest value does not hold the request (and forgot nothing), no
    earlier attempt can be chosen any more: apply the change afresh, recording its id."""
    rnd = ProposerRound("k", B, Set(b"m"), Q3, "r1", sent_from_version=3)
    rnd.on_reply(1, Promise("k", B, Ballot(2, 1, 1), Value(2, b"base", (("r0", 2),))))
    step = rnd.on_reply(2, Promise("k", B, Ballot(2, 1, 1), Value(2, b"base", (("r0", 2),))))
    assert step == SendAccept(Accept("k", B, Value(3, b"m", (("r1", 3), ("r0", 2)))))


def test_idempotency_key_reused_by_a_new_request_is_not_applied_again() -> None:
    """Goal: a client retry with the same Idempotency-Key gets the first outcome."""
    cur = Value(7, b"later", (("r5", 7), ("c:abc", 6)))
    value, outcome = apply_change(cur, Set(b"again"), "c:abc")
    assert value == cur
    assert (outcome.kind, outcome.value.version) == ("applied", 6)


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


def test_identity_round_of_a_read_records_no_request() -> None:
    """Goal: reads change nothing, not even the remembered request ids."""
    rnd = ProposerRound("k", B, Read(), Q3, "r1", sent_from_version=5)
    rnd.on_reply(1, Promise("k", B, Ballot(9, 2, 1), Value(5, b"z")))
    step = rnd.on_reply(2, Promise("k", B, Ballot.ZERO, EMPTY))
    assert step == SendAccept(Accept("k", B, Value(5, b"z")))


def test_next_ballot_is_above_everything_seen_and_unique_per_incarnation() -> None:
    """Goal: ballots jump past nacks and never repeat across restarts (incarnation)."""
    b = next_ballot(3, Ballot(10, 2, 7), node_id=1, incarnation=4)
    assert b == Ballot(11, 1, 4)
    assert b > Ballot(10, 2, 7)
    assert next_ballot(0, Ballot.ZERO, 1, 5) != next_ballot(0, Ballot.ZERO, 1, 6)


# ---------------------------------------------------------------- phase-1 skip (invariant 8)

def _committed_with_next(promisers: list[int]) -> tuple[ProposerRound, object]:
    nxt = Ballot(6, 1, 1)
    rnd = ProposerRound("k", B, Set(b"new"), Q3, next_ballot=nxt)
    rnd.on_reply(1, Promise("k", B, Ballot.ZERO, EMPTY))
    step = rnd.on_reply(2, Promise("k", B, Ballot.ZERO, EMPTY))
    assert step == SendAccept(Accept("k", B, Value(1, b"new"), nxt))
    last: object = None
    for a in (1, 2):
        last = rnd.on_reply(a, Accepted("k", B, nxt if a in promisers else None))
    return rnd, last


def test_commit_with_a_promising_quorum_leaves_the_next_ballot_prepared() -> None:
    """Goal: a quorum that accepted and promised ``next`` lets the next change skip phase 1,
    starting from the value just chosen."""
    rnd, step = _committed_with_next([1, 2])
    assert isinstance(step, Committed)
    assert prepared_after(rnd, step) == Prepared(Ballot(6, 1, 1), Value(1, b"new"))


def test_commit_without_a_promising_quorum_leaves_nothing() -> None:
    """Goal: one acceptor that accepted without promising (catching up) means no quorum
    promised ``next``: the next change runs a full round."""
    rnd, step = _committed_with_next([1])
    assert isinstance(step, Committed)
    assert prepared_after(rnd, step) is None


def test_prepared_round_starts_with_its_accept_and_a_refusal_leaves_nothing() -> None:
    """Goal: a prepared round sends the accept built on the cached value at once; when it is
    refused for a higher ballot it aborts as contention and caches nothing, so the retry
    learns the other proposer's value through a full round."""
    prepared = Prepared(Ballot(6, 1, 1), Value(1, b"a"))
    nxt = Ballot(7, 1, 1)
    rnd = ProposerRound("k", prepared.ballot, Cas(1, b"b"), Q3, next_ballot=nxt,
                        prepared=prepared)
    first = rnd.start()
    assert first == SendAccept(Accept("k", prepared.ballot, Value(2, b"b"), nxt))
    assert rnd.on_reply(1, Nack("k", prepared.ballot, Ballot(9, 3, 1))) == Wait()
    step = rnd.on_reply(2, Nack("k", prepared.ballot, Ballot(9, 3, 1)))
    assert step == Abort(Phase.ACCEPT, Ballot(9, 3, 1), conflict=True)
    assert prepared_after(rnd, step) is None


# ---------------------------------------------------------------- several changes per round

def _promised_round(items: list[Pending], base: Value) -> tuple[ProposerRound, object]:
    rnd = ProposerRound("k", B, items[0].change, Q3, items=items)
    rnd.on_reply(1, Promise("k", B, Ballot(1, 2, 1), base))
    return rnd, rnd.on_reply(2, Promise("k", B, Ballot(1, 2, 1), base))


def test_changes_of_one_round_apply_in_order_each_with_its_own_outcome() -> None:
    """Goal: concurrent compare-and-sets on one key share a round: the first wins, the
    second is rejected against the first's result, a read sees it; one accept carries it."""
    base = Value(3, b"v3")
    items = [Pending(Cas(3, b"a"), "r1"), Pending(Cas(3, b"b"), "r2"), Pending(Read(), "r3")]
    rnd, step = _promised_round(items, base)
    assert isinstance(step, SendAccept)
    assert step.accept.value == Value(4, b"a", (("r1", 4),))
    after = Value(4, b"a", (("r1", 4),))
    assert rnd.results == [Outcome("applied", after), Outcome("rejected", after),
                           Outcome("read", after)]


def test_only_changes_an_accept_newly_applies_count_as_sent() -> None:
    """Goal: "unknown" on failure only for requests the accept really applies: a rejected
    condition, a read, an abandoned request and a retry that finds its id already applied
    all stay "definitely not applied" (or already known)."""
    base = Value(5, b"x", (("done", 5),))
    items = [Pending(Set(b"s"), "r1"), Pending(Cas(1, b"no"), "r2"), Pending(Read(), "r3"),
             Pending(Set(b"late"), "r4", abandoned=True), Pending(Set(b"again"), "done")]
    rnd, step = _promised_round(items, base)
    assert isinstance(step, SendAccept)
    rnd.note_accept_sent()
    assert [i.progress.accept_sent for i in items] == [True, False, False, False, False]
    assert items[0].progress.sent_from_version == 6
    assert rnd.results[3] is None
    assert rnd.results[4] == Outcome("applied", Value(5, b"x"))


def test_a_request_whose_attempt_may_be_forgotten_is_unknown_alone() -> None:
    """Goal: one request of a round is "unknown" (its earlier accept is beyond the value's
    memory); the others still go ahead in the same accept."""
    recent = tuple((f"o{i}", 40 - i) for i in range(RECENT_MAX))
    base = Value(40, b"x", recent)
    lost = Pending(Set(b"m"), "mine")
    lost.progress.on_accept_sent(3)
    items = [lost, Pending(Set(b"n"), "r2")]
    rnd, step = _promised_round(items, base)
    assert isinstance(step, SendAccept)
    assert rnd.results[0] == Unknown()
    assert step.accept.value.version == 41 and step.accept.value.data == b"n"
