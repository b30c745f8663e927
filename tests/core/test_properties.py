"""Property tests: acceptors and proposers exchanging messages in arbitrary order.

Method: hypothesis drives 3 or 5 acceptors and up to 3 proposers through a random schedule
of message deliveries, drops and duplicates, and new rounds with random changes. After every
accept we recompute which (ballot, value) pairs a quorum has accepted ("chosen") and assert
the CASPaxos safety property: once a value is chosen for the register, no other value is
chosen at a lower-or-equal version, and versions of chosen values never go back as ballots
grow.
"""

from __future__ import annotations

import itertools
import random
from collections.abc import Callable
from dataclasses import dataclass, field

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from paxoskv.core.acceptor import EMPTY_STATE, AcceptorState, Step, on_accept, on_prepare
from paxoskv.core.ballot import Ballot
from paxoskv.core.messages import Accept, Accepted, Message, Prepare, Reply, Request
from paxoskv.core.proposer import Abort, Committed, ProposerRound, SendAccept, next_ballot
from paxoskv.core.quorum import QuorumConfig
from paxoskv.core.register import Cas, Change, Create, Delete, Read, Set, Value

KEY = "k"


@dataclass
class World:
    config: QuorumConfig
    acceptors: dict[int, AcceptorState]
    rounds: dict[int, ProposerRound | None]
    counters: dict[int, int]
    seen: dict[int, Ballot]
    wire: list[tuple[str, int, int, Message]] = field(default_factory=list)
    accepted_by: dict[Ballot, set[int]] = field(default_factory=dict)
    value_of: dict[Ballot, Value] = field(default_factory=dict)
    committed: list[tuple[Ballot, Value]] = field(default_factory=list)
    accept_rule: Callable[[AcceptorState, Accept], Step] = on_accept

    def chosen(self) -> list[tuple[Ballot, Value]]:
        return sorted((b, self.value_of[b]) for b, ids in self.accepted_by.items()
                      if len(ids) >= self.config.quorum)


def deliver(w: World, dest_kind: str, dest: int, src: int, msg: Message) -> None:
    if dest_kind == "a":
        assert isinstance(msg, Request)
        state = w.acceptors[dest]
        if isinstance(msg, Prepare):
            step = on_prepare(state, msg)
        else:
            assert isinstance(msg, Accept)
            step = w.accept_rule(state, msg)
            if step.state.ballot_accepted == msg.ballot:
                w.accepted_by.setdefault(msg.ballot, set()).add(dest)
                prev = w.value_of.setdefault(msg.ballot, msg.value)
                assert prev == msg.value, "one ballot, two values"
        w.acceptors[dest] = step.state
        w.wire.append(("p", src, dest, step.reply))
        return
    rnd = w.rounds.get(dest)
    if rnd is None:
        return
    assert not isinstance(msg, Request)
    reply: Reply = msg
    result = rnd.on_reply(src, reply)
    if isinstance(result, SendAccept):
        for a in sorted(w.config.acceptors):
            w.wire.append(("a", a, dest, result.accept))
    elif isinstance(result, Committed):
        assert rnd.accept is not None
        w.committed.append((rnd.ballot, rnd.accept.value))
        w.rounds[dest] = None
    elif isinstance(result, Abort):
        w.seen[dest] = max(w.seen[dest], result.ballot_seen)
        w.rounds[dest] = None


changes = st.one_of(
    st.builds(Set, st.sampled_from([b"a", b"b", b"c"])),
    st.builds(Cas, st.integers(0, 4), st.sampled_from([b"x", b"y"])),
    st.builds(Create, st.just(b"new")),
    st.builds(Delete, st.one_of(st.none(), st.integers(0, 4))),
    st.just(Read()),
)


