"""One paxoskv node: carries out what the pure core decides, over a Storage and a Transport.

Decisions live in ``core/``: what the acceptor answers (``acceptor``), what a round does
next and how a failed request is reported (``proposer``), what a quorum is (``quorum``),
and who this node is and whether it may take part (``identity``). This file only runs
them: it sends, waits, persists, sleeps and retries. It reads time from the running event
loop alone, so the simulator runs this very file on a virtual clock.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine, Mapping
from dataclasses import dataclass, field
from typing import Any, Final, Literal, TypeVar

from paxoskv import __version__
from paxoskv.config import ALL_ROLES, NodeConfig, PeerSpec, Role
from paxoskv.core import acceptor as acceptor_rules
from paxoskv.core.ballot import Ballot
from paxoskv.core.errors import NoQuorum, Overloaded, UnknownOutcome
from paxoskv.core.identity import META_REFUSED as _META_REFUSED
from paxoskv.core.identity import META_REJOIN as _META_REJOIN
from paxoskv.core.identity import (
    SERVES,
    CaughtUp,
    Confirmed,
    Event,
    FenceElapsed,
    HelloClaim,
    IdentityMachine,
    InUse,
    LostState,
    Mode,
    PeerRecord,
    RaiseIncarnation,
    Refused,
    Verdict,
    Welcome,
    judge_frame,
    judge_hello,
    supersedes,
)
from paxoskv.core.messages import Accept, Prepare, Query, Reply, Request, Unavailable
from paxoskv.core.proposer import (
    Abort,
    Committed,
    ProposerRound,
    QueryRound,
    RequestProgress,
    SendAccept,
    Unknown,
    Wait,
    classify_failure,
    next_ballot,
)
from paxoskv.core.quorum import QuorumConfig
from paxoskv.core.register import Change, Outcome, Read
from paxoskv.limits import KEYS_PAGE_MAX
from paxoskv.metrics import Metrics
from paxoskv.storage.base import NodeIdentity, Storage
from paxoskv.transport.base import KeyEntry, PeerUnreachable, Refusal, Transport
from paxoskv.transport.codec import Sender

__all__ = [
    "ALL_ROLES",
    "AcceptorRules",
    "IdentityRules",
    "NoQuorum",
    "Node",
    "NodeConfig",
    "Overloaded",
    "PeerSpec",
    "Role",
    "UnknownOutcome",
    "open_identity",
]

log = logging.getLogger(__name__)

T = TypeVar("T")

LOOP_ERROR_PAUSE_S: Final = 1.0
"""A background loop that hit an unexpected error waits this long before trying again."""
REJOIN_PAGE_KEYS: Final = 500
REPAIR_PAGE_KEYS: Final = 500
LIST_PAGES_MAX: Final = 8
"""Pages of tombstones a list call skips before it answers with a cursor and no keys."""


@dataclass(frozen=True, slots=True)
class AcceptorRules:
    """The acceptor's rules as values, so the simulator can swap in broken mutants."""

    on_prepare: Callable[[acceptor_rules.AcceptorState, Prepare], acceptor_rules.Step] = (
        acceptor_rules.on_prepare)
    on_accept: Callable[[acceptor_rules.AcceptorState, Accept], acceptor_rules.Step] = (
        acceptor_rules.on_accept)


@dataclass(frozen=True, slots=True)
class IdentityRules:
    """The identity rules as values: the simulator's mutants swap one out to re-open a
    hole (an early accept, a rejoin that is not durable, no rollback or membership check)
    and show that its faults catch it."""

    start: Callable[[bool, bool, bool, str | None, str | None],
                    tuple[IdentityMachine, tuple[tuple[str, str], ...]]] = (
        IdentityMachine.start)
    serves: Mapping[Mode, frozenset[str]] = field(default_factory=lambda: dict(SERVES))
    judge_hello: Callable[[PeerRecord | None, HelloClaim, bool], Verdict] = judge_hello
    check_membership: bool = True


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
class PeerHealth:
    up: bool = False
    misses: int = 0
    rtt_s: float | None = None
    last_ok: float | None = None
    version: str | None = None
    error: str | None = None
    refused: str | None = None
    """Why we do not talk to this peer (other membership, a stale or second process)."""
    lifetime_s: float | None = None
    """The longest a message of its can live (its request plus peer timeout)."""


