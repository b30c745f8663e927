"""One paxoskv node: wires the pure core to a Storage and a Transport.

The node runs rounds for clients (proposer), answers peers (acceptor), heartbeats its
peers (failure detection and amnesia detection), and repairs keys in the background. It
talks only to the ``Storage`` and ``Transport`` protocols and reads time only from the
running event loop, so the simulator runs this very file on a virtual clock.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, Literal

from paxoskv import __version__
from paxoskv.core import acceptor as acceptor_rules
from paxoskv.core.ballot import Ballot
from paxoskv.core.messages import (
    Accept,
    Prepare,
    Query,
    Reply,
    Request,
    Unavailable,
)
from paxoskv.core.proposer import (
    Abort,
    Committed,
    ProposerRound,
    QueryRound,
    SendAccept,
    Unknown,
    Wait,
    next_ballot,
)
from paxoskv.core.quorum import QuorumConfig
from paxoskv.core.register import Change, Outcome, Read
from paxoskv.limits import Limits
from paxoskv.metrics import Metrics
from paxoskv.storage.base import NodeIdentity, Storage
from paxoskv.transport.base import KeyEntry, PeerUnreachable, Transport

__all__ = [
    "AcceptorRules",
    "NoQuorum",
    "Node",
    "NodeConfig",
    "Overloaded",
    "PeerSpec",
    "UnknownOutcome",
    "open_identity",
]

log = logging.getLogger(__name__)

Role = Literal["proposer", "acceptor", "learner"]
ALL_ROLES: frozenset[Role] = frozenset({"proposer", "acceptor", "learner"})


class NoQuorum(Exception):
    """No quorum of acceptors answered; the change definitely did not take effect."""


class UnknownOutcome(Exception):
    """The change may or may not have taken effect (DESIGN invariant 5)."""


class Overloaded(Exception):
    """Too many rounds in flight on this node."""


@dataclass(frozen=True, slots=True)
class PeerSpec:
    node_id: int
    url: str
    roles: frozenset[Role] = ALL_ROLES


@dataclass(frozen=True, slots=True)
class NodeConfig:
    node_id: int
    peers: dict[int, PeerSpec]
    """Every node of the cluster, this one included."""
    cluster_id: str = "paxoskv"
    request_timeout_s: float = 5.0
    phase_timeout_s: float = 1.0
    heartbeat_interval_s: float = 0.5
    heartbeat_timeout_s: float = 1.0
    peer_down_after: int = 3
    """Missed heartbeats after which a peer is reported down."""
    retry_backoff_s_base: float = 0.005
    retry_backoff_s_max: float = 0.2
    repair_interval_s: float = 30.0
    repair_keys_per_second: float = 100.0
    rejoin: bool = False
    limits: Limits = field(default_factory=Limits)

    def __post_init__(self) -> None:
        if self.node_id not in self.peers:
            raise ValueError(f"node id {self.node_id} is not among the configured peers")
        if not self.acceptors:
            raise ValueError("the cluster has no acceptor")
        if self.phase_timeout_s > self.request_timeout_s:
            raise ValueError("phase timeout must not exceed the request timeout")

    @property
    def acceptors(self) -> frozenset[int]:
        return frozenset(p.node_id for p in self.peers.values() if "acceptor" in p.roles)

    @property
    def roles(self) -> frozenset[Role]:
        return self.peers[self.node_id].roles


@dataclass(frozen=True, slots=True)
class AcceptorRules:
    """The acceptor's rules as values, so the simulator can swap in broken mutants."""

    on_prepare: Callable[[acceptor_rules.AcceptorState, Prepare], acceptor_rules.Step] = (
        acceptor_rules.on_prepare)
    on_accept: Callable[[acceptor_rules.AcceptorState, Accept], acceptor_rules.Step] = (
        acceptor_rules.on_accept)