def check_safety(w: World) -> None:
    chosen = w.chosen()
    for (b1, v1), (b2, v2) in itertools.pairwise(chosen):
        assert b1 < b2
        assert v2.version >= v1.version, f"version went back: {v1} at {b1} then {v2} at {b2}"
        if v2.version == v1.version:
            assert v2 == v1, f"two values chosen at version {v1.version}: {v1} and {v2}"
    # every committed round's value is chosen
    chosen_set = set(chosen)
    for b, v in w.committed:
        assert (b, v) in chosen_set


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(n=st.sampled_from([3, 5]), proposers=st.integers(1, 3), data=st.data())
def test_no_two_values_chosen_at_one_version(n: int, proposers: int, data: st.DataObject
                                             ) -> None:
    """Goal: CASPaxos safety under arbitrary delivery order, drops and duplicates."""
    config = QuorumConfig.of(range(1, n + 1))
    w = World(config, {a: EMPTY_STATE for a in config.acceptors},
              {p: None for p in range(1, proposers + 1)}, {p: 0 for p in range(1, proposers + 1)},
              {p: Ballot.ZERO for p in range(1, proposers + 1)})
    for _ in range(data.draw(st.integers(10, 150), label="steps")):
        action = data.draw(st.sampled_from(["start", "deliver", "deliver", "deliver", "drop",
                                            "dup"]))
        if action == "start" or not w.wire:
            p = data.draw(st.integers(1, proposers), label="proposer")
            change: Change = data.draw(changes, label="change")
            ballot = next_ballot(w.counters[p], w.seen[p], node_id=p, incarnation=0)
            w.counters[p] = ballot.counter
            rnd = ProposerRound(KEY, ballot, change, config)
            w.rounds[p] = rnd
            for a in sorted(config.acceptors):
                w.wire.append(("a", a, p, rnd.prepare()))
            continue
        i = data.draw(st.integers(0, len(w.wire) - 1), label="message")
        if action == "drop":
            w.wire.pop(i)
        elif action == "dup":
            w.wire.append(w.wire[i])
        else:
            kind, dest, src, msg = w.wire.pop(i)
            deliver(w, kind, dest, src, msg)
            check_safety(w)
    check_safety(w)


AcceptRule = Callable[[AcceptorState, Accept], Step]


def explore(seed: int, accept_rule: AcceptRule = on_accept, n: int = 3, proposers: int = 3,
            steps: int = 100) -> None:
    """One seeded random schedule (the same moves as the hypothesis test, without shrinking)."""
    rng = random.Random(seed)
    config = QuorumConfig.of(range(1, n + 1))
    ps = range(1, proposers + 1)
    w = World(config, {a: EMPTY_STATE for a in config.acceptors}, {p: None for p in ps},
              {p: 0 for p in ps}, {p: Ballot.ZERO for p in ps}, accept_rule=accept_rule)
    for _ in range(steps):
        action = rng.choice(["start", "deliver", "deliver", "deliver", "drop", "dup"])
        if action == "start" or not w.wire:
            p = rng.choice(list(ps))
            ballot = next_ballot(w.counters[p], w.seen[p], node_id=p, incarnation=0)
            w.counters[p] = ballot.counter
            rnd = ProposerRound(KEY, ballot, Set(bytes([65 + rng.randrange(6)])), config)
            w.rounds[p] = rnd
            w.wire.extend(("a", a, p, rnd.prepare()) for a in sorted(config.acceptors))
            continue
        i = rng.randrange(len(w.wire))
        if action == "drop":
            w.wire.pop(i)
        elif action == "dup":
            w.wire.append(w.wire[i])
        else:
            deliver(w, *w.wire.pop(i))
            check_safety(w)


def accept_ignoring_promise(state: AcceptorState, msg: Accept) -> Step:
    """A deliberately broken acceptor: accepts below its promise (mutant no-promise-check)."""
    promised = max(state.ballot_promised, msg.ballot)
    return Step(AcceptorState(promised, min(msg.ballot, promised), msg.value), True,
                Accepted(msg.key, msg.ballot))


def test_seeded_schedules_are_safe() -> None:
    """Goal: the same property over 2,000 seeded schedules of 3 acceptors, 3 proposers."""
    for seed in range(2000):
        explore(seed)


def test_the_property_catches_an_acceptor_that_ignores_its_promise() -> None:
    """Goal: the property can fail: with the promise check removed from accept, some of the
    same 2,000 schedules choose two values at one version (seen: 50 of 2,000)."""
    caught = 0
    for seed in range(2000):
        try:
            explore(seed, accept_ignoring_promise)
        except AssertionError:
            caught += 1
    assert caught > 0
