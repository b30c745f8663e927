"""The driver of an acceptor-set change on a real node (docs/reconfiguration.md).

It steps ``core.reconfig.ChangeMachine``: every step re-reads the record in
``CONFIG_KEY`` (a Paxos round) and runs what the machine names. Record writes are CASes on
the version just read, installs only raise epochs, and catch-up rounds are identity rounds,
so a driver that dies anywhere (or a second one) is harmless: running it again, here or on
another node, continues from the record. Nothing of a change lives only in this process.

- Install: every acceptor of both configs is sent a query under the new config; an
  acceptor adopts it durably before it answers (the node's epoch fence, ``Node._fence``).
  Done once the acks fence the previous config (``fence_satisfied``) and every acceptor the
  new config adds has acked (with groups, out of a stable config: every acceptor it keeps
  or adds), and those have the merged bucket floors of the fenced acceptors
  (``floors_for``).
- Catch-up: keys are listed, paged, from the previous config's accept set (a set of
  answers that large meets every accept quorum it had) and each gets an identity round
  under the mid config, a bounded number at once.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Final, Literal

from paxoskv.core.acceptor import FLOOR_BUCKETS, NO_FLOOR, Floor
from paxoskv.core.errors import NoQuorum, Overloaded, UnknownOutcome
from paxoskv.core.messages import Query, QueryReply, Reply, Stale, Unavailable
from paxoskv.core.quorum import majority
from paxoskv.core.reconfig import (
    CONFIG_KEY,
    CatchUp,
    ChangeMachine,
    Config,
    ConfigRecord,
    Done,
    Install,
    RecordPhase,
    WriteRecord,
    fence_satisfied,
)
from paxoskv.core.register import Cas, Create, Read
from paxoskv.transport.base import PeerUnreachable
from paxoskv.transport.codec import FLOOR_PAGE_MAX

if TYPE_CHECKING:
    from paxoskv.node import Node

__all__ = ["ChangeFailed", "DriverProgress", "Reconfigurer"]

log = logging.getLogger(__name__)

STEPS_MAX: Final = 64
"""Machine steps one change runs at most (a one-acceptor change takes 5; a 3 -> 5 grow 10);
past it the driver stops and says so."""
INSTALL_TIMEOUT_S: Final = 30.0
"""How long an install keeps asking acceptors before the driver gives up (and retries)."""
INSTALL_RETRY_S: Final = 0.2
CATCH_UP_PAGE: Final = 500
"""Keys listed per page from each acceptor during the catch-up."""
CATCH_UP_AT_ONCE: Final = 32
"""Identity rounds the catch-up runs concurrently."""
CATCH_UP_PAGES_MAX: Final = 1_000_000
ROUND_TRIES: Final = 20
"""Attempts of one record read/write or identity round before the step fails."""
RETRY_PAUSE_S: Final = 0.2
DRIVE_TRIES: Final = 20
"""Failed steps (no quorum, a lost CAS race, a timeout) a change survives before it stops."""


InstallAnswer = Literal["voting", "holding"] | None
"""What an install learned of one acceptor: it holds the config and answers ("voting"),
holds it while in a rejoin ("holding"), or nothing shown (None)."""


class Superseded(Exception):
    """Another driver's change moved the set away from this driver's target: a later POST
    (or a resumed one) with another target wins, and this driver stops instead of
    undoing it step by step (two drivers with different targets took turns reversing each
    other's changes)."""


def moved_toward(record: ConfigRecord, target: frozenset[int]) -> bool:
    """Whether the change that left this STABLE ``record`` (from its ``previous`` mid
    config's prepare set to its own) brought the acceptor set closer to ``target``."""
    if record.previous is None:
        return False
    before = record.previous.prepare_set
    after = record.config.prepare_set
    return len(after ^ target) < len(before ^ target)


class ChangeFailed(Exception):
    """The change stopped; the record says where, and a new request continues from it."""


@dataclass(slots=True)
class DriverProgress:
    """What ``GET /v1/status`` and the metrics show of this node's driver."""

    running: bool = False
    target: list[int] = field(default_factory=list)
    step: str = "idle"
    epoch: int = 0
    record_phase: str = ""
    installs: int = 0
    catch_ups: int = 0
    keys_caught_up: int = 0
    record_writes: int = 0
    changes_done: int = 0
    error: str | None = None
    started_at: float = 0.0

    def as_dict(self) -> dict[str, Any]:
        return {"running": self.running, "target": self.target, "step": self.step,
                "epoch": self.epoch, "record_phase": self.record_phase,
                "installs": self.installs, "catch_ups": self.catch_ups,
                "keys_caught_up": self.keys_caught_up, "record_writes": self.record_writes,
                "changes_done": self.changes_done, "error": self.error}


class Reconfigurer:
    """One node's driver: at most one change at a time here (other nodes may run one too;
    the record's CAS keeps that harmless)."""

    def __init__(self, node: Node) -> None:
        self._node = node
        self.progress = DriverProgress()
        self._task: asyncio.Task[None] | None = None
        self.floors_to_every_member = True
        """With groups, the install out of a stable config raises the merged floors on
        every acceptor it keeps or adds (``floors_for``). False is the
        ``group-floors-to-added-only`` mutant
        (tests/sim/test_gc_groups.py)."""

    @property
    def running(self) -> bool:
        return self._task is not None and not self._task.done()

    def start(self, target: Iterable[int]) -> bool:
        """Drive the acceptor set to ``target`` in the background; False if a change is
        already running here."""
        if self.running:
            return False
        t = sorted(set(target))
        self.progress = DriverProgress(running=True, target=t, step="starting",
                                       changes_done=self.progress.changes_done,
                                       started_at=time.time())
        self._task = self._node.spawn_background(self._run(frozenset(t)))
        return True

    async def resume_if_changing(self) -> None:
        """At start: if the record says a change is half done, finish that change (its
        target is in the record); a driver that died mid-change leaves nothing else."""
        try:
            record, _ = await self.read_record()
        except (NoQuorum, UnknownOutcome, Overloaded) as exc:
            log.info("acceptor-set record not read at start (%s); not resuming", exc)
            return
        if record.phase is RecordPhase.CATCHING_UP and record.target is not None:
            log.warning("acceptor-set change to %s was in progress: resuming it",
                        sorted(record.target.prepare_set))
            self.start(record.target.prepare_set)

    async def _run(self, target: frozenset[int]) -> None:
        p = self.progress
        try:
            await self.drive(target)
            p.step = "done"
            p.changes_done += 1
            log.warning("acceptor set is now %s (epoch %d)", sorted(target), p.epoch)
        except Superseded as exc:
            p.step, p.error = "superseded", str(exc)
            log.warning("acceptor-set change to %s stopped: %s", sorted(target), exc)
        except ChangeFailed as exc:
            p.step, p.error = "failed", str(exc)
            log.error("acceptor-set change to %s stopped: %s", sorted(target), exc)
        except asyncio.CancelledError:
            p.step = "cancelled"
            raise
        except Exception as exc:  # a bug must not end the node; the record is intact
            p.step, p.error = "failed", f"{type(exc).__name__}: {exc}"
            log.exception("acceptor-set change to %s failed", sorted(target))
        finally:
            p.running = False
            self._node.metrics.reconfig_running(False)

    # ------------------------------------------------------------ the machine

    async def drive(self, target: frozenset[int]) -> None:
        """Step the machine until the record is STABLE with ``target``."""
        node = self._node
        node.metrics.reconfig_running(True)
        machine = ChangeMachine(target)
        failures = 0
        first_version: int | None = None
        for _ in range(STEPS_MAX):
            try:
                record, version = await self.read_record()
                if first_version is None:
                    first_version = version
                self.progress.epoch = record.config.epoch
                self.progress.record_phase = record.phase.value
                action = machine.next_action(record, version)
                if isinstance(action, WriteRecord) and record.phase is RecordPhase.STABLE \
                        and version != first_version and not moved_toward(record, target):
                    # A new change from a record someone else's change left: only if that
                    # change went our way (it was ours, or a resumed one toward our target).
                    raise Superseded(f"the acceptor set moved to "
                                     f"{sorted(record.config.prepare_set)} away from this "
                                     f"driver's target {sorted(target)}")
                match action:
                    case Done():
                        self.progress.step = "done"
                        return
                    case WriteRecord():
                        self.progress.step = f"record {action.record.phase.value} " \
                                             f"epoch {action.record.config.epoch}"
                        await self.write_record(action)
                    case Install():
                        self.progress.step = f"install epoch {action.config.epoch}"
                        await self.install(action.config, action.previous)
                        machine.installed.add(action.config.epoch)
                        self.progress.installs += 1
                        node.metrics.reconfig_step("install")
                    case CatchUp():
                        assert record.previous is not None
                        self.progress.step = f"catch-up epoch {action.config.epoch}"
                        await self.catch_up(action.config, record.previous)
                        machine.caught_up.add(action.config.epoch)
                        self.progress.catch_ups += 1
                        node.metrics.reconfig_step("catch_up")
            except (NoQuorum, UnknownOutcome, Overloaded, ChangeFailed) as exc:
                failures += 1
                self.progress.error = str(exc)
                log.warning("acceptor-set change: %s failed (%s); retrying from the record",
                            self.progress.step, exc)
                if failures >= DRIVE_TRIES:
                    raise ChangeFailed(f"{self.progress.step}: {exc}") from exc
                await asyncio.sleep(RETRY_PAUSE_S * min(failures, 5))
        raise ChangeFailed(f"not done after {STEPS_MAX} steps")

    async def _round(self, what: str, coro_factory: Any) -> Any:
        """Run one round, retrying what failed cleanly; the last error otherwise."""
        last: Exception | None = None
        for attempt in range(ROUND_TRIES):
            try:
                return await coro_factory()
            except (NoQuorum, Overloaded) as exc:
                last = exc
            await asyncio.sleep(RETRY_PAUSE_S * min(attempt + 1, 5))
        raise ChangeFailed(f"{what}: {last}")

    async def read_record(self) -> tuple[ConfigRecord, int]:
        """The record and its version, by a round (``STABLE(epoch 0)`` at version 0 when no
        change was ever recorded)."""
        node = self._node
        # A linearizable read: one round trip of queries when a quorum agrees (no row is
        # written for an absent record, so a cluster that never changes keeps none).
        outcome = await self._round("read the record", lambda: node.read(CONFIG_KEY))
        value = outcome.value
        if value.data is None:
            return ConfigRecord(RecordPhase.STABLE, node.config0), value.version
        return ConfigRecord.decode(value.data), value.version

    async def write_record(self, action: WriteRecord) -> None:
        """CAS the record, under the config in force (which this node holds from the
        install, or adopts here: the record is only written after that install)."""
        node = self._node
        await node.adopt_config(action.under)
        if node.epoch_config.epoch != action.under.epoch:
            raise ChangeFailed(f"this node holds epoch {node.epoch_config.epoch}, the record "
                               f"write runs under {action.under.epoch}")
        data = action.record.encode()
        change = (Create(data) if action.expected_version == 0
                  else Cas(action.expected_version, data))
        outcome = await self._round("write the record", lambda: node.execute(
            CONFIG_KEY, change, forward=False))
        self.progress.record_writes += 1
        if outcome.kind != "applied":
            log.info("acceptor-set record changed under us (%s); re-reading", outcome.kind)

    async def install(self, config: Config, previous: Config) -> None:
        """Have the acceptors hold ``config`` until it fences ``previous`` and every
        acceptor ``floors_for`` names holds it, then raise the merged floors there."""
        node = self._node
        await node.adopt_config(config)
        targets = sorted(config.members | previous.members)
        floored = self.floors_for(config, previous)
        acked: set[int] = set()
        # Of ``acked``, those that answered the query: not in a rejoin, so their floors
        # are whole (a rejoining acceptor lists none while it copies its peers').
        voting: set[int] = set()
        loop = asyncio.get_running_loop()
        give_up = loop.time() + INSTALL_TIMEOUT_S
        while True:
            pending = [a for a in targets if a not in voting]
            replies = await asyncio.gather(*(self._install_one(a, config) for a in pending))
            for a, held in zip(pending, replies, strict=True):
                if held is not None:
                    acked.add(a)
                if held == "voting":
                    voting.add(a)
            sources = voting & previous.members
            # With groups a collected key's floor is on its group only: the sources must
            # meet every group, which the fence's own condition says of them.
            if fence_satisfied(previous, acked) and floored <= acked and (
                    not floored or (fence_satisfied(previous, sources) if previous.grouped
                                    else bool(sources))):
                if floored:
                    await self._give_floors(sorted(sources), sorted(floored))
                log.info("epoch %d installed on %s", config.epoch, sorted(acked))
                return
            if loop.time() >= give_up:
                raise ChangeFailed(f"install of epoch {config.epoch}: only {sorted(acked)} "
                                   "hold it")
            await asyncio.sleep(INSTALL_RETRY_S)

    def floors_for(self, config: Config, previous: Config) -> frozenset[int]:
        """The acceptors an install of ``config`` raises the merged floors on: those it adds
        (they hold none), and with groups, out of a stable config, every member that stays
        (``config.accept_set``, the change's target). There each collection raised its
        key's floor on the key's group only, and this change or a later one may bring any
        staying member into that key's group without its floor; two such members would
        then read a collected key as never written, version 0 (docs/groups.md, "Floors and
        tombstone collection"). An acceptor being removed is only on the prepare side, in
        the groups it was already in, and leaves: it needs none, and it may be down.
        Collections run only under a stable config, so the install out of it is the one to
        give them."""
        if previous.grouped and previous.is_stable and self.floors_to_every_member:
            return config.accept_set
        return config.members - previous.members

    async def _give_floors(self, sources: list[int], targets: list[int]) -> None:
        """The bucket floors of ``sources`` (acceptors that hold the new epoch, so no
        collection of the old one can raise theirs any more), merged bucket by bucket,
        raised on each added acceptor in ``targets`` (docs/reconfiguration.md, GC)."""
        node = self._node
        merged: dict[int, Floor] = {}
        for a in sources:
            after = -1
            for _ in range(FLOOR_BUCKETS // FLOOR_PAGE_MAX + 2):
                page = await node.floors_from(a, after, FLOOR_PAGE_MAX)
                if page is None:
                    raise ChangeFailed(f"install: acceptor {a}'s floors could not be read")
                for bucket, floor in page:
                    merged[bucket] = merged.get(bucket, NO_FLOOR).merged(floor)
                if len(page) < FLOOR_PAGE_MAX:
                    break
                after = page[-1][0]
        items = sorted(merged.items())
        for target in targets:
            for start in range(0, len(items), FLOOR_PAGE_MAX):
                if not await node.give_floors(target, items[start:start + FLOOR_PAGE_MAX]):
                    raise ChangeFailed(f"install: floors not raised on acceptor {target}")
        if items:
            log.info("install: %d bucket floors raised on %s", len(items), targets)

    async def _install_one(self, acceptor_id: int, config: Config) -> InstallAnswer:
        """Ask one acceptor a question under ``config``: it adopts the config (durably)
        before answering. Holding it or a newer one counts, shown by the epoch its answer
        names (``QueryReply.epoch``: "voting"; ``Unavailable.epoch`` from an acceptor in a
        rejoin: "holding") or by a ``Stale`` refusal ("voting"); None: not shown."""
        node = self._node
        deadline = asyncio.get_running_loop().time() + node.config.phase_timeout_s
        msg = Query(CONFIG_KEY)
        reply: Reply
        try:
            if acceptor_id == node.config.node_id:
                reply = await node.handle(msg, deadline, config)
            else:
                if acceptor_id not in node.config.peers:
                    return None
                reply = await node.transport.send(acceptor_id, msg, deadline, config)
        except PeerUnreachable:
            return None
        if isinstance(reply, Stale):
            node.learn_config(reply.config)
            return "voting" if reply.config.epoch >= config.epoch else None
        # Only an answer that names the epoch proves the acceptor holds the config: one
        # running a release without epochs answers the query all the same, at epoch 0. An
        # acceptor in a rejoin answers no query but holds the config it was sent durably,
        # and says so (``Unavailable.epoch``): it votes in no older epoch either.
        if isinstance(reply, QueryReply) and reply.epoch >= config.epoch:
            return "voting"
        if isinstance(reply, Unavailable) and reply.epoch >= config.epoch:
            return "holding"
        return None

    async def catch_up(self, mid: Config, old: Config) -> None:
        """An identity round under ``mid`` of every key the old accept set's answering
        acceptors hold (enough of them to meet each of its accept quorums)."""
        node = self._node
        await node.adopt_config(mid)
        sources = sorted(old.accept_set)
        needed = old.fence_size("accept")
        if old.grouped and old.replication is not None:
            # With groups a key's accept quorum is a majority of its group (any R of the
            # set): the listed acceptors meet each one when at most maj(R) - 1 are missing
            # (docs/groups.md).
            needed = len(sources) - (majority(min(old.replication, len(sources))) - 1)
        done: set[str] = set()
        answered = 0
        for acceptor_id in sources:
            listed = await self._catch_up_from(acceptor_id, mid, done)
            answered += 1 if listed else 0
            if node.epoch_config.epoch != mid.epoch:
                raise ChangeFailed(f"epoch moved to {node.epoch_config.epoch} during the "
                                   f"catch-up of {mid.epoch}")
        if answered < needed:
            raise ChangeFailed(f"catch-up: {answered} of {len(sources)} old acceptors listed "
                               f"their keys, {needed} needed")

    async def _catch_up_from(self, acceptor_id: int, mid: Config, done: set[str]) -> bool:
        """Identity rounds of every key ``acceptor_id`` lists; False if it could not be
        listed to the end."""
        node = self._node
        after: str | None = None
        for _ in range(CATCH_UP_PAGES_MAX):
            page = await node.page_from(acceptor_id, "", after, CATCH_UP_PAGE)
            if page is None:
                return False
            entries, more = page
            keys = [k for k, _, _ in entries if k != CONFIG_KEY and k not in done]
            for start in range(0, len(keys), CATCH_UP_AT_ONCE):
                chunk = keys[start:start + CATCH_UP_AT_ONCE]
                await asyncio.gather(*(self._identity_round(k) for k in chunk))
                done.update(chunk)
                self.progress.keys_caught_up += len(chunk)
                node.metrics.reconfig_keys(len(chunk))
                if node.epoch_config.epoch != mid.epoch:
                    raise ChangeFailed("epoch moved during the catch-up")
            if not more or not entries:
                return True
            after = entries[-1][0]
        return False

    async def _identity_round(self, key: str) -> None:
        node = self._node
        await self._round(f"identity round of {key!r}", lambda: node.execute(
            key, Read(), forward=False))