async def open_identity(storage: Storage, cluster_id: str, node_id: int) -> NodeIdentity:
    """Read this data directory's identity and durably bump the incarnation."""
    stored_cluster = storage.get_meta("cluster_id")
    stored_node = storage.get_meta("node_id")
    fresh = stored_cluster is None
    if fresh:
        await storage.set_meta("cluster_id", cluster_id)
        await storage.set_meta("node_id", str(node_id))
        await storage.set_meta("data_id", uuid.uuid4().hex)
    elif stored_cluster != cluster_id or stored_node != str(node_id):
        raise SystemExit(
            f"data directory belongs to cluster {stored_cluster!r} node {stored_node}, "
            f"not cluster {cluster_id!r} node {node_id}; refusing to start")
    incarnation = int(storage.get_meta("incarnation") or "0") + 1
    await storage.set_meta("incarnation", str(incarnation))
    data_id = storage.get_meta("data_id")
    assert data_id is not None
    return NodeIdentity(cluster_id, node_id, data_id, incarnation, fresh)


class _KeyedLocks:
    """One asyncio.Lock per key, dropped when nobody holds or waits for it."""

    def __init__(self) -> None:
        self._locks: dict[str, tuple[asyncio.Lock, int]] = {}

    @contextlib.asynccontextmanager
    async def hold(self, key: str) -> AsyncIterator[None]:
        lock, users = self._locks.get(key, (None, 0))
        if lock is None:
            lock = asyncio.Lock()
        self._locks[key] = (lock, users + 1)
        try:
            async with lock:
                yield
        finally:
            lock, users = self._locks[key]
            if users <= 1:
                del self._locks[key]
            else:
                self._locks[key] = (lock, users - 1)


@dataclass
class _Progress:
    """How far one client request got: whether an accept carrying its change left this node."""

    change_sent: bool = False
    sent_from_version: int | None = None
    """The lowest version an accept of this request's change proposed."""


@dataclass
class PeerHealth:
    up: bool = False
    misses: int = 0
    rtt_s: float | None = None
    last_ok: float | None = None
    version: str | None = None
    error: str | None = None


