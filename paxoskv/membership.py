"""Who this node talks to and whether it may take part: peer health, hellos, peer records.

The rules (what a hello's verdict is, which frame comes from a known process, when this
node's identity is confirmed) live in ``core/identity.py`` and ``core/quorum.py``; this
module carries them out for the node: it sends and answers heartbeats, persists peer
records and identity transitions, and raises the incarnation. It is split from
``node.py`` so that file reads as the acceptor and the proposer; the node owns one
``Membership`` and delegates to it, so callers still see every name on the node.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Final, Literal

from paxoskv import __version__
from paxoskv.config import PHASE1_SKIP_LIFETIME_S_MAX
from paxoskv.core.identity import META_REFUSED as _META_REFUSED
from paxoskv.core.identity import META_REJOIN as _META_REJOIN
from paxoskv.core.identity import META_VERIFIED as _META_VERIFIED
from paxoskv.core.identity import (
    Confirmed,
    Event,
    HelloClaim,
    IdentityMachine,
    InUse,
    LostState,
    Mode,
    PeerRecord,
    RaiseIncarnation,
    Refused,
    Welcome,
    judge_frame,
    supersedes,
)
from paxoskv.core.messages import PeerProtocolError, config_from_wire
from paxoskv.core.quorum import QuorumConfig
from paxoskv.core.reconfig import Config
from paxoskv.storage.base import NodeIdentity
from paxoskv.transport.base import PeerUnreachable, Refusal
from paxoskv.transport.codec import Sender

if TYPE_CHECKING:
    from paxoskv.node import Node

__all__ = ["Membership", "PeerHealth"]

log = logging.getLogger("paxoskv.node")
"""The node's logger, as before the split: the simulator and log filters name it."""


RefusalKind = Literal["membership", "process"]
"""A peer refused for another membership, or a process of it refused (stale, second)."""

MEMBERSHIP_DIFFERS: Final = "membership differs (acceptor set, roles or cluster id)"

LIFETIME_S_MAX: Final = 3600.0
"""The longest message lifetime a hello may announce; a longer one is ignored."""
FENCE_S_MAX: Final = PHASE1_SKIP_LIFETIME_S_MAX + LIFETIME_S_MAX
"""The longest rejoin fence a hello may announce (the flag's cap plus the longest message
lifetime); a larger one is ignored, not waited out."""
QUIET_MIN_S: Final = 1.0
QUIET_MAX_S: Final = 5.0
"""Between hellos to a silent acceptor that the held config does not name (a StatefulSet
ordinal not scaled to, or one removed): backed off up to this, instead of every heartbeat,
and a hello from it ends the wait at once (the scaler adds a pod once it answers)."""


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
    refused_for: RefusalKind | None = None
    """Which check refused it: only that check, passing again, lifts the refusal."""
    lifetime_s: float | None = None
    """The longest a message of its can live (its request plus peer timeout)."""
    fence_s: float | None = None
    """The rejoin fence its settings need (``NodeConfig.rejoin_fence_s``), from its last
    answered hello; None from a release that did not announce one (twice ``lifetime_s``
    covered it there)."""
    epochs: bool = False
    """Its hellos say it runs a release with acceptor-set epochs (docs/reconfiguration.md)."""
    epoch: int = 0
    """The config epoch its last answered hello named (0 when it named none)."""
    epoch_asked_at: float | None = None
    """When (loop time) the hello that last told ``epoch`` was sent: the peer held that epoch
    at some moment after this."""


