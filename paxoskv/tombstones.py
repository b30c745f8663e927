"""The tombstone collector: removes a deleted key's row from every acceptor (docs/gc.md).

For each tombstone this node sweeps (``Node.sweeps``), once it has been seen unchanged
for the grace period (``--tombstone-grace``):

1. an identity round that every acceptor must promise and accept (not a quorum): the
   tombstone is then the value accepted, at one ballot ``b``, by all of them;
2. ``Collect(key, b, version)`` to every acceptor: each removes the row only if it still
   holds exactly that, and raises its bucket's floor in the same durable step
   (``core/acceptor.py`` ``on_collect``).

An acceptor that missed step 2 keeps a tombstone row at ``b``; the next sweep collects it.
What the rounds decide lives in ``core/``; this module only drives them, in bounded pages
and batches. Split from ``node.py`` like ``recovery.py``; the node owns one ``Collector``.
"""

from __future__ import annotations

import asyncio
import logging
from collections import OrderedDict
from dataclasses import dataclass
from typing import TYPE_CHECKING, Final

from paxoskv.core.ballot import Ballot
from paxoskv.core.messages import Collect, Collected, Reply
from paxoskv.core.proposer import Abort, Committed, ProposerRound, SendAccept, Wait
from paxoskv.core.reconfig import CONFIG_KEY
from paxoskv.core.register import Read

if TYPE_CHECKING:
    from paxoskv.node import ConfigView, Node

__all__ = ["GC_BATCH_KEYS", "GC_PAGE_KEYS", "GC_PENDING_MAX", "Collector", "GcProgress"]

log = logging.getLogger("paxoskv.node")

GC_PAGE_KEYS: Final = 500
"""Keys read from storage per page of a sweep."""
GC_BATCH_KEYS: Final = 100
"""Tombstones collected per sweep at most: the rest wait for the next one."""
GC_PENDING_MAX: Final = 100_000
"""Tombstones remembered (key, ballot, first seen) while their grace runs; beyond it the
sweep notes no more until some are collected (memory stays bounded)."""
GC_ATTEMPTS: Final = 3
"""Rounds one collection tries (refused for a higher ballot) before the next sweep."""


@dataclass(slots=True)
class GcProgress:
    sweeps: int = 0
    rounds: int = 0
    collected: int = 0
    """Keys whose collection every acceptor confirmed."""
    partial: int = 0
    """Collections some acceptor did not confirm (retried by a later sweep)."""
    declined: int = 0
    """Collection rounds that found the key alive or could not reach every acceptor."""
    paused_by_change: int = 0
    """Sweeps or collections skipped: the acceptor-set record was not STABLE with the
    config this node holds (docs/reconfiguration.md, GC), or could not be read."""


