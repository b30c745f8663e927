"""A scripted simulator run: a rejoining acceptor's fence outlasts every phase-1-skip ballot
cached before it lost its state, so a proposer cut off since then cannot build a write on
an old value with it (README: rejoin; ``NodeConfig.rejoin_fence_s``)."""

from __future__ import annotations

import asyncio
import dataclasses

from scripted import QUIET, wait_mode

from paxoskv.core.errors import NoQuorum, UnknownOutcome
from paxoskv.core.register import Cas, Read, Set
from paxoskv.node import IdentityRules
from paxoskv.sim.loop import run_virtual
from paxoskv.sim.mutants import IDENTITY_MUTANT_RULES, SCRIPTED_MUTANTS
from paxoskv.sim.runner import SimOptions, _Simulation

_SKIP_LIFETIME_S = 300.0
"""Far longer than a message lifetime (7 s): the gap the fence has to cover."""


async def _scenario(rules: IdentityRules) -> tuple[str, str, bytes | None, float]:
    """Node 3's mode when the stale compare-and-set is sent, that change's outcome, what a
    read finds after, and how long node 3 fenced."""
    sim = _Simulation(11, SimOptions(ops=0, network=QUIET, mismatched_config_probability=0.0))
    sim.identity_rules = rules
    sim.config = {i: dataclasses.replace(c, repair_interval_s=1e6,
                                         phase1_skip_lifetime_s=_SKIP_LIFETIME_S)
                  for i, c in sim.config.items()}
    await asyncio.gather(*(sim.boot(i) for i in sim.ids))
    await sim.wait_ready(30.0)
    await sim.crash(3)
    copy = sim.storages[3].snapshot()  # node 3's directory before the key was written
    await sim.boot(3)
    await sim.wait_ready(30.0)
    n1, n2 = sim.hosts[1].node, sim.hosts[2].node
    assert n1 is not None and n2 is not None
    # Node 1 writes "a" (version 1) and keeps the key's next ballot, promised by all three.
    await n1.execute("k", Set(b"a"), forward=False)
    await asyncio.sleep(1.0)
    # Cut off from the others, node 1 misses "b" (version 2), chosen by acceptors 2 and 3.
    cut = [(1, 2), (2, 1), (1, 3), (3, 1)]
    sim.network.block(cut)
    written = await n2.execute("k", Set(b"b"), forward=False)
    assert written.value.version == 2
    sim.network.unblock(cut)
    # Node 3 loses its state: its old copy is put back, refused, and rejoined.
    await sim.crash(3)
    sim.storages[3].restore(copy)
    await sim.boot(3)
    await wait_mode(sim, 3, ("refused",), 30.0)
    await sim.crash(3)
    await sim.boot(3, rejoin=True)
    loop = asyncio.get_running_loop()
    rejoined_at = loop.time()
    until = loop.time() + 30.0  # past a fence of twice the message lifetime (14 s)
    while (node3 := sim.hosts[3].node) is None or node3.acceptor_mode != "catching_up":
        if loop.time() > until:
            break
        await asyncio.sleep(0.05)
    mode = node3.acceptor_mode if node3 is not None else "down"
    # The ballot is still cached, and may be used: every peer announced a fence that
    # covers the 300 s (``Node.skip_lifetime_s``).
    assert n1._prepared._entries.get("k") is not None
    assert n1.skip_lifetime_s() == _SKIP_LIFETIME_S
    # Node 1 still holds its cached ballot: a compare-and-set on version 1 is built on "a"
    # and sent without a prepare. Acceptor 2 refuses it (it promised "b"'s round);
    # acceptor 3, its promise lost, must not take it, or 1 and 3 make a quorum.
    try:
        kind = (await n1.execute("k", Cas(1, b"c"), forward=False)).kind
    except (NoQuorum, UnknownOutcome) as exc:
        kind = type(exc).__name__
    after = await n1.execute("k", Read(), forward=False)
    await wait_mode(sim, 3, ("catching_up", "normal"), 2 * _SKIP_LIFETIME_S)
    fenced_s = loop.time() - rejoined_at
    for i in sim.ids:
        await sim.crash(i)
    return mode, kind, after.value.data, fenced_s


def test_the_fence_outlasts_a_ballot_cached_before_the_loss() -> None:
    """Goal: scenario "a rejoining acceptor takes a cached ballot's accept": the fence
    holds node 3 until node 1's cached ballot has expired, so the accept built on it is
    answered by acceptor 1 alone; the retry's full round finds version 2, the
    compare-and-set on version 1 is rejected, and "b" stays the value."""
    mode, kind, after, fenced_s = run_virtual(_scenario(IdentityRules()))
    assert mode == "fencing"
    assert kind == "rejected"
    assert after == b"b"
    assert _SKIP_LIFETIME_S + 7.0 <= fenced_s < _SKIP_LIFETIME_S + 7.0 + 5.0


def test_mutant_fence_before_cached_ballots_expire_is_caught() -> None:
    """Goal: the mutant "fence-before-cached-ballots-expire" (a fence of twice the message
    lifetime) lets node 3 answer accepts while node 1's cached ballot still lives: the
    compare-and-set on version 1 is applied by acceptors 1 and 3 although version 2 ("b",
    acknowledged) was chosen, the lost update the fence is there to prevent."""
    assert "fence-before-cached-ballots-expire" in SCRIPTED_MUTANTS
    mode, kind, _after, fenced_s = run_virtual(_scenario(
        IDENTITY_MUTANT_RULES["fence-before-cached-ballots-expire"]))
    assert mode == "catching_up"
    assert kind == "applied"
    assert fenced_s < 30.0
