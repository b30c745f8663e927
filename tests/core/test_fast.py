"""Fast Paxos rules (docs/design.md invariant 9): the fast quorum, the acceptor's rule for a
fast ballot, the proposer's fast round, value selection after a collision and the read rule."""

import pytest

from paxoskv.core.acceptor import EMPTY_STATE, AcceptorState, on_accept, on_prepare
from paxoskv.core.ballot import Ballot
from paxoskv.core.messages import (
    Accept,
    Accepted,
    Nack,
    PeerProtocolError,
    Prepare,
    Promise,
    QueryReply,
    Unavailable,
    from_wire,
    to_wire,
)
from paxoskv.core.proposer import (
    Abort,
    Committed,
    FastBase,
    Phase,
    ProposerRound,
    QueryRound,
    SendAccept,
    Wait,
    choose_value,
    classify_failure,
    fast_base,
)
from paxoskv.core.quorum import QuorumConfig, fast_quorum, majority
from paxoskv.core.register import Outcome, Read, Set, Value

Q3 = QuorumConfig.of([1, 2, 3])
Q5 = QuorumConfig.of([1, 2, 3, 4, 5])
B = Ballot(4, 2, 1)
F = B.successor()
BASE = Value(3, b"base", (("r0", 3),))
X, Y = Value(4, b"x", (("rx", 4), ("r0", 3))), Value(4, b"y", (("ry", 4), ("r0", 3)))
AT_B = AcceptorState(B, B, BASE)


def fast_accept(value: Value, base: Ballot = B, base_value: Value = BASE) -> Accept:
    return Accept("k", base.successor(), value, None, base, base_value.digest())


# ------------------------------------------------------------------ quorum


def test_fast_quorum_is_the_smallest_meeting_two_fast_and_one_classic() -> None:
    """Goal: q_f is the smallest size with 2*q_f + q_c > 2n (n=3: 3, n=5: 4), so any two
    fast quorums and a classic one share an acceptor."""
    assert fast_quorum(3, 2) == 3 and fast_quorum(5, 3) == 4
    for n in range(1, 10):
        qc = majority(n)
        qf = fast_quorum(n, qc)
        assert 2 * qf + qc > 2 * n
        assert qf == 1 or 2 * (qf - 1) + qc <= 2 * n
    assert Q3.fast == 3 and Q3.everyone().fast == 3 and Q5.fast == 4
    assert QuorumConfig(frozenset({1, 2, 3}), 2, 2).fast == 2  # the mutant's override


# ------------------------------------------------------------------ acceptor


def test_fast_accept_on_its_base_is_accepted_and_persisted() -> None:
    """Goal: an acceptor that accepted the base ballot with the base value, and promised
    nothing above the fast ballot, accepts, promising the fast ballot."""
    step = on_accept(AT_B, fast_accept(X))
    assert step.persist and step.reply == Accepted("k", F)
    assert step.state == AcceptorState(F, F, X)


def test_first_fast_accept_of_a_key_builds_on_nothing() -> None:
    """Goal: a key never written is at ballot zero: a fast round at its successor works."""
    step = on_accept(EMPTY_STATE, fast_accept(X, Ballot.ZERO, EMPTY_STATE.value))
    assert step.reply == Accepted("k", Ballot.ZERO.successor())


def test_second_value_at_one_fast_ballot_is_refused_and_duplicate_answered() -> None:
    """Goal: one value per acceptor per fast ballot: a different value under the same fast
    ballot is refused (no assertion fires), the same one answered again without a write."""
    state = on_accept(AT_B, fast_accept(X)).state
    other = on_accept(state, fast_accept(Y))
    assert other.reply == Nack("k", F, F) and not other.persist and other.state == state
    again = on_accept(state, fast_accept(X))
    assert again.reply == Accepted("k", F) and not again.persist


