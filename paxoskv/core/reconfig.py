"""Changing the acceptor set safely, sans-I/O: configurations with an epoch, the
acceptor's epoch fence, and the change procedure as a state machine a driver steps through.

The node applies ``admit`` to every acceptor message (``Node._fence``) and its driver
(``paxoskv.reconfigure``) steps ``ChangeMachine``; the reconfiguration simulator
(``paxoskv.sim.reconf``) drives the core on its own. docs/reconfiguration.md has the
argument.
"""

from __future__ import annotations

import enum
import functools
import hashlib
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Final

import orjson

from paxoskv.core.quorum import QuorumConfig, majority

__all__ = [
    "CONFIG_KEY",
    "Action",
    "CatchUp",
    "ChangeMachine",
    "Config",
    "ConfigRecord",
    "Done",
    "EpochVerdict",
    "Install",
    "KeyQuorums",
    "RecordPhase",
    "WriteRecord",
    "admit",
    "change_configs",
    "collection_allowed",
    "drops_all_rows",
    "fence_satisfied",
    "group",
    "groups_keep_majorities",
    "joins_group",
    "key_quorums",
    "key_quorums_intersect",
    "quorums_intersect",
    "quorums_meet",
]

CONFIG_KEY: Final = "\x00paxoskv/config"
"""The reserved register holding the ``ConfigRecord``; clients cannot name it (a NUL)."""


@dataclass(frozen=True, slots=True)
class Config:
    """Who answers prepares and accepts at ``epoch``, and how many of each make a quorum.

    Prepare and accept sets may differ while a change is under way; at rest they are equal
    and both quorums are majorities."""

    epoch: int
    prepare_set: frozenset[int]
    prepare_quorum: int
    accept_set: frozenset[int]
    accept_quorum: int
    replication: int | None = None
    """The replication factor R (docs/groups.md): each key lives on the R members of each
    set with the highest rendezvous score (``group``), and its quorums are counted there
    (``key_quorums``). None: every key on every acceptor, as before groups."""

    def __post_init__(self) -> None:
        assert self.epoch >= 0
        assert 1 <= self.prepare_quorum <= len(self.prepare_set)
        assert 1 <= self.accept_quorum <= len(self.accept_set)
        assert self.replication is None or self.replication >= 2, "R >= 2 (docs/groups.md)"
        assert quorums_intersect(self, self), "a config's own quorums must intersect"

    @staticmethod
    def stable(epoch: int, members: Iterable[int], replication: int | None = None) -> Config:
        s = frozenset(members)
        return Config(epoch, s, majority(len(s)), s, majority(len(s)), replication)

    @property
    def grouped(self) -> bool:
        """Whether some key lives on fewer than all acceptors of a set (R below a set's
        size); False keeps every rule exactly as without groups."""
        r = self.replication
        return r is not None and (r < len(self.prepare_set) or r < len(self.accept_set))

    @property
    def members(self) -> frozenset[int]:
        return self.prepare_set | self.accept_set

    @property
    def is_stable(self) -> bool:
        return self.prepare_set == self.accept_set

    def fence_size(self, which: str) -> int:
        """Acceptors of the prepare (or accept) set that must hold a newer epoch before no
        quorum of this config can form without one of them: ``|set| - quorum + 1``."""
        if which == "prepare":
            return len(self.prepare_set) - self.prepare_quorum + 1
        return len(self.accept_set) - self.accept_quorum + 1

    def to_json(self) -> list[object]:
        out: list[object] = [self.epoch, sorted(self.prepare_set), self.prepare_quorum,
                             sorted(self.accept_set), self.accept_quorum]
        if self.replication is not None:
            out.append(self.replication)  # absent without groups: the same bytes as before
        return out

    @staticmethod
    def from_json(raw: list[object]) -> Config:
        epoch, ps, pq, acc, aq, *rest = raw
        assert isinstance(epoch, int) and isinstance(pq, int) and isinstance(aq, int)
        assert isinstance(ps, list) and isinstance(acc, list)
        r = rest[0] if rest else None
        assert r is None or isinstance(r, int)
        return Config(epoch, frozenset(ps), pq, frozenset(acc), aq, r)


