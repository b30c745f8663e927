"""Deterministic simulation of acceptor-set changes on the sans-I/O core.

This runs the core directly (the node's own wiring is exercised by the scripted scenario
of tests/sim/test_reconf_node.py and by tests/integration): acceptors are
``paxoskv.core.acceptor`` plus the epoch fence (``paxoskv.core.reconfig.admit``), proposers
are classic CASPaxos rounds with split prepare/accept quorums and the phase-1-skip cache,
and a driver steps ``ChangeMachine`` through adds, removes and replaces while clients write.
Faults: acceptor, proposer and driver crashes at any moment (acceptors restart on their
durable state; the driver resumes from the config register), message drops, duplicates,
delays and reorders. Every history goes through the unchanged ``paxoskv.check``.

Everything derives from the seed; time is virtual (``paxoskv.sim.loop``).
"""

from __future__ import annotations

import asyncio
import random
from collections import Counter
from collections.abc import Coroutine, Iterable
from dataclasses import dataclass
from typing import Any, Final

from paxoskv.check import CheckResult, History, Op, OpKind, check
from paxoskv.core.acceptor import (
    NO_FLOOR,
    AcceptorState,
    Floor,
    absent_state,
    floor_bucket,
    on_accept,
    on_collect,
    on_prepare,
)
from paxoskv.core.ballot import Ballot
from paxoskv.core.messages import Accept, Accepted, Collect, Collected, Nack, Prepare, Promise
from paxoskv.core.proposer import Prepared, choose_value
from paxoskv.core.quorum import QuorumConfig
from paxoskv.core.reconfig import (
    CONFIG_KEY,
    CatchUp,
    ChangeMachine,
    Config,
    ConfigRecord,
    Done,
    EpochVerdict,
    Install,
    RecordPhase,
    WriteRecord,
    admit,
    collection_allowed,
    drops_all_rows,
    fence_satisfied,
    joins_group,
    key_quorums,
)
from paxoskv.core.register import (
    Cas,
    Change,
    Create,
    Delete,
    Outcome,
    Read,
    Set,
    apply_change,
)
from paxoskv.sim.loop import run_virtual

__all__ = ["GROUP_MUTANTS", "RECONF_MUTANTS", "ReconfOptions", "ReconfResult", "run_reconf_seed"]

RECONF_MUTANTS: Final[dict[str, str]] = {
    "reconf-skip-identity-round": "the prepare set is widened (the change completed) without "
                                  "the catch-up identity round of every key",
    "reconf-no-epoch-fence": "acceptors serve messages of any epoch, so a removed acceptor's "
                             "votes still count for proposers that missed the change",
    "group-mid-majorities": "with groups, mid-change quorums are plain majorities of each "
                            "side's group, so across a swap a prepare quorum of one config "
                            "misses an accept quorum of its neighbour",
    "group-fence-as-if-one-group": "with groups, an install is done once the rule without "
                                   "groups fences the previous config, which leaves some "
                                   "key's group a quorum of unfenced acceptors",
    "group-keep-stale-rows": "with groups, an acceptor a change brings back into a key's "
                             "group keeps the row it had before it left",
}
GROUP_MUTANTS: Final = frozenset(m for m in RECONF_MUTANTS if m.startswith("group-"))

_KINDS: Final[dict[OpKind, int]] = {"set": 25, "cas": 25, "create": 10, "delete": 10,
                                     "read": 30}
_PHASE_TIMEOUT_S: Final = 0.25
_OP_DEADLINE_S: Final = 3.0