def _kind(msg: Request) -> Literal["prepare", "accept", "query"]:
    match msg:
        case Prepare():
            return "prepare"
        case Accept():
            return "accept"
        case Query():
            return "query"
    raise AssertionError(f"unknown request {msg!r}")


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
        identity_rules: IdentityRules | None = None,
        boot_id: str | None = None,
    ) -> None:
        self.config = config
        self.identity = identity
        self.storage = storage
        self.transport = transport
        self.metrics = metrics or Metrics()
        self.rng = rng or random.Random()
        self.rules = rules or AcceptorRules()
        self.quorum = quorum or QuorumConfig.of(config.acceptors)
        self.identity_rules = identity_rules or IdentityRules()
        self.boot_id = boot_id or self.rng.randbytes(8).hex()
        self.fingerprint = config.fingerprint()
        self.peer_health: dict[int, PeerHealth] = {
            pid: PeerHealth() for pid in config.peers if pid != config.node_id}
        self.heard_from: dict[int, float] = {}
        """When the remembered process of each peer last said hello to us (loop time)."""
        self._records: dict[int, PeerRecord] = {}
        for pid in self.peer_health:
            text = storage.get_meta(f"peer.{pid}")
            record = PeerRecord.from_meta(text) if text else None
            if record is not None:
                self._records[pid] = record
        self.machine, self._initial_persist = self.identity_rules.start(
            config.is_acceptor, config.rejoin, config.rejoin_after_quorum_loss,
            storage.get_meta(_META_REJOIN), storage.get_meta(_META_REFUSED))
        self._started = False
        self._started_at = 0.0
        self._counter = 0
        self._acceptor_locks = _KeyedLocks()
        self._proposer_locks = _KeyedLocks()
        self._inflight = 0
        self._group: asyncio.TaskGroup | None = None
        self._orphans: set[asyncio.Task[Any]] = set()
        self.draining = False
        self._verified = asyncio.Event()
        self.repair_progress: dict[str, int] = {"checked": 0, "repaired": 0, "sweeps": 0}
        self.rejoin_progress: dict[str, Any] = {}
        self._publish_sender()
        self.metrics.amnesia(False)
        self.metrics.identity_refused(False)
        for pid in self.peer_health:
            self.metrics.peer_refused(str(pid), False)
        self.metrics.keys(storage.key_count())

    # ---------------------------------------------------------------- identity

    @property
    def acceptor_mode(self) -> str:
        return self.machine.mode.value

    @property
    def stopping(self) -> bool:
        return self.draining

    def drain(self) -> None:
        """Stop being ready (the server keeps serving until it closes its socket)."""
        self.draining = True

    def _record(self) -> PeerRecord:
        return PeerRecord(self.identity.data_id, self.identity.incarnation, self.boot_id)

    def _publish_sender(self) -> None:
        self.transport.set_sender(Sender(self.config.node_id, self._record(), self.fingerprint))

    async def start(self) -> None:
        """Make the starting mode durable before anything else (a rejoin marker first of
        all), and confirm at once when there is no peer to ask."""
        if self._started:
            return
        self._started = True
        self._started_at = asyncio.get_running_loop().time()
        for name, value in self._initial_persist:
            await self.storage.set_meta(name, value)
        if self.machine.rejoining:
            log.warning("rejoin: in progress (durable); this node answers no peer request "
                        "until its fence ends")
        if self.quorum.confirmations_needed(self.config.node_id) == 0:
            await self._transition(Confirmed())

    async def _transition(self, event: Event) -> None:
        before = (self.machine.mode, self.machine.identity)
        step = self.machine.apply(event)
        for name, value in step.persist:
            await self.storage.set_meta(name, value)
        self.machine.commit(event, step)
        if self.machine.may_propose:
            self._verified.set()
        else:
            self._verified.clear()
        after = (self.machine.mode, self.machine.identity)
        if after == before:
            return
        level = logging.ERROR if self.machine.identity == "refused" else logging.INFO
        alarm = {Mode.AMNESIA: "AMNESIA: ", Mode.REFUSED: "REFUSED: "}.get(after[0], "")
        log.log(level, "%sacceptor mode %s, identity %s%s", alarm, after[0].value, after[1],
                f": {self.machine.reason}" if self.machine.reason else "")
        self.metrics.amnesia(self.machine.mode is Mode.AMNESIA)
        self.metrics.identity_refused(self.machine.identity == "refused")

    async def _raise_incarnation(self, floor: int) -> None:
        """Take ballots above every one an older state of this node id may have issued;
        peers that already know this process welcome the higher incarnation as a restart."""
        if not self.machine.may_raise_incarnation or self.identity.incarnation > floor:
            return
        incarnation = floor + 1
        await self.storage.set_meta("incarnation", str(incarnation))
        self.identity = NodeIdentity(self.identity.cluster_id, self.identity.node_id,
                                     self.identity.data_id, incarnation, self.identity.fresh)
        self._publish_sender()
        log.warning("incarnation raised to %d above one peers remember", incarnation)

    # ---------------------------------------------------------------- acceptor side

    @property
    def message_ttl_ms_max(self) -> int:
        return int(self.config.request_timeout_s * 1000)

    def admit(self, sender: Sender) -> None:
        """Serve frames only from the process of a peer whose hello we accepted."""
        if not self._same_membership(sender.fingerprint):
            raise Refusal("membership differs (acceptor set, roles or cluster id)")
        if sender.node_id not in self.peer_health:
            raise Refusal(f"node {sender.node_id} is not a peer of this node")
        if not judge_frame(self._records.get(sender.node_id), sender.record):
            raise Refusal(f"unknown process of node {sender.node_id}: hello first")

    async def handle(self, msg: Request, deadline: float) -> Reply:
        """Answer one peer request; the reply leaves only after its state is durable."""
        kind = _kind(msg)
        if not self._serves(kind):
            return Unavailable(msg.key, f"acceptor {self.acceptor_mode}")
        if isinstance(msg, Query):
            return acceptor_rules.on_query(self.storage.load(msg.key), msg)
        async with self._acceptor_locks.hold(msg.key):
            loop = asyncio.get_running_loop()
            if loop.time() > deadline:
                return Unavailable(msg.key, "expired: its round has ended")
            if not self._serves(kind):
                return Unavailable(msg.key, f"acceptor {self.acceptor_mode}")
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

    def _serves(self, request: str) -> bool:
        return request in self.identity_rules.serves[self.machine.mode]

    def _same_membership(self, fingerprint: object) -> bool:
        return fingerprint == self.fingerprint or not self.identity_rules.check_membership

    def hello_info(self) -> dict[str, Any]:
        return {
            "cluster_id": self.identity.cluster_id,
            "node_id": self.identity.node_id,
            "data_id": self.identity.data_id,
            "incarnation": self.identity.incarnation,
            "boot_id": self.boot_id,
            "fingerprint": self.fingerprint,
            "acceptor": self.config.is_acceptor,
            "rejoin": self.machine.rejoining,
            "lifetime_s": self.config.message_lifetime_s,
            "version": __version__,
            "records": {str(pid): r.to_meta() for pid, r in sorted(self._records.items())},
        }

    async def _learn_records(self, table: object, told_by: int) -> None:
        """Adopt records of other nodes that a peer has seen newer than we have."""
        if not isinstance(table, dict):
            return
        for raw_pid, text in table.items():
            if not (isinstance(raw_pid, str) and raw_pid.isascii() and raw_pid.isdigit()
                    and isinstance(text, str)):
                continue
            pid = int(raw_pid)
            record = PeerRecord.from_meta(text)
            if pid == self.config.node_id or pid == told_by or pid not in self.peer_health \
                    or record is None or not supersedes(self._records.get(pid), record):
                continue
            await self.storage.set_meta(f"peer.{pid}", record.to_meta())
            self._records[pid] = record

    def _reply(self, verdict: str, detail: str | None = None, **extra: Any) -> dict[str, Any]:
        return {**self.hello_info(), "verdict": verdict, "detail": detail, **extra}

    async def on_hello(self, info: dict[str, Any]) -> dict[str, Any]:
        """A peer's heartbeat: judge its identity against what we remember of its id."""
        claim = _parse_hello(info)
        if claim is None or info.get("cluster_id") != self.identity.cluster_id:
            return self._reply("foreign", "unknown cluster or malformed hello")
        peer_id, hello = claim
        health = self.peer_health.get(peer_id)
        if health is None:
            return self._reply("foreign", f"node {peer_id} is not a member here")
        if not self._same_membership(info.get("fingerprint")):
            self._refuse_peer(peer_id, "membership differs (acceptor set, roles or cluster id)")
            return self._reply("config", "membership differs (acceptor set, roles or "
                                         "cluster id)")
        await self._learn_records(info.get("records"), peer_id)
        now = asyncio.get_running_loop().time()
        known = self._records.get(peer_id)
        alive = known is not None and now - self.heard_from.get(peer_id, -1e18) \
            <= self.config.down_after_s
        verdict = self.identity_rules.judge_hello(known, hello, alive)
        match verdict:
            case Welcome(record=record, changed=changed):
                if changed:
                    await self.storage.set_meta(f"peer.{peer_id}", record.to_meta())
                    if known is not None and known.data_id != record.data_id:
                        log.warning("node %s now has state %s (was %s)", peer_id,
                                    record.data_id, known.data_id)
                self._records[peer_id] = record
                self.heard_from[peer_id] = now
                if health.refused and health.refused.startswith("a process of"):
                    health.refused = None
                    self.metrics.peer_refused(str(peer_id), False)
                return self._reply("ok", your_data_id=record.data_id)
            case RaiseIncarnation(floor=floor):
                return self._reply("raise", f"incarnation must exceed {floor}", floor=floor)
            case LostState(detail=detail):
                return self._reply("amnesia", detail, your_data_id=known and known.data_id)
            case Refused(detail=detail):
                self._refuse_peer(peer_id, f"a process of node {peer_id} was refused: {detail}")
                return self._reply("refused", detail)
            case InUse(detail=detail):
                return self._reply("in_use", detail)

    def _refuse_peer(self, peer_id: int, reason: str) -> None:
        health = self.peer_health[peer_id]
        if health.refused != reason:
            log.error("refusing peer %s: %s", peer_id, reason)
        health.refused = reason
        self.metrics.peer_refused(str(peer_id), True)

    def key_page(self, prefix: str, after: str | None, limit: int) -> list[KeyEntry] | None:
        """This acceptor's keys (tombstones included) in key order, or None if it does not
        serve as an acceptor (it must not be counted as one that has no keys)."""
        if not self._serves("list"):
            return None
        # Every stored key, even one only promised (ballot zero, not live): a page must hold
        # exactly the keys storage returned, or "more" and the cursor would skip the rest.
        out: list[KeyEntry] = []
        for key in self.storage.keys(prefix, after, limit):
            state = self.storage.load(key)
            out.append((key, state.ballot_accepted, state.value.exists))
        return out

    # ---------------------------------------------------------------- proposer side

    def _next_ballot(self, seen: Ballot) -> Ballot:
        ballot = next_ballot(self._counter, seen, self.identity.node_id, self.identity.incarnation)
        self._counter = ballot.counter
        return ballot

    def _usable(self, acceptor_id: int) -> bool:
        if acceptor_id == self.config.node_id:
            return True
        health = self.peer_health.get(acceptor_id)
        return health is None or (health.misses < self.config.peer_down_after
                                  and health.refused is None)

    async def _ask(self, acceptor_id: int, msg: Request, deadline: float
                   ) -> tuple[int, Reply]:
        if acceptor_id == self.config.node_id:
            try:
                return acceptor_id, await self.handle(msg, deadline)
            except AssertionError:
                raise
            except Exception as exc:  # our own disk failed: the round must not say "ok"
                log.error("local acceptor failed on %r: %s", msg.key, exc)
                return acceptor_id, Unavailable(msg.key, f"local storage error: {exc}")
        if not self._usable(acceptor_id):
            return acceptor_id, Unavailable(msg.key, "peer down or refused")
        try:
            return acceptor_id, await self.transport.send(acceptor_id, msg, deadline)
        except PeerUnreachable as exc:
            return acceptor_id, Unavailable(msg.key, f"unreachable: {exc}")

    def _spawn(self, coro: Coroutine[Any, Any, T]) -> asyncio.Task[T]:
        """A task owned by the node's task group (or, before ``run``, tracked here)."""
        if self._group is not None:
            return self._group.create_task(coro)
        task = asyncio.ensure_future(coro)
        self._orphans.add(task)
        task.add_done_callback(self._orphans.discard)
        return task

    async def _broadcast(self, msg: Request, on_reply: Callable[[int, Reply], Any],
                         deadline: float) -> Any:
        """Send ``msg`` to every acceptor; feed replies until one returns non-Wait.

        Sends still in flight once the decision is made are left to finish (accepts that
        land late still help the lagging acceptor) but are no longer waited for.
        """
        loop = asyncio.get_running_loop()
        pending = {self._spawn(self._ask(a, msg, deadline)) for a in sorted(self.quorum.acceptors)}
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

    async def wait_may_propose(self) -> None:
        """Wait until peers have confirmed this process, as long as confirmation can take
        (the failure-detection window and one heartbeat, within half the request timeout):
        a node that just started serves its first requests late, not with a 503."""
        if not self.machine.may_propose and self.machine.identity == "verifying":
            wait_s = min(self.config.down_after_s + self.config.heartbeat_interval_s,
                         self.config.request_timeout_s / 2)
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(wait_s):
                    await self._verified.wait()
        self._check_may_propose()

    def _check_may_propose(self) -> None:
        if not self.machine.may_propose:
            raise NoQuorum(f"this node's identity is {self.machine.identity}"
                           + (f": {self.machine.reason}" if self.machine.reason else
                              " (waiting for peers to confirm it)"))

    async def execute(self, key: str, change: Change, request_id: str | None = None
                      ) -> Outcome:
        """Run ``change`` on ``key`` through full Paxos rounds until it commits.

        ``request_id`` (default: a fresh random id) makes the change exactly-once across
        this call's retries, and across calls that pass the same id. Raises NoQuorum
        (definitely not applied), UnknownOutcome, or Overloaded.
        """
        await self.wait_may_propose()
        if request_id is None:
            request_id = self.rng.randbytes(12).hex()
        if self._inflight >= self.config.limits.rounds_inflight_max:
            raise Overloaded(f"{self._inflight} rounds in flight")
        self._inflight += 1
        progress = RequestProgress()
        try:
            deadline = asyncio.get_running_loop().time() + self.config.request_timeout_s
            async with asyncio.timeout(self.config.request_timeout_s):
                async with self._proposer_locks.hold(key):
                    return await self._execute(key, change, deadline, progress, request_id)
        except TimeoutError:
            if classify_failure(change, progress, conflict=False) == "unknown":
                raise UnknownOutcome("timed out after its change was sent") from None
            raise NoQuorum("request timed out before a quorum answered") from None
        finally:
            self._inflight -= 1

    async def _execute(self, key: str, change: Change, deadline: float,
                       progress: RequestProgress, request_id: str) -> Outcome:
        loop = asyncio.get_running_loop()
        seen = Ballot.ZERO
        last_abort: Abort | None = None
        for attempt in range(self.config.limits.round_retries_max):
            if attempt:
                await asyncio.sleep(self._backoff(attempt))
            rnd = ProposerRound(key, self._next_ballot(seen), change, self.quorum, request_id,
                                progress.sent_from_version)
            phase_deadline = min(deadline, loop.time() + self.config.phase_timeout_s)
            step = await self._broadcast(rnd.prepare(), rnd.on_reply, phase_deadline)
            if step is None:
                step = rnd.on_timeout()
            if isinstance(step, SendAccept):
                self.metrics.round("prepare", "ok")
                progress.on_send_accept(rnd, step.accept)
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
            self.metrics.round(step.phase.value, "nack" if step.conflict else "timeout")
            if step.conflict:
                self.metrics.conflict()
            seen = max(seen, step.ballot_seen)
            if not step.conflict and not self.quorum_reachable():
                break  # fail fast: the failure detector sees no quorum
        match classify_failure(change, progress, last_abort is not None and last_abort.conflict):
            case "unknown":
                raise UnknownOutcome("accept sent but not confirmed by a quorum")
            case "contention":
                raise NoQuorum("contention: gave up after repeated conflicts")
            case "no_quorum":
                raise NoQuorum("no quorum of acceptors reachable")

    async def read(self, key: str) -> Outcome:
        """Linearizable read: one round trip when a quorum agrees, else a full round."""
        await self.wait_may_propose()
        if self._inflight >= self.config.limits.rounds_inflight_max:
            raise Overloaded(f"{self._inflight} rounds in flight")
        loop = asyncio.get_running_loop()
        rnd = QueryRound(key, self.quorum)
        deadline = loop.time() + self.config.phase_timeout_s
        self._inflight += 1
        try:
            step = await self._broadcast(rnd.query(), rnd.on_reply, deadline)
        finally:
            self._inflight -= 1
        if isinstance(step, Committed):
            self.metrics.round("query", "ok")
            return step.outcome
        self.metrics.round("query", "fallback")
        return await self.execute(key, Read())

    def read_local(self, key: str) -> Outcome:
        """Stale read of this node's acceptor state (``?consistency=stale``)."""
        return Outcome("read", self.storage.load(key).value)

    async def _page_from(self, acceptor_id: int, prefix: str, after: str | None, limit: int
                         ) -> tuple[list[KeyEntry], bool] | None:
        if acceptor_id == self.config.node_id:
            entries = self.key_page(prefix, after, limit + 1)
            return None if entries is None else (entries[:limit], len(entries) > limit)
        if not self._usable(acceptor_id):
            return None
        try:
            return await self.transport.list_keys(acceptor_id, prefix, after, limit)
        except PeerUnreachable:
            return None

    async def list_keys(self, prefix: str, limit: int, after: str | None = None
                        ) -> tuple[list[str], str | None]:
        """Live keys by prefix after ``after``, merged over a quorum of acceptors, and the
        cursor to continue from (None at the end).

        For each key the entry with the highest accepted ballot wins, so a write or delete
        committed before the call began is reflected (its accept quorum intersects ours);
        writes in flight may or may not be. Each acceptor answers one page in key order,
        tombstones included; past the first page that has more, the merge is incomplete,
        so the result stops there and the cursor continues from it. Pages of tombstones
        only are skipped (up to LIST_PAGES_MAX), so a listing never dead-ends.
        """
        await self.wait_may_propose()
        live: list[str] = []
        cursor = after
        page_keys = min(limit, KEYS_PAGE_MAX)
        for _ in range(LIST_PAGES_MAX + limit // page_keys):
            pages = await asyncio.gather(*(self._page_from(a, prefix, cursor, page_keys)
                                           for a in sorted(self.quorum.acceptors)))
            answered = [p for p in pages if p is not None]
            if not self.quorum.can_still_reach(len(answered)):
                raise NoQuorum("no quorum of acceptors answered the list")
            best: dict[str, tuple[Ballot, bool]] = {}
            horizon: str | None = None
            for entries, more in answered:
                for key, ballot, is_live in entries:
                    if key not in best or best[key][0] < ballot:
                        best[key] = (ballot, is_live)
                if more and entries:
                    last = entries[-1][0]
                    horizon = last if horizon is None else min(horizon, last)
            live.extend(sorted(k for k, (_, is_live) in best.items()
                               if is_live and (horizon is None or k <= horizon)))
            if len(live) >= limit:
                return live[:limit], live[limit - 1]
            if horizon is None:
                return live, None
            cursor = horizon
        return live, cursor

    # ---------------------------------------------------------------- health

    def _up_acceptors(self, mutual: bool) -> set[int]:
        now = asyncio.get_running_loop().time()
        fresh_s = self.config.down_after_s
        up = {a for a in self.quorum.acceptors if a != self.config.node_id
              and self._usable(a) and self.peer_health[a].up
              and (not mutual or now - self.heard_from.get(a, -1e18) <= fresh_s)}
        if self.config.node_id in self.quorum.acceptors and self.machine.counts_as_acceptor:
            up.add(self.config.node_id)
        return up

    def quorum_reachable(self) -> bool:
        return self.quorum.reachable(self._up_acceptors(mutual=False))

    def ready(self) -> bool:
        """Readiness: this node's identity is confirmed, and a quorum of acceptors that
        agree on the membership is reachable both ways.

        One-way is not enough: a pod restarted under a new address reaches its peers at once,
        but they may still resolve its old address (cluster DNS caches for up to 30 s). A
        rolling update that took it for ready would stop the next pod and lose the quorum.
        """
        return self.machine.may_propose and not self.draining \
            and self.quorum.reachable(self._up_acceptors(mutual=True))

    async def _beat(self, pid: int) -> dict[str, Any] | None:
        """One heartbeat to ``pid``; its reply, or None if it did not answer as a member."""
        loop = asyncio.get_running_loop()
        health = self.peer_health[pid]
        started = loop.time()
        try:
            async with asyncio.timeout(self.config.heartbeat_timeout_s):
                info = await self.transport.hello(pid, self.hello_info())
        except (PeerUnreachable, TimeoutError) as exc:
            health.misses += 1
            health.error = str(exc) or type(exc).__name__
            if health.misses >= self.config.peer_down_after:
                if health.up:
                    log.warning("peer %s is down: %s", pid, health.error)
                health.up = False
            self.metrics.peer(str(pid), health.up, None)
            return None
        verdict = info.get("verdict")
        if info.get("cluster_id") != self.identity.cluster_id or verdict in ("foreign", None):
            health.up, health.error = False, f"foreign peer: {info.get('detail') or info}"
            self.metrics.peer(str(pid), False, None)
            return None
        if verdict == "config" or not self._same_membership(info.get("fingerprint")):
            self._refuse_peer(pid, "membership differs (acceptor set, roles or cluster id)")
            health.up = False
            self.metrics.peer(str(pid), False, None)
            return None
        if health.refused and health.refused.startswith("membership"):
            health.refused = None
            self.metrics.peer_refused(str(pid), False)
        await self._learn_records(info.get("records"), pid)
        if not health.up:
            log.info("peer %s is up", pid)
        health.up, health.misses, health.error = True, 0, None
        health.rtt_s = loop.time() - started
        health.last_ok = loop.time()
        health.version = str(info.get("version"))
        lifetime = info.get("lifetime_s")
        if isinstance(lifetime, int | float) and 0 < lifetime < 3600:
            health.lifetime_s = float(lifetime)
        self.metrics.peer(str(pid), True, health.rtt_s)
        return info

    async def heartbeat_once(self) -> None:
        replies = await asyncio.gather(*(self._beat(pid) for pid in sorted(self.peer_health)))
        self.metrics.quorum_reachable(self.quorum_reachable())
        confirmed = 0
        floor = 0
        objections = 0
        for pid, info in zip(sorted(self.peer_health), replies, strict=True):
            if info is None:
                continue
            detail = f"peer {pid}: {info.get('detail')}"
            verdict = info.get("verdict")
            objections += verdict in ("raise", "amnesia", "refused", "in_use")
            match verdict:
                case "ok":
                    if pid in self.quorum.acceptors:
                        confirmed += 1
                case "raise":
                    raw = info.get("floor")
                    if isinstance(raw, int) and not isinstance(raw, bool):
                        floor = max(floor, raw)
                case "amnesia":
                    await self._transition(LostState(
                        f"{detail}. Refusing to act as an acceptor; see README 'Recovering a "
                        "node that lost its disk' (paxoskv serve --rejoin)"))
                case "refused":
                    await self._transition(Refused(detail))
                case "in_use":
                    await self._transition(InUse(detail))
                case _:
                    pass
        silent = sum(1 for pid, info in zip(sorted(self.peer_health), replies, strict=True)
                     if info is None and pid in self.quorum.acceptors)
        waited = asyncio.get_running_loop().time() - self._started_at
        if floor:
            await self._raise_incarnation(floor)
        elif not objections and \
                confirmed >= self.quorum.confirmations_needed(self.config.node_id) and \
                (not silent or waited >= self.config.down_after_s):
            await self._transition(Confirmed())

    async def heartbeat_loop(self) -> None:
        await self.start()
        while True:
            if self.peer_health:
                await self._guarded("heartbeat", self.heartbeat_once())
            await asyncio.sleep(self.config.heartbeat_interval_s)

    async def _guarded(self, what: str, work: Awaitable[None]) -> None:
        """Run one step of a background loop: an unexpected error is logged and the loop
        goes on (a broken invariant, an AssertionError, still stops the process)."""
        try:
            await work
        except (AssertionError, asyncio.CancelledError):
            raise
        except Exception:
            log.exception("%s failed; retrying in %.0fs", what, LOOP_ERROR_PAUSE_S)
            await asyncio.sleep(LOOP_ERROR_PAUSE_S)

    # ---------------------------------------------------------------- repair

    async def repair_key(self, key: str) -> bool:
        """Check one key on every acceptor; run an identity round if they disagree."""
        rnd = QueryRound(key, self.quorum.everyone())
        loop = asyncio.get_running_loop()
        step = await self._broadcast(rnd.query(), rnd.on_reply,
                                     loop.time() + self.config.phase_timeout_s)
        self.repair_progress["checked"] += 1
        self.metrics.repair("checked")
        if isinstance(step, Committed) or not rnd.disagreed():
            return False  # all agree, or someone did not answer: nothing to compare
        try:
            await self.execute(key, Read())
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
                if not (self.machine.counts_as_acceptor and self.quorum_reachable()):
                    return
                await self.repair_key(key)
                await asyncio.sleep(pause)
            if len(page) < REPAIR_PAGE_KEYS:
                break
            after = page[-1]
        self.repair_progress["sweeps"] += 1

    async def repair_loop(self) -> None:
        while True:
            await asyncio.sleep(self.config.repair_interval_s)
            if self.machine.counts_as_acceptor and self.quorum_reachable():
                await self._guarded("repair sweep", self.repair_sweep())

    # ---------------------------------------------------------------- rejoin

    def _fence_s(self) -> float:
        lifetimes = [h.lifetime_s for h in self.peer_health.values() if h.lifetime_s]
        return 2 * max([self.config.message_lifetime_s, *lifetimes])

    async def rejoin(self) -> None:
        """Bring back an acceptor whose state was lost or rolled back (README: rejoin).

        1. Fence: answer nothing until every round that could hold a promise of the lost
           state has ended (twice the longest message lifetime any member announced), and
           until peers have accepted this process (with an incarnation above any they saw).
        2. Catch up: answer accepts only while an identity round runs on every key the
           surviving acceptors list (page by page, keys already caught up skipped), so this
           acceptor holds each chosen value; then serve as a full acceptor.
        The rejoin marker on disk makes a crash at any point resume here at the next start.
        """
        loop = asyncio.get_running_loop()
        started = loop.time()
        self.rejoin_progress = {"phase": "fencing", "fence_seconds": self._fence_s()}
        while self.machine.mode is Mode.FENCING:
            fence = self._fence_s()
            self.rejoin_progress["fence_seconds"] = fence
            if loop.time() - started >= fence and self.machine.may_propose:
                await self._transition(FenceElapsed())
                break
            await asyncio.sleep(min(0.5, self.config.heartbeat_interval_s))
        if not self.machine.rejoining:
            return  # refused while fencing
        log.warning("rejoin: fence of %.1fs over; catching up", self._fence_s())
        self.rejoin_progress.update(phase="catching_up", peers_listed=0, keys_checked=0,
                                    keys_caught_up=0)
        needed = 1 if self.machine.mode is Mode.REBUILDING else self.quorum.survivors_needed()
        listed: set[int] = set()
        others = sorted(a for a in self.quorum.acceptors if a != self.config.node_id)
        while len(listed) < needed:
            for pid in others:
                if pid in listed or len(listed) >= needed:
                    continue
                if await self._catch_up_from(pid):
                    listed.add(pid)
                    self.rejoin_progress["peers_listed"] = len(listed)
            if len(listed) < needed:
                log.warning("rejoin: %d of %d surviving acceptors listed; retrying",
                            len(listed), needed)
                await asyncio.sleep(1.0)
        await self._transition(CaughtUp())
        self.rejoin_progress["phase"] = "done"
        log.warning("rejoin: complete (%d keys checked, %d caught up); serving as an "
                    "acceptor", self.rejoin_progress["keys_checked"],
                    self.rejoin_progress["keys_caught_up"])

    async def _catch_up_from(self, pid: int) -> bool:
        """Run an identity round on every key ``pid`` lists; False if it stopped answering."""
        after: str | None = None
        while True:
            page = await self._page_from(pid, "", after, REJOIN_PAGE_KEYS)
            if page is None:
                return False
            entries, more = page
            for key, ballot, _ in entries:
                self.rejoin_progress["keys_checked"] += 1
                self.metrics.rejoin("checked")
                if self.storage.load(key).ballot_accepted >= ballot:
                    continue  # caught up before a restart, or by a client's write
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
                await self.execute(key, Read())
                return
            except (NoQuorum, UnknownOutcome, Overloaded) as exc:
                log.info("rejoin: %r: %s; retrying", key, exc)
                await asyncio.sleep(min(5.0, 0.1 * attempt))
        raise AssertionError("rejoin retried one key a million times")

    # ---------------------------------------------------------------- lifecycle

    async def run(self) -> None:
        """Run the node's background loops until cancelled; they never end by themselves."""
        await self.start()
        try:
            async with asyncio.TaskGroup() as tg:
                self._group = tg
                tg.create_task(self.heartbeat_loop())
                tg.create_task(self.repair_loop())
                if self.machine.rejoining:
                    tg.create_task(self._guarded_rejoin())
        finally:
            self._group = None
        raise AssertionError("the node's loops should never complete")

    async def _guarded_rejoin(self) -> None:
        while self.machine.rejoining:
            await self._guarded("rejoin", self.rejoin())

    async def stop(self) -> None:
        """Cancel work started outside ``run`` (``run`` itself is cancelled by its owner)."""
        self.draining = True
        for task in list(self._orphans):
            task.cancel()
        if self._orphans:
            await asyncio.gather(*self._orphans, return_exceptions=True)

    def status(self) -> dict[str, Any]:
        loop = asyncio.get_running_loop()
        return {
            "node_id": self.config.node_id,
            "cluster_id": self.identity.cluster_id,
            "version": __version__,
            "incarnation": self.identity.incarnation,
            "data_id": self.identity.data_id,
            "fingerprint": self.fingerprint,
            "roles": sorted(self.config.roles),
            "acceptor_mode": self.acceptor_mode,
            "identity": {"state": self.machine.identity, "reason": self.machine.reason},
            "amnesia": self.machine.reason if self.machine.mode is Mode.AMNESIA else None,
            "quorum": {"acceptors": sorted(self.quorum.acceptors), "size": self.quorum.quorum,
                       "reachable": self.quorum_reachable(), "ready": self.ready()},
            "peers": {
                str(pid): {
                    "url": self.config.peers[pid].url,
                    "roles": sorted(self.config.peers[pid].roles),
                    "up": h.up,
                    "refused": h.refused,
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
            "rejoin": dict(self.rejoin_progress) or None,
            "rounds_inflight": self._inflight,
        }


def _parse_hello(info: dict[str, Any]) -> tuple[int, HelloClaim] | None:
    node_id, data_id, incarnation, boot_id = (info.get(k) for k in (
        "node_id", "data_id", "incarnation", "boot_id"))
    acceptor, rejoin = info.get("acceptor"), info.get("rejoin")
    if not (isinstance(node_id, int) and isinstance(incarnation, int)
            and not isinstance(incarnation, bool) and incarnation >= 0):
        return None
    for part in (data_id, boot_id):
        if not isinstance(part, str) or not 1 <= len(part) <= 64 or " " in part:
            return None
    if not isinstance(acceptor, bool) or not isinstance(rejoin, bool):
        return None
    assert isinstance(data_id, str) and isinstance(boot_id, str)
    return node_id, HelloClaim(PeerRecord(data_id, incarnation, boot_id), acceptor, rejoin)
