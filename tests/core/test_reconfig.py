"""Acceptor-set changes in the core (docs/reconfiguration.md): the quorum arithmetic, the
epoch fence, the durable record and the resumable change machine."""

from __future__ import annotations

from itertools import combinations

import pytest

from paxoskv.core.reconfig import (
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
    change_configs,
    collection_allowed,
    fence_satisfied,
    quorums_intersect,
)


def _subsets(members: frozenset[int], size: int) -> list[frozenset[int]]:
    return [frozenset(c) for c in combinations(sorted(members), size)]


def _brute_intersect(p: Config, a: Config) -> bool:
    """Every prepare quorum of ``p`` meets every accept quorum of ``a``, by enumeration."""
    return all(qp & qa for qp in _subsets(p.prepare_set, p.prepare_quorum)
               for qa in _subsets(a.accept_set, a.accept_quorum))


def _changes(limit: int = 7) -> list[tuple[Config, frozenset[int]]]:
    """Every add and every remove from stable sets of 1..limit acceptors."""
    out: list[tuple[Config, frozenset[int]]] = []
    for n in range(1, limit + 1):
        s = frozenset(range(1, n + 1))
        cur = Config.stable(0, s)
        out.append((cur, s | {n + 1}))
        if n > 1:
            out.extend((cur, s - {r}) for r in s)
    return out


@pytest.mark.parametrize(("current", "target"), _changes())
def test_every_step_of_a_change_intersects_itself_and_its_neighbours(
        current: Config, target: frozenset[int]) -> None:
    """Goal: at every step, and between a step and the one before or after it (proposers
    that have not learned the newest epoch yet), every prepare quorum meets every accept
    quorum; and the formula agrees with enumerating the quorums.

    Method: every add and remove from 1..7 acceptors; `quorums_intersect` must be True for
    (mid, mid), (stable, mid) both ways, (mid, end) both ways, and equal the brute force."""
    mid, end = change_configs(current, target)
    for p, a in [(mid, mid), (current, mid), (mid, current), (mid, end), (end, mid),
                 (end, end)]:
        assert quorums_intersect(p, a), (p, a)
        assert _brute_intersect(p, a), (p, a)


def test_add_to_odd_set_matches_caspaxos_numbers() -> None:
    """Goal: adding to N = 2F+1 accepts at F+2 of N+1 while prepares stay at F+1 of N."""
    for f in range(1, 4):
        s = frozenset(range(1, 2 * f + 2))
        mid, end = change_configs(Config.stable(0, s), s | {99})
        assert (mid.prepare_set, mid.prepare_quorum) == (s, f + 1)
        assert (mid.accept_set, mid.accept_quorum) == (s | {99}, f + 2)
        assert end.is_stable and end.prepare_quorum == f + 2 and end.epoch == 2


def test_formula_agrees_with_enumeration_on_arbitrary_configs() -> None:
    """Goal: ``qp + qa > |P | A|`` is exactly "every prepare quorum meets every accept
    quorum", including where it fails; so the checks above prove what they claim."""
    seen = {True: 0, False: 0}
    sets = [frozenset(c) for n in range(1, 5) for c in combinations(range(1, 6), n)]
    for ps in sets[::3]:
        for acc in sets[::4]:
            for qp in range(1, len(ps) + 1):
                for qa in range(1, len(acc) + 1):
                    p = Config.__new__(Config)
                    object.__setattr__(p, "prepare_set", ps)
                    object.__setattr__(p, "prepare_quorum", qp)
                    a = Config.__new__(Config)
                    object.__setattr__(a, "accept_set", acc)
                    object.__setattr__(a, "accept_quorum", qa)
                    got = quorums_intersect(p, a)
                    assert got == _brute_intersect(p, a), (ps, qp, acc, qa)
                    seen[got] += 1
    assert seen[True] and seen[False]


def test_two_changes_without_catch_up_can_miss_a_chosen_value() -> None:
    """Goal: the catch-up is needed: a value chosen under {1,2,3} on {1,2} is missed by a
    prepare quorum of {2,3,4} (after adding 4 and removing 1) unless the catch-up moved it;
    the intersection of the stable ends two changes apart does not hold."""
    c0 = Config.stable(0, {1, 2, 3})
    _, c2 = change_configs(c0, {1, 2, 3, 4})
    _, c4 = change_configs(c2, {2, 3, 4})
    assert not quorums_intersect(c4, c0)
    assert not _brute_intersect(c4, c0)


def test_admit_fences_older_epochs_and_retired_acceptors() -> None:
    c0 = Config.stable(0, {1, 2, 3})
    mid, end = change_configs(c0, {2, 3})
    assert admit(mid, 2, c0) is EpochVerdict.STALE
    assert admit(c0, 2, mid) is EpochVerdict.ADOPT
    assert admit(mid, 2, mid) is EpochVerdict.SERVE
    assert admit(mid, 1, mid) is EpochVerdict.SERVE  # still in mid's prepare set
    assert admit(end, 1, end) is EpochVerdict.RETIRED
    assert admit(mid, 1, end) is EpochVerdict.RETIRED  # told by the message itself
    assert admit(end, 1, c0) is EpochVerdict.STALE