# ------------------------------------------------------------ groups (docs/groups.md)


def _score(key: bytes, acceptor_id: int) -> bytes:
    return hashlib.blake2b(acceptor_id.to_bytes(8, "big", signed=True) + key,
                           digest_size=8).digest()


def group(key: str, members: Iterable[int], r: int | None) -> frozenset[int]:
    """The acceptors of ``members`` that hold ``key``: the ``r`` with the highest rendezvous
    score (a stable hash of the acceptor id and the key, the same on every node and release),
    or all of them when ``r`` is None or not below their number; ``CONFIG_KEY`` is on all.

    Rendezvous hashing moves the fewest keys: adding X to a set changes a key's group at
    most by X taking the place of its lowest-scoring member, and removing Y at most by the
    best-scoring non-member taking Y's place."""
    s = frozenset(members)
    if r is None or r >= len(s) or key == CONFIG_KEY:
        return s
    kb = key.encode("utf-8", "surrogatepass")
    ranked = sorted(s, key=lambda a: (_score(kb, a), a), reverse=True)
    return frozenset(ranked[:r])


def groups_keep_majorities(side: frozenset[int], r: int, up: Iterable[int]) -> bool:
    """Whether every possible group of ``side`` (any ``r`` of its members, or all of them
    when fewer) keeps a majority among ``up``: at most ``R - maj(R)`` of ``side`` missing
    (one for R = 3, whatever its size)."""
    g = min(r, len(side))
    return len(side - frozenset(up)) <= g - majority(g)


@dataclass(frozen=True, slots=True)
class KeyQuorums:
    """One key's quorums under a config: prepares go to ``prepare.acceptors`` and need a
    quorum of ``prepare`` (``QuorumConfig.is_quorum``: a count, or a joint quorum), accepts
    likewise with ``accept``; one object for both when they are equal."""

    prepare: QuorumConfig
    accept: QuorumConfig


_WHOLE: dict[Config, KeyQuorums] = {}


def key_quorums(cfg: Config, key: str, *, mid_majorities: bool = False) -> KeyQuorums:
    """``key``'s quorums under ``cfg``.

    Without groups (``not cfg.grouped``, or ``CONFIG_KEY``) the config's own sets and
    quorums, for every key. With groups, ``GP = group(key, prepare_set)`` and
    ``GA = group(key, accept_set)``; at rest they are one group and both quorums are its
    majority. Mid-change they may differ by one swap ({a,b,y} -> {a,b,z}), and plain
    majorities of each side no longer meet (the prepare quorum {b,y} misses the accept
    quorum {a,z}). Both phases then take a **joint quorum**: a majority of GP and a
    majority of GA at once, asked of GP u GA. Every such set meets every majority of GP
    (so a mid round sees what the old config chose, and the catch-up finds it), every
    majority of GA (so the end config sees what mid chose), and every other joint quorum.
    It needs neither y nor z: {a, b} is one, so an acceptor that is down can be removed.
    ``mid_majorities`` is the ``group-mid-majorities`` mutant (a plain majority of GP for
    prepares, of GA for accepts)."""
    if not cfg.grouped or key == CONFIG_KEY:
        whole = _WHOLE.get(cfg)
        if whole is None:
            whole = KeyQuorums(QuorumConfig(cfg.prepare_set, cfg.prepare_quorum),
                               QuorumConfig(cfg.accept_set, cfg.accept_quorum))
            if len(_WHOLE) > 64:
                _WHOLE.clear()
            _WHOLE[cfg] = whole
        return whole
    gp = group(key, cfg.prepare_set, cfg.replication)
    ga = group(key, cfg.accept_set, cfg.replication)
    old = QuorumConfig.of(gp)
    if gp == ga:
        return KeyQuorums(old, old)
    new = QuorumConfig.of(ga)
    if mid_majorities:
        return KeyQuorums(old, new)
    both = QuorumConfig.joint(old, new)
    return KeyQuorums(both, both)