@pytest.mark.parametrize("state", [
    AcceptorState(B, Ballot(3, 1, 1), BASE),  # accepted another ballot below
    AcceptorState(Ballot(4, 3, 0), B, BASE),  # promised above the fast ballot
    AcceptorState(F.successor(), F.successor(), X),  # moved on past it
    AcceptorState(B, B, Value(3, b"other")),  # the base ballot, another value at it
])
def test_fast_accept_is_refused_unless_on_exactly_the_base(state: AcceptorState) -> None:
    """Goal: accepted only on top of exactly what the proposer built on (ballot and value:
    a fast base may carry different values), with no promise above the fast ballot."""
    step = on_accept(state, fast_accept(X))
    assert isinstance(step.reply, Nack) and not step.persist and step.state == state


def test_after_a_fast_accept_a_classic_prepare_above_it_still_works() -> None:
    state = on_accept(AT_B, fast_accept(X)).state
    step = on_prepare(state, Prepare("k", Ballot(5, 1, 1)))
    assert step.reply == Promise("k", Ballot(5, 1, 1), F, X)


def test_fast_accept_wire_round_trip_and_malformed() -> None:
    """Goal: a fast accept carries its base ballot and digest; an accept whose ballot is
    not the base's successor, or that has no base, or a classic one naming a base, is
    refused as a protocol error."""
    msg = fast_accept(X)
    assert from_wire(to_wire(msg)) == msg
    assert from_wire(to_wire(msg, raw=True)) == msg
    raw = to_wire(msg)
    for bad in ({**raw, "fb": [4, 2, 0]}, {k: v for k, v in raw.items() if k != "fb"},
                {k: v for k, v in raw.items() if k != "fd"}, {**raw, "fd": -1},
                {**raw, "n": [9, 9, 9]}, {**to_wire(Accept("k", B, X)), "fb": [1, 1, 1]}):
        with pytest.raises(PeerProtocolError):
            from_wire(bad)


# ------------------------------------------------------------------ proposer: fast round


def test_fast_round_sends_one_accept_and_needs_a_fast_quorum() -> None:
    """Goal: a fast round starts with its accept at the successor of the base, built on
    the local value, with no piggybacked prepare; two accepts of three do not choose it."""
    rnd = ProposerRound("k", F, Set(b"x"), Q3, request_id="rx", fast=FastBase(B, BASE))
    step = rnd.start()
    assert step == SendAccept(Accept("k", F, Value(4, b"x", (("rx", 4), ("r0", 3))), None,
                                     B, BASE.digest()))
    rnd.note_accept_sent()
    assert rnd.items[0].progress.accept_sent  # may be chosen from now on
    assert rnd.on_reply(1, Accepted("k", F)) == Wait()
    assert rnd.on_reply(2, Accepted("k", F)) == Wait()
    step = rnd.on_reply(3, Accepted("k", F))
    assert isinstance(step, Committed) and step.outcome.kind == "applied"


def test_one_refusal_ends_a_fast_round_of_three_and_its_change_is_not_failed() -> None:
    """Goal: with n=3 every acceptor must accept: one Nack (a collision) ends the round at
    once as a conflict; the change whose accept was sent is "unknown", never "failed"."""
    rnd = ProposerRound("k", F, Set(b"x"), Q3, request_id="rx", fast=FastBase(B, BASE))
    rnd.start()
    rnd.note_accept_sent()
    assert rnd.on_reply(1, Accepted("k", F)) == Wait()
    step = rnd.on_reply(2, Nack("k", F, F))
    assert step == Abort(Phase.ACCEPT, F, True)
    assert classify_failure(rnd.change, rnd.items[0].progress, True) == "unknown"


def test_fast_round_of_five_survives_one_refusal() -> None:
    rnd = ProposerRound("k", F, Set(b"x"), Q5, fast=FastBase(B, BASE))
    rnd.start()
    assert rnd.on_reply(1, Unavailable("k", "down")) == Wait()
    for a in (2, 3, 4):
        assert rnd.on_reply(a, Accepted("k", F)) == Wait()
    assert isinstance(rnd.on_reply(5, Accepted("k", F)), Committed)


# ------------------------------------------------------------------ value selection


def promise(ballot_accepted: Ballot, value: Value) -> Promise:
    return Promise("k", Ballot(9, 1, 1), ballot_accepted, value)


