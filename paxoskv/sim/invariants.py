"""Cross-replica invariants, checked on every acceptor reply the network carries.

The linearizability checker sees only what clients saw; it finds damage once it reaches a
client. This checker sees the acceptors' answers as they leave (TigerBeetle's
``state_checker``), so it names the broken rule at the moment it breaks:

1. An acceptor's promises never go down (docs/design.md invariant 2): every Promise, Accepted or
   Nack it sends is for a ballot at or above every promise it acknowledged before.
2. What an acceptor acknowledged survives its crashes (invariant 1): when it restarts, its
   durable promise is at or above every ballot it acknowledged.
3. One ballot carries one value: no two acceptors accept different values under the same
   classic ballot (ballots are unique per proposer and incarnation). A fast ballot is
   shared by the proposers that build on one accepted ballot, so acceptors may accept
   different values under it, but each acceptor at most one, and only on top of the base
   ballot the accept names (docs/design.md invariant 9).
4. An acceptor whose state was lost or rolled back (a new data directory, or an old copy
   put back, while it had acknowledged promises the state no longer holds) promises
   nothing within a fence (``NodeConfig.rejoin_fence_s``) of each of its restarts until the
   simulated operator's recovery is over (docs/design.md invariants 4 and 6: a rejoin must wait out
   every round its lost promises could still take part in).

Replies an acceptor gives its own proposer do not cross the network and are not seen.
"""

from __future__ import annotations

from collections.abc import Callable

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
        self._fast_values: dict[tuple[int, str, Ballot], Value] = {}
        self._fenced_until: dict[int, float] = {}
        self.clock: Callable[[], float] | None = None

    def on_reply(self, acceptor_id: int, request: Request, reply: Reply) -> None:
        """An acceptor sent ``reply`` to ``request`` (whether or not it arrives)."""
        slot = (acceptor_id, request.key)
        before = self._promised.get(slot, Ballot.ZERO)
        fenced = self._fenced_until.get(acceptor_id)
        if isinstance(reply, Promise) and fenced is not None and self.clock is not None \
                and self.clock() < fenced:
            self._fail(f"acceptor {acceptor_id} promised {reply.ballot} on {request.key!r} "
                       f"with a lost or rolled-back state, {fenced - self.clock():.1f}s before "
                       "its fence ends")
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

    def lost_acknowledged(self, acceptor_id: int, storage: SimStorage) -> bool:
        """Whether ``storage`` lacks a promise ``acceptor_id`` acknowledged (state lost)."""
        return any(storage.durable_state(key).ballot_promised < ballot
                   for (node_id, key), ballot in self._promised.items()
                   if node_id == acceptor_id)

    def fence(self, acceptor_id: int, until: float) -> None:
        """``acceptor_id`` restarted with a lost or rolled-back state: no promise before
        ``until`` (rule 4)."""
        self._fenced_until[acceptor_id] = until
        self._forget_fast_values(acceptor_id)

    def forget(self, acceptor_id: int) -> None:
        """``acceptor_id``'s state was declared lost (a new data directory, or a rejoin):
        what it acknowledged before binds it no more; the rejoin protocol answers for it."""
        for slot in [s for s in self._promised if s[0] == acceptor_id]:
            del self._promised[slot]
        self._forget_fast_values(acceptor_id)

    def forget_keys(self, acceptor_id: int, keys: list[str]) -> None:
        """``acceptor_id`` dropped its rows of ``keys`` before adopting a config that brings
        it into their groups (docs/groups.md, "Stale rows"): their promises are no part of
        any quorum that can still form, and bind it no more."""
        for key in keys:
            self._promised.pop((acceptor_id, key), None)

    def _forget_fast_values(self, acceptor_id: int) -> None:
        """A lost or rolled-back state may accept anew under a fast ballot it took before
        (it no longer holds that accept); rule 3 holds per state, not per node id."""
        for slot in [s for s in self._fast_values if s[0] == acceptor_id]:
            del self._fast_values[slot]

    def _check_one_value(self, acceptor_id: int, accept: Accept) -> None:
        if accept.ballot.is_fast:
            slot = (acceptor_id, accept.key, accept.ballot)
            mine = self._fast_values.setdefault(slot, accept.value)
            if mine != accept.value:
                self._fail(f"acceptor {acceptor_id} accepted {accept.value} under fast ballot "
                           f"{accept.ballot} on {accept.key!r}, where it had accepted {mine}")
            return
        known = self._values.setdefault((accept.key, accept.ballot), accept.value)
        if known != accept.value:
            self._fail(f"acceptor {acceptor_id} accepted {accept.value} under ballot "
                       f"{accept.ballot} on {accept.key!r}, where {known} was accepted before")

    def _fail(self, message: str) -> None:
        if len(self.failures) < 20:
            self.failures.append(message)
