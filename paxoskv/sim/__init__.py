"""Deterministic simulation of the real node: virtual time, a seeded network and disk.

`run_seed` runs one seed of a cluster of real `paxoskv.node.Node` objects on a
virtual-time event loop, injects faults, drives clients, and checks the history for
linearizability; ``python -m paxoskv.sim`` runs many seeds.
"""

from paxoskv.sim.loop import SimLoop, run_virtual
from paxoskv.sim.mutants import MUTANTS
from paxoskv.sim.network import SimNetwork, SimNetworkOptions, SimTransport
from paxoskv.sim.runner import RunResult, SimOptions, run_seed
from paxoskv.sim.storage import DiskOptions, SimStorage

__all__ = [
    "MUTANTS",
    "DiskOptions",
    "RunResult",
    "SimLoop",
    "SimNetwork",
    "SimNetworkOptions",
    "SimOptions",
    "SimStorage",
    "SimTransport",
    "run_seed",
    "run_virtual",
]
