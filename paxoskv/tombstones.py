"""The tombstone collector: removes a deleted key's row from every acceptor (docs/gc.md).

For each tombstone this node sweeps (``Node.sweeps``):

0. the pin: a query to every acceptor must find each of them holding the tombstone at the
   ballot ``p`` of this node's own row (or no row); the grace (``--tombstone-grace``)
   counts from the moment the last answer arrived, and restarts if the row changes;
1. once the grace is over, an identity round that every acceptor must promise and accept
   (not a quorum), whose promises must all still show the tombstone at ``p`` (or no row,
   ``proposer.held_since_pin``): the tombstone is then the value accepted, at one ballot
   ``b``, by all of them, each having held it for the whole grace;
2. ``Collect(key, b, version)`` to every acceptor: each removes the row only if it still
   holds exactly that, and raises its bucket's floor in the same durable step
   (``core/acceptor.py`` ``on_collect``).

Step 0 is what lets a rebuild after a quorum loss trust a copy of a data directory younger
than the grace (``identity.judge_rebuild_copy``): counted from the sweeper's own first
sight, the grace could run out while another acceptor still held the old value (it was
down or cut off), and a copy of it taken then would bring the key back.

"Every acceptor" is every acceptor of the key's group with ``--replication-factor``
(``ConfigView.for_key``; collection runs only under a stable config, where a key has one
group). Floors are then raised on that group only; the install that starts the next
acceptor-set change hands them to every acceptor it keeps or adds
(``reconfigure.Reconfigurer.floors_for``).

An acceptor that missed step 2 keeps a tombstone row at ``b``; the next sweep collects it.
What the rounds decide lives in ``core/``; this module only drives them, in bounded pages
and batches. Split from ``node.py`` like ``recovery.py``; the node owns one ``Collector``.
"""

from __future__ import annotations

import asyncio
import bisect
import logging
import math
import struct
from collections.abc import Awaitable, Iterable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Final, TypeVar

from paxoskv.core.ballot import Ballot
from paxoskv.core.messages import Collect, Collected, Query, QueryReply, Reply
from paxoskv.core.proposer import (
    Abort,
    Committed,
    ProposerRound,
    SendAccept,
    Wait,
    held_since_pin,
)
from paxoskv.core.reconfig import CONFIG_KEY
from paxoskv.core.register import Read
from paxoskv.packedmap import PackedMap

if TYPE_CHECKING:
    from paxoskv.node import ConfigView, Node

__all__ = ["GC_BATCH_KEYS", "GC_BUSY_PAUSE_S", "GC_CONCURRENCY", "GC_PAGE_KEYS",
           "GC_PENDING_MAX", "Collector", "GcProgress"]

log = logging.getLogger("paxoskv.node")
T = TypeVar("T")

GC_PAGE_KEYS: Final = 500
"""Keys read from storage per page of a sweep."""
GC_BATCH_KEYS: Final = 100
"""Tombstones collected per sweep at most: the rest wait for the next one."""
GC_PENDING_MAX: Final = 100_000
"""Tombstones remembered (key, ballot, first seen) while their grace runs; beyond it the
sweep notes no more until some are collected (memory stays bounded)."""
GC_PIN_KEYS: Final = 500
"""Tombstones pinned per sweep at most (one query to every acceptor each)."""
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
class _Noted:
    """A tombstone of this node's own rows while its grace runs."""

    ballot: Ballot
    """The ballot its row was accepted at (the pin's, once pinned)."""
    pinned_at: float | None = None
    """Loop time by which every acceptor was seen holding it at ``ballot``; None until
    then. The grace counts from here."""
    seen: int = 0
    """The last pass (``Collector._passes``) that found its row: an entry a complete pass
    did not find (the row went, removed by another node's collection) is dropped."""


_NOTED: Final = struct.Struct("<4qdq")
"""A ``_Noted`` packed: ballot, pinned_at (NaN: None), seen."""


