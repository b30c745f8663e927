"""Cross-replica invariants, checked on every acceptor reply the network carries.

The linearizability checker sees only what clients saw; it finds damage once it reaches a
client. This checker sees the acceptors' answers as they leave (TigerBeetle's
``state_checker``), so it names the broken rule at the moment it breaks:

1. An acceptor's promises never go down (DESIGN invariant 2): every Promise, Accepted or
   Nack it sends is for a ballot at or above every promise it acknowledged before.
2. What an acceptor acknowledged survives its crashes (invariant 1): when it restarts, its
   durable promise is at or above every ballot it acknowledged.
3. One ballot carries one value: no two acceptors accept different values under the same
   ballot (ballots are unique per proposer and incarnation).

Replies an acceptor gives its own proposer do not cross the network and are not seen.
"""

from __future__ import annotations

from paxoskv.core.ballot import Ballot
from paxoskv.core.messages import Accept, Accepted, Nack, Promise, Reply, Request
from paxoskv.core.register import Value
from paxoskv.sim.storage import SimStorage

__all__ = ["StateChecker"]


class StateChecker:
    def __init__(self) -> None:
        self.failures: list[str] = []
        self._promised: dict[tuple[int, str], Ballot] = {}
        self._values: dict[tuple[str, Ballot], Value] = {}

    def on_reply(self, acceptor_id: int, request: Request, reply: Reply) -> None:
        """An acceptor sent ``reply`` to ``request`` (whether or not it arrives)."""
        slot = (acceptor_id, request.key)
        before = self._promised.get(slot, Ballot.ZERO)
        match reply:
            case Promise(ballot=ballot) | Accepted(ballot=ballot):
                if ballot < before:
                    self._fail(f"acceptor {acceptor_id} acknowledged {type(reply).__name__} "
                               f"{ballot} on {request.key!r} below its promise {before}")
                else:
                    self._promised[slot] = ballot
                if isinstance(reply, Accepted) and isinstance(request, Accept):
                    self._check_one_value(acceptor_id, request)
            case Nack(ballot_promised=promised):
                if promised < before:
                    self._fail(f"acceptor {acceptor_id} nacked on {request.key!r} with promise "
                               f"{promised} below its earlier promise {before}")
            case _:
                pass

    def on_restart(self, acceptor_id: int, storage: SimStorage) -> None:
        """A new process of ``acceptor_id`` opens ``storage``: nothing acknowledged is lost."""
        for (node_id, key), ballot in self._promised.items():
            if node_id != acceptor_id:
                continue
            durable = storage.durable_state(key).ballot_promised
            if durable < ballot:
                self._fail(f"acceptor {acceptor_id} restarted with promise {durable} on {key!r} "
                           f"but had acknowledged {ballot}")
                self._promised[(node_id, key)] = durable  # report each loss once

    def _check_one_value(self, acceptor_id: int, accept: Accept) -> None:
        known = self._values.setdefault((accept.key, accept.ballot), accept.value)
        if known != accept.value:
            self._fail(f"acceptor {acceptor_id} accepted {accept.value} under ballot "
                       f"{accept.ballot} on {accept.key!r}, where {known} was accepted before")

    def _fail(self, message: str) -> None:
        if len(self.failures) < 20:
            self.failures.append(message)
