"""Helpers for the simulator tests: for the scripted scenarios (tests/sim/test_gc_*.py,
test_reconf_node.py, test_review_reconf.py) a network without faults, so each scenario's
steps happen in the order it writes them; for the seeded ones, a run of seeds."""
from __future__ import annotations

import asyncio
import dataclasses
from collections import Counter
from collections.abc import Callable
from typing import Any

from paxoskv.core.quorum import QuorumConfig
from paxoskv.node import AcceptorRules
from paxoskv.sim.batch import DEFAULT_SEEDS, Summary, run_many
from paxoskv.sim.network import SimNetworkOptions
from paxoskv.sim.runner import SimOptions, _Simulation

QUIET = SimNetworkOptions(drop_probability=0.0, duplicate_probability=0.0,
                          reorder_probability=0.0, partition_probability=0.0)


async def wait_mode(sim: _Simulation, node_id: int, modes: tuple[str, ...],
                    timeout_s: float) -> str:
    """Wait (virtual time) until the node's acceptor is in one of ``modes``."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    while loop.time() < deadline:
        node = sim.hosts[node_id].node
        if node is not None and node.acceptor_mode in modes:
            return node.acceptor_mode
        await asyncio.sleep(0.1)
    raise AssertionError(f"node {node_id} never reached {modes}")


async def four_nodes_one_waiting(seed: int, *, rules: AcceptorRules | None = None,
                                 acceptor_only: frozenset[int] = frozenset(),
                                 **options: Any) -> _Simulation:
    """Boot the reconfiguration scenarios' cluster: epoch 0 is acceptors {1, 2, 3}, node 4
    an acceptor that waits (``initial: false``) until a change adds it, no repair sweeps
    (each scenario says when a key is touched), and wait until it is ready. ``options`` go
    to ``SimOptions`` (``proposers=1`` adds node 5, a proposer only); nodes in
    ``acceptor_only`` lose their proposer role."""
    sim = _Simulation(seed, SimOptions(nodes=4, ops=0, network=QUIET,
                                       mismatched_config_probability=0.0, **options))
    sim.rules = rules if rules is not None else AcceptorRules()
    sim.peers[4] = dataclasses.replace(sim.peers[4], initial=False)
    for node_id in acceptor_only:
        sim.peers[node_id] = dataclasses.replace(sim.peers[node_id],
                                                 roles=frozenset({"acceptor"}))
    sim.config = {i: dataclasses.replace(c, repair_interval_s=1e6, peers=sim.peers)
                  for i, c in sim.config.items()}
    sim.quorum = QuorumConfig.of({1, 2, 3})
    await asyncio.gather(*(sim.boot(i) for i in sim.ids))
    await sim.wait_ready(30.0)
    return sim


def run_seeds(seeds: range, options: SimOptions, jobs: int) -> tuple[Counter[str], list[str]]:
    """Run ``seeds`` of the node simulator: the faults injected across them, and one line
    per failing run (its checker summary, node errors, state-checker and liveness
    failures)."""
    faults: Counter[str] = Counter()
    failing: list[str] = []
    for summary in run_many(seeds, options, None, jobs):
        faults.update(summary.faults)
        if summary.failed:
            failing.append(f"seed {summary.seed}: {summary.check_summary} "
                           f"{summary.node_errors} {summary.invariant_failures} "
                           f"{summary.liveness_failures}")
    return faults, failing


def first_caught(options: SimOptions, caught: Callable[[Summary], bool], hint: int | None,
                 jobs: int) -> Summary | None:
    """The first run of the default seed budget that ``caught`` accepts, or None.

    ``hint`` (the seed that caught the mutant when last measured) runs first, then the rest
    of the budget in seed order. The claim is the one a plain scan makes, some seed of the
    budget catches the mutant, but without running every seed below the hint again: that
    scan was most of ``make test``'s time for mutants caught late (no-fsync at seed 53). A
    hint that stops catching costs one run, then the scan goes on as before."""
    seeds = list(range(DEFAULT_SEEDS))
    if hint is not None and hint in seeds:
        seeds.remove(hint)
        seeds.insert(0, hint)
    for summary in run_many(seeds, options, None, jobs):
        if caught(summary):
            return summary
    return None