class _PendingTable:
    """``_Noted`` by key, packed in a ``PackedMap``: up to ``GC_PENDING_MAX`` tombstones
    wait out their grace here, and as small objects they kept the allocator's arenas
    they had spread over once collected (docs/gc.md). Each read is a copy: a change
    counts once written back (``table[key] = noted``), which is done in place."""

    def __init__(self) -> None:
        self._map = PackedMap()

    def __len__(self) -> int:
        return len(self._map)

    def get(self, key: str) -> _Noted | None:
        raw = self._map.get(key)
        return None if raw is None else self._decode(raw)

    def __setitem__(self, key: str, noted: _Noted) -> None:
        b = noted.ballot
        self._map.update(key, _NOTED.pack(
            b.counter, b.node_id, b.incarnation, b.fast,
            math.nan if noted.pinned_at is None else noted.pinned_at, noted.seen))

    def pop(self, key: str, default: None = None) -> None:
        self._map.pop(key)

    def __delitem__(self, key: str) -> None:
        self._map.pop(key)

    def unseen(self, passes: int) -> list[str]:
        """Keys whose entry was last seen by another pass than ``passes``."""
        seen_at = _NOTED.size - 8
        return self._map.keys_where(
            lambda raw: int.from_bytes(raw[seen_at:], "little", signed=True) != passes)

    def items(self) -> Iterator[tuple[str, _Noted]]:
        """A snapshot, oldest first."""
        return iter([(key, self._decode(raw)) for key, raw in self._map.items()])

    @staticmethod
    def _decode(raw: bytes) -> _Noted:
        counter, node_id, incarnation, fast, pinned_at, seen = _NOTED.unpack(raw)
        return _Noted(Ballot(counter, node_id, incarnation, fast),
                      None if math.isnan(pinned_at) else pinned_at, seen)


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
    pins: int = 0
    """Tombstones every acceptor was seen holding: their grace started."""
    paused_by_change: int = 0
    """Sweeps or collections skipped: the acceptor-set record was not STABLE with the
    config this node holds (docs/reconfiguration.md, GC), or could not be read."""


async def _all_of(calls: Iterable[Awaitable[T]]) -> list[T]:
    """Run ``calls`` at once; every one ends before the first error is raised (as when
    they ran one by one), so none is left running unobserved."""
    results = await asyncio.gather(*calls, return_exceptions=True)
    for result in results:
        if isinstance(result, BaseException):
            raise result
    return results  # type: ignore[return-value]


