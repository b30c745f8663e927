"""Tombstone collection rules (paxoskv/core/acceptor.py floors, docs/gc.md): pure steps."""

from __future__ import annotations

from paxoskv.core.acceptor import (
    EMPTY_STATE,
    FLOOR_BUCKETS,
    NO_FLOOR,
    AcceptorState,
    Floor,
    absent_state,
    floor_bucket,
    on_accept,
    on_collect,
    on_prepare,
)
from paxoskv.core.ballot import Ballot
from paxoskv.core.messages import (
    Accept,
    Accepted,
    Collect,
    Collected,
    Nack,
    Prepare,
    Promise,
    from_wire,
    to_wire,
)
from paxoskv.core.proposer import (
    ProposerRound,
    SendAccept,
    Unknown,
    choose_value,
    held_since_pin,
)
from paxoskv.core.quorum import QuorumConfig
from paxoskv.core.register import Create, Set, Value

Q3 = QuorumConfig.of(frozenset({1, 2, 3}))
OLD = Ballot(5, 1, 1)
"""The ballot of a value written before the delete."""
TOMB_AT = Ballot(9, 2, 1)
"""The collection round's ballot: every acceptor accepted the tombstone at it."""
TOMB = AcceptorState(TOMB_AT, TOMB_AT, Value(7, None, (("del", 7),)))


def test_collect_removes_exactly_the_tombstone_and_raises_the_floor() -> None:
    """Goal: the row goes only if it holds the collected tombstone, and the floor takes its
    promise and version in the same step."""
    step = on_collect(TOMB, NO_FLOOR, Collect("k", TOMB_AT, 7), has_row=True)
    assert step.remove
    assert step.floor == Floor(TOMB_AT, 7)
    assert step.reply == Collected("k", TOMB_AT, True)


def test_collect_keeps_a_row_written_since_or_of_another_round() -> None:
    """Goal: a delayed Collect of an earlier round, or one racing a re-created key, removes
    nothing (the row no longer holds that exact tombstone)."""
    recreated = AcceptorState(Ballot(11, 3, 1), Ballot(11, 3, 1), Value(8, b"again"))
    for state, msg in [
        (recreated, Collect("k", TOMB_AT, 7)),
        (TOMB, Collect("k", Ballot(8, 2, 1), 7)),  # an earlier collection round
        (TOMB, Collect("k", TOMB_AT, 6)),
        (AcceptorState(TOMB_AT, TOMB_AT, Value(7, b"x")), Collect("k", TOMB_AT, 7)),
    ]:
        step = on_collect(state, NO_FLOOR, msg, has_row=True)
        assert not step.remove
        assert step.floor == NO_FLOOR
        assert step.reply.done is False


def test_collect_of_a_key_without_a_row_is_done_and_writes_nothing() -> None:
    floor = Floor(TOMB_AT, 7)
    step = on_collect(absent_state(floor), floor, Collect("k", TOMB_AT, 7), has_row=False)
    assert not step.remove and step.reply.done


def test_floor_keeps_a_promise_above_the_accepted_tombstone() -> None:
    """Goal: invariant 2 across removal: a prepare promised after the collection round
    (above its ballot) is still promised once the row is gone."""
    later = Ballot(12, 3, 1)
    state = AcceptorState(later, TOMB_AT, TOMB.value)
    step = on_collect(state, NO_FLOOR, Collect("k", TOMB_AT, 7), has_row=True)
    assert step.remove and step.floor == Floor(later, 7)
    assert absent_state(step.floor).ballot_promised == later


def test_floors_only_go_up_part_by_part() -> None:
    """Goal: two keys of one bucket collected in either order leave the higher ballot and
    the higher version, even when they come from different keys."""
    a, b = Floor(Ballot(20, 1, 1), 3), Floor(Ballot(10, 1, 1), 9)
    assert a.merged(b) == b.merged(a) == Floor(Ballot(20, 1, 1), 9)
    step = on_collect(TOMB, Floor(Ballot(50, 1, 1), 2), Collect("k", TOMB_AT, 7), True)
    assert step.floor == Floor(Ballot(50, 1, 1), 7)


def test_a_delayed_old_accept_or_prepare_is_refused_after_collection() -> None:
    """Goal: the CASPaxos first-proposal hole: an accept of the old value (or a cached
    phase-1-skip ballot) arriving after the row is gone is refused by the floor, as the row
    would have refused it; without the floor (EMPTY_STATE) it would be accepted."""
    floor = on_collect(TOMB, NO_FLOOR, Collect("k", TOMB_AT, 7), True).floor
    gone = absent_state(floor)
    stale = Accept("k", OLD, Value(6, b"old value"))
    assert on_accept(gone, stale).reply == Nack("k", OLD, TOMB_AT)
    assert on_prepare(gone, Prepare("k", TOMB_AT)).reply == Promise(
        "k", TOMB_AT, Ballot.ZERO, Value(7, None))  # equal: a duplicate, answered again
    assert on_prepare(gone, Prepare("k", OLD)).reply == Nack("k", OLD, TOMB_AT)
    assert isinstance(on_accept(EMPTY_STATE, stale).reply, Accepted)  # the hole