class Collector:
    def __init__(self, node: Node) -> None:
        self._node = node
        self.progress = GcProgress()
        self._pending: OrderedDict[str, tuple[Ballot, float]] = OrderedDict()
        """Tombstones seen: the ballot their row was accepted at, and when first seen so."""

    @property
    def enabled(self) -> bool:
        """Collection runs on acceptors with a grace above 0, and not with --fast-paxos on:
        an acceptor rebuilt after a collection has no floor for the collected key, and a
        fast round (which needs no promise) built on its empty state could be accepted
        there and then picked by a recovery round (docs/gc.md, "Not guaranteed")."""
        config = self._node.config
        return config.tombstone_grace_s > 0 and config.is_acceptor and not config.fast_paxos

    @property
    def pending(self) -> int:
        return len(self._pending)

    def interval_s(self) -> float:
        """Time between sweeps: a quarter of the grace, at most a minute."""
        return min(60.0, self._node.config.tombstone_grace_s / 4)

    async def loop(self) -> None:
        node = self._node
        while True:
            await asyncio.sleep(self.interval_s())
            if node.machine.counts_as_acceptor and node.machine.may_propose \
                    and node.quorum_reachable():
                await node._guarded("tombstone collection", self.sweep())

    async def sweep(self) -> None:
        """Page through this acceptor's keys; collect tombstones whose grace is over."""
        node = self._node
        loop = asyncio.get_running_loop()
        grace = node.config.tombstone_grace_s
        due: list[tuple[str, Ballot]] = []
        after: str | None = None
        for _ in range(1_000_000):
            page = node.storage.keys("", after, GC_PAGE_KEYS)
            for key in page:
                state = node.storage.load(key)
                if state.value.exists or state.ballot_accepted.is_zero() \
                        or not node.sweeps(key) or key == CONFIG_KEY:
                    self._pending.pop(key, None)
                    continue
                seen = self._pending.get(key)
                now = loop.time()
                if seen is None or seen[0] != state.ballot_accepted:
                    # New, or written since (a collection round of ours leaves its own
                    # ballot here, see ``collect``): the grace starts now.
                    if seen is None and len(self._pending) >= GC_PENDING_MAX:
                        continue
                    seen = self._pending[key] = (state.ballot_accepted, now)
                if now - seen[1] >= grace and len(due) < GC_BATCH_KEYS:
                    due.append((key, state.ballot_accepted))
            if len(page) < GC_PAGE_KEYS or len(due) >= GC_BATCH_KEYS:
                break
            after = page[-1]
        node.metrics.tombstones_pending(len(self._pending))
        view = await node.collection_allowed() if due else None
        if due and view is None:
            self.progress.paused_by_change += 1
            log.info("tombstone collection paused: an acceptor-set change is in progress")
            due = []
        for key, _ in due:
            if not (node.machine.may_propose and node.quorum_reachable()):
                break
            await self.collect(key, view)
        self.progress.sweeps += 1
        node.metrics.tombstones_pending(len(self._pending))
        if due:
            log.info("tombstone collection: %d due, %d collected so far, %d pending",
                     len(due), self.progress.collected, len(self._pending))

    async def collect(self, key: str, view: ConfigView | None = None) -> bool:
        """One collection of ``key``: the all-acceptor round, then ``Collect`` everywhere,
        all under one config (``view``: one ``Node.collection_allowed`` returned; asked for
        here when not given). True once every acceptor confirmed the row gone."""
        node = self._node
        if not self.enabled:
            return False
        if view is None:
            view = await node.collection_allowed()
        if view is None or node.view is not view:
            self.progress.paused_by_change += 1
            return False
        loop = asyncio.get_running_loop()
        quorum = view.prepare
        config = quorum.everyone() if node.proposer_rules.gc_everyone else quorum
        seen = Ballot.ZERO
        for _ in range(GC_ATTEMPTS):
            ballot = node._next_ballot(seen)
            rnd = ProposerRound(key, ballot, Read(), config)
            self.progress.rounds += 1
            deadline = loop.time() + node.config.phase_timeout_s
            step = await node._broadcast(rnd.prepare(), rnd.on_reply, deadline, view)
            if step is None:
                step = rnd.on_timeout()
            if isinstance(step, SendAccept):
                if step.accept.value.exists:
                    self._pending.pop(key, None)  # written again meanwhile: not ours
                    self.progress.declined += 1
                    return False
                deadline = loop.time() + node.config.phase_timeout_s
                step = await node._broadcast(step.accept, rnd.on_reply, deadline, view)
                if step is None:
                    step = rnd.on_timeout()
            if isinstance(step, Committed):
                assert rnd.accept is not None
                # Every acceptor of ``config`` accepted the tombstone at ``ballot``.
                # A partial removal is retried by the next sweep without a new grace.
                self._pending[key] = (ballot, self._pending.get(key, (ballot, loop.time()))[1])
                return await self._remove_everywhere(key, ballot, rnd.accept.value.version,
                                                     view)
            if isinstance(step, Abort) and step.conflict:
                seen = max(seen, step.ballot_seen)
                continue
            break
        self.progress.declined += 1
        return False

    async def _remove_everywhere(self, key: str, ballot: Ballot, version: int,
                                 view: ConfigView) -> bool:
        node = self._node
        loop = asyncio.get_running_loop()
        done: set[int] = set()

        def on_reply(acceptor_id: int, reply: Reply) -> Wait:
            if isinstance(reply, Collected) and reply.done and reply.ballot == ballot:
                done.add(acceptor_id)
            return Wait()

        await node._broadcast(Collect(key, ballot, version), on_reply,
                              loop.time() + node.config.phase_timeout_s, view)
        if done >= view.prepare.acceptors:
            self._pending.pop(key, None)
            self.progress.collected += 1
            return True
        self.progress.partial += 1
        return False