@dataclass(frozen=True, slots=True)
class ReconfOptions:
    """The shape of one run; every field is part of a failing seed's repro line."""

    acceptors: int = 3
    """The initial acceptor set, ids 1..acceptors; acceptors added later get fresh ids."""
    proposers: int = 3
    clients: int = 4
    ops: int = 500
    keys: int = 6
    changes_max: int = 10
    """Acceptor-set changes (add, remove or replace) the driver runs, one at a time."""
    drop: float = 0.05
    duplicate: float = 0.02
    slow: float = 0.05
    """The chance a message is held up to ``slow_ms_max`` (it overtakes nothing else)."""
    slow_ms_max: float = 400.0
    fault_interval_ms_mean: float = 60.0
    crash_acceptor: float = 0.3
    crash_proposer: float = 0.1
    crash_driver: float = 0.03
    """At each fault tick, the chances of each crash."""
    gc_interval_ms_mean: float = 80.0
    """Mean time between tombstone collection attempts of a random key (docs/gc.md: every
    acceptor accepts the tombstone, then each removes its row and raises its floor); 0:
    none."""
    liveness_s_max: float = 60.0
    mutant: str | None = None
    replication_factor: int | None = None
    """R (docs/groups.md): each key lives on R acceptors of the set; None: on all."""
    min_acceptors: int = 3
    max_acceptors: int = 5
    """The driver keeps the set between these sizes."""

    def __post_init__(self) -> None:
        if self.acceptors < 3 or self.min_acceptors < 3:
            raise ValueError("start with at least three acceptors (removes keep three)")
        if not self.min_acceptors <= self.acceptors <= self.max_acceptors:
            raise ValueError("acceptors must lie between min_acceptors and max_acceptors")
        if self.mutant is not None and self.mutant not in RECONF_MUTANTS:
            raise ValueError(f"unknown mutant {self.mutant!r}; one of {sorted(RECONF_MUTANTS)}")
        if self.replication_factor is not None and self.replication_factor < 2:
            raise ValueError("the replication factor is at least 2")
        if self.mutant in GROUP_MUTANTS and self.replication_factor is None:
            raise ValueError(f"{self.mutant} needs a replication factor")


@dataclass(slots=True)
class ReconfResult:
    seed: int
    options: ReconfOptions
    ops: list[Op]
    check: CheckResult
    faults: Counter[str]
    liveness_failures: list[str]
    errors: list[str]
    final_config: Config | None
    virtual_s: float

    @property
    def violated(self) -> bool:
        return bool(self.check.violations) or bool(self.errors)

    @property
    def failed(self) -> bool:
        return self.violated or bool(self.check.inconclusive) or bool(self.liveness_failures)


# ------------------------------------------------------------ messages beyond the core's


@dataclass(frozen=True, slots=True)
class InstallReq:
    config: Config
    floors: tuple[tuple[int, Floor], ...] = ()
    """Bucket floors for an acceptor the config adds (merged from those that acked)."""


@dataclass(frozen=True, slots=True)
class InstallAck:
    epoch: int
    floors: tuple[tuple[int, Floor], ...] = ()
    keys: frozenset[str] = frozenset()
    """Keys this acceptor has a row of: what the catch-up must cover."""


@dataclass(frozen=True, slots=True)
class Stale:
    """Refused: the acceptor holds ``config``, newer than the sender's."""

    config: Config


@dataclass(frozen=True, slots=True)
class Retired:
    """Refused: the acceptor is no longer a member of ``config``."""

    config: Config


Request = Prepare | Accept | Collect | InstallReq
Response = Promise | Accepted | Nack | Collected | InstallAck | Stale | Retired


class _Failed(Exception):
    """Nothing of the call took effect."""


class _Unknown(Exception):
    """An accept carrying the change left: it may have taken effect."""


