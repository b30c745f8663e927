"""Bringing an acceptor's state back in line: the repair sweep and the rejoin.

Both run identity rounds through the node's proposer (``Node.execute``) on keys the
acceptors disagree on or that this acceptor may have lost; what a round does, and which
mode this node is in, is decided in ``core/``. Split from ``node.py`` so the long-running
recovery work reads apart from the request path; the node owns one ``Recovery``.
"""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING, Any, Final

from paxoskv.core.errors import NoQuorum, Overloaded, UnknownOutcome
from paxoskv.core.identity import CaughtUp, FenceElapsed, Mode
from paxoskv.core.proposer import Committed, QueryRound
from paxoskv.core.quorum import QuorumConfig
from paxoskv.core.register import Read
from paxoskv.transport.codec import FLOOR_PAGE_MAX

if TYPE_CHECKING:
    from paxoskv.config import NodeConfig
    from paxoskv.node import IdentityRules, Node

__all__ = ["REJOIN_PAGE_KEYS", "REPAIR_PAGE_KEYS", "Recovery", "own_fence_s"]

log = logging.getLogger("paxoskv.node")
"""The node's logger, as before the split: the simulator and log filters name it."""

REJOIN_PAGE_KEYS: Final = 500
REPAIR_PAGE_KEYS: Final = 500


def own_fence_s(config: NodeConfig, rules: IdentityRules) -> float:
    """The fence this node's own settings need (``NodeConfig.rejoin_fence_s``); under the
    mutant that ignores cached ballots, twice the message lifetime."""
    if rules.fence_outlasts_cached_ballots:
        return config.rejoin_fence_s
    return 2 * config.message_lifetime_s


