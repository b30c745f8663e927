"""Changing the acceptor set safely, sans-I/O: configurations with an epoch, the
acceptor's epoch fence, and the change procedure as a state machine a driver steps through.

The node applies ``admit`` to every acceptor message (``Node._fence``) and its driver
(``paxoskv.reconfigure``) steps ``ChangeMachine``; the reconfiguration simulator
(``paxoskv.sim.reconf``) drives the core on its own. docs/reconfiguration.md has the
argument.
"""

from __future__ import annotations

import enum
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Final

import orjson

from paxoskv.core.quorum import majority

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
    "RecordPhase",
    "WriteRecord",
    "admit",
    "change_configs",
    "collection_allowed",
    "fence_satisfied",
    "quorums_intersect",
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

    def __post_init__(self) -> None:
        assert self.epoch >= 0
        assert 1 <= self.prepare_quorum <= len(self.prepare_set)
        assert 1 <= self.accept_quorum <= len(self.accept_set)
        assert quorums_intersect(self, self), "a config's own quorums must intersect"

    @staticmethod
    def stable(epoch: int, members: Iterable[int]) -> Config:
        s = frozenset(members)
        return Config(epoch, s, majority(len(s)), s, majority(len(s)))

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
        return [self.epoch, sorted(self.prepare_set), self.prepare_quorum,
                sorted(self.accept_set), self.accept_quorum]

    @staticmethod
    def from_json(raw: list[object]) -> Config:
        epoch, ps, pq, acc, aq = raw
        assert isinstance(epoch, int) and isinstance(pq, int) and isinstance(aq, int)
        assert isinstance(ps, list) and isinstance(acc, list)
        return Config(epoch, frozenset(ps), pq, frozenset(acc), aq)


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
    mid = Config(current.epoch + 1, s, majority(len(s)), t, majority(len(t)))
    end = Config.stable(current.epoch + 2, t)
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


def fence_satisfied(previous: Config, acked: Iterable[int]) -> bool:
    """Whether the acceptors in ``acked`` (which hold the next epoch) leave ``previous``
    with no prepare quorum and no accept quorum free of a fenced acceptor."""
    a = frozenset(acked)
    return (len(a & previous.prepare_set) >= previous.fence_size("prepare")
            and len(a & previous.accept_set) >= previous.fence_size("accept"))


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
    (it gets the bucket floors with it)."""

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