def test_absent_state_is_promised_at_the_floor_accepted_at_nothing() -> None:
    """Goal: a removed row reads as absent at its floor's version, outranked in a promise
    quorum by any acceptor holding a real accept (a value chosen after the removal)."""
    floor = Floor(TOMB_AT, 7)
    assert absent_state(floor) == AcceptorState(TOMB_AT, Ballot.ZERO, Value(7, None))
    assert absent_state(NO_FLOOR) is EMPTY_STATE
    after = Value(8, b"new")
    promises = [Promise("k", Ballot(20, 1, 1), Ballot.ZERO, Value(7, None)),
                Promise("k", Ballot(20, 1, 1), Ballot(15, 3, 1), after)]
    assert choose_value(promises, Q3) == after


def test_a_quorum_of_removed_rows_picks_the_highest_version() -> None:
    """Goal: no ABA: acceptors whose floors differ all report absent at ZERO; the round
    takes the highest version, so a re-created key is above every version it had."""
    promises = [Promise("k", Ballot(20, 1, 1), Ballot.ZERO, Value(3, None)),
                Promise("k", Ballot(20, 1, 1), Ballot.ZERO, Value(7, None))]
    assert choose_value(promises, Q3) == Value(7, None)
    rnd = ProposerRound("k", Ballot(20, 1, 1), Create(b"v"), Q3, "c1")
    rnd.on_reply(1, promises[0])
    step = rnd.on_reply(2, promises[1])
    assert isinstance(step, SendAccept) and step.accept.value.version == 8


def test_a_retry_across_a_collection_is_unknown_not_applied_twice() -> None:
    """Goal: exactly-once: a request whose first accept may have made the collected
    tombstone (version 7) finds no request ids on the absent value; it must answer
    "unknown", not apply its change again (found by the simulator, seed 49 with
    restore_probability 0.05, before the rule)."""
    rnd = ProposerRound("k", Ballot(20, 1, 1), Set(b"v"), Q3, "w1", sent_from_version=7)
    rnd.on_reply(1, Promise("k", Ballot(20, 1, 1), Ballot.ZERO, Value(7, None)))
    assert rnd.on_reply(2, Promise("k", Ballot(20, 1, 1), Ballot.ZERO, Value(7, None))) \
        == Unknown()
    assert not Value(7, None).remembers_from(7)
    assert Value(7, None).remembers_from(8)
    assert Value(0, None).remembers_from(1)
    assert Value(2, b"x", (("b", 2), ("a", 1))).remembers_from(1)


def test_collect_messages_round_trip_on_the_wire() -> None:
    for msg in (Collect("k", TOMB_AT, 7), Collected("k", TOMB_AT, True),
                Collected("k", Ballot(3, 1, 1, 2), False)):
        assert from_wire(to_wire(msg)) == msg


def test_buckets_are_stable_and_spread() -> None:
    """Goal: every node and release hashes a key to the same bucket (floors are durable)."""
    assert floor_bucket("k0") == floor_bucket("k0")
    assert all(0 <= floor_bucket(f"key{i}") < FLOOR_BUCKETS for i in range(100))
    # 256 buckets: 100 keys fall into about 83 of them
    assert len({floor_bucket(f"key{i}") for i in range(100)}) > 70
    # The simulator's keys each have a bucket of their own, so its histories keep exact
    # versions (a shared floor makes a re-created key jump, docs/gc.md).
    assert len({floor_bucket(f"k{i}") for i in range(6)}) == 6


def test_a_collection_goes_on_only_while_every_acceptor_still_holds_the_pinned_tombstone() -> None:
    """Goal: the grace counts from the pin, so the collection round must find every
    acceptor still at the pinned tombstone (or without a row): anything else means some
    acceptor did not hold it for the whole grace (docs/gc.md)."""
    from paxoskv.core.register import Value
    pinned = Ballot(7, 1)
    tomb = Value(2, None)
    assert held_since_pin([(pinned, tomb), (pinned, tomb), (Ballot.ZERO, Value(2, None))],
                          pinned)
    assert not held_since_pin([(pinned, tomb), (Ballot(5, 2), Value(1, b"old"))], pinned), \
        "an acceptor that still holds the old value"
    assert not held_since_pin([(pinned, tomb), (Ballot(9, 3), tomb)], pinned), \
        "a tombstone accepted again since the pin (a rejoin's catch-up, a repair)"
    assert not held_since_pin([(pinned, tomb), (Ballot(9, 3), Value(3, b"new"))], pinned)