class Recovery:
    """The node's repair sweep and rejoin, and the progress ``/v1/status`` shows of each."""

    @property
    def quorum(self) -> QuorumConfig:
        """The node's quorum now (it follows the acceptor-set config the node holds)."""
        return self._node.quorum

    def __init__(self, node: Node) -> None:
        self._node = node
        self.config = node.config
        self.storage = node.storage
        self.metrics = node.metrics
        self.repair_progress: dict[str, int] = {"checked": 0, "repaired": 0, "sweeps": 0}
        self.rejoin_progress: dict[str, Any] = {}

    async def repair_key(self, key: str) -> bool:
        """Check one key on every acceptor; run an identity round if they disagree."""
        view = self._node.view.for_key(key)  # with groups, the key's group (docs/groups.md)
        rnd = QueryRound(key, view.prepare.everyone())
        loop = asyncio.get_running_loop()
        step = await self._node._broadcast(rnd.query(), rnd.on_reply,
                                           loop.time() + self.config.phase_timeout_s, view)
        self.repair_progress["checked"] += 1
        self.metrics.repair("checked")
        if isinstance(step, Committed) or not rnd.disagreed():
            return False  # all agree, or someone did not answer: nothing to compare
        try:
            await self._node.execute(key, Read())
        except (NoQuorum, UnknownOutcome, Overloaded) as exc:
            log.info("repair of %r postponed: %s", key, exc)
            return False
        self.repair_progress["repaired"] += 1
        self.metrics.repair("repaired")
        return True

    async def repair_sweep(self) -> None:
        """Check every key this acceptor holds, page by page, at the configured rate."""
        pause = 1.0 / self.config.repair_keys_per_second
        after: str | None = None
        while True:
            page = self.storage.keys("", after, REPAIR_PAGE_KEYS)
            for key in page:
                if not (self._node.machine.counts_as_acceptor and self._node.quorum_reachable()):
                    return
                await self.repair_key(key)
                await asyncio.sleep(pause)
            if len(page) < REPAIR_PAGE_KEYS:
                break
            after = page[-1]
        self.repair_progress["sweeps"] += 1

    def fence_s(self) -> float:
        """The longest fence any member's settings need: its own, those announced in
        hellos, and twice the message lifetime of a member that announced only that."""
        health = self._node.peer_health.values()
        rules = self._node.identity_rules
        fence = max([own_fence_s(self.config, rules),
                     *(2 * h.lifetime_s for h in health if h.lifetime_s)])
        if not rules.fence_outlasts_cached_ballots:
            return fence
        return max([fence, *(h.fence_s for h in health if h.fence_s)])

    async def rejoin(self) -> None:
        """Bring back an acceptor whose state was lost or rolled back (README: rejoin).

        1. Fence: answer nothing until every round that could hold a promise of the lost
           state has ended, and every next ballot a proposer cached before the loss has
           expired (the longest fence any member announced, ``fence_s``), and
           until peers have accepted this process (with an incarnation above any they saw).
        2. Catch up: answer accepts only while an identity round runs on every key the
           surviving acceptors list (page by page, keys already caught up skipped), so this
           acceptor holds each chosen value; then serve as a full acceptor.
        The rejoin marker on disk makes a crash at any point resume here at the next start.
        """
        loop = asyncio.get_running_loop()
        started = loop.time()
        self.rejoin_progress = {"phase": "fencing", "fence_seconds": self.fence_s()}
        while self._node.machine.mode is Mode.FENCING:
            fence = self.fence_s()
            self.rejoin_progress["fence_seconds"] = fence
            if loop.time() - started >= fence and self._node.machine.may_propose:
                await self._node.membership.transition(FenceElapsed())
                break
            await asyncio.sleep(min(0.5, self.config.heartbeat_interval_s))
        if not self._node.machine.rejoining:
            return  # refused while fencing
        log.warning("rejoin: fence of %.1fs over; catching up", self.fence_s())
        self.rejoin_progress.update(phase="catching_up", peers_listed=0, keys_checked=0,
                                    keys_caught_up=0)
        loop = asyncio.get_running_loop()
        await self._learn_config(loop.time())
        while True:
            # Each pass lists the acceptors of the config held when it starts; one that
            # ends under another (learned meanwhile) is run again under that one, and the
            # last is confirmed by peers after it ended (docs/reconfiguration.md, rejoin).
            epoch = self._node.epoch_config.epoch
            if not await self._list_survivors(epoch):
                continue
            if await self._learn_config(loop.time()) == epoch:
                break
        if self._node.identity_rules.rejoin_rechecks_own_keys:
            await self._recheck_own_keys()
        await self._node.membership.transition(CaughtUp())
        self.rejoin_progress["phase"] = "done"
        log.warning("rejoin: complete (%d keys checked, %d caught up); serving as an "
                    "acceptor", self.rejoin_progress["keys_checked"],
                    self.rejoin_progress["keys_caught_up"])

    async def _list_survivors(self, epoch: int) -> bool:
        """Catch up from enough acceptors of the config held; False if that config changed
        before they were all listed."""
        needed = 1 if self._node.machine.mode is Mode.REBUILDING \
            else self.quorum.survivors_needed()
        listed: set[int] = set()
        others = sorted(a for a in self.quorum.acceptors if a != self.config.node_id)
        while len(listed) < needed:
            for pid in others:
                if pid in listed or len(listed) >= needed:
                    continue
                if await self._catch_up_from(pid):
                    listed.add(pid)
                    self.rejoin_progress["peers_listed"] = len(listed)
                if self._node.epoch_config.epoch != epoch:
                    log.warning("rejoin: the acceptor-set config moved to epoch %d; listing "
                                "its acceptors", self._node.epoch_config.epoch)
                    return False
            if len(listed) < needed:
                log.warning("rejoin: %d of %d surviving acceptors listed; retrying",
                            len(listed), needed)
                await asyncio.sleep(1.0)
        return True

    async def _learn_config(self, since: float) -> int:
        """Wait until peers, in hellos sent at or after ``since``, back the acceptor-set
        config this node holds (adopting any newer one they name, ``Membership``), and it is
        not mid-change; its epoch.

        A newer config, once installed, is held by enough acceptors of the one before that
        every prepare quorum of that one holds one of them (the install's fence); so when a
        prepare quorum's worth of the other acceptors of the config held all name it, no
        newer one had been installed at ``since``. This node's own share cannot count: it
        may have been among the fenced ones before it lost its state. A rebuild (quorum
        lost) asks for one."""
        node = self._node
        waited = 0
        while True:
            cfg = node.epoch_config
            others = cfg.prepare_set - {self.config.node_id}
            needed = 1 if node.machine.mode is Mode.REBUILDING \
                else min(len(others), cfg.prepare_quorum)
            told = node.membership.epochs_told_since(since)
            backing = sum(1 for pid in others if told.get(pid) == cfg.epoch)
            if cfg.is_stable and backing >= needed \
                    and all(e <= cfg.epoch for e in told.values()):
                self.rejoin_progress["epoch"] = cfg.epoch
                return cfg.epoch
            waited += 1
            if waited % 20 == 0:
                log.warning("rejoin: waiting for %d acceptors of epoch %d to confirm it "
                            "(%d did)%s", needed, cfg.epoch, backing,
                            "" if cfg.is_stable else "; an acceptor-set change is in progress")
            await asyncio.sleep(min(0.5, self.config.heartbeat_interval_s))

    async def _recheck_own_keys(self) -> None:
        """Run an identity round on every key this acceptor holds a row of (docs/gc.md).

        A key no surviving acceptor lists may still have a row here: an old copy put back
        holds keys whose tombstones every other acceptor has since collected. Left alone,
        that row would report its old value, at a ballot above the others' empty state, to
        the first promise quorum it joins, and the deleted value would come back. The
        identity round's promises come from the other acceptors only (this one makes none
        while catching up), so it rewrites the row with the value they agree on.
        """
        self.rejoin_progress["own_keys_rechecked"] = 0
        after: str | None = None
        while True:
            page = self.storage.keys("", after, REJOIN_PAGE_KEYS)
            for key in page:
                await self._catch_up_key(key)
                self.rejoin_progress["own_keys_rechecked"] += 1
            if len(page) < REJOIN_PAGE_KEYS:
                return
            after = page[-1]

    async def _copy_floors_from(self, pid: int) -> bool:
        """Raise this acceptor's bucket floors to ``pid``'s (docs/gc.md); False if it
        stopped answering.

        A key whose tombstone was collected is listed by no peer, so the catch-up does not
        bring it back here; without its floor this acceptor reads it as never written
        (version 0). One lost disk is covered by the others' floors in every quorum, but a
        second acceptor losing its disk later would make a quorum of two such acceptors,
        and a re-created key would take version 1 again (ABA for If-Match)."""
        after = -1
        while True:
            page = await self._node.floors_from(pid, after, FLOOR_PAGE_MAX)
            if page is None:
                return False
            if page:
                await self.storage.raise_floors(page)
                self.rejoin_progress["floors_copied"] = (
                    self.rejoin_progress.get("floors_copied", 0) + len(page))
                after = page[-1][0]
            if len(page) < FLOOR_PAGE_MAX:
                return True

    async def _catch_up_from(self, pid: int) -> bool:
        """Copy ``pid``'s bucket floors, then run an identity round on every key it lists;
        False if it stopped answering."""
        if self._node.identity_rules.rejoin_copies_floors and \
                not await self._copy_floors_from(pid):
            return False
        after: str | None = None
        while True:
            page = await self._node._page_from(pid, "", after, REJOIN_PAGE_KEYS)
            if page is None:
                return False
            entries, more = page
            for key, ballot, _ in entries:
                self.rejoin_progress["keys_checked"] += 1
                self.metrics.rejoin("checked")
                mine = self.storage.peek(key).ballot_accepted
                if mine > ballot or (mine == ballot and not ballot.is_fast):
                    continue  # caught up before a restart, or by a client's write
                # (at an equal fast ballot the two may hold different values)
                await self._catch_up_key(key)
                self.rejoin_progress["keys_caught_up"] += 1
                self.metrics.rejoin("caught_up")
            if entries:
                after = entries[-1][0]
                log.info("rejoin: %d keys checked (peer %s, at %r)",
                         self.rejoin_progress["keys_checked"], pid, after)
            if not more:
                return True

    async def _catch_up_key(self, key: str) -> None:
        for attempt in range(1, 1_000_000):
            try:
                await self._node.execute(key, Read())
                return
            except (NoQuorum, UnknownOutcome, Overloaded) as exc:
                log.info("rejoin: %r: %s; retrying", key, exc)
                await asyncio.sleep(min(5.0, 0.1 * attempt))
        raise AssertionError("rejoin retried one key a million times")