@functools.lru_cache(maxsize=4096)
def quorums_meet(prepare: QuorumConfig, accept: QuorumConfig) -> bool:
    """Whether every quorum of ``prepare`` meets every quorum of ``accept``. Plain
    thresholds: the arithmetic of ``quorums_intersect``. Joint ones (a few acceptors, as
    a key's groups are): by trying every set of ``prepare``'s acceptors that is a quorum
    against the acceptors left outside it."""
    if not prepare.parts and not accept.parts:
        return prepare.quorum + accept.quorum > len(prepare.acceptors | accept.acceptors)
    members = sorted(prepare.acceptors)
    assert len(members) <= 16, "exhaustive check: small sets only"
    for mask in range(1 << len(members)):
        chosen = frozenset(m for i, m in enumerate(members) if mask >> i & 1)
        if prepare.is_quorum(chosen) and accept.is_quorum(accept.acceptors - chosen):
            return False
    return True


def key_quorums_intersect(prepares: KeyQuorums, accepts: KeyQuorums) -> bool:
    """Whether every prepare quorum of ``prepares`` meets every accept quorum of
    ``accepts`` (``quorums_meet`` on one key's quorums)."""
    return quorums_meet(prepares.prepare, accepts.accept)


def joins_group(cfg: Config, acceptor_id: int, key: str) -> bool:
    """Whether ``cfg`` brings ``acceptor_id`` into ``key``'s group: it is in the group of
    the accept side and not in that of the prepare side (the mid config of a change that
    adds it to the key's group; without groups, of a change that adds it to the set). A
    row of such a key that it holds is from before it left the group (or the set) and must
    be dropped before it votes under ``cfg``: its ballot may exceed any the group used
    since (docs/groups.md, "Stale rows")."""
    r = cfg.replication if cfg.grouped else None
    return acceptor_id in group(key, cfg.accept_set, r) \
        and acceptor_id not in group(key, cfg.prepare_set, r)


def drops_all_rows(held: Config, adopted: Config) -> bool:
    """Whether an acceptor holding ``held`` must drop every row before it adopts
    ``adopted``: with groups, when it missed a whole change (a stable config's successor's
    successor, a mid config's successor's successor's successor), it may have left a key's
    group and come back without ever seeing the configs that say so; and the catch-up of the
    change it missed carried every value it holds to quorums without it (docs/groups.md)."""
    if adopted.replication is None:
        return False
    return adopted.epoch - held.epoch >= (2 if held.is_stable else 3)


def quorums_intersect(prepares: Config, accepts: Config) -> bool:
    """Whether every prepare quorum of ``prepares`` meets every accept quorum of ``accepts``.

    The worst case puts as much of each quorum as possible outside the other's set; what is
    left must overlap inside ``P & A``: ``(qp - |P-A|) + (qa - |A-P|) > |P&A|``, that is
    ``qp + qa > |P | A|``."""
    union = prepares.prepare_set | accepts.accept_set
    return prepares.prepare_quorum + accepts.accept_quorum > len(union)


def change_configs(current: Config, target: Iterable[int]) -> tuple[Config, Config]:
    """The two configs of a one-acceptor change from stable ``current`` (set S) to T.

    ``mid`` (epoch + 1): prepares to S with majority(S), accepts to T with majority(T). For an
    add to N = 2F+1 that is F+1 prepares of the old set and F+2 accepts of the N+1.
    ``end`` (epoch + 2): T with majority(T) for both. Values chosen before ``mid`` are
    carried into ``mid``'s accept quorums by the catch-up (an identity round of every key)
    between the two; docs/reconfiguration.md checks the intersections."""
    assert current.is_stable
    t = frozenset(target)
    s = current.prepare_set
    assert len(s ^ t) == 1, "one acceptor at a time"
    assert t, "at least one acceptor"
    r = current.replication
    mid = Config(current.epoch + 1, s, majority(len(s)), t, majority(len(t)), r)
    end = Config.stable(current.epoch + 2, t, r)
    return mid, end