class Membership:
    """The node's view of its peers and of its own identity.

    It keeps the node's wiring (config, storage, transport, metrics, quorum, rules: never
    replaced after construction) and reads the node's ``identity`` and ``draining``, which
    change; ``identity`` is written back here when the incarnation is raised.
    """

    @property
    def quorum(self) -> QuorumConfig:
        """The node's quorum now (it follows the acceptor-set config the node holds)."""
        return self._node.quorum

    def __init__(self, node: Node) -> None:
        self._node = node
        config, storage = node.config, node.storage
        self.config = config
        self.storage = storage
        self.transport = node.transport
        self.metrics = node.metrics
        self.identity_rules = node.identity_rules
        self.boot_id = node.boot_id
        self.fingerprint = node.fingerprint
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
        self.machine: IdentityMachine
        self.machine, self._initial_persist = self.identity_rules.start(
            config.is_acceptor, config.rejoin, config.rejoin_after_quorum_loss,
            storage.get_meta(_META_REJOIN), storage.get_meta(_META_REFUSED))
        self._started = False
        self._started_at = 0.0
        self._new_identity = storage.get_meta(_META_VERIFIED) != "1" or self.machine.rejoining
        """This process's identity is new to the cluster (a fresh directory, a rejoin, or,
        once raised, a new incarnation): its confirmation must meet every earlier one."""
        self.verified = asyncio.Event()
        """Set while the identity machine lets this node propose."""
        self._quiet_until: dict[int, float] = {}
        self._quiet_s: dict[int, float] = {}

    def _record(self) -> PeerRecord:
        return PeerRecord(self._node.identity.data_id, self._node.identity.incarnation,
                          self.boot_id)

    def publish_sender(self) -> None:
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
            await self.transition(Confirmed())

    async def transition(self, event: Event) -> None:
        before = (self.machine.mode, self.machine.identity)
        step = self.machine.apply(event)
        for name, value in step.persist:
            await self.storage.set_meta(name, value)
        self.machine.commit(event, step)
        if self.machine.may_propose:
            self.verified.set()
        else:
            self.verified.clear()
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
        if not self.machine.may_raise_incarnation or self._node.identity.incarnation > floor:
            return
        incarnation = floor + 1
        await self.storage.set_meta("incarnation", str(incarnation))
        old = self._node.identity
        self._node.identity = NodeIdentity(old.cluster_id, old.node_id, old.data_id, incarnation,
                                           old.fresh)
        self._new_identity = True
        self.publish_sender()
        log.warning("incarnation raised to %d above one peers remember", incarnation)

    def admit(self, sender: Sender) -> None:
        """Serve frames only from the process of a peer whose hello we accepted."""
        if not self._same_membership(sender.fingerprint):
            raise Refusal(MEMBERSHIP_DIFFERS)
        if sender.node_id not in self.peer_health:
            raise Refusal(f"node {sender.node_id} is not a peer of this node")
        if not judge_frame(self._records.get(sender.node_id), sender.record):
            raise Refusal(f"unknown process of node {sender.node_id}: hello first")

    def _same_membership(self, fingerprint: object) -> bool:
        return fingerprint == self.fingerprint or not self.identity_rules.check_membership

    def hello_info(self) -> dict[str, Any]:
        info = self._hello_info()
        cfg = self._node.epoch_config
        if cfg.epoch > 0:  # (a cluster that never changed its acceptor set sends no config)
            info["cfg"] = cfg.to_json()
        return info

    def _hello_info(self) -> dict[str, Any]:
        return {
            "cluster_id": self._node.identity.cluster_id,
            "node_id": self._node.identity.node_id,
            "data_id": self._node.identity.data_id,
            "incarnation": self._node.identity.incarnation,
            "boot_id": self.boot_id,
            "fingerprint": self.fingerprint,
            "acceptor": self.config.is_acceptor,
            "rejoin": self.machine.rejoining,
            "refused": self.machine.permanent or self.machine.mode is Mode.AMNESIA,
            "lifetime_s": self.config.message_lifetime_s,
            "fence_s": self.config.rejoin_fence_s,
            "version": __version__,
            "watchers": self._node.watchers_flag(),
            "epochs": True,
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
        if claim is None or info.get("cluster_id") != self._node.identity.cluster_id:
            return self._reply("foreign", "unknown cluster or malformed hello")
        peer_id, hello = claim
        health = self.peer_health.get(peer_id)
        if health is None:
            return self._reply("foreign", f"node {peer_id} is not a member here")
        if not self._same_membership(info.get("fingerprint")):
            self._refuse_peer(peer_id, "membership", MEMBERSHIP_DIFFERS)
            return self._reply("config", MEMBERSHIP_DIFFERS)
        await self._learn_records(info.get("records"), peer_id)
        self._node.note_peer_watchers(peer_id, info.get("watchers"))
        cfg = _config_of(info)
        if cfg is not None and self._learns_config_from_hellos():
            self._node.learn_config(cfg)  # a newer one: adopted in the background
        if info.get("refused") is True:
            # A refused or amnesic process (it may keep restarting, each time with a higher
            # incarnation) must never displace the record of the node's real process.
            return self._reply("refused", "this process is refused; restart it with --rejoin")
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
                self._quiet_until.pop(peer_id, None)  # it runs: hello it at the next beat
                self._lift_refusal(peer_id, "process")
                return self._reply("ok", your_data_id=record.data_id)
            case RaiseIncarnation(floor=floor):
                return self._reply("raise", f"incarnation must exceed {floor}", floor=floor)
            case LostState(detail=detail):
                return self._reply("amnesia", detail, your_data_id=known and known.data_id)
            case Refused(detail=detail):
                self._refuse_peer(peer_id, "process",
                                  f"a process of node {peer_id} was refused: {detail}")
                return self._reply("refused", detail)
            case InUse(detail=detail):
                return self._reply("in_use", detail)

    def _refuse_peer(self, peer_id: int, kind: RefusalKind, reason: str) -> None:
        health = self.peer_health[peer_id]
        if health.refused != reason:
            log.error("refusing peer %s: %s", peer_id, reason)
        health.refused, health.refused_for = reason, kind
        self.metrics.peer_refused(str(peer_id), True)

    def _lift_refusal(self, peer_id: int, kind: RefusalKind) -> None:
        health = self.peer_health[peer_id]
        if health.refused_for == kind:
            health.refused, health.refused_for = None, None
            self.metrics.peer_refused(str(peer_id), False)

    def record(self, peer_id: int) -> PeerRecord | None:
        """The process of ``peer_id`` this node remembers (from its hellos)."""
        return self._records.get(peer_id)

    def usable(self, acceptor_id: int) -> bool:
        if acceptor_id == self.config.node_id:
            return True
        health = self.peer_health.get(acceptor_id)
        return health is None or (health.misses < self.config.peer_down_after
                                  and health.refused is None)

    def _up_acceptors(self, mutual: bool) -> set[int]:
        now = asyncio.get_running_loop().time() if mutual else 0.0
        fresh_s = self.config.down_after_s
        up = {a for a in self.quorum.acceptors if a != self.config.node_id
              and a in self.peer_health and self.usable(a) and self.peer_health[a].up
              and (not mutual or now - self.heard_from.get(a, -1e18) <= fresh_s)}
        if self.config.node_id in self.quorum.acceptors and self.machine.counts_as_acceptor:
            up.add(self.config.node_id)
        return up

    def _reachable(self, up: set[int]) -> bool:
        """Whether ``up`` holds a quorum; with acceptor groups, a quorum of every group
        (at most ``maj(R) - 1`` acceptors down; docs/groups.md, "Readiness")."""
        view = self._node.view
        if view.config.grouped:
            return view.every_group_reachable(frozenset(up))
        return self.quorum.reachable(up)

    def quorum_reachable(self) -> bool:
        return self._reachable(self._up_acceptors(mutual=False))

    def fast_quorum_reachable(self) -> bool:
        """Whether a fast round could gather its fast quorum (all 3 of 3 acceptors)."""
        return len(self.quorum.acceptors & self._up_acceptors(mutual=False)) >= \
            self.quorum.fast

    def ready(self) -> bool:
        """Readiness: this node's identity is confirmed, and a quorum of acceptors that
        agree on the membership is reachable both ways.

        One-way is not enough: a pod restarted under a new address reaches its peers at once,
        but they may still resolve its old address (cluster DNS caches for up to 30 s). A
        rolling update that took it for ready would stop the next pod and lose the quorum.
        """
        return self.machine.may_propose and not self._node.draining \
            and self._reachable(self._up_acceptors(mutual=True))

    async def _beat(self, pid: int) -> dict[str, Any] | None:
        """One heartbeat to ``pid``; its reply, or None if it did not answer as a member."""
        loop = asyncio.get_running_loop()
        health = self.peer_health[pid]
        started = loop.time()
        if started < self._quiet_until.get(pid, 0.0):
            return None
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
            if not health.up and self._waiting(pid):
                # No pod, most likely: no down series for it (no alert), and fewer hellos.
                quiet = min(max(self._quiet_s.get(pid, 0.0) * 2, QUIET_MIN_S), QUIET_MAX_S)
                self._quiet_s[pid] = quiet
                self._quiet_until[pid] = loop.time() + quiet
                self.metrics.peer_absent(str(pid))
            else:
                self.metrics.peer(str(pid), health.up, None)
            return None
        self._quiet_s.pop(pid, None)
        verdict = info.get("verdict")
        if info.get("cluster_id") != self._node.identity.cluster_id or verdict in ("foreign", None):
            health.up, health.error = False, f"foreign peer: {info.get('detail') or info}"
            self.metrics.peer(str(pid), False, None)
            return None
        if verdict == "config" or not self._same_membership(info.get("fingerprint")):
            self._refuse_peer(pid, "membership", MEMBERSHIP_DIFFERS)
            health.up = False
            self.metrics.peer(str(pid), False, None)
            return None
        self._lift_refusal(pid, "membership")
        await self._learn_records(info.get("records"), pid)
        self._node.note_peer_watchers(pid, info.get("watchers"))
        if not health.up:
            log.info("peer %s is up", pid)
        health.up, health.misses, health.error = True, 0, None
        health.rtt_s = loop.time() - started
        health.last_ok = loop.time()
        health.version = str(info.get("version"))
        cfg = _config_of(info)
        health.epochs = info.get("epochs") is True
        health.epoch, health.epoch_asked_at = (0 if cfg is None else cfg.epoch), started
        lifetime = info.get("lifetime_s")
        if isinstance(lifetime, int | float) and 0 < lifetime < LIFETIME_S_MAX:
            health.lifetime_s = float(lifetime)
        fence = info.get("fence_s")  # absent: a release from before it was announced
        health.fence_s = float(fence) if isinstance(fence, int | float) \
            and 0 < fence <= FENCE_S_MAX else None
        self.metrics.peer(str(pid), True, health.rtt_s)
        return info

    def _waiting(self, pid: int) -> bool:
        """An acceptor of the peer list that the config this node holds does not name: one
        waiting for a change to add it (``initial: false``) or one removed. Its silence
        costs nothing: no quorum, readiness or confirmation counts it."""
        return "acceptor" in self.config.peers[pid].roles \
            and pid not in self._node.epoch_config.members

    async def heartbeat_once(self) -> None:
        replies = await asyncio.gather(*(self._beat(pid) for pid in sorted(self.peer_health)))
        # Until its identity is confirmed, and while it rejoins, a node holds the newest
        # acceptor-set config its peers name before it counts their confirmations (a node
        # that lost its disk starts at epoch 0); later, refusals teach it (Node.learn_config).
        if self._learns_config_from_hellos():
            newest = max((c for c in map(_config_of, filter(None, replies)) if c is not None),
                         key=lambda c: c.epoch, default=None)
            if newest is not None:
                await self._node.adopt_config(newest)
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
                    await self.transition(LostState(
                        f"{detail}. Refusing to act as an acceptor; see README 'Recovering a "
                        "node that lost its disk' (paxoskv serve --rejoin)"))
                case "refused":
                    await self.transition(Refused(detail))
                case "in_use":
                    await self.transition(InUse(detail))
                case _:
                    pass
        silent = sum(1 for pid, info in zip(sorted(self.peer_health), replies, strict=True)
                     if info is None and pid in self.quorum.acceptors)
        waited = asyncio.get_running_loop().time() - self._started_at
        if floor:
            await self._raise_incarnation(floor)
        elif not objections and confirmed >= self._confirmations_needed() and \
                (not silent or waited >= self.config.down_after_s):
            await self.transition(Confirmed())

    def _learns_config_from_hellos(self) -> bool:
        return self.machine.rejoining or not self.machine.may_propose

    def epochs_told_since(self, since: float) -> dict[int, int]:
        """The config epoch each peer named in a hello sent at or after ``since``."""
        return {pid: h.epoch for pid, h in self.peer_health.items()
                if h.epoch_asked_at is not None and h.epoch_asked_at >= since}

    def _confirmations_needed(self) -> int:
        if self.machine.rebuild:
            return min(1, self.quorum.confirmations_needed(self.config.node_id))
        if self._new_identity:
            return self.quorum.intersecting_confirmations()
        return self.quorum.confirmations_needed(self.config.node_id)


def _config_of(info: dict[str, Any]) -> Config | None:
    """The acceptor-set config a hello (or its reply) names; None at epoch 0, from a release
    without epochs, or malformed."""
    raw = info.get("cfg")
    if raw is None:
        return None
    try:
        cfg = config_from_wire(raw)
    except PeerProtocolError:
        return None
    return cfg if cfg.epoch > 0 else None


def _parse_hello(info: dict[str, Any]) -> tuple[int, HelloClaim] | None:
    node_id, data_id, incarnation, boot_id = (info.get(k) for k in (
        "node_id", "data_id", "incarnation", "boot_id"))
    acceptor, rejoin = info.get("acceptor"), info.get("rejoin")
    if not (isinstance(node_id, int) and not isinstance(node_id, bool)
            and isinstance(incarnation, int)
            and not isinstance(incarnation, bool) and incarnation >= 0):
        return None
    for part in (data_id, boot_id):
        if not isinstance(part, str) or not 1 <= len(part) <= 64 or " " in part:
            return None
    if not isinstance(acceptor, bool) or not isinstance(rejoin, bool):
        return None
    assert isinstance(data_id, str) and isinstance(boot_id, str)
    return node_id, HelloClaim(PeerRecord(data_id, incarnation, boot_id), acceptor, rejoin)