@pytest.mark.parametrize(("current", "target"), _changes(5))
def test_fence_means_no_quorum_of_the_previous_config_is_free_of_the_new_epoch(
        current: Config, target: frozenset[int]) -> None:
    """Goal: `fence_satisfied(prev, acked)` holds exactly when every prepare quorum and
    every accept quorum of ``prev`` contains an acceptor in ``acked`` (which refuses prev's
    epoch from then on). Method: all subsets of the members, for both installs."""
    mid, end = change_configs(current, target)
    for prev, nxt in [(current, mid), (mid, end)]:
        members = prev.members | nxt.members
        for n in range(len(members) + 1):
            for acked in _subsets(members, n):
                blocked = all(q & acked for q in _subsets(prev.prepare_set, prev.prepare_quorum)) \
                    and all(q & acked for q in _subsets(prev.accept_set, prev.accept_quorum))
                assert fence_satisfied(prev, acked) == blocked, (prev, acked)


def test_record_round_trips() -> None:
    c0 = Config.stable(0, {1, 2, 3})
    mid, end = change_configs(c0, {1, 2, 3, 4})
    for rec in [ConfigRecord(RecordPhase.STABLE, c0),
                ConfigRecord(RecordPhase.CATCHING_UP, mid, c0, end),
                ConfigRecord(RecordPhase.STABLE, end, mid)]:
        assert ConfigRecord.decode(rec.encode()) == rec


def test_collection_only_in_a_stable_config_it_names() -> None:
    c0 = Config.stable(0, {1, 2, 3})
    mid, end = change_configs(c0, {1, 2, 3, 4})
    assert collection_allowed(ConfigRecord(RecordPhase.STABLE, c0), c0)
    assert not collection_allowed(ConfigRecord(RecordPhase.CATCHING_UP, mid, c0, end), mid)
    assert not collection_allowed(ConfigRecord(RecordPhase.CATCHING_UP, mid, c0, end), c0)
    assert not collection_allowed(ConfigRecord(RecordPhase.STABLE, end, mid), c0)


class _Register:
    """The config register as the driver sees it: a value and a version, CAS only."""

    def __init__(self, record: ConfigRecord) -> None:
        self.record, self.version = record, 0

    def write(self, action: WriteRecord) -> None:
        if action.expected_version == self.version:
            self.record, self.version = action.record, self.version + 1


def _drive(machine: ChangeMachine, reg: _Register, crash_after: int | None = None,
           ) -> list[str]:
    """Run the machine's actions against ``reg``; ``crash_after``: stop after that many."""
    steps: list[str] = []
    while crash_after is None or len(steps) < crash_after:
        action = machine.next_action(reg.record, reg.version)
        steps.append(type(action).__name__)
        match action:
            case Done():
                break
            case Install():
                machine.installed.add(action.config.epoch)
            case CatchUp():
                machine.caught_up.add(action.config.epoch)
            case WriteRecord():
                reg.write(action)
    return steps


def test_change_machine_steps_and_resumes_after_a_crash_at_every_point() -> None:
    """Goal: an add runs write(mid) -> install(mid) -> catch-up -> write(end) -> install(end)
    -> done, and a driver that crashed after any step (its volatile progress lost) re-reads
    the record and ends in the same place, re-running at most the step it was in.

    Method: the full run, then for every crash point a fresh machine resumes the register."""
    c0 = Config.stable(0, {1, 2, 3})
    full = _drive(ChangeMachine({1, 2, 3, 4}), reg := _Register(ConfigRecord(
        RecordPhase.STABLE, c0)))
    assert full == ["WriteRecord", "Install", "CatchUp", "WriteRecord", "Install", "Done"]
    final = reg.record
    assert final.config == Config.stable(2, {1, 2, 3, 4}) and final.phase is RecordPhase.STABLE
    for crash in range(1, len(full)):
        reg = _Register(ConfigRecord(RecordPhase.STABLE, c0))
        before = _drive(ChangeMachine({1, 2, 3, 4}), reg, crash_after=crash)
        rest = _drive(ChangeMachine({1, 2, 3, 4}), reg)
        assert rest[-1] == "Done" and reg.record == final, (crash, rest)
        assert reg.version == 2  # each record written once: the CAS refuses a repeat
        assert "CatchUp" in before + rest


def test_replace_is_two_one_acceptor_changes_adding_first() -> None:
    c0 = Config.stable(0, {1, 2, 3})
    reg = _Register(ConfigRecord(RecordPhase.STABLE, c0))
    steps = _drive(ChangeMachine({2, 3, 4}), reg)
    assert steps.count("CatchUp") == 2 and steps.count("Install") == 4
    assert reg.record.config == Config.stable(4, {2, 3, 4})
    assert reg.record.previous is not None and reg.record.previous.prepare_set == {1, 2, 3, 4}


def test_skip_catch_up_mutant_switch_skips_only_the_catch_up() -> None:
    reg = _Register(ConfigRecord(RecordPhase.STABLE, Config.stable(0, {1, 2, 3})))
    steps = _drive(ChangeMachine({1, 2, 3, 4}, skip_catch_up=True), reg)
    assert steps == ["WriteRecord", "Install", "WriteRecord", "Install", "Done"]