# ------------------------------------------------------------ the acceptor's side


class EpochVerdict(enum.Enum):
    SERVE = "serve"
    """Same epoch: handle the message."""
    ADOPT = "adopt"
    """A newer epoch: durably adopt the message's config, then handle it."""
    STALE = "stale"
    """An older epoch: refuse, answering with our config so the sender catches up."""
    RETIRED = "retired"
    """This acceptor is in neither set of its config: it never votes again."""


def admit(own: Config, acceptor_id: int, msg_config: Config) -> EpochVerdict:
    """The epoch fence, applied before any promise, accept or collection.

    Refusing older epochs is what stops a proposer that missed a change from forming a
    quorum of the old config once enough acceptors hold the new one (``fence_satisfied``);
    an acceptor removed by its config refuses everything, so its votes never count again."""
    if msg_config.epoch < own.epoch:
        return EpochVerdict.STALE
    cfg = msg_config if msg_config.epoch > own.epoch else own
    if acceptor_id not in cfg.members:
        return EpochVerdict.RETIRED
    return EpochVerdict.ADOPT if msg_config.epoch > own.epoch else EpochVerdict.SERVE


def fence_satisfied(previous: Config, acked: Iterable[int], *,
                    as_one_group: bool = False) -> bool:
    """Whether the acceptors in ``acked`` (which hold the next epoch) leave ``previous``
    with no prepare quorum and no accept quorum free of a fenced acceptor.

    With groups this must hold for every key's group, and any R members of a set may be
    some key's group: a quorum of a group that avoids the fenced acceptors exists exactly
    when the unfenced ones of the set number at least its size, so at most ``q - 1`` of
    each set may be unfenced, ``q`` the smallest per-key quorum on that side (at least
    ``maj(min(R, |set|))``, ``key_quorums``). Without groups that is today's
    ``|set| - quorum + 1`` fenced. ``as_one_group`` is the ``group-fence-as-if-one-group``
    mutant."""
    a = frozenset(acked)
    if not previous.grouped or as_one_group:
        return (len(a & previous.prepare_set) >= previous.fence_size("prepare")
                and len(a & previous.accept_set) >= previous.fence_size("accept"))
    r = previous.replication
    assert r is not None
    for side in (previous.prepare_set, previous.accept_set):
        if len(side - a) > majority(min(r, len(side))) - 1:
            return False
    return True


# ------------------------------------------------------------ the change, durably recorded


class RecordPhase(enum.Enum):
    STABLE = "stable"
    CATCHING_UP = "catching-up"


@dataclass(frozen=True, slots=True)
class ConfigRecord:
    """The value of ``CONFIG_KEY``: the config in force, the one it follows, and, mid-change,
    where it goes.

    Written through Paxos (a CAS on its version) before each step takes effect, so a driver
    that crashed re-reads it and re-runs the step it names."""

    phase: RecordPhase
    config: Config
    previous: Config | None = None
    """The config ``config`` replaced (what its install must fence); None at the start."""
    target: Config | None = None
    """With ``CATCHING_UP``: the stable config the change ends in."""

    def __post_init__(self) -> None:
        assert (self.phase is RecordPhase.CATCHING_UP) == (self.target is not None)
        assert self.phase is not RecordPhase.STABLE or self.config.is_stable
        assert self.previous is None or self.previous.epoch + 1 == self.config.epoch
        assert self.target is None or self.target.epoch == self.config.epoch + 1

    def encode(self) -> bytes:
        return orjson.dumps([self.phase.value, self.config.to_json(),
                             None if self.previous is None else self.previous.to_json(),
                             None if self.target is None else self.target.to_json()])

    @staticmethod
    def decode(raw: bytes) -> ConfigRecord:
        phase, cfg, previous, target = orjson.loads(raw)
        return ConfigRecord(RecordPhase(phase), Config.from_json(cfg),
                            None if previous is None else Config.from_json(previous),
                            None if target is None else Config.from_json(target))


