"""Helpers for the scripted simulator scenarios (tests/sim/test_gc_*.py): a network without
faults, so each scenario's steps happen in the order it writes them."""
from __future__ import annotations

import asyncio

from paxoskv.sim.network import SimNetworkOptions
from paxoskv.sim.runner import _Simulation

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
