"""One paxoskv node: carries out what the pure core decides, over a Storage and a Transport.

Decisions live in ``core/``: what the acceptor answers (``acceptor``), what a round does
next and how a failed request is reported (``proposer``), what a quorum is (``quorum``),
and who this node is and whether it may take part (``identity``). This file only runs
them: it sends, waits, persists, sleeps and retries. It reads time from the running event
loop alone, so the simulator runs this very file on a virtual clock. The node's peers and
identity (``membership.py``) and its repair and rejoin (``recovery.py``) live apart, in
objects the node owns; every name callers use stays on ``Node``.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import random
import struct
import uuid
import zlib
from collections import deque
from collections.abc import Awaitable, Callable, Coroutine, Mapping
from dataclasses import dataclass, field
from typing import Any, Final, Literal, TypeVar

import orjson

from paxoskv import __version__
from paxoskv.config import ALL_ROLES, NodeConfig, PeerSpec, Role
from paxoskv.core import acceptor as acceptor_rules
from paxoskv.core.ballot import Ballot
from paxoskv.core.errors import NoQuorum, Overloaded, UnknownOutcome
from paxoskv.core.idempotency import is_reserved
from paxoskv.core.identity import (
    META_ALIVE_AT,
    META_REFUSED,
    META_REJOIN,
    SERVES,
    HelloClaim,
    IdentityMachine,
    Mode,
    PeerRecord,
    Verdict,
    judge_hello,
    judge_rebuild_copy,
)
from paxoskv.core.messages import (
    REPLY_TYPES,
    Accept,
    ClientChange,
    Collect,
    Forward,
    Forwarded,
    Learn,
    Learned,
    PeerProtocolError,
    Prepare,
    Query,
    Reply,
    Request,
    Stale,
    Unavailable,
    config_from_wire,
)
from paxoskv.core.proposer import (
    Abort,
    Committed,
    FastBase,
    Pending,
    Prepared,
    ProposerRound,
    QueryRound,
    RequestProgress,
    RoundStep,
    SendAccept,
    Unknown,
    Wait,
    classify_failure,
    fast_base,
    next_ballot,
    prepared_after,
)
from paxoskv.core.quorum import QuorumConfig, majority
from paxoskv.core.reconfig import (
    CONFIG_KEY,
    Config,
    EpochVerdict,
    admit,
    collection_allowed,
    drops_all_rows,
    group,
    groups_keep_majorities,
    joins_group,
    key_quorums,
)
from paxoskv.core.register import Cas, Change, Create, Delete, Outcome, Read, Set, Value
from paxoskv.limits import KEYS_PAGE_MAX
from paxoskv.loopref import LoopRef
from paxoskv.membership import Membership, PeerHealth
from paxoskv.metrics import Metrics
from paxoskv.packedmap import PackedMap
from paxoskv.reconfigure import ChangeFailed, Reconfigurer
from paxoskv.recovery import Recovery
from paxoskv.storage.base import NodeIdentity, Storage
from paxoskv.storage.statecache import decode_parts, encode_parts
from paxoskv.tombstones import Collector
from paxoskv.transport.base import KeyEntry, KeyPage, PeerNotReached, PeerUnreachable, Transport
from paxoskv.transport.codec import Sender
from paxoskv.ttl import Sweeper, system_clock_ms
from paxoskv.watch import WatchHub, learn_of

__all__ = [
    "ALL_ROLES",
    "META_INITIAL_ACCEPTORS",
    "AcceptorRules",
    "IdentityRules",
    "NoQuorum",
    "Node",
    "NodeConfig",
    "Overloaded",
    "PeerSpec",
    "ProposerRules",
    "RebuildRefused",
    "Role",
    "UnknownOutcome",
    "check_rebuild_copy",
    "open_identity",
]

log = logging.getLogger(__name__)

T = TypeVar("T")

LOOP_ERROR_PAUSE_S: Final = 1.0
"""A background loop that hit an unexpected error waits this long before trying again."""
ALIVE_REFRESH_S: Final = 60.0
"""How often a normal acceptor records in its data directory that it is current (the
``alive_at`` meta row a rebuild judges a copy's age by): one small durable write a minute."""
LIST_PAGES_MAX: Final = 8
"""Pages of tombstones a list call skips before it answers with a cursor and no keys."""
META_CONFIG: Final = "acceptor_config"
"""The meta row holding the acceptor-set config this node has adopted (``Config.to_json``);
absent: epoch 0, the flag-configured set (docs/reconfiguration.md)."""


@dataclass(frozen=True, slots=True)
class AcceptorRules:
    """The acceptor's rules as values, so the simulator can swap in broken mutants."""

    on_prepare: Callable[[acceptor_rules.AcceptorState, Prepare], acceptor_rules.Step] = (
        acceptor_rules.on_prepare)
    on_accept: Callable[[acceptor_rules.AcceptorState, Accept], acceptor_rules.Step] = (
        acceptor_rules.on_accept)
    admit: Callable[[Config, int, Config], EpochVerdict] = admit
    """The epoch fence (``core/reconfig.py``); the simulator's mutants replace it."""
    on_collect: Callable[[acceptor_rules.AcceptorState, acceptor_rules.Floor, Collect, bool],
                         acceptor_rules.CollectStep] = acceptor_rules.on_collect


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
    rejoin_copies_floors: bool = True
    """A rejoin raises its bucket floors to those of each peer it catches up from: a
    collected key is listed by none of them (docs/gc.md)."""
    rejoin_rechecks_own_keys: bool = True
    """A rejoin also runs an identity round on every key of its own rows, which no peer
    may list any more (a collected tombstone, docs/gc.md)."""
    judge_rebuild_copy: Callable[[bool, int | None, int, float], str | None] = (
        judge_rebuild_copy)
    """Whether a rebuild after a quorum loss may trust this data directory's rows."""
    fence_outlasts_cached_ballots: bool = True
    """A rejoin's fence lasts until every phase-1-skip ballot cached before the loss has
    expired (``NodeConfig.rejoin_fence_s``), not only every message in flight."""


@dataclass(frozen=True, slots=True)
class ProposerRules:
    """The proposer's fast-path rules as values, so the simulator can swap in broken
    mutants (``prepared_after``, or a round that applies a batch wrongly)."""

    piggyback: bool = True
    """Carry the prepare of the key's next ballot on every accept (phase-1 skip)."""
    prepared_after: Callable[[ProposerRound, RoundStep], Prepared | None] = prepared_after
    round: type[ProposerRound] = ProposerRound
    after_lost_forward: Callable[[], RequestProgress] = RequestProgress.after_lost_forward
    fast_base: Callable[[acceptor_rules.AcceptorState, QuorumConfig], FastBase | None] = (
        fast_base)
    """Which local states a fast round may build on (``core.proposer.fast_base``)."""
    remember_forwards: bool = True
    """Run a forwarded request id at most once (a duplicate could apply a rejected change)."""
    query_round: type[QueryRound] = QueryRound
    """The one-round-trip read (its rule for when reports make a value chosen)."""
    read_deletes_expired: bool = True
    """A read that finds a value past its TTL answers only after a round deleted it
    (docs/ttl.md); off, it answers "absent" at once (the mutant ttl-read-without-delete)."""
    gc_everyone: bool = True
    """A tombstone collection round must be promised and accepted by every acceptor, not
    a quorum (docs/gc.md)."""
    gc_pins: bool = True
    """A tombstone's grace starts once every acceptor is seen holding it (the pin), and a
    sweep's collection round goes on only if every promise still shows it (or no row):
    each acceptor held it for the whole grace (docs/gc.md)."""


@dataclass(slots=True)
class _Waiting:
    """A change waiting for its key's round, the future its caller awaits, and the loop
    time after which its caller stops waiting."""

    item: Pending
    done: asyncio.Future[Outcome]
    deadline: float


class _Expired(Exception):
    """A change waiting for its key's round reached its caller's deadline."""


CLIENT_CHANGES: Final = (Set, Cas, Create, Delete)
"""The changes forwarded to a key's preferred proposer (idempotency records are not)."""


_MASK64: Final = (1 << 64) - 1


def _rendezvous(key: bytes, node_id: int) -> int:
    """A key's score for a node: the key's CRC-32 and the node id mixed by splitmix64's
    finalizer (CRC-32 seeded per node alone was measured 44/28/28 % over three nodes)."""
    x = (zlib.crc32(key) ^ (node_id * 0x9E3779B97F4A7C15)) & _MASK64
    x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & _MASK64
    x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & _MASK64
    return x ^ (x >> 31)


FORWARD_MEMORY_S: Final = 60.0
"""How long a node remembers the request ids of forwarded writes it ran (far above any
message's lifetime, the time a duplicate can still arrive)."""
FORWARD_MEMORY_MAX: Final = 200_000
"""...and at most this many (about 40 s of forwards at 5,000 a second)."""


_SEEN_AT: Final = struct.Struct("<d")


class _SeenIds:
    """Ids seen in the last ``window_s`` (at most ``count_max`` of them), in a
    ``PackedMap``: a minute of forwarded writes is tens of thousands of ids, which as
    small objects kept the allocator's arenas they spread over (docs/gc.md)."""

    def __init__(self, window_s: float, count_max: int) -> None:
        self._window_s, self._count_max = window_s, count_max
        self._seen = PackedMap(compact=False)  # expired oldest first: kept in order

    def admit(self, rid: str, now: float) -> bool:
        """Record ``rid``; False if it was already seen within the window."""
        self._forget(now, self._count_max - 1)
        if rid in self._seen:
            return False
        self._seen.put(rid, _SEEN_AT.pack(now))
        return True

    def expire(self, now: float) -> None:
        """Forget ids older than the window without waiting for the next ``admit``: a
        node whose forwarded writes stopped kept up to ``count_max`` of them (many MB)."""
        self._forget(now, self._count_max)

    def _forget(self, now: float, keep_max: int) -> None:
        seen = self._seen
        while (oldest := seen.oldest()) is not None and (
                len(seen) > keep_max or _SEEN_AT.unpack(oldest[1])[0] < now - self._window_s):
            seen.pop(oldest[0])

    def __len__(self) -> int:
        return len(self._seen)


_PREPARED_HEAD: Final = struct.Struct("<dq")
"""A phase-1 skip entry's record: when it was made (loop time), its config epoch; then its
ballot (twice) and value (``encode_parts``)."""


class _PreparedKeys:
    """Keys whose next ballot a quorum has promised us, oldest first, bounded in bytes (a
    ``Prepared`` holds the key's value, which may be large) and in age; packed in a
    ``PackedMap``, since one is made per write (docs/gc.md).

    An entry lives at most ``lifetime_s`` from when its accept was sent
    (``Node.skip_lifetime_s``): an acceptor that lost its state, or came back on an old
    copy, has lost the promises it made, and has no row, so no promise and no floor, for a
    key whose tombstone the others collected meanwhile (docs/gc.md). It accepts nothing
    until its fence (this lifetime plus a message lifetime, ``NodeConfig.rejoin_fence_s``)
    is over, and by then every entry made before it restarted has expired, with the
    accepts built on it: none can reach it with a ballot it had refused before, or a value
    older than a collection."""

    def __init__(self, bytes_max: int, lifetime_s: float) -> None:
        self.lifetime_s = lifetime_s
        """Set from the peers' announced fences between heartbeats (``expire``'s caller)."""
        self._entries = PackedMap(bytes_max, compact=False)  # expired oldest first
        self.dropped_by_epoch = 0
        """Entries thrown away because the config changed since they were made."""

    def pop(self, key: str, now: float, epoch: int = 0) -> Prepared | None:
        """The entry of ``key`` (removed), unless it is older than the lifetime or was
        made under another config epoch than ``epoch``: a promise is one from a prepare
        quorum of the config it was made under, and counts only there
        (docs/reconfiguration.md, phase-1 skip)."""
        raw = self._entries.take(key)
        if raw is None:
            return None
        made, made_epoch = _PREPARED_HEAD.unpack_from(raw)
        if now - made > self.lifetime_s:
            return None
        if made_epoch != epoch:
            self.dropped_by_epoch += 1
            return None
        ballot, _, value = decode_parts(raw, _PREPARED_HEAD.size)
        return Prepared(ballot, value)

    def put(self, key: str, prepared: Prepared, now: float, epoch: int = 0) -> None:
        """Entries are kept in the order they were put; ``now`` (when the accept left) may
        go back by up to a phase timeout, which only keeps an expired entry a little longer
        in memory (``pop`` checks the age)."""
        self._entries.put(key, _PREPARED_HEAD.pack(now, epoch) + encode_parts(
            prepared.ballot, prepared.ballot, prepared.value))

    def expire(self, now: float) -> None:
        """Drop entries past their lifetime, which ``pop`` would refuse anyway: without
        this, a node whose writes stopped kept its last keys' entries (and their values,
        up to ``bytes_max``) for ever, also of keys deleted and collected since."""
        entries = self._entries
        while (oldest := entries.oldest()) is not None and \
                now - _PREPARED_HEAD.unpack_from(oldest[1])[0] > self.lifetime_s:
            entries.pop(oldest[0])

    def __len__(self) -> int:
        return len(self._entries)


META_INITIAL_ACCEPTORS: Final = "initial_acceptors"
"""Meta row: the acceptor ids of epoch 0 this directory was first started with."""
META_REPLICATION: Final = "replication_factor"
"""Meta row: the replication factor this directory was first started with ("all": none)."""


async def pin_replication(storage: Storage, replication: int | None, fresh: bool) -> None:
    """Store R at the first start; refuse a later start with another R (docs/groups.md):
    nodes counting a key's quorums over different groups could form two quorums that do
    not intersect. A directory of a release before groups has every key on every acceptor,
    so it counts as "all"."""
    want = "all" if replication is None else str(replication)
    stored = storage.get_meta(META_REPLICATION)
    if stored is None:
        if not fresh and replication is not None:
            raise SystemExit(
                "paxoskv: this data directory was first started without "
                f"--replication-factor; refusing to start with --replication-factor "
                f"{replication}: R cannot change on a cluster (docs/groups.md)")
        await storage.set_meta(META_REPLICATION, want)
    elif stored != want:
        shown = "no --replication-factor" if stored == "all" else \
            f"--replication-factor {stored}"
        raise SystemExit(
            f"paxoskv: this data directory was first started with {shown}; refusing to "
            f"start with {'none' if replication is None else replication}: R cannot change "
            "on a cluster (docs/groups.md)")


def _id_list(ids: frozenset[int]) -> str:
    return ",".join(str(i) for i in sorted(ids))


async def open_identity(storage: Storage, cluster_id: str, node_id: int,
                        initial_acceptors: frozenset[int] | None = None) -> NodeIdentity:
    """Read this data directory's identity and durably bump the incarnation.

    With ``initial_acceptors`` (epoch 0's acceptor set, from the flags), it is stored on the
    first start (and on the first start of a directory written before it was stored) and
    every later start with another set is refused before anything is written: epoch 0 is
    what a node without a stored config believes, and two nodes believing different epoch-0
    sets could form two quorums that do not intersect (split brain)."""
    stored_cluster = storage.get_meta("cluster_id")
    stored_node = storage.get_meta("node_id")
    # The data id is written last: a crash part way through the first start leaves a
    # directory without one, which the next start initialises again.
    fresh = storage.get_meta("data_id") is None
    if fresh:
        await storage.set_meta("cluster_id", cluster_id)
        await storage.set_meta("node_id", str(node_id))
        if initial_acceptors is not None:
            await storage.set_meta(META_INITIAL_ACCEPTORS, _id_list(initial_acceptors))
        await storage.set_meta("data_id", uuid.uuid4().hex)
    elif stored_cluster != cluster_id or stored_node != str(node_id):
        raise SystemExit(
            f"data directory belongs to cluster {stored_cluster!r} node {stored_node}, "
            f"not cluster {cluster_id!r} node {node_id}; refusing to start")
    elif initial_acceptors is not None:
        stored_set = storage.get_meta(META_INITIAL_ACCEPTORS)
        if stored_set is None:  # written by a release that did not store it
            await storage.set_meta(META_INITIAL_ACCEPTORS, _id_list(initial_acceptors))
        elif stored_set != _id_list(initial_acceptors):
            raise SystemExit(
                f"paxoskv: the data directory was first started with the epoch-0 acceptor "
                f"set [{stored_set}] and this start names [{_id_list(initial_acceptors)}]; "
                "refusing to start: keep --replicas (PAXOSKV_REPLICAS; the chart's "
                "initialReplicas) or the peer list / hosts file as at the first start: the "
                "acceptor set is changed by acceptor-set changes (docs/reconfiguration.md), "
                "not by flags")
    incarnation = int(storage.get_meta("incarnation") or "0") + 1
    await storage.set_meta("incarnation", str(incarnation))
    data_id = storage.get_meta("data_id")
    assert data_id is not None
    return NodeIdentity(cluster_id, node_id, data_id, incarnation, fresh)


class RebuildRefused(Exception):
    """A rebuild after a quorum loss would run on rows that may bring back collected keys;
    the message says why and what to do (the server prints it and exits non-zero)."""


def check_rebuild_copy(storage: Storage, config: NodeConfig, now_ms: int,
                       rules: IdentityRules | None = None) -> None:
    """Before anything is written: refuse to rebuild on a data directory too old to be
    trusted (``identity.judge_rebuild_copy``), unless the operator accepted the risk.

    Checked whenever this start will rebuild: with the flags, and when resuming a rebuild
    a crash cut short (its rows may still be the copy's), so a resumption after the bound
    needs the flags again."""
    if not config.is_acceptor:
        return
    if config.rejoin:
        rebuild = config.rejoin_after_quorum_loss
    else:
        rebuild = not storage.get_meta(META_REFUSED) and \
            storage.get_meta(META_REJOIN) == "rebuild"
    if not rebuild:
        return
    raw = storage.get_meta(META_ALIVE_AT)
    alive_at = int(raw) if raw is not None and raw.isascii() and raw.isdigit() else None
    judge = (rules or IdentityRules()).judge_rebuild_copy
    why = judge(storage.key_count() > 0, alive_at, now_ms, config.tombstone_grace_s)
    if why is None:
        return
    if config.rejoin_accept_old_copy:
        log.warning("rebuild: %s; going on as --rejoin-accept-old-copy asks: a key deleted "
                    "and collected since this copy may come back (docs/recovery.md)", why)
        return
    raise RebuildRefused(
        f"refusing to rebuild after a quorum loss on this data directory: {why}. A key "
        "deleted and collected since could come back with its old value. Rebuild from an "
        "empty data directory (move this one aside) or a newer copy; or, to keep these "
        "rows and accept that risk, start again with --rejoin --rejoin-after-quorum-loss "
        "--rejoin-accept-old-copy (docs/recovery.md)")

@dataclass(frozen=True, slots=True)
class ConfigView:
    """The acceptor-set config a round runs under, as the quorum views its phases count
    with: prepares (and queries, collections) go to ``prepare``'s acceptors, accepts to
    ``accept``'s. At epoch 0 both are the flag-configured quorum (``Node(quorum=...)``)."""

    config: Config
    prepare: QuorumConfig
    accept: QuorumConfig

    @property
    def epoch(self) -> int:
        return self.config.epoch

    @property
    def wire(self) -> Config | None:
        """What a frame's header names: None at epoch 0 (nothing is added to it)."""
        return None if self.config.epoch == 0 else self.config

    def for_key(self, key: str) -> ConfigView:
        """The view a round of ``key`` runs under: with acceptor groups, the key's group on
        each side and its quorums there (``core.reconfig.key_quorums``; docs/groups.md);
        without, this very view (no cost per request)."""
        if not self.config.grouped:
            return self
        kq = key_quorums(self.config, key)
        if kq.prepare == kq.accept:
            return ConfigView(self.config, kq.prepare, kq.prepare)  # ``is``: one quorum system
        return ConfigView(self.config, kq.prepare, kq.accept)

    def every_group_reachable(self, up: frozenset[int]) -> bool:
        """With groups, whether every possible group of the prepare set (any R members)
        keeps a quorum among ``up``: at most ``R - maj(R)`` of the set down (R = 3: one)."""
        r = self.config.replication
        assert r is not None
        return groups_keep_majorities(self.config.prepare_set, r, up)

    def every_group_met(self, answered: frozenset[int]) -> bool:
        """With groups, whether ``answered`` meets every accept quorum of every possible
        group of the prepare set: at most ``maj(R) - 1`` of the set missing (what a
        listing needs to see every committed write)."""
        r = self.config.replication
        assert r is not None
        side = self.config.prepare_set
        return len(side - answered) <= majority(min(r, len(side))) - 1


def stored_config(storage: Storage) -> Config | None:
    """The config this data directory adopted (``META_CONFIG``), or None (epoch 0). A row
    that does not parse stops the start: voting under a guessed config could break the
    fence."""
    raw = storage.get_meta(META_CONFIG)
    if raw is None:
        return None
    try:
        return config_from_wire(orjson.loads(raw))
    except (orjson.JSONDecodeError, PeerProtocolError) as exc:
        raise SystemExit(f"stored acceptor config {raw!r} is unreadable: {exc}") from exc


async def _awaited(reply: Awaitable[Reply]) -> Reply:
    return await reply


def _local_failure(key: str, exc: Exception) -> Unavailable:
    """The local acceptor's own disk failed: logged, and a reply that cannot count toward an
    "ok" (the round must not succeed on a state this node did not make durable)."""
    log.error("local acceptor failed on %r: %s", key, exc)
    return Unavailable(key, f"local storage error: {exc}")


def _unreachable(key: str, exc: PeerUnreachable) -> Unavailable:
    return Unavailable(key, f"unreachable: {exc}")


class _KeyedLocks:
    """One lock per key, held while an acceptor serves a message for it (from reading
    its state to its durable save); an entry exists only while the key is held.

    ``take`` is called when a message arrives: it takes a free key at once, else it
    queues a turn for it then and there, so a key is served in arrival order. ``release``
    hands the key to the oldest turn still wanted; ``give_up`` withdraws a turn whose
    message will never be served (its key passed on if it had already been handed)."""

    def __init__(self) -> None:
        self._held: dict[str, deque[asyncio.Future[None]]] = {}

    def take(self, key: str, loop: asyncio.AbstractEventLoop) -> asyncio.Future[None] | None:
        """None: the key is now held by the caller. Else the caller's turn, which
        completes when the key is handed to it (the key is then held by it)."""
        waiters = self._held.get(key)
        if waiters is None:
            self._held[key] = deque()
            return None
        turn: asyncio.Future[None] = loop.create_future()
        waiters.append(turn)
        return turn

    def idle(self) -> bool:
        """No key is held."""
        return not self._held

    def give_up(self, key: str, turn: asyncio.Future[None]) -> None:
        """The owner of ``turn`` ended without serving its message."""
        if turn.done() and not turn.cancelled():
            self.release(key)  # the key was handed to it: pass it on
            return
        turn.cancel()  # a release skips it from now on
        waiters = self._held.get(key)
        if waiters is not None:
            with contextlib.suppress(ValueError):
                waiters.remove(turn)

    def release(self, key: str) -> None:
        waiters = self._held[key]
        while waiters:
            turn = waiters.popleft()
            if not turn.done():
                turn.set_result(None)  # the key stays held, by that waiter now
                return
        del self._held[key]


def _ignore_outcome(fut: asyncio.Future[Reply]) -> None:
    """A learn's reply or failure does not matter (retrieved, so never logged)."""
    if not fut.cancelled():
        fut.exception()


def _kind(msg: Request) -> Literal["prepare", "accept", "query"]:
    match msg:
        case Prepare() | Collect():
            # A collection is served only where prepares are: by a full acceptor.
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
        proposer_rules: ProposerRules | None = None,
        clock_ms: Callable[[], int] | None = None,
    ) -> None:
        self.config = config
        self.identity = identity
        self.storage = storage
        self.transport = transport
        self.metrics = metrics or Metrics()
        self.rng = rng or random.Random()
        self.rules = rules or AcceptorRules()
        self.config0 = Config.stable(0, config.initial_acceptors, config.replication_factor)
        """Epoch 0: the flag-configured set (``--peers`` or a hosts file, less the acceptors
        marked ``initial: false``), what every node starts from."""
        assert quorum is None or quorum.acceptors == self.config0.prepare_set, \
            "the quorum given must be of epoch 0's acceptors"
        self._quorum0 = quorum or QuorumConfig.of(self.config0.prepare_set)
        self._view = self._view_of(stored_config(storage) or self.config0)
        self._retired = False
        self._adopting: asyncio.Lock | None = None
        self._set_view(self._view)
        self.identity_rules = identity_rules or IdentityRules()
        self.proposer_rules = proposer_rules or ProposerRules()
        self.clock_ms = clock_ms or system_clock_ms
        """The wall clock TTLs count on (Unix ms; the simulator skews one per node)."""
        # Its lifetime is ``skip_lifetime_s``, set once the membership exists (below) and
        # again between heartbeats.
        self._prepared = _PreparedKeys(config.limits.prepared_bytes_max, 0.0)
        self._forwards_seen = _SeenIds(FORWARD_MEMORY_S, FORWARD_MEMORY_MAX)
        self.boot_id = boot_id or self.rng.randbytes(8).hex()
        self.fingerprint = config.fingerprint()
        self.membership = Membership(self)
        self._prepared.lifetime_s = self.skip_lifetime_s()  # no hello yet: a message lifetime
        self._counter = 0
        self._loop = LoopRef()
        self._acceptor_locks = _KeyedLocks()
        self._key_queues: dict[str, deque[_Waiting]] = {}
        self._key_drivers: dict[str, asyncio.Task[None]] = {}
        self._inflight = 0
        self._group: asyncio.TaskGroup | None = None
        self._orphans: set[asyncio.Task[Any]] = set()
        self._after_answer: set[asyncio.Task[None]] = set()
        self._turn_tasks: set[asyncio.Task[Reply]] = set()  # see _serve_in_turn
        self.draining = False
        self.recovery = Recovery(self)
        self.sweeper = Sweeper(self, self.clock_ms, config.ttl_sweep_batch)
        self.collector = Collector(self)
        self.reconfigurer = Reconfigurer(self)
        self.rows_dropped: Callable[[list[str]], None] | None = None
        """Told the keys whose rows an adoption dropped (the simulator's state checker: the
        promises of those rows bind the acceptor no more; docs/groups.md, "Stale rows")."""
        self.scaler_status: Callable[[], dict[str, Any]] | None = None
        """What the StatefulSet follower reports (paxoskv/scaler.py), when it runs."""
        self.watch = WatchHub(self.read)
        self._watching_peers: set[int] = set()
        """Peers whose last hello said they have watchers: they are sent learns."""
        self._beats_started = 0
        self._beats_done = 0
        """The number of the last heartbeat that completed."""
        self._last_false_beat = 0
        """The heartbeat during which a hello last said "no watchers" (0: none yet)."""
        self.membership.publish_sender()
        self.metrics.amnesia(False)
        self.metrics.identity_refused(False)
        for pid in self.peer_health:
            self.metrics.peer_refused(str(pid), False)
        self.metrics.keys(storage.key_count())

    # ---------------------------------------------------------------- acceptor-set config

    @property
    def quorum(self) -> QuorumConfig:
        """The prepare-side quorum of the config this node holds now."""
        return self._view.prepare

    @property
    def view(self) -> ConfigView:
        return self._view

    @property
    def epoch_config(self) -> Config:
        """The acceptor-set config this node holds (durably, once above epoch 0)."""
        return self._view.config

    def _view_of(self, cfg: Config) -> ConfigView:
        if cfg.epoch == 0:
            return ConfigView(cfg, self._quorum0, self._quorum0)
        prepare = QuorumConfig(cfg.prepare_set, cfg.prepare_quorum)
        if cfg.is_stable:
            return ConfigView(cfg, prepare, prepare)  # one object: rounds test ``is``
        return ConfigView(cfg, prepare, QuorumConfig(cfg.accept_set, cfg.accept_quorum))

    def _set_view(self, view: ConfigView) -> None:
        self._view = view
        self.metrics.config_epoch(view.epoch)
        self.metrics.replication_factor(view.config.replication or 0)
        # An acceptor its config does not name never votes (RETIRED once removed; at epoch 0
        # an acceptor-role node marked "initial: false", until a change adds it). On a
        # cluster that never changed this is exactly "not an acceptor-role node", whose
        # identity mode already serves nothing.
        self._retired = self.config.node_id not in view.config.members

    async def adopt_config(self, cfg: Config) -> bool:
        """Hold ``cfg`` from now on if its epoch is newer than ours: durably first (one meta
        row), then in memory, so every step computed after this returns is judged under
        it. Epochs only go up. True if adopted."""
        if cfg.epoch <= self._view.epoch:
            return False
        if self._adopting is None:
            self._adopting = asyncio.Lock()
        async with self._adopting:
            if cfg.epoch <= self._view.epoch:
                return False
            if cfg.replication is not None:
                await self._drop_group_rows(self._view.config, cfg)
            elif self.config.node_id in cfg.accept_set - cfg.prepare_set:
                # Added by this change: whatever rows this acceptor still holds (it may be a
                # removed acceptor added back) belong to no quorum of the configs that can
                # still form one (it is in neither set of the one before), and would win a
                # later prepare with a stale value. Drop them before it adopts; it votes
                # nothing meanwhile (docs/reconfiguration.md, "Adding an acceptor back").
                self._retired = True
                if dropped := await self._drop_rows():
                    log.warning("acceptor-set config adds this acceptor: dropped %d rows it "
                                "held from before", dropped)
            await self.storage.set_meta(META_CONFIG, orjson.dumps(cfg.to_json()).decode())
            old = self._view.epoch
            self._set_view(self._view_of(cfg))
            log.warning("acceptor-set config: epoch %d -> %d (prepare %s/%d, accept %s/%d)%s",
                        old, cfg.epoch, sorted(cfg.prepare_set), cfg.prepare_quorum,
                        sorted(cfg.accept_set), cfg.accept_quorum,
                        "; this node is no acceptor of it" if self._retired else "")
            return True

    async def _drop_group_rows(self, held: Config, cfg: Config) -> None:
        """With groups: before adopting ``cfg``, drop the rows of keys it brings this
        acceptor into the group of (it left before: its row may carry a ballot above any
        the group used since), or every row when it missed a whole change
        (``joins_group``, ``drops_all_rows``; docs/groups.md, "Stale rows"). It votes for
        nothing meanwhile (``_retired``), as for ``_drop_rows``."""
        every = drops_all_rows(held, cfg)
        me = self.config.node_id
        if not every and (cfg.is_stable or me not in cfg.members):
            return  # a stable config brings no acceptor into a group
        self._retired = True
        if dropped := await self._drop_rows(lambda key: every or joins_group(cfg, me, key),
                                            tell_hook=True):
            log.warning("acceptor-set config epoch %d: dropped %d rows of keys whose group "
                        "this acceptor %s", cfg.epoch, dropped,
                        "may have left and rejoined" if every else "joins")

    async def _drop_rows(self, which: Callable[[str], bool] | None = None,
                         tell_hook: bool = False) -> int:
        """Remove the rows this acceptor holds (those of the keys ``which`` names; all
        without it), floors kept (they only ever go up); returns how many. Called with
        ``_retired`` set: no step starts; first the steps already computed end (their saves
        land), so no row appears behind the pass. With ``tell_hook`` (the groups' drops)
        the keys are told to ``rows_dropped``."""
        while not self._acceptor_locks.idle():
            await asyncio.sleep(0.01)
        dropped = 0
        after: str | None = None
        while page := self.storage.keys("", after, 500):
            doomed = page if which is None else [k for k in page if which(k)]
            if tell_hook and doomed and self.rows_dropped is not None:
                self.rows_dropped(doomed)
            await asyncio.gather(*(self.storage.collect(key, self.storage.floor(key))
                                   for key in doomed))
            dropped += len(doomed)
            after = page[-1]
        if dropped:
            self.metrics.keys(self.storage.key_count())
        return dropped

    def spawn_background(self, coro: Coroutine[Any, Any, T]) -> asyncio.Task[T]:
        """A task the node owns (its task group's once running): the change driver's."""
        return self._spawn(coro)

    def spawn_after_answer(self, what: str, work: Coroutine[Any, Any, None]) -> None:
        """Work that completes a request already answered (an Idempotency-Key's record): an
        unexpected error is logged, never the node's end (an AssertionError still is), and
        a shutdown waits for it a bounded time (``settle_after_answer``)."""
        task = self._spawn(self._logged(what, work))
        self._after_answer.add(task)
        task.add_done_callback(self._after_answer.discard)

    async def _logged(self, what: str, work: Awaitable[None]) -> None:
        try:
            await work
        except (AssertionError, asyncio.CancelledError):
            raise
        except Exception:
            log.exception("%s failed", what)

    async def settle_after_answer(self, timeout_s: float) -> int:
        """Wait up to ``timeout_s`` for the work of answered requests; returns how many
        tasks were still running when it gave up."""
        pending = set(self._after_answer)
        if not pending:
            return 0
        _, left = await asyncio.wait(pending, timeout=timeout_s)
        return len(left)

    async def collection_allowed(self) -> ConfigView | None:
        """The view tombstone collection may run under now, or None: only while the change
        record is STABLE and names exactly the config this node holds, read by a round
        (``core.reconfig.collection_allowed``; docs/reconfiguration.md, GC)."""
        view = self._view
        if not view.config.is_stable:
            return None
        try:
            record, _ = await self.reconfigurer.read_record()
        except (NoQuorum, UnknownOutcome, Overloaded, ChangeFailed):
            return None
        if self._view is not view or not collection_allowed(record, view.config):
            return None
        return view

    def learn_config(self, cfg: Config) -> None:
        """A peer refused us with its newer config (``Stale``): adopt it in the background
        (the refused round fails or retries; the next one runs under it)."""
        if cfg.epoch > self._view.epoch:
            self._spawn(self.adopt_config(cfg))

    def _fence(self, msg: Prepare | Accept | Query | Collect, deadline: float, cfg: Config
               ) -> Reply | Awaitable[Reply]:
        """The epoch fence for a message sent under ``cfg`` when that is not simply our
        own config (``core/reconfig.py`` ``admit``)."""
        own = self._view.config
        verdict = self.rules.admit(own, self.config.node_id, cfg)
        if verdict is EpochVerdict.STALE:
            self.metrics.epoch_refused()
            return Stale(msg.key, own)
        if verdict is EpochVerdict.RETIRED:
            if cfg.epoch > own.epoch:
                return self._adopt_retired(msg, cfg)
            return Unavailable(msg.key, f"retired: not an acceptor at epoch {own.epoch}")
        if verdict is EpochVerdict.ADOPT:
            return self._adopt_then(msg, deadline, cfg)
        if cfg.epoch == own.epoch and cfg != own:
            return Unavailable(msg.key, f"another config at epoch {own.epoch}")
        return self._serve_at(msg, deadline, own.epoch)

    async def _adopt_then(self, msg: Prepare | Accept | Query | Collect, deadline: float,
                          cfg: Config) -> Reply:
        await self.adopt_config(cfg)
        reply = self.handle_soon(msg, deadline, cfg)
        return reply if isinstance(reply, REPLY_TYPES) else await reply

    async def _adopt_retired(self, msg: Prepare | Accept | Query | Collect, cfg: Config
                             ) -> Reply:
        """A newer config that does not name this acceptor: hold it (durably, so the
        removal survives a restart and ``/v1/status`` says ``member: false``), then refuse,
        as for every later message."""
        await self.adopt_config(cfg)
        return Unavailable(msg.key, f"retired: not an acceptor at epoch {cfg.epoch}")

    def _serve_at(self, msg: Prepare | Accept | Query | Collect, deadline: float, epoch: int
                  ) -> Reply | Awaitable[Reply]:
        if isinstance(msg, Collect):
            return self._serve_collect(msg, deadline, epoch)  # a coroutine, like a forward
        return self._acceptor_soon(msg, deadline, epoch)

    # ---------------------------------------------------------------- identity

    @property
    def acceptor_mode(self) -> str:
        return self.machine.mode.value

    def drain(self) -> None:
        """Stop being ready (the server keeps serving until it closes its socket)."""
        self.draining = True

    @property
    def machine(self) -> IdentityMachine:
        return self.membership.machine

    @property
    def peer_health(self) -> dict[int, PeerHealth]:
        return self.membership.peer_health

    @property
    def heard_from(self) -> dict[int, float]:
        """When the remembered process of each peer last said hello to us (loop time)."""
        return self.membership.heard_from

    async def start(self) -> None:
        """Make the starting mode durable (``Membership.start``)."""
        await self.membership.start()

    # ---------------------------------------------------------------- acceptor side

    @property
    def message_ttl_ms_max(self) -> int:
        return int(self.config.request_timeout_s * 1000)

    def admit(self, sender: Sender) -> None:
        """Serve frames only from a peer process whose hello was accepted (``Membership``)."""
        self.membership.admit(sender)

    async def handle(self, msg: Request, deadline: float, config: Config | None = None
                     ) -> Reply:
        """Answer one peer request; the reply leaves only after its state is durable."""
        reply = self.handle_soon(msg, deadline, config)
        if isinstance(reply, REPLY_TYPES):
            return reply
        return await reply

    def handle_soon(self, msg: Request, deadline: float, config: Config | None = None
                    ) -> Reply | Awaitable[Reply]:
        """``handle`` without a coroutine where it can: the reply itself when nothing needs
        to be made durable, else an awaitable that completes with the reply once its state
        is durable (a forward: a coroutine). See ``_acceptor_soon``. ``config``: the one
        the message was sent under (None: epoch 0), judged by the epoch fence first."""
        if isinstance(msg, Forward):
            return self._serve_forward(msg)
        if isinstance(msg, Learn):
            self.watch.on_learn(msg)  # learner only: acceptor state is never touched
            return Learned(msg.key)
        view = self._view
        if config is None:
            if view.epoch != 0:  # (epoch 0 at both ends: the path as it always was)
                return self._fence(msg, deadline, self.config0)
        elif config is not view.config:
            return self._fence(msg, deadline, config)
        if isinstance(msg, Collect):
            return self._serve_collect(msg, deadline, view.epoch)  # a coroutine
        return self._acceptor_soon(msg, deadline, view.epoch)

    def _acceptor_soon(self, msg: Prepare | Accept | Query, deadline: float, epoch: int = 0
                       ) -> Reply | asyncio.Future[Reply]:
        """The local acceptor's answer to ``msg``, started now. The common case (its key
        not held by another message) takes the key, computes the step, submits the save
        and returns the save's future, so a peer frame costs no task per message; a
        message whose key is held queues for it now, in arrival order (``_serve_in_turn``).
        """
        kind = _kind(msg)
        if not self._serves(kind):
            # A mode that votes in nothing (a rejoin) still holds, durably, the config the
            # fence adopted: it says which, so an install that adds this acceptor counts it.
            return Unavailable(msg.key, f"acceptor {self.acceptor_mode}",
                               epoch if kind == "query" else 0)
        if self._retired:
            return Unavailable(msg.key, f"retired: not an acceptor at epoch {self._view.epoch}")
        if isinstance(msg, Query):
            reply = acceptor_rules.on_query(self.storage.load(msg.key), msg)
            # Above epoch 0 the reply names the epoch it was answered under: the proof an
            # install counts (a release without epochs cannot give it).
            return dataclasses.replace(reply, epoch=epoch) if epoch else reply
        loop = self._loop.get()
        turn = self._acceptor_locks.take(msg.key, loop)
        if turn is None:
            return self._serve_locked(msg, kind, deadline, epoch)
        return self._serve_in_turn(loop, turn, msg, kind, deadline, epoch)

    def _serve_in_turn(self, loop: asyncio.AbstractEventLoop, turn: asyncio.Future[None],
                       msg: Prepare | Accept, kind: str, deadline: float, epoch: int = 0
                       ) -> asyncio.Task[Reply]:
        """Serve ``msg`` once ``turn`` (queued at its arrival) hands it the key: a task,
        created here, so that no caller can leave the key held by never awaiting it.

        A task that ends without having taken the key (cancelled while it waited, or
        before its first step, when its body never runs) gives its turn up in its done
        callback: out of the queue, or, if the key was already handed to it, on to the
        next waiter. Once it holds the key, ``_serve_locked`` releases it."""
        holds = False

        async def serve() -> Reply:
            nonlocal holds
            await turn
            holds = True
            reply = self._serve_locked(msg, kind, deadline, epoch)
            if isinstance(reply, REPLY_TYPES):
                return reply
            return await reply

        def ended(task: asyncio.Task[Reply]) -> None:
            self._turn_tasks.discard(task)
            if not holds:
                self._acceptor_locks.give_up(msg.key, turn)

        task = loop.create_task(serve())
        self._turn_tasks.add(task)
        task.add_done_callback(ended)
        return task

    def _serve_locked(self, msg: Prepare | Accept, kind: str, deadline: float, epoch: int = 0
                      ) -> Reply | asyncio.Future[Reply]:
        """Serve a prepare or accept whose key this call holds; the key is released when
        the reply is known: at once, or once the step's state is durable. ``epoch``: the
        config epoch the message was admitted under; judged again here, since a newer one
        may have been adopted while it waited for the key (the fence: once an install is
        acknowledged, no step of an older epoch is computed)."""
        key = msg.key
        try:
            loop = self._loop.get()
            if loop.time() > deadline:
                self._acceptor_locks.release(key)
                return Unavailable(key, "expired: its round has ended")
            if not self._serves(kind):
                self._acceptor_locks.release(key)
                return Unavailable(key, f"acceptor {self.acceptor_mode}")
            if epoch != self._view.epoch or self._retired:
                self._acceptor_locks.release(key)
                if self._retired:
                    return Unavailable(key, f"retired: not an acceptor at epoch {self._view.epoch}")
                self.metrics.epoch_refused()
                return Stale(key, self._view.config)
            state = self.storage.load(key)
            if isinstance(msg, Prepare):
                step = self.rules.on_prepare(state, msg)
            else:
                if msg.next is not None and not self._serves("promise_next"):
                    # A piggybacked prepare is a promise: a mode that makes none (catching
                    # up) accepts the value alone, and its reply says so.
                    msg = Accept(msg.key, msg.ballot, msg.value)
                step = self.rules.on_accept(state, msg)
            if not step.persist:
                self._acceptor_locks.release(key)
                return step.reply
            submitted = loop.time()
            saved = self.storage.save_soon(key, step.state)
        except BaseException:
            self._acceptor_locks.release(key)
            raise
        fresh = state.ballot_accepted.is_zero() and state.ballot_promised.is_zero()
        answer: asyncio.Future[Reply] = loop.create_future()
        reply = step.reply

        def on_saved(done: asyncio.Future[None]) -> None:
            self._acceptor_locks.release(key)
            if answer.done():
                return
            if done.cancelled():
                answer.cancel()
            elif (exc := done.exception()) is not None:
                answer.set_exception(exc)
            else:
                answer.set_result(reply)  # only now: the state it answers for is durable
                self.metrics.persist(kind, loop.time() - submitted)
                if fresh:
                    self.metrics.keys(self.storage.key_count())

        saved.add_done_callback(on_saved)
        return answer

    async def _serve_collect(self, msg: Collect, deadline: float, epoch: int = 0) -> Reply:
        """Remove a collected tombstone's row (``core/acceptor.py`` ``on_collect``), with
        the key held like a prepare's, and answer once the removal and the raised floor
        are durable."""
        key = msg.key
        turn = self._acceptor_locks.take(key, self._loop.get())
        if turn is not None:
            try:
                await turn
            except asyncio.CancelledError:
                self._acceptor_locks.give_up(key, turn)
                raise
        try:
            if self._loop.get().time() > deadline:
                return Unavailable(key, "expired: its round has ended")
            if not self._serves("prepare"):
                return Unavailable(key, f"acceptor {self.acceptor_mode}")
            if self._retired:
                return Unavailable(key, f"retired: not an acceptor at epoch {self._view.epoch}")
            if epoch != self._view.epoch:
                self.metrics.epoch_refused()
                return Stale(key, self._view.config)
            step = self.rules.on_collect(self.storage.load(key), self.storage.floor(key), msg,
                                         self.storage.has_row(key))
            if step.remove:
                await self.storage.collect(key, step.floor)
                self.metrics.tombstones_collected()
                self.metrics.keys(self.storage.key_count())
            return step.reply
        finally:
            self._acceptor_locks.release(key)

    def _serves(self, request: str) -> bool:
        return request in self.identity_rules.serves[self.machine.mode]

    def hello_info(self) -> dict[str, Any]:
        return self.membership.hello_info()

    async def on_hello(self, info: dict[str, Any]) -> dict[str, Any]:
        """A peer's heartbeat, judged in ``Membership.on_hello``."""
        return await self.membership.on_hello(info)

    def key_page(self, prefix: str, after: str | None, limit: int) -> KeyPage | None:
        """Up to ``limit`` of this acceptor's keys (tombstones included) after ``after`` in
        key order, and whether more follow; None if it does not serve as an acceptor (it
        must not be counted as one that has no keys)."""
        if not self._serves("list") or self._retired:
            return None
        # Every stored key, even one only promised (ballot zero, not live): a page must hold
        # exactly the keys storage returned, or "more" and the cursor would skip the rest.
        keys = self.storage.keys(prefix, after, limit + 1)
        out: list[KeyEntry] = []
        now = self.clock_ms()
        for key in keys[:limit]:
            state = self.storage.load(key)
            # A value whose TTL ran out by this node's clock is listed as a tombstone.
            out.append((key, state.ballot_accepted,
                        state.value.exists and not state.value.expired(now)))
        return out, len(keys) > limit

    def floor_page(self, after: int, limit: int) -> list[tuple[int, acceptor_rules.Floor]] | None:
        """Up to ``limit`` of this acceptor's bucket floors above bucket ``after`` (docs/gc.md,
        copied by a rejoining acceptor); None if it does not serve as an acceptor (nor
        when its config does not name it: a removed acceptor's rows are out of date)."""
        if not self._serves("list") or self._retired:
            return None
        return self.storage.floor_page(after, limit)

    async def install_floors(self, floors: list[tuple[int, acceptor_rules.Floor]]) -> bool:
        """Raise bucket floors that an acceptor-set change adding this acceptor brings
        (merged from the acceptors that fenced the old config; docs/reconfiguration.md,
        GC). Floors only go up, so a repeat is harmless. False unless this node is an
        acceptor of the config it holds."""
        if self._retired or self.config.node_id not in self._view.config.members \
                or not self.config.is_acceptor:
            return False
        await self.storage.raise_floors(floors)
        return True

    async def give_floors(self, acceptor_id: int, floors: list[tuple[int, acceptor_rules.Floor]]
                          ) -> bool:
        """``install_floors`` on ``acceptor_id`` (here, or through the transport)."""
        if acceptor_id == self.config.node_id:
            return await self.install_floors(floors)
        try:
            await self.transport.push_floors(acceptor_id, floors)
        except PeerUnreachable:
            return False
        return True

    async def floors_from(self, acceptor_id: int, after: int, limit: int
                          ) -> list[tuple[int, acceptor_rules.Floor]] | None:
        """``floor_page`` of ``acceptor_id``; None if it could not be had."""
        if acceptor_id == self.config.node_id:
            return self.floor_page(after, limit)
        if not self.membership.usable(acceptor_id):
            return None
        try:
            return await self.transport.list_floors(acceptor_id, after, limit)
        except PeerUnreachable:
            return None

    # ---------------------------------------------------------------- proposer side

    def _fast_base(self, key: str, live: list[_Waiting]) -> FastBase | None:
        """What a fast round on ``key`` may build on, or None for a classic round: with
        ``--fast-paxos on``, a first attempt (a retry may find its earlier accept chosen,
        which only a classic round's promises tell), this node serving as a full acceptor
        whose accepted ballot's successor is not promised away, and enough acceptors up
        for a fast quorum (otherwise the attempt only costs a round trip)."""
        if not self.config.fast_paxos or self.config.node_id not in self.quorum.acceptors:
            return None
        if not self._serves("query") or any(w.item.progress.accept_sent for w in live):
            return None
        if not self.membership.fast_quorum_reachable():
            return None
        if all(isinstance(w.item.change, Read) for w in live):
            # Identity rounds (a read's fallback, repair) run where acceptors disagree: a
            # fast attempt would mostly collide, costing a round trip and an fsync each.
            return None
        return self.proposer_rules.fast_base(self.storage.load(key), self.quorum)

    def _next_ballot(self, seen: Ballot) -> Ballot:
        ballot = next_ballot(self._counter, seen, self.identity.node_id, self.identity.incarnation)
        self._counter = ballot.counter
        return ballot

    async def _ask(self, acceptor_id: int, msg: Request, deadline: float,
                   config: Config | None = None) -> tuple[int, Reply]:
        if acceptor_id == self.config.node_id:
            try:
                return acceptor_id, await self.handle(msg, deadline, config)
            except AssertionError:
                raise
            except Exception as exc:
                return acceptor_id, _local_failure(msg.key, exc)
        if not self.membership.usable(acceptor_id):
            return acceptor_id, Unavailable(msg.key, "peer down or refused")
        try:
            if config is None:
                return acceptor_id, await self.transport.send(acceptor_id, msg, deadline)
            return acceptor_id, await self.transport.send(acceptor_id, msg, deadline, config)
        except PeerUnreachable as exc:
            return acceptor_id, _unreachable(msg.key, exc)

    def _spawn(self, coro: Coroutine[Any, Any, T]) -> asyncio.Task[T]:
        """A task owned by the node's task group (or, before ``run``, tracked here)."""
        if self._group is not None:
            return self._group.create_task(coro)
        task = asyncio.ensure_future(coro)
        self._orphans.add(task)
        task.add_done_callback(self._orphans.discard)
        return task

    async def _broadcast(self, msg: Prepare | Accept | Query | Collect,
                         on_reply: Callable[[int, Reply], Any],
                         deadline: float, view: ConfigView | None = None) -> Any:
        """Send ``msg`` to every acceptor of its phase in ``view`` (default: the config held
        now), under that config; feed replies until one returns non-Wait (that step), or
        return None once every acceptor answered or ``deadline`` passed. A ``Stale``
        refusal teaches this node the newer config and counts as a refusal.

        Sends still in flight once the decision is made are left to finish (accepts that
        land late still help the lagging acceptor) but are no longer waited for. Replies
        arrive through callbacks on the transport's and the local acceptor's futures: no
        task per acceptor (the local acceptor runs one only for a message that must wait
        for its key, see ``_serve_in_turn``).
        """
        loop = self._loop.get()
        decided: asyncio.Future[Any] = loop.create_future()
        outstanding = 0
        ready: list[tuple[int, Reply]] = []  # answered before every send was issued
        if view is None:
            view = self._view
        wire = view.wire
        targets = view.accept.acceptors if isinstance(msg, Accept) else view.prepare.acceptors

        def feed(acceptor_id: int, reply: Reply) -> None:
            nonlocal outstanding
            outstanding -= 1
            if type(reply) is Stale:
                self.learn_config(reply.config)
                reply = Unavailable(reply.key, f"stale: epoch {reply.config.epoch} there")
            if decided.done():
                return
            try:
                step = on_reply(acceptor_id, reply)
            except BaseException as exc:
                decided.set_exception(exc)
                return
            if not isinstance(step, Wait):
                decided.set_result(step)
            elif outstanding == 0:
                decided.set_result(None)

        def fail(exc: BaseException) -> None:
            if not decided.done():
                decided.set_exception(exc)

        def stop() -> None:  # a send or the local save was cancelled (the node is stopping)
            decided.cancel()

        def remote_failure(exc: BaseException) -> Reply | None:
            return _unreachable(msg.key, exc) if isinstance(exc, PeerUnreachable) else None

        def local_failure(exc: BaseException) -> Reply | None:
            if isinstance(exc, AssertionError) or not isinstance(exc, Exception):
                return None  # a bug, or the node stopping: the round fails
            return _local_failure(msg.key, exc)

        def on_answer(acceptor_id: int, as_reply: Callable[[BaseException], Reply | None]
                      ) -> Callable[[asyncio.Future[Reply]], None]:
            """A reply future's callback; ``as_reply`` turns a failure that an acceptor's
            answer can stand for into that answer (None: the round fails with it)."""
            def done(fut: asyncio.Future[Reply]) -> None:
                if fut.cancelled():
                    return stop()
                exc = fut.exception()
                if exc is None:
                    return feed(acceptor_id, fut.result())
                reply = as_reply(exc)
                if reply is None:
                    fail(exc)
                else:
                    feed(acceptor_id, reply)
            return done

        def on_task(task: asyncio.Task[tuple[int, Reply]]) -> None:
            if task.cancelled():
                return stop()
            exc = task.exception()
            if exc is not None:
                return fail(exc)
            feed(*task.result())

        send_soon = getattr(self.transport, "send_soon", None)
        for a in sorted(targets):
            outstanding += 1
            if a == self.config.node_id:
                try:
                    local: Reply | Awaitable[Reply]
                    if wire is not None or self._view.config is not view.config:
                        # Under a config above epoch 0, or one this node has since left:
                        # through the fence, as a peer's message would be.
                        local = self.handle_soon(msg, deadline, wire)
                        if not isinstance(local, asyncio.Future) and \
                                not isinstance(local, REPLY_TYPES):
                            local = self._spawn(_awaited(local))
                    elif isinstance(msg, Collect):  # rare: a task of its own
                        local = self._spawn(self._serve_collect(msg, deadline))
                    else:
                        local = self._acceptor_soon(msg, deadline)
                except AssertionError:
                    raise
                except Exception as exc:
                    ready.append((a, _local_failure(msg.key, exc)))
                    continue
                if isinstance(local, REPLY_TYPES):
                    ready.append((a, local))
                else:  # the save's future, or the task of a message queued for its key
                    assert isinstance(local, asyncio.Future)
                    local.add_done_callback(on_answer(a, local_failure))
            elif not self.membership.usable(a):
                ready.append((a, Unavailable(msg.key, "peer down or refused")))
            elif send_soon is None:  # a transport without it (tests): a task per send
                self._spawn(self._ask(a, msg, deadline, wire)).add_done_callback(on_task)
            else:
                try:
                    sent: asyncio.Future[Reply] = (
                        send_soon(a, msg, deadline) if wire is None
                        else send_soon(a, msg, deadline, wire))
                except PeerUnreachable as exc:
                    ready.append((a, _unreachable(msg.key, exc)))
                    continue
                sent.add_done_callback(on_answer(a, remote_failure))
        for acceptor_id, reply in ready:
            feed(acceptor_id, reply)
        if decided.done():
            return decided.result()
        if deadline <= loop.time():
            decided.cancel()
            return None
        timer = loop.call_at(deadline, lambda: None if decided.done() else
                             decided.set_result(None))
        try:
            return await decided
        finally:
            timer.cancel()

    def _backoff(self, attempt: int) -> float:
        cap = min(self.config.retry_backoff_s_max,
                  self.config.retry_backoff_s_base * (2 ** attempt))
        return self.rng.uniform(0, cap)

    @property
    def rounds_in_flight(self) -> int:
        """Rounds (writes and linearizable reads) running now: ``paxoskv_rounds_in_flight``."""
        return self._inflight

    async def wait_may_propose(self) -> None:
        """Wait until peers have confirmed this process, as long as confirmation can take
        (the failure-detection window and one heartbeat, within half the request timeout):
        a node that just started serves its first requests late, not with a 503."""
        if not self.machine.may_propose and self.machine.identity == "verifying":
            wait_s = min(self.config.down_after_s + self.config.heartbeat_interval_s,
                         self.config.request_timeout_s / 2)
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(wait_s):
                    await self.membership.verified.wait()
        self._check_may_propose()

    def _check_may_propose(self) -> None:
        if not self.machine.may_propose:
            raise NoQuorum(f"this node's identity is {self.machine.identity}"
                           + (f": {self.machine.reason}" if self.machine.reason else
                              " (waiting for peers to confirm it)"))

    async def execute(self, key: str, change: Change, request_id: str | None = None,
                      forward: bool = True) -> Outcome:
        """Run ``change`` on ``key`` through Paxos rounds until it commits.

        Changes to one key queue for the key's next round, which applies every waiting one
        in order (up to ``key_batch_max``; each caller gets its own outcome), so concurrent
        writers of a hot key share rounds instead of queueing one round each.
        ``request_id`` (default: a fresh random id) makes the change exactly-once across
        this call's retries, and across calls that pass the same id. A client write goes
        to the key's preferred proposer first (``forward``; ``preferred_proposer``), and
        runs here when that one is this node, cannot be reached or declines. Raises
        NoQuorum (definitely not applied), UnknownOutcome, or Overloaded.
        """
        # One deadline for the whole request: a forward that took its time leaves the local
        # attempt only what remains of it.
        loop = self._loop.get()
        deadline = loop.time() + self.config.request_timeout_s
        if not self.machine.may_propose:  # (no coroutine for the common case)
            await self.wait_may_propose()
        if request_id is None:
            request_id = self.rng.randbytes(12).hex()
        progress = RequestProgress()
        if forward and self.config.forward_writes and isinstance(change, CLIENT_CHANGES) \
                and getattr(change, "ttl_ms", None) is None:
            # (A change with a TTL runs here: the forward frame does not carry one.)
            target = self.preferred_proposer(key)
            if target != self.config.node_id:
                outcome, progress = await self._forward(target, key, change, request_id)
                if outcome is not None:
                    return outcome
                if progress.runs_elsewhere:
                    # It may still run there, after any attempt here: running it here too
                    # could apply it twice once the value forgets its id. Unknown (504).
                    raise UnknownOutcome(f"node {target} got this write and did not answer "
                                         "in time; it may still apply it")
        return await self._execute_here(key, change, request_id, progress, deadline, loop)

    async def _execute_here(self, key: str, change: Change, request_id: str,
                            progress: RequestProgress, deadline: float,
                            loop: asyncio.AbstractEventLoop) -> Outcome:
        item = Pending(change, request_id, progress)
        done: asyncio.Future[Outcome] = loop.create_future()
        if self._inflight >= self.config.limits.rounds_inflight_max:  # as in read
            raise Overloaded(f"{self._inflight} rounds in flight")
        self._inflight += 1
        # At the deadline the change is abandoned (later rounds leave it out) and its
        # future fails with _Expired: a timer, rather than asyncio.timeout and a shield
        # around the future, which cost a Timeout, a second future and their callbacks.
        timer = loop.call_at(deadline, self._expire, item, done)
        try:
            queue = self._key_queues.setdefault(key, deque())
            queue.append(_Waiting(item, done, deadline))
            if key not in self._key_drivers:
                self._start_driver(key)
            return await done
        except _Expired:
            if classify_failure(change, item.progress, conflict=False) == "unknown":
                raise UnknownOutcome("timed out after its change was sent") from None
            raise NoQuorum("request timed out before a quorum answered") from None
        except asyncio.CancelledError:
            self._abandon(item, done)
            raise
        finally:
            timer.cancel()
            self._inflight -= 1

    @staticmethod
    def _expire(item: Pending, done: asyncio.Future[Outcome]) -> None:
        """A change's deadline passed before its outcome: its caller stops waiting."""
        if not done.done():
            item.abandoned = True
            done.set_exception(_Expired())

    @staticmethod
    def _abandon(item: Pending, done: asyncio.Future[Outcome]) -> None:
        """The caller stopped waiting: later rounds leave the change out, and its future
        is cancelled so that no outcome set later goes unretrieved (asyncio would log it)."""
        item.abandoned = True
        done.cancel()

    def _start_driver(self, key: str) -> None:
        """Start the task that runs ``key``'s rounds while changes wait in its queue."""
        coro = self._drive(key)
        try:
            task = self._spawn(coro)
        except BaseException:
            # The node is stopping (its task group refuses tasks): nothing will serve the
            # queue, so it must not keep the change that was just queued (run later, after
            # its caller got an error).
            coro.close()
            del self._key_queues[key]
            raise
        self._key_drivers[key] = task
        task.add_done_callback(lambda t: self._driver_ended(key, t))

    def _driver_ended(self, key: str, task: asyncio.Task[None]) -> None:
        """Clean up after a driver cancelled before its first step (its ``finally`` never
        ran): otherwise the key would keep a driver entry that serves nobody, and every
        later change to it would wait in the queue until its timeout."""
        if self._key_drivers.get(key) is not task:
            return  # it cleaned up itself; a newer driver may own the key now
        del self._key_drivers[key]
        for waiting in self._key_queues.pop(key, ()):
            if not waiting.done.done():
                waiting.done.set_exception(self._failure(waiting.item, conflict=False))

    def preferred_proposer(self, key: str) -> int:
        """The live proposer this node sends ``key``'s writes to: rendezvous hashing, so
        every node that sees the same live proposers picks the same one, and a proposer
        that goes down moves only its own keys. With groups, one of the key's group when
        any of them is a live proposer: its own acceptor then answers without a message,
        as every proposer's does without groups (docs/groups.md)."""
        raw = key.encode("utf-8", "surrogatepass")
        candidates = [self.config.node_id]
        for pid, health in self.peer_health.items():
            if health.up and health.refused is None and "proposer" in self.config.peers[
                    pid].roles:
                candidates.append(pid)
        view = self._view
        if view.config.grouped:
            kv = view.for_key(key)
            holders = kv.prepare.acceptors | kv.accept.acceptors
            inside = [pid for pid in candidates if pid in holders]
            if inside:
                candidates = inside
        return max(candidates, key=lambda pid: (_rendezvous(raw, pid), pid))

    def sweeps(self, key: str) -> bool:
        """Whether this node's background sweeps (TTL sweeper, tombstone collector) take
        ``key``: the preferred proposer among the live nodes that are acceptors too. Both
        sweeps walk their own acceptor rows, so a proposer-only node, preferred for some
        keys' writes, would sweep none of them; a node that is no acceptor sweeps nothing.
        Two nodes that disagree for a moment both sweep the key: harmless (an expiry is a
        compare-and-delete, a collection round one round among others)."""
        view = self._view
        members = view.config.members  # acceptors now: not one waiting or removed
        if view.config.grouped:  # with groups, the key's group (docs/groups.md)
            kv = view.for_key(key)
            members = kv.prepare.acceptors | kv.accept.acceptors
        if not self.config.is_acceptor or self.config.node_id not in members:
            return False
        raw = key.encode("utf-8", "surrogatepass")
        best, best_score = self.config.node_id, _rendezvous(raw, self.config.node_id)
        for pid, health in self.peer_health.items():
            roles = self.config.peers[pid].roles
            if health.up and health.refused is None and "proposer" in roles \
                    and "acceptor" in roles and pid in members:
                score = _rendezvous(raw, pid)
                if score > best_score or (score == best_score and pid > best):
                    best, best_score = pid, score
        return best == self.config.node_id

    async def _forward(self, target: int, key: str, change: ClientChange, request_id: str
                       ) -> tuple[Outcome | None, RequestProgress]:
        """Ask ``target`` to run the change. Returns its outcome, or None and the progress
        a local attempt must start from: fresh when the change certainly did not run
        there, possibly applied when a gone process may have run it, and "may still run
        there" (``RequestProgress.after_lost_forward``: no local attempt) otherwise."""
        record = self.membership.record(target)
        if record is None:
            return None, RequestProgress()  # no hello from it yet: nothing was sent
        deadline = self._loop.get().time() + self.config.forward_timeout_s
        try:
            reply = await self.transport.send(
                target, Forward(key, change, request_id, record.boot_id), deadline)
        except PeerNotReached:
            self.metrics.forward("not_reached")
            return None, RequestProgress()
        except PeerUnreachable:
            self.metrics.forward("lost")
            return None, self.proposer_rules.after_lost_forward()
        if not isinstance(reply, Forwarded) or reply.key != key:
            # An acceptor-only or older peer: it did not run the change.
            self.metrics.forward("declined")
            return None, RequestProgress()
        if reply.kind is not None:
            self.metrics.forward("ok")
            return Outcome(reply.kind, Value(reply.version, b"" if reply.exists else None)
                           ), RequestProgress()
        self.metrics.forward(reply.error or "declined")
        match reply.error:
            case "no_quorum":
                raise NoQuorum(f"node {target}: {reply.detail}")
            case "unknown":
                raise UnknownOutcome(f"node {target}: {reply.detail}")
            case "duplicate":
                # The answer to a second copy, overtaking the first's: it runs there.
                return None, self.proposer_rules.after_lost_forward()
            case "restarted":
                # Its earlier process may have applied it, but is gone: run it here, as
                # a retry that may find it applied (never "failed" if it fails).
                return None, RequestProgress(accept_sent=True, sent_from_version=1)
        return None, RequestProgress()  # overloaded or declined: nothing ran there

    async def _serve_forward(self, msg: Forward) -> Forwarded:
        """Run a write another node forwarded, here and only here (no second hop), and at
        most once: a message can arrive twice, and a change whose condition failed records
        nothing in the value, so a second run could apply what the first reported as
        rejected. Request ids served are remembered for ``FORWARD_MEMORY_S``, in memory: a
        forward sent to an earlier process of this node (which may have run it) is not run
        by this one: "restarted" (it may have run there, but will not run again) and
        "duplicate" (it may still run there) tell the sender which."""
        if msg.to_boot != self.boot_id:
            return Forwarded(msg.key, None, error="restarted",
                             detail="sent to an earlier process of this node")
        now = self._loop.get().time()
        if not self._forwards_seen.admit(msg.request_id, now) and \
                self.proposer_rules.remember_forwards:
            return Forwarded(msg.key, None, error="duplicate", detail="already running here")
        try:
            if not self.machine.may_propose or "proposer" not in self.config.roles:
                raise Overloaded(f"not proposing ({self.machine.identity})")
            outcome = await self.execute(msg.key, msg.change, msg.request_id, forward=False)
        except Overloaded as exc:
            return Forwarded(msg.key, None, error="declined", detail=str(exc))
        except NoQuorum as exc:
            return Forwarded(msg.key, None, error="no_quorum", detail=str(exc))
        except UnknownOutcome as exc:
            return Forwarded(msg.key, None, error="unknown", detail=str(exc))
        v = outcome.value
        return Forwarded(msg.key, outcome.kind, v.version, v.exists)

    async def _drive(self, key: str) -> None:
        """Run rounds for ``key`` while changes wait for it."""
        queue = self._key_queues[key]
        batch: list[_Waiting] = []
        try:
            while queue:
                batch = []
                while queue and len(batch) < self.config.limits.key_batch_max:
                    waiting = queue.popleft()
                    if not waiting.item.abandoned:
                        batch.append(waiting)
                if batch:
                    try:
                        await self._run_rounds(key, batch)
                    except AssertionError:
                        raise  # a broken invariant: stop, do not serve on (the simulator's
                        # assertion detector relies on it too)
                    except Exception:
                        # A bug must cost this batch its answers, not the whole node (the
                        # task group would stop every other task).
                        log.exception("rounds for key %r failed", key)
                        for w in batch:
                            if not w.done.done():
                                w.done.set_exception(self._failure(w.item, conflict=False))
        finally:
            del self._key_drivers[key]
            del self._key_queues[key]
            for waiting in [*batch, *queue]:  # only left when the node is stopping
                if not waiting.done.done():
                    waiting.done.set_exception(self._failure(waiting.item, conflict=False))

    def _failure(self, item: Pending, conflict: bool) -> Exception:
        match classify_failure(item.change, item.progress, conflict):
            case "unknown":
                return UnknownOutcome("accept sent but not confirmed by a quorum")
            case "contention":
                return NoQuorum("contention: gave up after repeated conflicts")
            case "no_quorum":
                return NoQuorum("no quorum of acceptors reachable")

    async def _run_rounds(self, key: str, batch: list[_Waiting]) -> None:
        """Attempt rounds until every change of ``batch`` is answered or out of time."""
        loop = self._loop.get()
        seen = Ballot.ZERO
        conflict = False
        skip_backoff = False
        for attempt in range(self.config.limits.round_retries_max):
            if attempt and not skip_backoff:
                await asyncio.sleep(self._backoff(attempt))
            skip_backoff = False
            live = [w for w in batch if not w.item.abandoned and not w.done.done()]
            deadline = max((w.deadline for w in live), default=0.0)
            if not live or loop.time() >= deadline:
                return
            base = self._view  # this attempt's config, whatever is adopted meanwhile
            view = base.for_key(key)
            # A key this node committed last, with its next ballot promised: skip phase 1.
            prepared = self._prepared.pop(key, loop.time(), view.epoch)
            if prepared is not None and not self.quorum_reachable():
                # An accept that cannot reach a quorum would leave the outcome unknown
                # (504); a prepare fails cleanly (503, nothing written).
                prepared = None
            fast = (self._fast_base(key, live) if attempt == 0 and prepared is None
                    and view.prepare is view.accept and not view.prepare.parts else None)
            nxt: Ballot | None = None
            if fast is not None:
                ballot = fast.ballot.successor()
            elif prepared is not None:
                ballot = prepared.ballot
                self._counter = max(self._counter, ballot.counter)
            else:
                ballot = self._next_ballot(seen)
            if fast is None and self.proposer_rules.piggyback and not self.config.fast_paxos:
                # Not in fast mode: a promise of our next ballot would refuse every other
                # node's fast round on the key.
                nxt = self._next_ballot(ballot)
            if view.prepare is view.accept:
                rnd = self.proposer_rules.round(key, ballot, live[0].item.change, view.prepare,
                                                next_ballot=nxt, prepared=prepared,
                                                items=[w.item for w in live], fast=fast,
                                                clock_ms=self.clock_ms)
            else:  # a change in progress (whole sets without groups): prepares to the old
                # set, accepts to the new
                rnd = self.proposer_rules.round(key, ballot, live[0].item.change, view.prepare,
                                                next_ballot=nxt, prepared=prepared,
                                                items=[w.item for w in live], fast=None,
                                                clock_ms=self.clock_ms,
                                                accept_config=view.accept)
            step: RoundStep | Prepare | None = rnd.start()
            if isinstance(step, Prepare):
                started = loop.time()
                phase_deadline = min(deadline, started + self.config.phase_timeout_s)
                step = await self._broadcast(step, rnd.on_reply, phase_deadline, view)
                self.metrics.phase("prepare", loop.time() - started)
                if step is None:
                    step = rnd.on_timeout()
                if isinstance(step, SendAccept):
                    self.metrics.round("prepare", "ok")
            elif isinstance(step, SendAccept) and fast is None:
                self.metrics.round("prepare", "skipped")
            if isinstance(step, SendAccept | Unknown):
                for w, result in zip(live, rnd.results, strict=True):
                    if isinstance(result, Unknown) and not w.done.done():
                        self.metrics.round("prepare", "unknown")
                        w.done.set_exception(UnknownOutcome(
                            "our unconfirmed write may have been applied, and the key has "
                            "since seen too many writes to tell"))
            accept_sent = loop.time()
            if isinstance(step, SendAccept):
                rnd.note_accept_sent()
                started = accept_sent
                phase_deadline = min(deadline, started + self.config.phase_timeout_s)
                step = await self._broadcast(step.accept, rnd.on_reply, phase_deadline, view)
                self.metrics.phase("accept", loop.time() - started)
                if step is None:
                    step = rnd.on_timeout()
            if fast is not None:
                if isinstance(step, Committed):
                    self.metrics.round("fast", "chosen")
                elif isinstance(step, Abort):
                    # Collision recovery: the next attempt is a classic round at once.
                    self.metrics.round("fast", "collision" if step.conflict else "timeout")
                    seen = max(seen, step.ballot_seen)
                    skip_backoff = True
                    continue
            assert step is not None and not isinstance(step, Prepare)
            kept = self.proposer_rules.prepared_after(rnd, step)
            if kept is not None:
                # Aged from when the accept left, before any acceptor promised the ballot
                # (not from when the quorum answered): its life ends no later than the
                # fence of an acceptor that lost the promise counts on.
                self._prepared.put(key, kept, accept_sent, view.epoch)
            if isinstance(step, Committed):
                self.metrics.round("accept", "ok")
                self.metrics.key_round(len(live))
                if rnd.accept is not None:
                    self._learned(key, rnd.accept.value, deadline)
                for w, result in zip(live, rnd.results, strict=True):
                    if isinstance(result, Outcome) and not w.done.done():
                        w.done.set_result(result)
                return
            if isinstance(step, Unknown):
                continue  # every live change was answered "unknown" above
            assert isinstance(step, Abort), step
            conflict = step.conflict
            self.metrics.round(step.phase.value, "nack" if step.conflict else "timeout")
            if step.conflict:
                self.metrics.conflict()
            seen = max(seen, step.ballot_seen)
            if not step.conflict and not self.quorum_reachable() and self._view is base:
                break  # fail fast: the failure detector sees no quorum
        for w in batch:
            if not w.done.done() and not w.item.abandoned:
                w.done.set_exception(self._failure(w.item, conflict))

    # ---------------------------------------------------------------- learners

    def _learned(self, key: str, value: Value, deadline: float) -> None:
        """``value`` was chosen: tell this node's watchers, and each peer that has some.
        Fire and forget: a lost learn costs a watcher an event, never a wrong one.
        Reserved keys (idempotency records) are nobody's to watch."""
        if is_reserved(key):
            return
        self.watch.publish(key, value)
        if not self._watching_peers:
            return
        msg = learn_of(key, value)
        send_soon = getattr(self.transport, "send_soon", None)
        for pid in sorted(self._watching_peers):
            if not self.membership.usable(pid):
                continue
            if send_soon is not None:
                send_soon(pid, msg, deadline).add_done_callback(_ignore_outcome)
            else:
                self._spawn(self._send_learn(pid, msg, deadline))

    async def _send_learn(self, pid: int, msg: Learn, deadline: float) -> None:
        with contextlib.suppress(PeerUnreachable):
            await self.transport.send(pid, msg, deadline)

    def note_peer_watchers(self, pid: int, watching: object) -> None:
        """A peer's hello said whether it has watchers (only then is it sent learns)."""
        if watching is True:
            self._watching_peers.add(pid)
        else:
            self._watching_peers.discard(pid)

    def watchers_flag(self) -> bool:
        """The "I have watchers" flag for a hello about to leave (a false one is noted:
        peers may stop sending learns when they get it)."""
        flag = self.watch.has_watchers
        if not flag:
            self._last_false_beat = self._beats_started
        return flag

    async def announce_watchers(self) -> None:
        """Return once every hello since the start of a completed heartbeat has said "I
        have watchers" (at once when that is already so; else bounded by a few beats),
        so writes committed after this are learned here. A watch reads the keys only
        then, which closes the gap before its first learn."""
        if not self.peer_health or not self.watch.has_watchers:
            return
        loop = self._loop.get()
        give_up = loop.time() + 4 * self.config.heartbeat_interval_s \
            + 2 * self.config.heartbeat_timeout_s
        while self._beats_done <= self._last_false_beat and loop.time() < give_up:
            await asyncio.sleep(self.config.heartbeat_interval_s / 4)

    async def read(self, key: str) -> Outcome:
        """Linearizable read: one round trip when a quorum agrees, else a full round."""
        if not self.machine.may_propose:  # (no coroutine for the common case, as execute)
            await self.wait_may_propose()
        if self._view.prepare is not self._view.accept:
            # A change in progress: agreeing reports from a prepare quorum need not be an
            # accept quorum's, so the read is a full (identity) round, correct under both.
            # (``_view_of`` gives one object to both sides exactly when the config is
            # stable, with or without groups: no per-read set comparison is needed.)
            self.metrics.round("query", "fallback")
            return await self.execute(key, Read())
        # One of the rounds_inflight_max rounds this node runs at once (reads and writes
        # alike); beyond them a request is refused at once (Overloaded, 503). Inline, not a
        # context manager: its generator was a measurable share of a read's CPU.
        if self._inflight >= self.config.limits.rounds_inflight_max:
            raise Overloaded(f"{self._inflight} rounds in flight")
        self._inflight += 1
        try:
            view = self._view.for_key(key)
            rnd = self.proposer_rules.query_round(key, view.prepare)
            loop = self._loop.get()
            started = loop.time()
            step = await self._broadcast(rnd.query(), rnd.on_reply,
                                         started + self.config.phase_timeout_s, view)
            self.metrics.phase("query", loop.time() - started)
        finally:
            self._inflight -= 1
        if isinstance(step, Committed):
            value = step.outcome.value
            if not value.expired(self.clock_ms()):
                self.metrics.round("query", "ok")
                return step.outcome
            if not self.proposer_rules.read_deletes_expired:
                return Outcome("read", Value(value.version, None))
        # No quorum agreed, or the value's TTL ran out: a full round, which deletes an
        # expired value before anyone is told it is absent (docs/ttl.md).
        self.metrics.round("query", "fallback")
        return await self.execute(key, Read())

    def read_local(self, key: str) -> Outcome:
        """Stale read of this node's acceptor state (``?consistency=stale``); a value
        expired by this node's clock reads as absent (nothing is deleted)."""
        value = self.storage.load(key).value
        if value.expired(self.clock_ms()):
            value = Value(value.version, None)
        return Outcome("read", value)

    async def page_from(self, acceptor_id: int, prefix: str, after: str | None, limit: int
                        ) -> KeyPage | None:
        """One page of ``acceptor_id``'s keys (``key_page``), None if it cannot be had."""
        return await self._page_from(acceptor_id, prefix, after, limit)

    async def _page_from(self, acceptor_id: int, prefix: str, after: str | None, limit: int
                         ) -> KeyPage | None:
        if acceptor_id == self.config.node_id:
            return self.key_page(prefix, after, limit)
        if not self.membership.usable(acceptor_id):
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
        view = self._view
        for _ in range(LIST_PAGES_MAX + limit // page_keys):
            asked = sorted(view.prepare.acceptors)
            pages = await asyncio.gather(*(self._page_from(a, prefix, cursor, page_keys)
                                           for a in asked))
            answered = [p for p in pages if p is not None]
            if view.config.grouped:
                # With groups (docs/groups.md): every key's group must have a quorum among
                # those that answered, and only a key's group members count for it (a row
                # of an acceptor that left the group is stale).
                answering = frozenset(a for a, p in zip(asked, pages, strict=True)
                                      if p is not None)
                if not view.every_group_met(answering):
                    raise NoQuorum("not every group's quorum of acceptors answered the list")
            elif not self.quorum.can_still_reach(len(answered)):
                raise NoQuorum("no quorum of acceptors answered the list")
            best: dict[str, tuple[Ballot, int]] = {}
            horizon: str | None = None
            for a, page in zip(asked, pages, strict=True):
                if page is None:
                    continue
                entries, more = page
                if more and entries:
                    last = entries[-1][0]
                    horizon = last if horizon is None else min(horizon, last)
                if view.config.grouped:  # the key's group on the prepare side: mid-change
                    cfg = view.config  # its old group, whose majorities hold what was chosen
                    entries = [e for e in entries
                               if a in group(e[0], cfg.prepare_set, cfg.replication)]
                for key, ballot, is_live in entries:
                    vote = 1 if is_live else -1
                    if key not in best or best[key][0] < ballot:
                        best[key] = (ballot, vote)
                    elif best[key][0] == ballot:
                        best[key] = (ballot, best[key][1] + vote)
            # At one fast ballot acceptors may disagree; a value a fast quorum chose is
            # reported by most of those at it (docs/design.md invariant 9).
            live.extend(sorted(k for k, (_, votes) in best.items()
                               if votes > 0 and (horizon is None or k <= horizon)))
            if len(live) >= limit:
                return live[:limit], live[limit - 1]
            if horizon is None:
                return live, None
            cursor = horizon
        return live, cursor

    # ---------------------------------------------------------------- health

    def quorum_reachable(self) -> bool:
        return self.membership.quorum_reachable()

    def ready(self) -> bool:
        """Readiness; why a quorum must be reachable both ways: ``Membership.ready``."""
        return self.membership.ready()

    async def heartbeat_once(self) -> None:
        await self.membership.heartbeat_once()

    async def heartbeat_loop(self) -> None:
        while True:
            if self.peer_health:
                self._beats_started += 1
                beat = self._beats_started
                await self._guarded("heartbeat", self.heartbeat_once())
                self._beats_done = beat
            self.expire_memory()
            await asyncio.sleep(self.config.heartbeat_interval_s)

    def skip_lifetime_s(self) -> float:
        """How long a cached next ballot may be used now: ``--phase1-skip-lifetime``, cut
        down to what the shortest rejoin fence among the other acceptors of the config held
        covers (a fence must outlast a cached ballot's use by a message lifetime,
        ``NodeConfig.rejoin_fence_s``; entries of another epoch are never used). An
        acceptor whose last heartbeat did not get the fence it announces (not heard yet,
        unreachable, or on a release that announces none) is taken to fence for twice the
        shorter message lifetime, its or ours: during a rolling upgrade from such a
        release, an outage, or with members that differ in the flag, the ballots cached
        here live no longer than that acceptor's fence covers. Spare ordinals that are no
        acceptor of the config do not count."""
        ours = self.config.message_lifetime_s
        fences = []
        for pid in self._view.config.members - {self.config.node_id}:
            h = self.peer_health.get(pid)
            if h is not None and h.up and not h.misses and h.fence_s:
                fences.append(h.fence_s)
            else:
                fences.append(2 * min(ours, (h.lifetime_s if h else None) or ours))
        return max(0.0, min([self.config.phase1_skip_lifetime_s, *(f - ours for f in fences)]))

    def expire_memory(self) -> None:
        """Forget per-key and per-request entries past their lifetime (between heartbeats:
        each call is cheap, O(entries expired), plus an occasional compacting copy)."""
        now = asyncio.get_running_loop().time()
        self._prepared.lifetime_s = self.skip_lifetime_s()
        self._prepared.expire(now)
        self._forwards_seen.expire(now)

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

    @property
    def repair_progress(self) -> dict[str, int]:
        return self.recovery.repair_progress

    @property
    def rejoin_progress(self) -> dict[str, Any]:
        return self.recovery.rejoin_progress

    async def repair_loop(self) -> None:
        while True:
            await asyncio.sleep(self.config.repair_interval_s)
            if self.machine.counts_as_acceptor and self.quorum_reachable():
                await self._guarded("repair sweep", self.recovery.repair_sweep())

    # ---------------------------------------------------------------- lifecycle

    async def run(self) -> None:
        """Run the node's background loops until cancelled; they never end by themselves."""
        await self.start()
        try:
            async with asyncio.TaskGroup() as tg:
                self._group = tg
                tg.create_task(self.heartbeat_loop())
                tg.create_task(self.repair_loop())
                if self.config.ttl_sweep_interval_s > 0 and "proposer" in self.config.roles:
                    tg.create_task(self.sweeper.run(self.config.ttl_sweep_interval_s))
                if self.collector.enabled:
                    tg.create_task(self.collector.loop())
                if self.config.is_acceptor:
                    tg.create_task(self.alive_loop())
                if self.machine.rejoining:
                    tg.create_task(self._guarded_rejoin())
                if "proposer" in self.config.roles:
                    tg.create_task(self._resume_change())
        finally:
            self._group = None
        raise AssertionError("the node's loops should never complete")

    async def alive_loop(self) -> None:
        """Record, about once a minute, that this data directory is a normal acceptor's
        current state (``META_ALIVE_AT``): a copy of it then carries a lower bound on when
        it was current, so an idle node's copy is not judged old. Only in the normal mode:
        a refused or rejoining directory's rows may be older than its clock says."""
        last: float | None = None
        while True:
            now = asyncio.get_running_loop().time()
            if self.machine.mode is Mode.NORMAL and (last is None or now - last
                                                     >= ALIVE_REFRESH_S):
                await self._guarded("alive record", self.storage.set_meta(
                    META_ALIVE_AT, str(self.clock_ms())))
                last = now
            await asyncio.sleep(min(5.0, ALIVE_REFRESH_S))

    async def _resume_change(self) -> None:
        """Finish an acceptor-set change a driver left half done (the record says so).
        Only on a node that has seen a change (an epoch above 0, or the record's row in
        its own acceptor): a cluster that never changed runs no extra round at start."""
        if self._view.epoch == 0 and not self.storage.has_row(CONFIG_KEY):
            return
        for _ in range(60):  # until this node may propose: about a minute at most
            if self.machine.may_propose and self.quorum_reachable():
                await self._guarded("acceptor-set change resume",
                                    self.reconfigurer.resume_if_changing())
                return
            await asyncio.sleep(1.0)

    async def _guarded_rejoin(self) -> None:
        while self.machine.rejoining:
            await self._guarded("rejoin", self.recovery.rejoin())

    async def stop(self) -> None:
        """Cancel work started outside ``run`` (``run`` itself is cancelled by its owner)."""
        self.draining = True
        # And the local acceptor's messages still waiting for their key (_serve_in_turn).
        await self.watch.close()
        pending = [*self._orphans, *self._turn_tasks]
        for task in pending:
            task.cancel()
        if pending:
            await asyncio.gather(*pending, return_exceptions=True)

    def groups_status(self) -> dict[str, Any]:
        """Acceptor groups (docs/groups.md): R, how many acceptors hold each key, each
        acceptor's share of the keyspace, and how many acceptors may be down with every
        group keeping a quorum."""
        cfg = self._view.config
        n = len(cfg.prepare_set)
        copies = n if cfg.replication is None else min(cfg.replication, n)
        return {"replication_factor": cfg.replication, "grouped": cfg.grouped,
                "acceptors": n, "copies_per_key": copies,
                "group_quorum": majority(copies), "share_per_acceptor": round(copies / n, 4),
                "acceptors_down_tolerated": copies - majority(copies)}

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
            "tombstone_collection": {
                "grace_seconds": self.config.tombstone_grace_s,
                "pending": self.collector.pending,
                **dataclasses.asdict(self.collector.progress)},
            "rejoin": dict(self.rejoin_progress) or None,
            "rounds_inflight": self._inflight,
            "acceptor_config": {
                "epoch": self._view.epoch,
                "prepare": sorted(self._view.config.prepare_set),
                "prepare_quorum": self._view.config.prepare_quorum,
                "accept": sorted(self._view.config.accept_set),
                "accept_quorum": self._view.config.accept_quorum,
                "member": not self._retired and self.config.node_id in
                self._view.config.members},
            "groups": self.groups_status(),
            "reconfiguration": self.reconfigurer.progress.as_dict(),
            "scaler": None if self.scaler_status is None else self.scaler_status(),
        }