def collection_allowed(record: ConfigRecord, collector_config: Config) -> bool:
    """Tombstone collection needs every acceptor of a stable config, and none during a
    change: a collection racing the catch-up could leave the new acceptor a row the others
    removed (docs/reconfiguration.md, GC)."""
    return record.phase is RecordPhase.STABLE and record.config == collector_config


@dataclass(frozen=True, slots=True)
class WriteRecord:
    """CAS ``record`` into ``CONFIG_KEY`` over ``expected_version``, through a round under
    ``under`` (the config the acceptors hold now)."""

    record: ConfigRecord
    expected_version: int
    under: Config


@dataclass(frozen=True, slots=True)
class Install:
    """Send ``config`` to every acceptor of ``config.members | previous.members``; done
    once ``fence_satisfied(previous, acks)`` and every acceptor new in ``config`` acked
    (it gets the bucket floors with it; with groups, out of a stable config, every
    acceptor of ``config.accept_set``: docs/groups.md)."""

    config: Config
    previous: Config


@dataclass(frozen=True, slots=True)
class CatchUp:
    """Run an identity round of every key (``CONFIG_KEY`` aside) until it commits under
    ``config``; done when each one has."""

    config: Config


@dataclass(frozen=True, slots=True)
class Done:
    config: Config


Action = WriteRecord | Install | CatchUp | Done


class ChangeMachine:
    """The driver's side of changing the acceptor set to ``target``, one acceptor at a time,
    resumable from the record alone.

    ``next_action(record, version)`` names the step to (re)run given what ``CONFIG_KEY``
    holds at ``version``; the driver runs it, reports success with ``installed`` /
    ``caught_up`` (or re-reads the record after a write), and asks again. Every step is
    idempotent (installs only raise epochs, identity rounds change nothing, record writes
    are CASes on the version read), so a driver that crashed at any point re-reads the
    record and continues; losing ``installed`` / ``caught_up`` only repeats a step."""

    def __init__(self, target: Iterable[int], skip_catch_up: bool = False) -> None:
        self.target = frozenset(target)
        assert self.target
        self.skip_catch_up = skip_catch_up
        """Only the ``reconf-skip-identity-round`` mutant sets it."""
        self.installed: set[int] = set()
        self.caught_up: set[int] = set()

    def next_action(self, record: ConfigRecord, version: int) -> Action:
        cfg = record.config
        if record.previous is not None and cfg.epoch not in self.installed:
            return Install(cfg, record.previous)
        if record.phase is RecordPhase.STABLE:
            if cfg.prepare_set == self.target:
                return Done(cfg)
            mid, end = change_configs(cfg, self._one_step(cfg.prepare_set))
            return WriteRecord(ConfigRecord(RecordPhase.CATCHING_UP, mid, cfg, end),
                               version, cfg)
        assert record.target is not None
        if cfg.epoch not in self.caught_up and not self.skip_catch_up:
            return CatchUp(cfg)
        return WriteRecord(ConfigRecord(RecordPhase.STABLE, record.target, cfg), version, cfg)

    def _one_step(self, current: frozenset[int]) -> frozenset[int]:
        """The next set towards ``target``: adds first, so a replace never shrinks the set
        below its size at either end."""
        add = sorted(self.target - current)
        if add:
            return current | {add[0]}
        return current - {sorted(current - self.target)[0]}