def test_selection_takes_the_highest_ballot_never_below() -> None:
    """Goal: only values at the highest accepted ballot count, classic or fast."""
    assert choose_value([promise(B, BASE), promise(F, X)], Q3) == X
    assert choose_value([promise(F, X), promise(Ballot(5, 1, 0), Y)], Q3) == Y


def test_selection_must_pick_a_value_a_fast_quorum_may_have_chosen() -> None:
    """Goal: n=5, q_f=4, promises from 3: a value reported at the top fast ballot by
    q_f - (n - |Q|) = 2 of them may have been chosen (with the two unseen acceptors) and
    must be picked, even against the deterministic tie-break among the others."""
    first, second = sorted([X, Y], key=lambda v: v.digest())
    # ``second`` loses the tie-break, but two of three report it: it must win.
    got = choose_value([promise(F, first), promise(F, second), promise(F, second)], Q5)
    assert got == second
    # The same with n=3 (q_f=3, |Q|=2: 3 - 1 = 2 reports needed).
    assert choose_value([promise(F, second), promise(F, second)], Q3) == second


def test_selection_without_a_possibly_chosen_value_is_deterministic() -> None:
    """Goal: when no value at the top fast ballot can have been chosen (n=3, Q of 2 that
    disagree), any is safe; every proposer picks the same (lowest digest on a tie)."""
    first, second = sorted([X, Y], key=lambda v: v.digest())
    assert choose_value([promise(F, second), promise(F, first)], Q3) == first
    assert choose_value([promise(F, first), promise(F, second)], Q3) == first
    # n=5, Q of 3, three values: none reaches 2; the tie-break decides.
    z = Value(4, b"z")
    picks = {choose_value(list(order), Q5) for order in (
        [promise(F, X), promise(F, Y), promise(F, z)],
        [promise(F, z), promise(F, Y), promise(F, X)])}
    assert len(picks) == 1


def test_recovery_round_after_a_collision_builds_on_the_must_pick_value() -> None:
    """Goal: a classic round after a collision applies its change to the selected value:
    its own earlier fast value, found in the promises, reports "applied" (not twice)."""
    rnd = ProposerRound("k", Ballot(9, 1, 1), Set(b"x"), Q3, request_id="rx",
                        sent_from_version=4)
    rnd.on_reply(1, Promise("k", Ballot(9, 1, 1), F, X))
    step = rnd.on_reply(2, Promise("k", Ballot(9, 1, 1), F, X))
    assert isinstance(step, SendAccept) and step.accept.value == X
    assert rnd.results[0] == Outcome("applied", Value(4, b"x"))


# ------------------------------------------------------------------ reads


def test_read_at_a_fast_ballot_needs_a_fast_quorum_of_identical_reports() -> None:
    """Goal: two of three identical reports at a fast ballot do not make a chosen value
    (the third may hold another value of that ballot: a collision, nothing chosen, and a
    recovery may pick the other); three do. A classic ballot needs a classic quorum."""
    rnd = QueryRound("k", Q3)
    assert rnd.on_reply(1, QueryReply("k", F, X)) == Wait()
    assert rnd.on_reply(2, QueryReply("k", F, X)) == Wait()
    assert rnd.on_reply(3, QueryReply("k", F, X)) == Committed(Outcome("read", X))
    rnd = QueryRound("k", Q3)
    rnd.on_reply(1, QueryReply("k", F, X))
    rnd.on_reply(2, QueryReply("k", F, X))
    step = rnd.on_reply(3, QueryReply("k", F, Y))
    assert isinstance(step, Abort) and rnd.disagreed()
    rnd = QueryRound("k", Q3)
    rnd.on_reply(1, QueryReply("k", B, BASE))
    assert rnd.on_reply(2, QueryReply("k", B, BASE)) == Committed(Outcome("read", BASE))


def test_read_at_a_fast_ballot_falls_back_when_one_acceptor_is_down() -> None:
    rnd = QueryRound("k", Q3)
    rnd.on_reply(1, QueryReply("k", F, X))
    rnd.on_reply(2, QueryReply("k", F, X))
    assert isinstance(rnd.on_reply(3, Unavailable("k", "down")), Abort)