class _Acceptor:
    """One acceptor process: its durable state survives crashes (each step is durable
    before its reply leaves, as on the node)."""

    def __init__(self, acceptor_id: int, config: Config, sim: _Sim) -> None:
        self.id = acceptor_id
        self.config = config
        self.rows: dict[str, AcceptorState] = {}
        self.floors: dict[int, Floor] = {}
        self.up = True
        self.sim = sim

    def handle(self, cfg: Config, msg: Request) -> Response | None:
        if isinstance(msg, InstallReq):
            if msg.config.epoch > self.config.epoch:
                self.adopt(msg.config)
            for bucket, floor in msg.floors:
                self.floors[bucket] = self.floors.get(bucket, NO_FLOOR).merged(floor)
            if self.config.epoch < msg.config.epoch:
                return None
            return InstallAck(msg.config.epoch, tuple(sorted(
                self.floors.items(), key=lambda bf: bf[0])), frozenset(self.rows))
        if self.sim.options.mutant == "reconf-no-epoch-fence":
            verdict = EpochVerdict.SERVE
        else:
            verdict = admit(self.config, self.id, cfg)
        if verdict is EpochVerdict.STALE:
            self.sim.faults["stale_refused"] += 1
            return Stale(self.config)
        if verdict is EpochVerdict.RETIRED:
            return Retired(self.config if cfg.epoch <= self.config.epoch else cfg)
        if verdict is EpochVerdict.ADOPT:
            self.adopt(cfg)
            self.sim.faults["epoch_adopted"] += 1
        if self.id not in self.config.members:
            self.sim.faults["vote_after_removal"] += 1  # only the no-fence mutant gets here
        bucket = floor_bucket(msg.key)
        floor = self.floors.get(bucket, NO_FLOOR)
        state = self.rows.get(msg.key) or absent_state(floor)
        if isinstance(msg, Collect):
            collect = on_collect(state, floor, msg, msg.key in self.rows)
            if collect.remove:
                del self.rows[msg.key]
                self.floors[bucket] = collect.floor
                self.sim.faults["gc_rows_removed"] += 1
            return collect.reply
        step = on_prepare(state, msg) if isinstance(msg, Prepare) else on_accept(state, msg)
        self.rows[msg.key] = step.state
        reply = step.reply
        assert isinstance(reply, Promise | Accepted | Nack)
        return reply

    def adopt(self, cfg: Config) -> None:
        """Hold ``cfg`` from now on, first dropping the rows it must not vote with: those of
        keys ``cfg`` brings it into the group of, or all of them when it missed a whole
        change (``joins_group``, ``drops_all_rows``; docs/groups.md, "Stale rows"). Floors
        stay: they only go up."""
        if self.sim.options.mutant != "group-keep-stale-rows":
            if drops_all_rows(self.config, cfg):
                if self.rows:
                    self.sim.faults["rows_dropped_missed_change"] += len(self.rows)
                self.rows.clear()
            else:
                for key in [k for k in self.rows if joins_group(cfg, self.id, k)]:
                    del self.rows[key]
                    self.sim.faults["rows_dropped_joining_group"] += 1
        self.config = cfg


