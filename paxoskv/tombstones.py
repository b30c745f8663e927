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

from paxoskv.compact import compacted
from paxoskv.core.ballot import Ballot
from paxoskv.core.messages import Collect, Collected, Reply
from paxoskv.core.proposer import Abort, Committed, ProposerRound, SendAccept, Wait
from paxoskv.core.register import Read

if TYPE_CHECKING:
    from paxoskv.node import Node

__all__ = ["GC_BATCH_KEYS", "GC_BUSY_PAUSE_S", "GC_CONCURRENCY", "GC_PAGE_KEYS",
           "GC_PENDING_MAX", "Collector", "GcProgress"]

log = logging.getLogger("paxoskv.node")

GC_PAGE_KEYS: Final = 500
"""Keys read from storage per page of a sweep."""
GC_BATCH_KEYS: Final = 100
"""Tombstones collected per sweep at most: the rest wait for the next one."""
GC_PENDING_MAX: Final = 100_000
"""Tombstones remembered (key, ballot, first seen) while their grace runs; beyond it the
sweep notes no more until some are collected (memory stays bounded)."""
GC_CONCURRENCY: Final = 16
"""Collections of one sweep's batch run at once at most. One collection is two rounds and a
``Collect`` that all wait on every acceptor's fsync: one at a time, a batch of 100 took
about 2 s on a loaded 2-core machine, which capped collection near 50 keys a second per node
however many tombstones were due."""
GC_BUSY_PAUSE_S: Final = 0.05
"""After a sweep that filled its batch (more keys are likely due), the next sweep starts
after this pause instead of a whole interval: with the interval (up to 60 s) between
batches of 100, 100,000 deleted keys took hours past their grace to be collected."""
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


class Collector:
    def __init__(self, node: Node) -> None:
        self._node = node
        self.progress = GcProgress()
        self._pending: OrderedDict[str, tuple[Ballot, float]] = OrderedDict()
        """Tombstones seen: the ballot their row was accepted at, and when first seen so."""
        self._pending_peak = 0

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
        more = False

        async def step() -> None:
            nonlocal more
            more = await self.sweep()

        while True:
            await asyncio.sleep(GC_BUSY_PAUSE_S if more else self.interval_s())
            more = False
            if node.machine.counts_as_acceptor and node.machine.may_propose \
                    and node.quorum_reachable():
                await node._guarded("tombstone collection", step())

    async def sweep(self) -> bool:
        """Page through this acceptor's keys; collect tombstones whose grace is over.
        True when the batch bound stopped it (more are probably due: sweep again soon)."""
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
                        or not node.sweeps(key):
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
        self._pending, self._pending_peak = compacted(self._pending, self._pending_peak)
        stopped = False
        for first in range(0, len(due), GC_CONCURRENCY):
            if not (node.machine.may_propose and node.quorum_reachable()):
                stopped = True
                break
            # Every collection of the group ends before an error is raised (as it was
            # raised when they ran one by one): none is left running unobserved.
            results = await asyncio.gather(
                *(self.collect(key) for key, _ in due[first:first + GC_CONCURRENCY]),
                return_exceptions=True)
            for result in results:
                if isinstance(result, BaseException):
                    raise result
        self.progress.sweeps += 1
        node.metrics.tombstones_pending(len(self._pending))
        self._pending, self._pending_peak = compacted(self._pending, self._pending_peak)
        if due:
            log.info("tombstone collection: %d due, %d collected so far, %d pending",
                     len(due), self.progress.collected, len(self._pending))
        return not stopped and len(due) >= GC_BATCH_KEYS

    async def collect(self, key: str) -> bool:
        """One collection of ``key``: the all-acceptor round, then ``Collect`` everywhere.
        True once every acceptor confirmed the row gone."""
        node = self._node
        if not self.enabled:
            return False
        loop = asyncio.get_running_loop()
        config = node.quorum.everyone() if node.proposer_rules.gc_everyone else node.quorum
        seen = Ballot.ZERO
        for _ in range(GC_ATTEMPTS):
            ballot = node._next_ballot(seen)
            rnd = ProposerRound(key, ballot, Read(), config)
            self.progress.rounds += 1
            deadline = loop.time() + node.config.phase_timeout_s
            step = await node._broadcast(rnd.prepare(), rnd.on_reply, deadline)
            if step is None:
                step = rnd.on_timeout()
            if isinstance(step, SendAccept):
                if step.accept.value.exists:
                    self._pending.pop(key, None)  # written again meanwhile: not ours
                    self.progress.declined += 1
                    return False
                deadline = loop.time() + node.config.phase_timeout_s
                step = await node._broadcast(step.accept, rnd.on_reply, deadline)
                if step is None:
                    step = rnd.on_timeout()
            if isinstance(step, Committed):
                assert rnd.accept is not None
                # Every acceptor of ``config`` accepted the tombstone at ``ballot``.
                # A partial removal is retried by the next sweep without a new grace.
                self._pending[key] = (ballot, self._pending.get(key, (ballot, loop.time()))[1])
                return await self._remove_everywhere(key, ballot, rnd.accept.value.version)
            if isinstance(step, Abort) and step.conflict:
                seen = max(seen, step.ballot_seen)
                continue
            break
        self.progress.declined += 1
        return False

    async def _remove_everywhere(self, key: str, ballot: Ballot, version: int) -> bool:
        node = self._node
        loop = asyncio.get_running_loop()
        done: set[int] = set()

        def on_reply(acceptor_id: int, reply: Reply) -> Wait:
            if isinstance(reply, Collected) and reply.done and reply.ballot == ballot:
                done.add(acceptor_id)
            return Wait()

        await node._broadcast(Collect(key, ballot, version), on_reply,
                              loop.time() + node.config.phase_timeout_s)
        if done >= node.quorum.acceptors:
            self._pending.pop(key, None)
            self.progress.collected += 1
            return True
        self.progress.partial += 1
        return False
