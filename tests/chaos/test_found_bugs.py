"""Bugs the chaos runs found, each reduced to a deterministic scenario on the pure core,
kept as regression tests once fixed."""

from __future__ import annotations

from paxoskv.core.acceptor import EMPTY_STATE, AcceptorState, on_accept, on_prepare
from paxoskv.core.ballot import Ballot
from paxoskv.core.messages import Accept
from paxoskv.core.proposer import Abort, Committed, ProposerRound, SendAccept
from paxoskv.core.quorum import QuorumConfig
from paxoskv.core.register import Create, Value


class _Acceptors:
    def __init__(self, ids: list[int]) -> None:
        self.state: dict[int, AcceptorState] = {i: EMPTY_STATE for i in ids}

    def prepare(self, rnd: ProposerRound, ids: list[int]) -> object:
        step: object = None
        for i in ids:
            s = on_prepare(self.state[i], rnd.prepare())
            self.state[i] = s.state
            step = rnd.on_reply(i, s.reply)
        return step

    def accept(self, rnd: ProposerRound, msg: Accept, ids: list[int]) -> object:
        step: object = None
        for i in ids:
            s = on_accept(self.state[i], msg)
            self.state[i] = s.state
            step = rnd.on_reply(i, s.reply)
        return step


def test_an_older_accept_of_the_same_request_is_not_applied_twice() -> None:
    """Chaos, 3 nodes, seed 1182905457, during a rolling kill -9: ``create('c8-237')`` was
    answered 412 (current version 39) and the key then read ``'c8-237'`` at version 39.

    Reduced: attempt 1's accept reaches only A1; attempt 2 gets promises from A2 and A3 (who
    never saw attempt 1), applies the change again, and its accept is lost; attempt 3 gets
    promises from A1 and A2. The highest accepted value is attempt 1's, below attempt 2's
    ballot; when the proposer remembered only its latest accept it took attempt 1's value
    for someone else's state and applied the create to it: "rejected", while its own value
    was what got chosen. Fixed by request ids in the register: the value remembers the
    requests applied to it, so the retry finds its own create and finishes it.
    """
    quorum = QuorumConfig.of([1, 2, 3])
    acceptors = _Acceptors([1, 2, 3])
    change = Create(b"x")

    r1 = ProposerRound("k", Ballot(1, 1), change, quorum, "req")
    step = acceptors.prepare(r1, [1, 2])
    assert isinstance(step, SendAccept)
    acceptors.accept(r1, step.accept, [1])
    assert isinstance(r1.on_timeout(), Abort)
    assert r1.accept is not None and r1.outcome is not None

    r2 = ProposerRound("k", Ballot(2, 1), change, quorum, "req", sent_from_version=1)
    step = acceptors.prepare(r2, [2, 3])
    assert isinstance(step, SendAccept)
    assert isinstance(r2.on_timeout(), Abort)  # accept lost everywhere
    assert r2.accept is not None and r2.outcome is not None

    r3 = ProposerRound("k", Ballot(3, 1), change, quorum, "req", sent_from_version=1)
    step = acceptors.prepare(r3, [1, 2])
    if not isinstance(step, SendAccept):
        return  # e.g. Unknown (504): an honest answer
    done = acceptors.accept(r3, step.accept, [1, 2])
    assert isinstance(done, Committed)
    chosen = step.accept.value
    assert chosen == Value(1, b"x", (("req", 1),))  # this request's create is what it holds
    assert done.outcome.kind == "applied", (
        f"client told {done.outcome.kind!r} while its own write {chosen} was chosen")