class Node:
    def __init__(
        self,
        config: NodeConfig,
        identity: NodeIdentity,
        storage: Storage,
        transport: Transport,
        metrics: Metrics | None = None,
        rng: random.Random | None = None,
        rules: AcceptorRules | None = None,
        quorum: QuorumConfig | None = None,
    ) -> None:
        self.config = config
        self.identity = identity
        self.storage = storage
        self.transport = transport
        self.metrics = metrics or Metrics()
        self.rng = rng or random.Random()
        self.rules = rules or AcceptorRules()
        self.quorum = quorum or QuorumConfig.of(config.acceptors)
        self.peer_health: dict[int, PeerHealth] = {
            pid: PeerHealth() for pid in config.peers if pid != config.node_id}
        self.heard_from: dict[int, float] = {}
        """When each peer's heartbeat last reached us (loop time)."""
        self._counter = 0
        self._acceptor_locks = _KeyedLocks()
        self._proposer_locks = _KeyedLocks()
        self._inflight = 0
        self._background: set[asyncio.Task[Any]] = set()
        self.stopping = False
        is_acceptor = config.node_id in config.acceptors
        # An acceptor that just made its state must first hear from peers that they do not
        # remember another state of ours (DESIGN invariant 4); one with state may serve.
        self.acceptor_mode: Literal["normal", "verifying", "amnesia", "rejoining", "none"]
        if not is_acceptor:
            self.acceptor_mode = "none"
        elif config.rejoin:
            self.acceptor_mode = "rejoining"
        elif identity.fresh or storage.get_meta("verified") != "1":
            self.acceptor_mode = "verifying"
        else:
            self.acceptor_mode = "normal"
        self.amnesia_detail: str | None = None
        self.repair_progress: dict[str, int] = {"checked": 0, "repaired": 0, "sweeps": 0}
        self.metrics.amnesia(False)
        self.metrics.keys(storage.key_count())

    # ---------------------------------------------------------------- acceptor side

    async def handle(self, msg: Request) -> Reply:
        """Answer one peer request; the reply leaves only after its state is durable."""
        mode = self.acceptor_mode
        if mode in ("none", "amnesia", "verifying") or (
                mode == "rejoining" and not isinstance(msg, Accept)):
            return Unavailable(msg.key, f"acceptor {mode}")
        if isinstance(msg, Query):
            return acceptor_rules.on_query(self.storage.load(msg.key), msg)
        async with self._acceptor_locks.hold(msg.key):
            state = self.storage.load(msg.key)
            if isinstance(msg, Prepare):
                step = self.rules.on_prepare(state, msg)
            else:
                step = self.rules.on_accept(state, msg)
            if step.persist:
                await self.storage.save(msg.key, step.state)
                if state.ballot_accepted.is_zero() and state.ballot_promised.is_zero():
                    self.metrics.keys(self.storage.key_count())
            return step.reply

    def hello_info(self, rejoin: bool = False) -> dict[str, Any]:
        return {
            "cluster_id": self.identity.cluster_id,
            "node_id": self.identity.node_id,
            "data_id": self.identity.data_id,
            "incarnation": self.identity.incarnation,
            "version": __version__,
            "rejoin": rejoin,
        }

    async def on_hello(self, info: dict[str, Any]) -> dict[str, Any]:
        """A peer's heartbeat: remember its data id the first time, report what we know."""
        reply = self.hello_info()
        peer_id = info.get("node_id")
        data_id = info.get("data_id")
        if info.get("cluster_id") != self.identity.cluster_id or not isinstance(peer_id, int) \
                or not isinstance(data_id, str) or peer_id not in self.config.peers:
            reply["refused"] = "unknown cluster or node"
            return reply
        self.heard_from[peer_id] = asyncio.get_running_loop().time()
        name = f"peer_data_id.{peer_id}"
        known = self.storage.get_meta(name)
        if known is None or (info.get("rejoin") is True and known != data_id):
            await self.storage.set_meta(name, data_id)
            if known is not None:
                log.warning("node %s rejoined with new state %s (was %s)", peer_id, data_id, known)
            known = data_id
        reply["your_data_id"] = known
        return reply

    # ---------------------------------------------------------------- proposer side

    def _next_ballot(self, seen: Ballot) -> Ballot:
        ballot = next_ballot(self._counter, seen, self.identity.node_id, self.identity.incarnation)
        self._counter = ballot.counter
        return ballot

    def _usable(self, acceptor_id: int) -> bool:
        if acceptor_id == self.config.node_id:
            return True
        health = self.peer_health.get(acceptor_id)
        return health is None or health.misses < self.config.peer_down_after

    async def _ask(self, acceptor_id: int, msg: Request) -> tuple[int, Reply]:
        if acceptor_id == self.config.node_id:
            return acceptor_id, await self.handle(msg)
        if not self._usable(acceptor_id):
            return acceptor_id, Unavailable(msg.key, "peer down")
        try:
            return acceptor_id, await self.transport.send(acceptor_id, msg)
        except PeerUnreachable as exc:
            return acceptor_id, Unavailable(msg.key, f"unreachable: {exc}")

    def _spawn(self, coro: Awaitable[Any]) -> asyncio.Task[Any]:
        task: asyncio.Task[Any] = asyncio.ensure_future(coro)
        self._background.add(task)
        task.add_done_callback(self._background.discard)
        return task

    async def _broadcast(self, msg: Request, on_reply: Callable[[int, Reply], Any],
                         deadline: float) -> Any:
        """Send ``msg`` to every acceptor; feed replies until one returns non-Wait.

        Sends still in flight once the decision is made are left to finish (accepts that
        land late still help the lagging acceptor) but are no longer waited for.
        """
        loop = asyncio.get_running_loop()
        pending = {self._spawn(self._ask(a, msg)) for a in sorted(self.quorum.acceptors)}
        while pending:
            timeout = deadline - loop.time()
            if timeout <= 0:
                break
            done, pending = await asyncio.wait(pending, timeout=timeout,
                                               return_when=asyncio.FIRST_COMPLETED)
            for task in done:
                acceptor_id, reply = task.result()
                step = on_reply(acceptor_id, reply)
                if not isinstance(step, Wait):
                    return step
        return None

    def _backoff(self, attempt: int) -> float:
        cap = min(self.config.retry_backoff_s_max,
                  self.config.retry_backoff_s_base * (2 ** attempt))
        return self.rng.uniform(0, cap)

    async def execute(self, key: str, change: Change, request_id: str | None = None
                      ) -> Outcome:
        """Run ``change`` on ``key`` through full Paxos rounds until it commits.

        ``request_id`` (default: a fresh random id) makes the change exactly-once across
        this call's retries, and across calls that pass the same id. Raises NoQuorum
        (definitely not applied), UnknownOutcome, or Overloaded.
        """
        if request_id is None:
            request_id = self.rng.randbytes(12).hex()
        if self._inflight >= self.config.limits.rounds_inflight_max:
            raise Overloaded(f"{self._inflight} rounds in flight")
        self._inflight += 1
        progress = _Progress()
        try:
            loop = asyncio.get_running_loop()
            deadline = loop.time() + self.config.request_timeout_s
            async with asyncio.timeout(self.config.request_timeout_s):
                async with self._proposer_locks.hold(key):
                    return await self._execute(key, change, deadline, progress, request_id)
        except TimeoutError:
            if progress.change_sent and not isinstance(change, Read):
                raise UnknownOutcome("timed out after its change was sent") from None
            # Nothing of this request reached an acceptor's accept: it did not happen.
            raise NoQuorum("request timed out before a quorum answered") from None
        finally:
            self._inflight -= 1

    async def _execute(self, key: str, change: Change, deadline: float,
                       progress: _Progress, request_id: str) -> Outcome:
        loop = asyncio.get_running_loop()
        seen = Ballot.ZERO
        last_abort: Abort | None = None
        for attempt in range(self.config.limits.round_retries_max):
            if attempt:
                await asyncio.sleep(self._backoff(attempt))
            ballot = self._next_ballot(seen)
            rnd = ProposerRound(key, ballot, change, self.quorum, request_id,
                                progress.sent_from_version)
            phase_deadline = min(deadline, loop.time() + self.config.phase_timeout_s)
            step = await self._broadcast(rnd.prepare(), rnd.on_reply, phase_deadline)
            if step is None:
                step = rnd.on_timeout()
            if isinstance(step, SendAccept):
                self.metrics.round("prepare", "ok")
                assert rnd.outcome is not None
                if rnd.outcome.kind == "applied" and step.accept.value.applied_version(
                        request_id) == step.accept.value.version:
                    # from now on a failure is "unknown" unless a retry finds out
                    progress.change_sent = True
                    version = step.accept.value.version
                    if progress.sent_from_version is None or version < progress.sent_from_version:
                        progress.sent_from_version = version
                phase_deadline = min(deadline, loop.time() + self.config.phase_timeout_s)
                step = await self._broadcast(step.accept, rnd.on_reply, phase_deadline)
                if step is None:
                    step = rnd.on_timeout()
                if isinstance(step, Committed):
                    self.metrics.round("accept", "ok")
                    return step.outcome
            if isinstance(step, Unknown):
                self.metrics.round("prepare", "unknown")
                raise UnknownOutcome("our unconfirmed write may have been applied, and the key "
                                     "has since seen too many writes to tell")
            assert isinstance(step, Abort), step
            last_abort = step
            outcome = "nack" if step.conflict else "timeout"
            self.metrics.round(step.phase.value, outcome)
            if step.conflict:
                self.metrics.conflict()
            seen = max(seen, step.ballot_seen)
            if not step.conflict and not self.quorum_reachable():
                break  # fail fast: the failure detector sees no quorum
        if progress.change_sent and not isinstance(change, Read):
            raise UnknownOutcome("accept sent but not confirmed by a quorum")
        if last_abort is not None and last_abort.conflict:
            raise NoQuorum("contention: gave up after repeated conflicts")
        raise NoQuorum("no quorum of acceptors reachable")

    async def read(self, key: str) -> Outcome:
        """Linearizable read: one round trip when a quorum agrees, else a full round."""
        loop = asyncio.get_running_loop()
        rnd = QueryRound(key, self.quorum)
        deadline = loop.time() + self.config.phase_timeout_s
        step = await self._broadcast(rnd.query(), rnd.on_reply, deadline)
        if isinstance(step, Committed):
            self.metrics.round("query", "ok")
            return step.outcome
        self.metrics.round("query", "fallback")
        return await self.execute(key, Read())

    def read_local(self, key: str) -> Outcome:
        """Stale read of this node's acceptor state (``?consistency=stale``)."""
        return Outcome("read", self.storage.load(key).value)

    async def list_keys(self, prefix: str, limit: int) -> list[str]:
        """Live keys by prefix, merged over a quorum of acceptors.

        For each key the entry with the highest accepted ballot wins, so a write or delete
        committed before the call began is reflected (its accept quorum intersects ours);
        writes in flight may or may not be. Each acceptor answers at most ``limit`` entries
        in key order, tombstones included; past the first truncated answer's last key the
        merge would be incomplete, so the result stops there.
        """
        answered = 0
        best: dict[str, tuple[Ballot, bool]] = {}
        horizon: str | None = None

        async def one(acceptor_id: int) -> list[KeyEntry] | None:
            if acceptor_id == self.config.node_id:
                if self.acceptor_mode != "normal":
                    return None
                return self.local_key_entries(prefix, limit)
            if not self._usable(acceptor_id):
                return None
            try:
                return await self.transport.list_keys(acceptor_id, prefix, limit)
            except PeerUnreachable:
                return None

        results = await asyncio.gather(*(one(a) for a in sorted(self.quorum.acceptors)))
        for entries in results:
            if entries is None:
                continue
            answered += 1
            for key, ballot, live in entries:
                if key not in best or best[key][0] < ballot:
                    best[key] = (ballot, live)
            if len(entries) >= limit and entries:
                last = entries[-1][0]
                horizon = last if horizon is None else min(horizon, last)
        if answered < self.quorum.quorum:
            raise NoQuorum("no quorum of acceptors answered the list")
        live_keys = sorted(k for k, (_, live) in best.items()
                           if live and (horizon is None or k <= horizon))
        return live_keys[:limit]

    def local_key_entries(self, prefix: str, limit: int) -> list[KeyEntry]:
        """This acceptor's keys under ``prefix`` (tombstones included), in key order."""
        if self.acceptor_mode not in ("normal",):
            return []
        out: list[KeyEntry] = []
        for key in self.storage.keys(prefix, limit):
            state = self.storage.load(key)
            if not state.ballot_accepted.is_zero():
                out.append((key, state.ballot_accepted, state.value.exists))
        return out

    # ---------------------------------------------------------------- health

    def quorum_reachable(self) -> bool:
        up = {a for a in self.quorum.acceptors if a != self.config.node_id and self._usable(a)
              and self.peer_health[a].up}
        if self.config.node_id in self.quorum.acceptors and self.acceptor_mode == "normal":
            up.add(self.config.node_id)
        return len(up) >= self.quorum.quorum

    def ready(self) -> bool:
        """Readiness: a quorum of acceptors that we reach AND that reach us.

        One-way is not enough: a pod restarted under a new address reaches its peers at once,
        but they may still resolve its old address (cluster DNS caches for up to 30 s). A
        rolling update that took it for ready would stop the next pod and lose the quorum.
        """
        if not self.quorum_reachable():
            return False
        now = asyncio.get_running_loop().time()
        fresh_s = self.config.heartbeat_interval_s * self.config.peer_down_after \
            + self.config.heartbeat_timeout_s
        mutual = {a for a in self.quorum.acceptors if a != self.config.node_id
                  and self.peer_health[a].up and now - self.heard_from.get(a, -1e9) <= fresh_s}
        if self.config.node_id in self.quorum.acceptors and self.acceptor_mode == "normal":
            mutual.add(self.config.node_id)
        return len(mutual) >= self.quorum.quorum

    async def heartbeat_once(self) -> None:
        loop = asyncio.get_running_loop()

        async def beat(pid: int) -> None:
            health = self.peer_health[pid]
            started = loop.time()
            try:
                async with asyncio.timeout(self.config.heartbeat_timeout_s):
                    info = await self.transport.hello(pid, self.hello_info(
                        rejoin=self.acceptor_mode == "rejoining"))
            except (PeerUnreachable, TimeoutError) as exc:
                health.misses += 1
                health.error = str(exc) or type(exc).__name__
                if health.misses >= self.config.peer_down_after:
                    if health.up:
                        log.warning("peer %s is down: %s", pid, health.error)
                    health.up = False
                self.metrics.peer(str(pid), health.up, None)
                return
            if info.get("cluster_id") != self.identity.cluster_id or info.get("refused"):
                health.up, health.error = False, f"foreign peer: {info.get('refused') or info}"
                self.metrics.peer(str(pid), False, None)
                return
            if not health.up:
                log.info("peer %s is up", pid)
            health.up, health.misses, health.error = True, 0, None
            health.rtt_s = loop.time() - started
            health.last_ok = loop.time()
            health.version = str(info.get("version"))
            self.metrics.peer(str(pid), True, health.rtt_s)
            remembered = info.get("your_data_id")
            if remembered is not None and remembered != self.identity.data_id \
                    and self.acceptor_mode in ("verifying", "normal"):
                self.acceptor_mode = "amnesia"
                self.amnesia_detail = (
                    f"peer {pid} remembers this node with state {remembered}, but this data "
                    f"directory holds {self.identity.data_id}: the state was lost or replaced. "
                    "Refusing to act as an acceptor; see README 'Recovering a node that lost "
                    "its disk' (paxoskv serve --rejoin)")
                log.error("AMNESIA: %s", self.amnesia_detail)
                self.metrics.amnesia(True)

        await asyncio.gather(*(beat(pid) for pid in sorted(self.peer_health)))
        self.metrics.quorum_reachable(self.quorum_reachable())
        if self.acceptor_mode == "verifying":
            others = [a for a in self.quorum.acceptors if a != self.config.node_id]
            heard = sum(1 for a in others if self.peer_health[a].up)
            if heard >= (len(others) + 1) // 2:
                await self.storage.set_meta("verified", "1")
                self.acceptor_mode = "normal"
                log.info("acceptor verified by %d of %d peers; serving", heard, len(others))

    async def heartbeat_loop(self) -> None:
        if not self.peer_health:
            if self.acceptor_mode == "verifying":
                await self.storage.set_meta("verified", "1")
                self.acceptor_mode = "normal"
            self.metrics.quorum_reachable(self.quorum_reachable())
        while not self.stopping:
            if self.peer_health:
                await self.heartbeat_once()
            await asyncio.sleep(self.config.heartbeat_interval_s)

    # ---------------------------------------------------------------- repair

    async def repair_key(self, key: str) -> bool:
        """Check one key on every acceptor; run an identity round if they disagree."""
        rnd = QueryRound(key, QuorumConfig(self.quorum.acceptors, len(self.quorum.acceptors)))
        loop = asyncio.get_running_loop()
        step = await self._broadcast(rnd.query(), rnd.on_reply,
                                     loop.time() + self.config.phase_timeout_s)
        self.repair_progress["checked"] += 1
        self.metrics.repair("checked")
        if isinstance(step, Committed):
            return False
        if not rnd.disagreed():
            return False  # someone did not answer: nothing to compare
        try:
            await self.execute(key, Read())
        except (NoQuorum, UnknownOutcome, Overloaded) as exc:
            log.info("repair of %r postponed: %s", key, exc)
            return False
        self.repair_progress["repaired"] += 1
        self.metrics.repair("repaired")
        return True

    async def repair_sweep(self) -> None:
        keys = self.storage.keys("", self.config.limits.list_limit_max * 100)
        pause = 1.0 / self.config.repair_keys_per_second
        for key in keys:
            if self.stopping:
                return
            await self.repair_key(key)
            await asyncio.sleep(pause)
        self.repair_progress["sweeps"] += 1

    async def repair_loop(self) -> None:
        while not self.stopping:
            await asyncio.sleep(self.config.repair_interval_s)
            if self.acceptor_mode == "normal" and self.quorum_reachable():
                await self.repair_sweep()

    async def rejoin(self) -> None:
        """Bring back an acceptor that lost its state (README: the rejoin procedure).

        1. Wait out any round that could still hold a promise from our lost state.
        2. Answer accepts only, never prepares: prepare quorums come from the others, and
           every accept quorum still intersects them.
        3. Run an identity round on every key the others hold, so this node accepts the
           chosen value of each; then serve as a full acceptor.
        """
        assert self.acceptor_mode == "rejoining"
        fence = 2 * self.config.request_timeout_s
        log.warning("rejoin: waiting %.1fs for rounds that may hold lost promises", fence)
        await asyncio.sleep(fence)
        others = sorted(a for a in self.quorum.acceptors if a != self.config.node_id)
        needed = len(self.quorum.acceptors) - self.quorum.quorum + 1
        while True:
            keys: set[str] = set()
            answered = 0
            for pid in others:
                try:
                    entries = await self.transport.list_keys(pid, "", 10**9)
                    keys.update(key for key, _, _ in entries)
                    answered += 1
                except PeerUnreachable:
                    continue
            if answered >= needed:
                break
            log.warning("rejoin: %d of %d peers listed their keys; retrying", answered, needed)
            await asyncio.sleep(1.0)
        log.warning("rejoin: catching up %d keys", len(keys))
        for i, key in enumerate(sorted(keys), 1):
            while True:
                try:
                    outcome = await self.execute(key, Read())
                    break
                except (NoQuorum, UnknownOutcome, Overloaded) as exc:
                    log.info("rejoin: %r: %s; retrying", key, exc)
                    await asyncio.sleep(0.5)
            if self.storage.load(key).value != outcome.value:
                log.info("rejoin: %r not accepted locally yet; retrying once", key)
                await self.execute(key, Read())
            if i % 100 == 0:
                log.warning("rejoin: %d/%d keys", i, len(keys))
        await self.storage.set_meta("verified", "1")
        self.acceptor_mode = "normal"
        self.metrics.amnesia(False)
        log.warning("rejoin: complete; serving as an acceptor")

    # ---------------------------------------------------------------- lifecycle

    async def run(self) -> None:
        """Run the node's background loops until ``stop()``."""
        async with asyncio.TaskGroup() as tg:
            tg.create_task(self.heartbeat_loop())
            tg.create_task(self.repair_loop())
            if self.acceptor_mode == "rejoining":
                tg.create_task(self.rejoin())

    async def stop(self) -> None:
        self.stopping = True
        for task in list(self._background):
            task.cancel()
        if self._background:
            await asyncio.gather(*self._background, return_exceptions=True)

    def status(self) -> dict[str, Any]:
        loop = asyncio.get_running_loop()
        return {
            "node_id": self.config.node_id,
            "cluster_id": self.identity.cluster_id,
            "version": __version__,
            "incarnation": self.identity.incarnation,
            "data_id": self.identity.data_id,
            "roles": sorted(self.config.roles),
            "acceptor_mode": self.acceptor_mode,
            "amnesia": self.amnesia_detail,
            "quorum": {"acceptors": sorted(self.quorum.acceptors), "size": self.quorum.quorum,
                       "reachable": self.quorum_reachable(), "ready": self.ready()},
            "peers": {
                str(pid): {
                    "url": self.config.peers[pid].url,
                    "roles": sorted(self.config.peers[pid].roles),
                    "up": h.up,
                    "rtt_seconds": h.rtt_s,
                    "seconds_since_heartbeat": None if h.last_ok is None
                    else round(loop.time() - h.last_ok, 3),
                    "seconds_since_heard_from": None if pid not in self.heard_from
                    else round(loop.time() - self.heard_from[pid], 3),
                    "error": h.error,
                    "version": h.version,
                }
                for pid, h in sorted(self.peer_health.items())
            },
            "keys": self.storage.key_count(),
            "repair": dict(self.repair_progress),
            "rounds_inflight": self._inflight,
        }

