"""Acceptor groups (docs/groups.md) in the simulators: under acceptor-set changes on the
protocol core (paxoskv.sim.reconf with a replication factor) seeds pass and the group
mutant is caught by the checker; the real node with --replication-factor passes the node
simulator's seeds."""

from __future__ import annotations

from collections import Counter

from scripted import run_seeds

from paxoskv.sim.__main__ import reconf_sizes
from paxoskv.sim.batch import DEFAULT_SEEDS
from paxoskv.sim.reconf import ReconfOptions, run_reconf_seed
from paxoskv.sim.runner import SimOptions

SEEDS = 10
OPS = 300


def _grouped(**kwargs: object) -> ReconfOptions:
    return ReconfOptions(**reconf_sizes(3), **kwargs)  # type: ignore[arg-type]


def test_changes_with_groups_stay_linearizable() -> None:
    """Goal: with R = 3 and sets of 3 to 7 acceptors (5 at first), adds, removes and
    replaces under every fault of the reconfiguration simulator keep every key
    linearizable, and the group paths run: keys change groups, acceptors drop the rows of
    keys a change brings them back into, collection runs per group.

    Method: 10 seeds of 300 ops; the unchanged checker; counters."""
    faults: Counter[str] = Counter()
    failing: list[str] = []
    for seed in range(SEEDS):
        result = run_reconf_seed(seed, _grouped(ops=OPS))
        faults.update(result.faults)
        if result.failed:
            failing.append(f"seed {seed}: {result.check.summary()} {result.errors} "
                           f"{result.liveness_failures}")
        assert result.final_config is not None and result.final_config.is_stable
        assert result.final_config.replication == 3
    assert not failing, "\n".join(failing)
    for counter in ("change_add", "change_remove", "change_replace", "catch_up",
                    "driver_restarted", "stale_refused", "rows_dropped_joining_group",
                    "gc_rows_removed", "acceptor_crash"):
        assert faults[counter] > 0, (counter, faults)


def test_group_mid_majorities_is_caught_by_the_checker() -> None:
    """Goal: the hole that plain majorities of each group leave mid-change (a key whose
    group swaps a member: docs/groups.md) loses a write a client sees.

    Method: the CLI's default budget of seeds with R = 3, in order, until the
    linearizability checker flags a run. Measured: first caught at seed 0."""
    for seed in range(DEFAULT_SEEDS):
        result = run_reconf_seed(seed, _grouped(mutant="group-mid-majorities"))
        if result.check.violations:
            return
    raise AssertionError(f"group-mid-majorities not caught in {DEFAULT_SEEDS} seeds")


def test_the_real_node_with_groups_under_faults() -> None:
    """Goal: five real nodes with ``--replication-factor 3`` (each key on three of them)
    under the node simulator's faults (crashes, power losses, pauses, partitions, message
    drops, duplicates and reorders, a node booted with another membership) stay
    linearizable and pass the state checker; lost disks, old-copy restores and duplicate
    ids are off (their recovery, ``--rejoin``, is refused with groups).

    Method: 3 seeds of 300 ops through ``scripted.run_seeds``."""
    faults, failing = run_seeds(range(3), SimOptions(nodes=5, ops=300, replication_factor=3),
                                jobs=1)
    assert not failing, "\n".join(failing)
    assert faults["crash"] > 0 and faults["forward_ok"] > 0, faults
    assert faults["disk_loss"] == 0


def test_the_real_node_moves_keys_between_groups_through_changes() -> None:
    """Goal: with ``--replication-factor 3`` and two spare acceptors, the node simulator's
    operator adds and removes acceptors through the real driver while clients write, under
    the same faults; keys move between groups (rows dropped on joining a group are
    forgotten by the state checker, ``Node.rows_dropped``), and every history is
    linearizable.

    Method: 2 seeds of 300 ops, five nodes plus two spares."""
    faults, failing = run_seeds(range(2), SimOptions(nodes=5, spares=2, ops=300,
                                                     replication_factor=3), jobs=1)
    assert not failing, "\n".join(failing)
    assert faults["reconf_done"] > 0 and faults["reconf_remove"] > 0, faults