def _deliver(states: dict[int, AcceptorState], ids: list[int], accept: Accept
             ) -> dict[int, object]:
    replies = {}
    for a in ids:
        step = on_accept(states[a], accept)
        states[a] = step.state
        replies[a] = step.reply
    return replies


def _split_fast_choice() -> tuple[dict[int, AcceptorState], Value, Value]:
    """Five acceptors: nodes 1 and 5 both go fast on one classic base; node 5's own
    acceptor takes its ``v`` first, the other four take node 1's ``u``, which is chosen
    (a fast quorum of 4) and acknowledged."""
    c0 = Ballot(3, 1, 1)
    states = {a: AcceptorState(c0, c0, BASE) for a in Q5.acceptors}
    f1 = c0.successor()
    p1 = ProposerRound("k", f1, Set(b"u"), Q5, request_id="ru", fast=FastBase(c0, BASE))
    p5 = ProposerRound("k", f1, Set(b"v"), Q5, request_id="rv", fast=FastBase(c0, BASE))
    a1, a5 = p1.start(), p5.start()
    assert isinstance(a1, SendAccept) and isinstance(a5, SendAccept)
    _deliver(states, [5], a5.accept)
    replies = _deliver(states, [1, 2, 3, 4, 5], a1.accept)
    step: object = None
    for a in (1, 2, 3, 4, 5):
        if not isinstance(step, Committed):
            step = p1.on_reply(a, replies[a])  # type: ignore[arg-type]
    assert isinstance(step, Committed) and step.outcome.kind == "applied"
    return states, a1.accept.value, a5.accept.value


def test_a_fast_base_that_a_smaller_fast_quorum_decided_is_not_built_on() -> None:
    """Goal: a node whose own acceptor holds a value that lost at a fast ballot, while a
    fast quorum smaller than every acceptor chose another, runs a classic round instead of
    a fast round on it; with three acceptors (the fast quorum is all of them) a fast base
    is as good as a classic one, and a promise above the successor rules a base out."""
    states, u, v = _split_fast_choice()
    assert states[5].value == v != u and states[5].ballot_accepted.is_fast
    assert fast_base(states[5], Q5) is None
    assert fast_base(states[1], Q5) is None  # it cannot tell it holds the winner
    classic = AcceptorState(B, B, BASE)
    assert fast_base(classic, Q5) == FastBase(B, BASE)
    assert fast_base(AcceptorState(F, F, X), Q3) == FastBase(F, X)
    assert fast_base(AcceptorState(Ballot(9, 1, 1), B, BASE), Q3) is None


def test_without_the_fast_base_rule_a_chosen_value_is_lost() -> None:
    """Goal: show the hole ``fast_base`` closes (found by review), so the rule is known to
    matter: built on its losing value anyway, node 5's next fast round is accepted by its
    own acceptor alone, and a classic round whose promises include it picks that value:
    the value chosen and acknowledged at the fast ballot before is gone."""
    states, u, _ = _split_fast_choice()
    s5 = states[5]
    f2 = s5.ballot_accepted.successor()
    p5 = ProposerRound("k", f2, Set(b"w"), Q5, request_id="rw",
                       fast=FastBase(s5.ballot_accepted, s5.value))
    a5 = p5.start()
    assert isinstance(a5, SendAccept)
    replies = _deliver(states, [1, 2, 3, 4, 5], a5.accept)
    assert isinstance(replies[5], Accepted)
    assert all(isinstance(replies[a], Nack) for a in (1, 2, 3, 4))
    c = Ballot(9, 2, 1)
    reader = ProposerRound("k", c, Read(), Q5)
    reader.start()
    step: object = None
    for a in (5, 1, 2):
        prepared = on_prepare(states[a], Prepare("k", c))
        states[a] = prepared.state
        step = reader.on_reply(a, prepared.reply)
    assert isinstance(step, SendAccept)
    assert u.applied_version("ru") is not None
    assert step.accept.value.applied_version("ru") is None  # u lost