class _Proposer:
    """A proposer process: classic rounds with the config it knows, learning newer ones
    from ``Stale`` refusals and from the driver's announcements."""

    def __init__(self, proposer_id: int, sim: _Sim) -> None:
        self.id = proposer_id
        self.sim = sim
        self.incarnation = 0
        self.counter = 0
        self.config = sim.boot_config
        self.prepared: dict[str, tuple[int, Prepared]] = {}
        """Phase-1-skip cache: key -> (epoch it was prepared under, what was prepared)."""
        self.inbox: dict[int, asyncio.Queue[tuple[int, Response]]] = {}
        self.tasks: set[asyncio.Task[Any]] = set()
        self.up = True

    def restart(self) -> None:
        """A crash loses memory: the boot config, no cache, a new incarnation."""
        for task in list(self.tasks):
            task.cancel()
        self.tasks.clear()
        self.inbox.clear()
        self.prepared.clear()
        self.config = self.sim.boot_config
        self.incarnation += 1
        self.counter = 0

    def learn(self, cfg: Config) -> None:
        if cfg.epoch > self.config.epoch:
            self.config = cfg
            self.sim.faults["config_learned"] += 1

    def new_ballot(self) -> Ballot:
        self.counter += 1
        return Ballot(self.counter, self.id, self.incarnation)

    async def phase(self, cfg: Config, quorum: QuorumConfig,
                    msg: Request) -> tuple[dict[int, Response], Ballot]:
        """Send ``msg`` to ``quorum``'s acceptors; return the positive replies (once they
        are a quorum, or on a timeout, or when the refusals leave none possible) and the
        highest ballot refusing us."""
        targets = quorum.acceptors
        rid = self.sim.next_rid()
        queue: asyncio.Queue[tuple[int, Response]] = asyncio.Queue()
        self.inbox[rid] = queue
        for t in sorted(targets):
            self.sim.send(self.id, t, cfg, msg, rid)
        loop = asyncio.get_running_loop()
        end = loop.time() + _PHASE_TIMEOUT_S
        oks: dict[int, Response] = {}
        refused: set[int] = set()
        seen = Ballot.ZERO
        try:
            while not quorum.met(oks) and quorum.is_quorum(targets - refused):
                remaining = end - loop.time()
                if remaining <= 0:
                    break
                try:
                    src, reply = await asyncio.wait_for(queue.get(), remaining)
                except TimeoutError:
                    break
                if src not in targets:
                    continue
                if isinstance(reply, Stale):
                    self.learn(reply.config)
                    refused.add(src)
                elif isinstance(reply, Nack):
                    seen = max(seen, reply.ballot_promised)
                    refused.add(src)
                elif isinstance(reply, Retired):
                    self.learn(reply.config)
                    refused.add(src)
                elif src not in refused:
                    oks[src] = reply
        finally:
            self.inbox.pop(rid, None)
        return oks, seen

    async def execute(self, key: str, change: Change, min_epoch: int = 0) -> Outcome:
        """Run ``change`` on ``key`` to a commit under an epoch of at least ``min_epoch``.

        Raises ``_Failed`` when nothing can have taken effect, ``_Unknown`` once an accept
        applying a write left unanswered (no retry then: without request ids a retry could
        apply it twice)."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + _OP_DEADLINE_S
        writes = not isinstance(change, Read)
        mid_majorities = self.sim.options.mutant == "group-mid-majorities"
        while loop.time() < deadline:
            cfg = self.config
            if cfg.epoch < min_epoch:
                raise _Failed
            kq = key_quorums(cfg, key, mid_majorities=mid_majorities)
            cached = self.prepared.pop(key, None)
            if cached is not None and cached[0] == cfg.epoch:
                ballot, base = cached[1].ballot, cached[1].value
                self.sim.faults["phase1_skipped"] += 1
            else:
                if cached is not None:
                    self.sim.faults["phase1_cache_dropped_by_epoch"] += 1
                ballot = self.new_ballot()
                promises, seen = await self.phase(cfg, kq.prepare, Prepare(key, ballot))
                if not kq.prepare.met(promises):
                    self.counter = max(self.counter, seen.counter)
                    await asyncio.sleep(self.sim.rng.uniform(0, 0.03))
                    continue
                ps = [p for p in promises.values() if isinstance(p, Promise)]
                base = choose_value(ps, kq.prepare)
            new, outcome = apply_change(base, change)
            nxt = self.new_ballot()
            accepted, seen = await self.phase(cfg, kq.accept, Accept(key, ballot, new, nxt))
            if kq.accept.met(accepted):
                promised = {a for a, r in accepted.items()
                            if isinstance(r, Accepted) and r.next == nxt}
                if kq.prepare.is_quorum(promised):
                    self.prepared[key] = (cfg.epoch, Prepared(nxt, new))
                return outcome
            if writes and new is not base:
                raise _Unknown
            self.counter = max(self.counter, seen.counter)
            await asyncio.sleep(self.sim.rng.uniform(0, 0.03))
        raise _Failed


def _everyone(acceptors: Iterable[int]) -> QuorumConfig:
    """A phase that needs every one of ``acceptors``."""
    members = frozenset(acceptors)
    return QuorumConfig(members, len(members))


class _Sim:
    def __init__(self, seed: int, options: ReconfOptions) -> None:
        self.seed = seed
        self.options = options
        self.rng = random.Random(seed)
        self.net_rng = random.Random(self.rng.getrandbits(64))
        self.faults: Counter[str] = Counter()
        self.errors: list[str] = []
        self.liveness_failures: list[str] = []
        self.boot_config = Config.stable(0, range(1, options.acceptors + 1),
                                         options.replication_factor)
        self.acceptors = {i: _Acceptor(i, self.boot_config, self)
                          for i in self.boot_config.members}
        self.next_acceptor_id = options.acceptors + 1
        self.proposers = {100 + i: _Proposer(100 + i, self) for i in range(options.proposers)}
        self.driver = _Proposer(99, self)
        self.keys = [f"k{i}" for i in range(options.keys)]
        self.key_weights = [1 / (i + 1) ** 2 for i in range(options.keys)]
        """Skewed (Zipf, s=2): hot keys contend, cold ones sit untouched across several
        changes, which is what a change that forgot the catch-up loses."""
        self.history = History(clock=lambda: asyncio.get_running_loop().time())
        self._rid = 0
        self.message_faults = True
        self.ops_issued = 0
        self.current: Config = self.boot_config
        self.listed: list[str] = []
        """Keys the last install found rows of (what ``catch_up`` covers)."""
        self.collector = _Proposer(98, self)
        """The newest config the driver installed (what proposers are told)."""

    def next_rid(self) -> int:
        self._rid += 1
        return self._rid

    def _proposer(self, pid: int) -> _Proposer | None:
        if pid == self.driver.id:
            return self.driver
        return self.collector if pid == self.collector.id else self.proposers.get(pid)

    def send(self, src: int, dst: int, cfg: Config, msg: Request, rid: int) -> None:
        copies = 1
        if self.message_faults:
            if self.net_rng.random() < self.options.drop:
                self.faults["dropped"] += 1
                return
            if self.net_rng.random() < self.options.duplicate:
                copies = 2
                self.faults["duplicated"] += 1
        loop = asyncio.get_running_loop()
        for _ in range(copies):
            loop.call_later(self._delay(), self._deliver, src, dst, cfg, msg, rid)

    def _delay(self) -> float:
        if self.message_faults and self.net_rng.random() < self.options.slow:
            self.faults["delayed"] += 1
            return self.net_rng.uniform(0, self.options.slow_ms_max) / 1000
        return self.net_rng.uniform(0.2, 5.0) / 1000

    def _deliver(self, src: int, dst: int, cfg: Config, msg: Request, rid: int) -> None:
        acceptor = self.acceptors.get(dst)
        if acceptor is None or not acceptor.up:
            return
        reply = acceptor.handle(cfg, msg)
        if reply is None:
            return
        if self.message_faults and self.net_rng.random() < self.options.drop:
            self.faults["dropped"] += 1
            return
        asyncio.get_running_loop().call_later(self._delay(), self._reply, src, dst, reply, rid)

    def _reply(self, dst: int, src: int, reply: Response, rid: int) -> None:
        proposer = self._proposer(dst)
        if proposer is None or not proposer.up:
            return
        queue = proposer.inbox.get(rid)
        if queue is not None:
            queue.put_nowait((src, reply))

    def announce(self, cfg: Config) -> None:
        """Proposers hear of an installed config after a while (a watch on the register)."""
        self.current = cfg if cfg.epoch > self.current.epoch else self.current
        loop = asyncio.get_running_loop()
        for p in [*self.proposers.values(), self.collector]:
            loop.call_later(self.rng.uniform(0, 1.5), p.learn, cfg)

    # ------------------------------------------------------------ the driver

    async def read_record(self) -> tuple[ConfigRecord, int]:
        out = await self.driver.execute(CONFIG_KEY, Read())
        if not out.value.exists:
            return ConfigRecord(RecordPhase.STABLE, self.boot_config), out.value.version
        assert out.value.data is not None
        return ConfigRecord.decode(out.value.data), out.value.version

    async def install(self, action: Install) -> None:
        """Send the config until the fence holds and every new member has it."""
        old = action.previous.members
        targets = action.config.members | old
        new = action.config.members - old
        acked: set[int] = set()
        floors: dict[int, Floor] = {}
        listed: set[str] = set()
        one_group = self.options.mutant == "group-fence-as-if-one-group"
        while not fence_satisfied(action.previous, acked, as_one_group=one_group):
            replies, _ = await self.driver.phase(action.config, _everyone(targets),
                                                 InstallReq(action.config))
            for a, r in replies.items():
                if isinstance(r, InstallAck) and r.epoch == action.config.epoch and a in old:
                    acked.add(a)
                    listed |= r.keys
                    for bucket, floor in r.floors:
                        floors[bucket] = floors.get(bucket, NO_FLOOR).merged(floor)
        given = tuple(sorted(floors.items(), key=lambda bf: bf[0]))
        joined: set[int] = set()
        if action.previous.grouped and action.previous.is_stable:
            # With groups a collection raised floors on the key's group only, and any
            # member the change keeps may join some key's group: all of them get the floors;
            # the one it removes needs none and may be down (docs/groups.md, "Floors").
            new = action.config.accept_set
        while not new <= joined:
            replies, _ = await self.driver.phase(action.config, _everyone(new),
                                                 InstallReq(action.config, given))
            joined |= {a for a, r in replies.items()
                       if isinstance(r, InstallAck) and r.epoch == action.config.epoch}
        # Every value chosen before the fence sits on an accept quorum of the previous
        # config, which the fenced acceptors meet: their rows name every key to catch up
        # (keys they collected have floors instead, which the new acceptors got).
        self.listed = sorted(listed - {CONFIG_KEY})
        self.faults["install"] += 1
        self.driver.learn(action.config)
        self.announce(action.config)

    async def catch_up(self, action: CatchUp) -> None:
        """An identity round of every key, committed under ``action.config``'s epoch."""
        for key in self.listed:
            while True:
                self.driver.learn(action.config)
                try:
                    await self.driver.execute(key, Read(), min_epoch=action.config.epoch)
                    break
                except _Failed:
                    await asyncio.sleep(0.05)
        self.faults["catch_up"] += 1

    async def drive(self, target: frozenset[int]) -> None:
        """Step a ``ChangeMachine`` to ``target``; each loop re-reads the record."""
        machine = ChangeMachine(target, self.options.mutant == "reconf-skip-identity-round")
        while True:
            try:
                record, version = await self.read_record()
            except (_Failed, _Unknown):
                await asyncio.sleep(0.05)
                continue
            action = machine.next_action(record, version)
            match action:
                case Done():
                    return
                case Install():
                    await self.install(action)
                    machine.installed.add(action.config.epoch)
                case CatchUp():
                    await self.catch_up(action)
                    machine.caught_up.add(action.config.epoch)
                case WriteRecord():
                    data = action.record.encode()
                    change: Change = Create(data) if action.expected_version == 0 \
                        else Cas(action.expected_version, data)
                    try:
                        await self.driver.execute(CONFIG_KEY, change)
                        self.faults["record_written"] += 1
                    except (_Failed, _Unknown):
                        await asyncio.sleep(0.05)

    async def driver_loop(self) -> None:
        """Pick changes one at a time and drive each to the end, surviving crashes."""
        for _ in range(self.options.changes_max):
            members = sorted(self.current.members)
            kind = self.rng.choice(["add", "remove", "replace"])
            lo, hi = self.options.min_acceptors, self.options.max_acceptors
            if kind == "remove" and len(members) <= lo:
                kind = "add" if len(members) < hi else "replace"
            if kind == "add" and len(members) >= hi:
                kind = "remove"
            if kind in ("add", "replace"):
                fresh = self.next_acceptor_id
                self.next_acceptor_id += 1
                # A learner: it holds the boot config, which does not name it, so it
                # refuses every vote until a config that names it reaches it.
                self.acceptors[fresh] = _Acceptor(fresh, self.boot_config, self)
            if kind == "add":
                target = frozenset(members) | {fresh}
            elif kind == "remove":
                target = frozenset(members) - {self.rng.choice(members)}
            else:
                target = (frozenset(members) - {self.rng.choice(members)}) | {fresh}
            self.faults[f"change_{kind}"] += 1
            await self._drive_surviving(target)
            await asyncio.sleep(self.rng.uniform(0, 2.0))  # a stable window: GC may run

    async def _drive_surviving(self, target: frozenset[int]) -> None:
        while True:
            task = asyncio.ensure_future(self.drive(target))
            self.driver.tasks.add(task)
            try:
                await task
                return
            except asyncio.CancelledError:
                if not self.driver_restarting:
                    raise
                self.faults["driver_restarted"] += 1
                self.driver_restarting = False
            finally:
                self.driver.tasks.discard(task)

    driver_restarting: bool = False

    # ------------------------------------------------------------ tombstone collection

    async def collect_tombstones(self) -> None:
        """Collect a random key's tombstone now and then, as a node's sweep would (docs/gc.md),
        but only in a stable config the record names (``collection_allowed``)."""
        c = self.collector
        while True:
            await asyncio.sleep(self.rng.expovariate(1000 / self.options.gc_interval_ms_mean))
            # A node sweeps its own acceptor's tombstone rows; pick one any acceptor holds.
            dead = sorted({k for a in self.acceptors.values() for k, st in a.rows.items()
                           if k != CONFIG_KEY and not st.value.exists and st.value.version})
            key = self.rng.choice(dead or self.keys)
            try:
                raw = await c.execute(CONFIG_KEY, Read())
            except (_Failed, _Unknown):
                continue
            record = ConfigRecord.decode(raw.value.data) if raw.value.data is not None \
                else ConfigRecord(RecordPhase.STABLE, self.boot_config)
            cfg = c.config
            if not collection_allowed(record, cfg):
                self.faults["gc_paused_by_change"] += 1
                continue
            # Every acceptor of the key's group (all of them without groups).
            kq = key_quorums(cfg, key)
            group_p, group_a = kq.prepare.acceptors, kq.accept.acceptors
            ballot = c.new_ballot()
            promises, _ = await c.phase(cfg, _everyone(group_p), Prepare(key, ballot))
            if len(promises) < len(group_p):
                continue
            value = choose_value([p for p in promises.values() if isinstance(p, Promise)],
                                 kq.prepare)
            if value.exists or value.version == 0:
                continue
            accepted, _ = await c.phase(cfg, _everyone(group_a), Accept(key, ballot, value))
            if len(accepted) < len(group_a):
                continue
            self.faults["gc_collect_sent"] += 1
            await c.phase(cfg, _everyone(group_p | group_a), Collect(key, ballot, value.version))

    # ------------------------------------------------------------ faults and clients

    async def inject_faults(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            await asyncio.sleep(self.rng.expovariate(1000 / self.options.fault_interval_ms_mean))
            r = self.rng.random()
            if r < self.options.crash_acceptor:
                ups = [a for a in self.acceptors.values() if a.up]
                if len(ups) > 1:
                    victim = self.rng.choice(ups)
                    victim.up = False
                    self.faults["acceptor_crash"] += 1
                    loop.call_later(self.rng.uniform(0.001, 0.5), setattr, victim, "up", True)
            elif r < self.options.crash_acceptor + self.options.crash_proposer:
                p = self.rng.choice(list(self.proposers.values()))
                p.restart()
                self.faults["proposer_crash"] += 1
            elif r < (self.options.crash_acceptor + self.options.crash_proposer
                      + self.options.crash_driver) and self.driver.tasks:
                self.driver_restarting = True
                self.driver.restart()
                self.faults["driver_crash"] += 1

    async def client(self, cid: int, rng: random.Random) -> None:
        known: dict[str, int] = {}
        seq = 0
        while self.ops_issued < self.options.ops:
            self.ops_issued += 1
            seq += 1
            kind = rng.choices(list(_KINDS), list(_KINDS.values()))[0]
            key = rng.choices(self.keys, self.key_weights)[0]
            data = f"c{cid}.{seq}".encode()
            expected: int | None = None
            change: Change
            if kind == "set":
                change = Set(data)
            elif kind == "cas":
                expected = max(0, known.get(key, 1) + rng.choice((0, 0, -1, 1)))
                change = Cas(expected, data)
            elif kind == "create":
                change = Create(data)
            elif kind == "delete":
                change = Delete()
            else:
                change = Read()
            value = data if kind in ("set", "cas", "create") else None
            proposer = rng.choice(list(self.proposers.values()))
            await self.one_op(cid, proposer, key, kind, change, value, expected, known)
            await asyncio.sleep(rng.uniform(0, 0.01))

    async def one_op(self, cid: int, proposer: _Proposer, key: str, kind: OpKind,
                     change: Change, value: bytes | None, expected: int | None,
                     known: dict[str, int]) -> bool:
        op = self.history.invoke(cid, key, kind, value, expected)
        task = asyncio.ensure_future(proposer.execute(key, change))
        proposer.tasks.add(task)
        await asyncio.wait([task])
        proposer.tasks.discard(task)
        if task.cancelled():
            self.history.complete(op, "unknown")
            return False
        exc = task.exception()
        if isinstance(exc, _Failed):
            self.history.complete(op, "failed")
            return False
        if exc is not None:
            if not isinstance(exc, _Unknown):
                self.errors.append(f"proposer {proposer.id}: {exc!r}")
            self.history.complete(op, "unknown")
            return False
        out = task.result()
        v = out.value
        known[key] = v.version
        if out.kind == "applied":
            self.history.complete(op, "ok", out_version=v.version)
        elif out.kind == "read":
            self.history.complete(op, "ok", out_version=v.version if v.exists else None,
                                  out_value=v.data)
        else:
            self.history.complete(op, "rejected", out_version=v.version if v.exists else None)
        return True

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        faults = asyncio.ensure_future(self.inject_faults())
        driver = asyncio.ensure_future(self.driver_loop())
        collector = asyncio.ensure_future(self.collect_tombstones()) \
            if self.options.gc_interval_ms_mean > 0 else None
        clients = [asyncio.ensure_future(self.client(c, random.Random(self.rng.getrandbits(64))))
                   for c in range(self.options.clients)]
        await asyncio.gather(*clients)
        # Liveness: no more faults; the change in progress must finish, every key be read.
        faults.cancel()
        await asyncio.gather(faults, return_exceptions=True)
        if collector is not None:
            collector.cancel()
            await asyncio.gather(collector, return_exceptions=True)
        self.message_faults = False
        for a in self.acceptors.values():
            a.up = True
        self.driver_restarting = False
        deadline = loop.time() + self.options.liveness_s_max
        try:
            async with asyncio.timeout(self.options.liveness_s_max):
                await driver
        except TimeoutError:
            self.liveness_failures.append("the acceptor-set change never finished")
        reader = self.options.clients
        for key in self.keys:
            while not await self.one_op(reader, self.rng.choice(list(self.proposers.values())),
                                        key, "read", Read(), None, None, {}):
                if loop.time() >= deadline:
                    self.liveness_failures.append(f"final read of {key!r} never succeeded")
                    break
                await asyncio.sleep(0.1)


def run_reconf_seed(seed: int, options: ReconfOptions) -> ReconfResult:
    """Run one seed to the end and check its history."""
    box: list[_Sim] = []

    async def main() -> float:
        sim = _Sim(seed, options)
        box.append(sim)

        def on_error(_: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
            # An acceptor's or a round's assertion fails inside a delivery callback.
            sim.errors.append(f"{context.get('message')}: {context.get('exception')!r}")

        asyncio.get_running_loop().set_exception_handler(on_error)
        await sim.run()
        for p in [*sim.proposers.values(), sim.driver, sim.collector]:
            for task in list(p.tasks):
                task.cancel()
        return asyncio.get_running_loop().time()

    virtual_s = _run(main())
    sim = box[0]
    ops = sim.history.ops()
    final: Config | None = sim.current
    return ReconfResult(seed, options, ops, check(ops), sim.faults, sim.liveness_failures,
                        sim.errors, final, virtual_s)


def _run(coro: Coroutine[Any, Any, float]) -> float:
    return run_virtual(coro)

