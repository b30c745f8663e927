"""Deliberately broken variants of the protocol; the simulator must catch every one.

A mutant changes one rule through a seam the node already offers (``AcceptorRules``, the
``quorum`` argument, the storage, the identity it is given), never node.py itself.
"""

from __future__ import annotations

from typing import Final

from paxoskv.core.acceptor import AcceptorState, Step
from paxoskv.core.messages import Accept, Accepted, Prepare, Promise
from paxoskv.node import AcceptorRules

__all__ = ["MUTANTS", "NO_PROMISE_CHECK_RULES"]

MUTANTS: Final[dict[str, str]] = {
    "no-fsync": "storage acknowledges a write before it is durable; a crash loses it",
    "no-promise-check": "acceptors promise every prepare and accept below their promise",
    "small-quorum": "quorum size is one less than a majority",
    "reuse-ballot": "a restarted node keeps its first incarnation, so reuses its old ballots",
}


def _promise_always(state: AcceptorState, msg: Prepare) -> Step:
    """Broken invariant 2: promise whatever the ballot, even below an earlier promise."""
    promised = max(msg.ballot, state.ballot_accepted)  # AcceptorState insists on this
    new = AcceptorState(promised, state.ballot_accepted, state.value)
    return Step(new, True, Promise(msg.key, msg.ballot, state.ballot_accepted, state.value))


def _accept_always(state: AcceptorState, msg: Accept) -> Step:
    """Broken invariant 2: accept whatever the ballot, even below the promise."""
    if msg.ballot == state.ballot_accepted:
        return Step(state, False, Accepted(msg.key, msg.ballot))
    new = AcceptorState(max(msg.ballot, state.ballot_promised), msg.ballot, msg.value)
    return Step(new, True, Accepted(msg.key, msg.ballot))


NO_PROMISE_CHECK_RULES: Final = AcceptorRules(on_prepare=_promise_always,
                                              on_accept=_accept_always)
