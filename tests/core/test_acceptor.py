"""Acceptor rules (paxoskv/core/acceptor.py): the Synod acceptor, events in, effects out."""

from paxoskv.core.acceptor import EMPTY_STATE, AcceptorState, on_accept, on_prepare, on_query
from paxoskv.core.ballot import Ballot
from paxoskv.core.messages import Accept, Accepted, Nack, Prepare, Promise, Query, QueryReply
from paxoskv.core.register import Value

B1, B2, B3 = Ballot(1, 1), Ballot(2, 1), Ballot(3, 2)
V = Value(1, b"a")


def test_prepare_on_empty_promises_and_must_persist() -> None:
    """Goal: a first prepare is promised and marked persist-before-send (invariant 1)."""
    step = on_prepare(EMPTY_STATE, Prepare("k", B1))
    assert step.persist is True
    assert step.state.ballot_promised == B1
    assert step.reply == Promise("k", B1, Ballot.ZERO, Value(0, None))


def test_prepare_below_promise_is_nacked_with_the_higher_ballot() -> None:
    """Goal: invariant 2 and nack fast-forward: the nack names the promise that beat us."""
    state = AcceptorState(B2, Ballot.ZERO, Value(0, None))
    step = on_prepare(state, Prepare("k", B1))
    assert step.reply == Nack("k", B1, B2)
    assert step.persist is False
    assert step.state == state


def test_duplicate_prepare_is_answered_without_a_write() -> None:
    """Goal: a duplicated prepare costs no fsync and repeats the same promise."""
    state = AcceptorState(B2, B1, V)
    step = on_prepare(state, Prepare("k", B2))
    assert step.persist is False
    assert step.reply == Promise("k", B2, B1, V)


def test_promise_reports_the_accepted_value() -> None:
    """Goal: a promise carries (ballot_accepted, value) so the proposer can pick the newest."""
    state = AcceptorState(B1, B1, V)
    step = on_prepare(state, Prepare("k", B3))
    assert step.reply == Promise("k", B3, B1, V)
    assert step.state == AcceptorState(B3, B1, V)


def test_accept_at_or_above_promise_is_accepted_and_persisted() -> None:
    """Goal: accept(b) with b >= promise stores the value and must be durable before the ack."""
    state = AcceptorState(B2, Ballot.ZERO, Value(0, None))
    step = on_accept(state, Accept("k", B2, V))
    assert step.persist is True
    assert step.state == AcceptorState(B2, B2, V)
    assert step.reply == Accepted("k", B2)
    higher = on_accept(state, Accept("k", B3, V))
    assert higher.state == AcceptorState(B3, B3, V)


def test_accept_below_promise_is_nacked() -> None:
    """Goal: invariant 2 for accepts: nothing is stored below a promise."""
    state = AcceptorState(B3, Ballot.ZERO, Value(0, None))
    step = on_accept(state, Accept("k", B2, V))
    assert step.reply == Nack("k", B2, B3)
    assert step.persist is False
    assert step.state == state


def test_duplicate_accept_is_idempotent() -> None:
    """Goal: a duplicated accept is acknowledged again without a write."""
    state = AcceptorState(B2, B2, V)
    step = on_accept(state, Accept("k", B2, V))
    assert step.persist is False
    assert step.reply == Accepted("k", B2)


def test_query_reports_without_promising() -> None:
    """Goal: the one-round-trip read path changes no state."""
    state = AcceptorState(B3, B2, V)
    assert on_query(state, Query("k")) == QueryReply("k", B2, V)


# ---------------------------------------------------------------- phase-1 skip (invariant 8)

NEXT = Ballot(6, 1, 1)


def test_accept_with_next_also_promises_next_in_the_same_durable_step() -> None:
    """Goal: the piggybacked prepare is made durable with the accept, and the reply says so."""
    state = AcceptorState(Ballot(5, 1, 1), Ballot(4, 1, 1), Value(1, b"a"))
    step = on_accept(state, Accept("k", Ballot(5, 1, 1), Value(2, b"b"), NEXT))
    assert step.persist
    assert step.state == AcceptorState(NEXT, Ballot(5, 1, 1), Value(2, b"b"))
    assert step.reply == Accepted("k", Ballot(5, 1, 1), NEXT)


def test_refused_accept_promises_nothing() -> None:
    """Goal: an accept below the promise is nacked and its piggybacked prepare is ignored,
    even when ``next`` is above the promise (that would be a promise without an accept)."""
    state = AcceptorState(Ballot(9, 2, 1), Ballot(4, 1, 1), Value(1, b"a"))
    step = on_accept(state, Accept("k", Ballot(5, 1, 1), Value(2, b"b"), Ballot(10, 1, 1)))
    assert not step.persist
    assert step.state == state
    assert step.reply == Nack("k", Ballot(5, 1, 1), Ballot(9, 2, 1))


def test_duplicate_accept_with_next_is_answered_again_without_a_write() -> None:
    """Goal: a duplicated fast accept finds its own promise and answers as before; once a
    higher prepare came in between, the duplicate is nacked (no second promise)."""
    state = AcceptorState(NEXT, Ballot(5, 1, 1), Value(2, b"b"))
    msg = Accept("k", Ballot(5, 1, 1), Value(2, b"b"), NEXT)
    step = on_accept(state, msg)
    assert not step.persist and step.reply == Accepted("k", Ballot(5, 1, 1), NEXT)
    later = AcceptorState(Ballot(7, 3, 1), Ballot(5, 1, 1), Value(2, b"b"))
    assert on_accept(later, msg).reply == Nack("k", Ballot(5, 1, 1), Ballot(7, 3, 1))