class Collector:
    def __init__(self, node: Node) -> None:
        self._node = node
        self.progress = GcProgress()
        self._pending = _PendingTable()
        """Tombstones seen, with their pin once taken."""
        self._passes = 0
        """Passes from the first key begun (marks the entries each one finds,
        ``_Noted.seen``). A pass can span several sweeps: see ``_cursor``."""
        self._cursor: str | None = None
        """The last key the previous sweep looked at: the next one resumes after it (None:
        from the first key). Before, a sweep that filled its batch was followed by one
        starting again from the first key: with 100,000 tombstones, ~200 passes over every
        row, each loaded on the event loop, and client deletes fell to 10-20/s."""

    @property
    def enabled(self) -> bool:
        """Collection runs on acceptors with a grace above 0, and not with --fast-paxos on:
        an acceptor rebuilt after a collection has no floor for the collected key, and a
        fast round (which needs no promise) built on its empty state could be accepted
        there and then picked by a recovery round (docs/gc.md, "Not guaranteed"). With
        --replication-factor each key is collected on its group (docs/groups.md, "Floors
        and tombstone collection")."""
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
        """Page through this acceptor's tombstone rows (``Storage.tombstones``); pin new
        tombstones, collect those whose grace since their pin is over. True when the batch
        bound stopped it (more are probably due: sweep again soon)."""
        node = self._node
        loop = asyncio.get_running_loop()
        grace = node.config.tombstone_grace_s
        due: list[tuple[str, Ballot]] = []
        to_pin: list[tuple[str, Ballot]] = []
        start = after = self._cursor  # where the previous sweep stopped
        if start is None:
            self._passes += 1
        wrapped = False  # reached the last key and went on from the first
        full = False  # stopped by the batch bound of pins or collections
        for _ in range(1_000_000):
            page = node.storage.tombstones(after, GC_PAGE_KEYS)
            end = len(page) < GC_PAGE_KEYS  # no key after this page
            circle = False
            if wrapped:
                assert start is not None
                cut = bisect.bisect_right(page, start)
                circle = cut < len(page)
                page = page[:cut]  # back where this sweep began: one round at most
            for key in page:
                self._cursor = key
                state = node.storage.peek(key)
                if state.value.exists or state.ballot_accepted.is_zero() \
                        or not node.sweeps(key) or key == CONFIG_KEY:
                    self._pending.pop(key, None)
                    continue
                noted = self._pending.get(key)
                if noted is None or noted.ballot != state.ballot_accepted:
                    # New, or written since (a collection round of ours leaves its own
                    # ballot here, see ``collect``): it needs a new pin.
                    if noted is None and len(self._pending) >= GC_PENDING_MAX:
                        continue
                    noted = _Noted(state.ballot_accepted)
                noted.seen = self._passes
                self._pending[key] = noted
                if noted.pinned_at is None:
                    if len(to_pin) < GC_PIN_KEYS:
                        to_pin.append((key, noted.ballot))
                elif loop.time() - noted.pinned_at >= grace and len(due) < GC_BATCH_KEYS:
                    due.append((key, noted.ballot))
                if len(due) >= GC_BATCH_KEYS or len(to_pin) >= GC_PIN_KEYS:
                    full = True  # the next sweep resumes after this key
                    break
            if full:
                break
            if circle:
                self._cursor = start
                break
            if end:
                # A complete pass, from the first key to the last (over one sweep or
                # several): entries whose tombstone row it did not find were removed by
                # another node's collection (our own removals pop theirs) or written
                # since. Without this they stayed
                # for as long as the node ran, one per key another node collected first.
                # An entry made between this pass's sweeps is either of a key it had
                # already passed, marked then (``collect`` keeps the mark), or of a key
                # found later, marked then.
                for key in self._pending.unseen(self._passes):
                    del self._pending[key]
                self._cursor = None
                if start is None or wrapped:
                    break
                wrapped = True  # began mid-way: go on from the first key to ``start``
                self._passes += 1
                after = None
                continue
            after = page[-1]
        node.metrics.tombstones_pending(len(self._pending))
        view = await node.collection_allowed() if due or to_pin else None
        if (due or to_pin) and view is None:
            # Pins and collections both count "every acceptor" of one config: none while
            # the acceptor set is changing (docs/reconfiguration.md, GC).
            self.progress.paused_by_change += 1
            log.info("tombstone collection paused: an acceptor-set change is in progress")
            due, to_pin, full = [], [], False  # the next sweep after the interval
        if view is not None and view.config.grouped:
            to_pin, due = self._without_down_groups(view, to_pin, due)
        stopped = False
        for first in range(0, len(to_pin), GC_CONCURRENCY):
            if not (node.machine.may_propose and node.quorum_reachable()):
                stopped = True
                break
            pinned = await _all_of(self.pin(key, ballot, view)
                                   for key, ballot in to_pin[first:first + GC_CONCURRENCY])
            if None in pinned:
                stopped = True
                break  # an acceptor did not answer: every other pin would wait for it too
        for first in range(0, len(due), GC_CONCURRENCY):
            if not (node.machine.may_propose and node.quorum_reachable()):
                stopped = True
                break
            await _all_of(self.collect(key, ballot, view)
                          for key, ballot in due[first:first + GC_CONCURRENCY])
        self.progress.sweeps += 1
        node.metrics.tombstones_pending(len(self._pending))
        if due:
            log.info("tombstone collection: %d due, %d collected so far, %d pending",
                     len(due), self.progress.collected, len(self._pending))
        return not stopped and full

    def _without_down_groups(self, view: ConfigView, *lists: list[tuple[str, Ballot]]
                             ) -> list[list[tuple[str, Ballot]]]:
        """With groups, each of ``lists`` less the keys whose group has an acceptor this
        node sees down:
        they wait for it (their entries stay for a later sweep), as every key does without
        groups, but they no longer stop the sweep's other pins. A pin that gets no answer
        stops the rest of its sweep (each would wait for the same acceptor), and with
        groups most batches hold some key of a down acceptor's group, so one acceptor down
        held back the tombstones of every group."""
        usable = self._node.membership.usable
        down = frozenset(a for a in view.config.members if not usable(a))
        if not down:
            return list(lists)
        return [[kb for kb in keys if not view.for_key(kb[0]).prepare.acceptors & down]
                for keys in lists]

    async def pin(self, key: str, ballot: Ballot, view: ConfigView | None = None
                  ) -> bool | None:
        """Start ``key``'s grace if every acceptor of its group (of the set, without groups)
        now holds its tombstone at ``ballot`` (or no row): one query to each, no promise,
        nothing written. None if some acceptor did not answer. ``view``: the config of
        the sweep's ``Node.collection_allowed`` (default: the one held now)."""
        node = self._node
        loop = asyncio.get_running_loop()
        reports: dict[int, QueryReply] = {}
        noted = self._pending.get(key)
        if not node.proposer_rules.gc_pins and noted is not None:
            noted.pinned_at = loop.time()  # the mutant: the grace from the first sight
            self._pending[key] = noted
            return True

        def on_reply(acceptor_id: int, reply: Reply) -> Wait:
            if isinstance(reply, QueryReply) and reply.key == key:
                reports[acceptor_id] = reply
            return Wait()

        kv = (view if view is not None else node.view).for_key(key)
        await node._broadcast(Query(key), on_reply, loop.time() + node.config.phase_timeout_s,
                              kv)
        if set(reports) < kv.prepare.acceptors:
            return None
        noted = self._pending.get(key)  # again: the sweep may have moved on meanwhile
        if noted is None or noted.ballot != ballot or not held_since_pin(
                ((r.ballot_accepted, r.value) for r in reports.values()), ballot):
            return False  # someone lags, or the key changed: the next sweep retries
        noted.pinned_at = loop.time()  # after the last answer: each held it by then
        self._pending[key] = noted
        self.progress.pins += 1
        return True

    async def collect(self, key: str, pinned: Ballot | None = None,
                      view: ConfigView | None = None) -> bool:
        """One collection of ``key``: the all-acceptor round, then ``Collect`` everywhere.
        True once every acceptor confirmed the row gone.

        ``pinned``: the ballot of the pin whose grace is over (the sweep's case); every
        promise must still show that tombstone, or no row. None (a direct call, the
        simulator's gc_action) collects whatever every acceptor accepts now: what must
        never break is the register, whose safety does not rest on the grace; only a
        rebuild from an old copy does (docs/gc.md). ``view``: the config every phase runs
        under (one ``Node.collection_allowed`` returned; asked for here when not given)."""
        node = self._node
        if not self.enabled:
            return False
        if view is None:
            view = await node.collection_allowed()
        if view is None or node.view is not view:
            self.progress.paused_by_change += 1
            return False
        loop = asyncio.get_running_loop()
        view = view.for_key(key)  # with groups, the key's group (one: the config is stable)
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
                if pinned is not None and node.proposer_rules.gc_pins and not \
                        held_since_pin(((p.ballot_accepted, p.value) for p in rnd.promises),
                                       pinned):
                    self._pending.pop(key, None)  # changed since its pin: pinned anew
                    self.progress.declined += 1
                    return False
                deadline = loop.time() + node.config.phase_timeout_s
                step = await node._broadcast(step.accept, rnd.on_reply, deadline, view)
                if step is None:
                    step = rnd.on_timeout()
            if isinstance(step, Committed):
                assert rnd.accept is not None
                # Every acceptor of ``config`` accepted the tombstone at ``ballot``.
                # A partial removal is retried by the next sweep without a new grace: each
                # acceptor held the tombstone at the pin's ballot, then at this one, or
                # has no row (which is what the retry's promises must show).
                noted = self._pending.get(key)
                self._pending[key] = _Noted(ballot, noted.pinned_at if noted else None,
                                            noted.seen if noted else 0)
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
