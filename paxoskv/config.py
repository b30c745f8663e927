"""The node's configuration: who the members are, their roles, and every timeout.

One module so that the server, the CLI, discovery and the simulator build the same thing,
and so that the membership fingerprint (what two nodes must agree on before they talk) is
computed in one place.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from typing import Final, Literal

from paxoskv.limits import Limits

__all__ = ["ALL_ROLES", "NodeConfig", "PeerSpec", "Role"]

Role = Literal["proposer", "acceptor", "learner"]
ALL_ROLES: frozenset[Role] = frozenset({"proposer", "acceptor", "learner"})


PHASE1_SKIP_LIFETIME_S_MAX: Final = 3600.0
"""A cached next ballot lives at most an hour: a rejoining acceptor waits that long (plus a
message lifetime) before it answers anything."""


@dataclass(frozen=True, slots=True)
class PeerSpec:
    node_id: int
    url: str
    roles: frozenset[Role] = ALL_ROLES
    initial: bool = True
    """An acceptor of epoch 0 (with the acceptor role). False (``initial: false`` in a hosts
    file): an acceptor-role node that waits, serving no votes, until an acceptor-set change
    adds it (docs/reconfiguration.md)."""


@dataclass(frozen=True, slots=True)
class NodeConfig:
    node_id: int
    peers: dict[int, PeerSpec]
    """Every node of the cluster, this one included."""
    cluster_id: str = "paxoskv"
    request_timeout_s: float = 5.0
    phase_timeout_s: float = 1.0
    peer_timeout_s: float = 2.0
    """One peer HTTP request (the transport's own timeout)."""
    phase1_skip_lifetime_s: float = 60.0
    """How long a proposer keeps a key's next ballot, promised by a quorum piggybacked on
    its last accept, for a phase-1-skip write (one round trip). A rejoining acceptor's
    fence outlasts it (``rejoin_fence_s``)."""
    heartbeat_interval_s: float = 0.5
    heartbeat_timeout_s: float = 1.0
    peer_down_after: int = 3
    """Missed heartbeats after which a peer is reported down."""
    retry_backoff_s_base: float = 0.005
    retry_backoff_s_max: float = 0.2
    repair_interval_s: float = 30.0
    repair_keys_per_second: float = 100.0
    ttl_sweep_interval_s: float = 1.0
    """Between two batches of the TTL sweeper (paxoskv/ttl.py); 0 turns it off."""
    ttl_sweep_batch: int = 256
    """Keys of the local acceptor one sweeper batch looks at."""
    forward_writes: bool = True
    """Send a client's write to its key's preferred proposer (rendezvous hashing over the
    live proposers), so one node keeps each key's next ballot prepared."""
    fast_paxos: bool = False
    """Try each write first as a Fast Paxos round built on this node's own acceptor
    (docs/fast-paxos.md); off: phase-1 skip (piggybacked prepares) as the fast path."""
    tombstone_grace_s: float = 86400.0
    """How long a tombstone stays before its row is collected from every acceptor
    (docs/gc.md); 0 keeps tombstones for ever."""
    rejoin: bool = False
    rejoin_after_quorum_loss: bool = False
    """Rejoin trusting whatever acceptors survive (README: two disks lost at once)."""
    rejoin_accept_old_copy: bool = False
    """Rebuild (``rejoin_after_quorum_loss``) even on a data directory too old to be sure
    that no key deleted and collected since comes back (docs/recovery.md)."""
    limits: Limits = field(default_factory=Limits)
    replication_factor: int | None = None
    """R (docs/groups.md): each key lives on R of the acceptors, chosen by rendezvous
    hashing; None: every key on every acceptor. Pinned in the data directory at the first
    start, like epoch 0's acceptor set."""

    @property
    def initial_acceptors(self) -> frozenset[int]:
        """Epoch 0's acceptor set: the acceptor-role nodes not marked ``initial: false``."""
        return frozenset(p.node_id for p in self.peers.values()
                         if "acceptor" in p.roles and p.initial)

    @property
    def forward_timeout_s(self) -> float:
        """How long a node waits for the preferred proposer before running a forwarded write
        itself: half the request's time, so the fallback has the other half."""
        return self.request_timeout_s / 2

    def __post_init__(self) -> None:
        if self.node_id not in self.peers:
            raise ValueError(f"node id {self.node_id} is not among the configured peers")
        if not self.acceptors:
            raise ValueError("the cluster has no acceptor")
        if self.phase_timeout_s > self.request_timeout_s:
            raise ValueError("phase timeout must not exceed the request timeout")
        if not 0 < self.phase1_skip_lifetime_s <= PHASE1_SKIP_LIFETIME_S_MAX:
            raise ValueError("--phase1-skip-lifetime must be a positive number of seconds, "
                             f"at most {PHASE1_SKIP_LIFETIME_S_MAX:.0f}")
        if self.tombstone_grace_s < 0:
            raise ValueError("tombstone grace must not be negative")
        if self.rejoin_after_quorum_loss and not self.rejoin:
            raise ValueError("--rejoin-after-quorum-loss needs --rejoin")
        if self.rejoin_accept_old_copy and not self.rejoin_after_quorum_loss:
            raise ValueError("--rejoin-accept-old-copy needs --rejoin-after-quorum-loss")
        if not self.initial_acceptors:
            raise ValueError("no acceptor of epoch 0: every acceptor is marked initial: false")
        if self.replication_factor is not None:
            if self.replication_factor < 3:
                raise ValueError("--replication-factor must be at least 3")
            # Not group-aware yet (docs/groups.md, "What is not group-aware"): refused
            # rather than silently wrong.
            if self.fast_paxos:
                raise ValueError("--replication-factor does not work with --fast-paxos on yet")
            if self.rejoin:
                raise ValueError("--replication-factor does not work with --rejoin yet "
                                 "(docs/groups.md, \"Limits\")")

    @property
    def acceptors(self) -> frozenset[int]:
        return frozenset(p.node_id for p in self.peers.values() if "acceptor" in p.roles)

    @property
    def roles(self) -> frozenset[Role]:
        return self.peers[self.node_id].roles

    @property
    def is_acceptor(self) -> bool:
        return self.node_id in self.acceptors

    @property
    def message_lifetime_s(self) -> float:
        """How long a peer message of ours can still be acted on after it was created: a
        round never outlives the request timeout, and a message in flight is dropped by its
        receiver once its time-to-live has passed (plus one transit, bounded by the peer
        timeout). A rejoining acceptor's fence waits out at least twice the largest of these
        (``rejoin_fence_s``)."""
        return self.request_timeout_s + self.peer_timeout_s

    @property
    def rejoin_fence_s(self) -> float:
        """How long an acceptor that lost its state answers nothing (README: rejoin): until
        every round that could hold a promise of the lost state has ended. That is a round
        in flight at the loss (a message lifetime, from the first message to the last one's
        arrival, ``message_lifetime_s``), or one started later on a ballot some proposer
        had cached before the loss (the cached ballot's lifetime, then a message lifetime):
        a proposer may send a phase-1-skip accept without asking this acceptor first."""
        return self.message_lifetime_s + max(self.message_lifetime_s,
                                             self.phase1_skip_lifetime_s)

    @property
    def down_after_s(self) -> float:
        """Silence after which a peer counts as gone (heartbeats missed, plus one timeout)."""
        return self.heartbeat_interval_s * self.peer_down_after + self.heartbeat_timeout_s

    def fingerprint(self) -> str:
        """What every member must agree on: cluster id, node ids and their roles.

        URLs are left out on purpose: nodes may reach one another under different names.
        So are the acceptors marked ``initial: false``: they are no part of epoch 0, every
        later acceptor set is carried, epoch-fenced, by the config record, and leaving them
        out lets a StatefulSet's peer list grow (``--max-replicas``) pod by pod, and a
        release of the one-list layout roll to it, without two fingerprints in one cluster.
        """
        parts = [self.cluster_id]
        for pid in sorted(self.peers):
            if not self.peers[pid].initial and "acceptor" in self.peers[pid].roles:
                continue
            parts.append(f"{pid}:{','.join(sorted(self.peers[pid].roles))}")
        if self.replication_factor is not None:  # absent without it: the same fingerprint
            parts.append(f"replication-factor:{self.replication_factor}")
        return hashlib.sha256("\n".join(parts).encode()).hexdigest()[:16]
