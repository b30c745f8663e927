"""Scripted simulator runs of what a collected key leaves behind (docs/gc.md): bucket floors
across two single-disk losses, each handled by the documented rejoin; and a rebuild after a
majority loss from copies of the lost volumes, which must not bring a collected key back
(the copy's age against the grace, and the grace counted from the pin)."""

from __future__ import annotations

import asyncio
import dataclasses
from typing import Literal

import pytest
from scripted import QUIET, wait_mode

from paxoskv.core.register import Cas, Delete, Outcome, Read, Set
from paxoskv.node import ALIVE_REFRESH_S, IdentityRules, ProposerRules, RebuildRefused
from paxoskv.node import Node as RealNode
from paxoskv.sim.loop import run_virtual
from paxoskv.sim.mutants import IDENTITY_MUTANT_RULES, PROPOSER_MUTANT_RULES, SCRIPTED_MUTANTS
from paxoskv.sim.runner import SimOptions, _Simulation


async def _lose_disk_and_rejoin(sim: _Simulation, node_id: int) -> None:
    await sim.crash(node_id)
    sim.storages[node_id].wipe()
    await sim.boot(node_id, rejoin=True)
    await wait_mode(sim, node_id, ("normal",), 120.0)


async def _two_disk_losses(copy_floors: bool) -> tuple[Outcome, Outcome]:
    sim = _Simulation(9, SimOptions(ops=0, tombstone_grace_s=1e6, network=QUIET,
                                     mismatched_config_probability=0.0))
    sim.identity_rules = IdentityRules(rejoin_copies_floors=copy_floors)
    sim.config = {i: dataclasses.replace(c, repair_interval_s=1e6) for i, c in sim.config.items()}
    await asyncio.gather(*(sim.boot(i) for i in sim.ids))
    await sim.wait_ready(30.0)
    n1 = sim.hosts[1].node
    assert n1 is not None
    # First life of k: version 1 (a client keeps ETag "1"), deleted at version 2, collected.
    first = await n1.execute("k", Set(b"first"), forward=False)
    assert first.value.version == 1
    await n1.execute("k", Delete(), forward=False)
    assert await n1.collector.collect("k"), "every acceptor removes the row"
    # Node 3 loses its disk and rejoins; later, node 1 does the same. Each rejoin is the
    # documented one, with the two other acceptors up.
    await _lose_disk_and_rejoin(sim, 3)
    await _lose_disk_and_rejoin(sim, 1)
    # Node 2, the only acceptor left with k's floor, is down: {1, 3} is a quorum.
    await sim.crash(2)
    n1 = sim.hosts[1].node
    assert n1 is not None
    try:
        recreated = await n1.execute("k", Set(b"second"), forward=False)
        # A client of the first life still holds If-Match: "1".
        stale_cas = await n1.execute("k", Cas(1, b"aba"), forward=False)
    finally:
        for i in (1, 3):
            await sim.crash(i)
    return recreated, stale_cas


@pytest.mark.parametrize("copy_floors", [True, False])
def test_two_lost_disks_in_turn_keep_a_collected_keys_version(copy_floors: bool) -> None:
    """Goal: a collected key's version never goes back, also after two acceptors lost
    their disks one after the other (each rejoined with two acceptors up).

    Method: k set (version 1) and deleted (version 2), collected everywhere; node 3 loses
    its disk and rejoins, then node 1 does; node 2 stops, so {1, 3} is the only quorum,
    and only a rejoin that copies its peers' bucket floors holds k's floor. k is set again:
    its version must be above 2, and a CAS with the first life's ETag "1" must fail. With
    the rejoin copying its peers' bucket floors that holds; without it
    (``IdentityRules(rejoin_copies_floors=False)``, the hole) the key starts again at
    version 1 and the stale CAS applies: the test asserts both."""
    recreated, stale_cas = run_virtual(_two_disk_losses(copy_floors))
    if copy_floors:
        assert recreated.value.version > 2, recreated
        assert stale_cas.kind == "rejected", stale_cas
    else:
        assert recreated.value.version == 1, recreated
        assert stale_cas.kind == "applied", stale_cas


GRACE_S = 3600.0
"""The grace of the rebuild scenarios (virtual seconds): well above the rebuild check's
clock margin (``identity.rebuild_copy_bound_s``), and below its bound the copies stay."""


async def _cluster(seed: int, identity_rules: IdentityRules | None = None,
                   proposer_rules: ProposerRules | None = None) -> _Simulation:
    """Three quiet nodes with the rebuild scenarios' grace and no background repair, ready,
    each having recorded (``alive_at``) that it serves as a normal acceptor."""
    sim = _Simulation(seed, SimOptions(ops=0, tombstone_grace_s=GRACE_S, network=QUIET,
                                       mismatched_config_probability=0.0))
    if identity_rules is not None:
        sim.identity_rules = identity_rules
    if proposer_rules is not None:
        sim.proposer_rules = proposer_rules
    # Heartbeats every 2 s, not 0.5: the same scenario in a quarter of the events.
    sim.config = {i: dataclasses.replace(c, repair_interval_s=1e6, heartbeat_interval_s=2.0)
                  for i, c in sim.config.items()}
    await asyncio.gather(*(sim.boot(i) for i in sim.ids))
    await sim.wait_ready(30.0)
    await asyncio.sleep(ALIVE_REFRESH_S + 10.0)
    return sim


def _node(sim: _Simulation, node_id: int) -> RealNode:
    node = sim.hosts[node_id].node
    assert node is not None
    return node


async def _copy_of(sim: _Simulation, node_id: int) -> object:
    """A copy of ``node_id``'s volume, taken while it is briefly down; it then runs on."""
    await sim.crash(node_id)
    copy = sim.storages[node_id].snapshot()
    await sim.boot(node_id)
    await sim.wait_ready(30.0)
    return copy


def _has_row(sim: _Simulation, key: str) -> list[int]:
    return [i for i in sim.ids if sim.storages[i].has_row(key)]


async def _rebuild_and_read(sim: _Simulation, copies: dict[int, object], key: str = "k",
                            accept_old_copy: bool = False) -> Outcome:
    """Nodes 1 and 2 lose their volumes (a majority); node 1 gets its copy back and is
    rebuilt with --rejoin --rejoin-after-quorum-loss (docs/recovery.md), node 2 stays down;
    k is read through {1, 3}. Raises RebuildRefused as the server would exit."""
    await sim.crash(1, 2)
    sim.storages[2].wipe()
    sim.storages[1].restore(copies[1])  # type: ignore[arg-type]
    sim.config[1] = dataclasses.replace(sim.config[1], rejoin=True,
                                        rejoin_after_quorum_loss=True,
                                        rejoin_accept_old_copy=accept_old_copy)
    try:
        await sim.boot(1, rejoin=True)
        await wait_mode(sim, 1, ("normal",), 120.0)
        return await _node(sim, 1).execute(key, Read(), forward=False)
    finally:
        for i in (1, 3):
            if sim.hosts[i].up:
                await sim.crash(i)


async def _deleted_after_copies(age: Literal["old", "young"], accept_old_copy: bool = False,
                                identity_rules: IdentityRules | None = None
                                ) -> Outcome | RebuildRefused:
    """k set everywhere; a copy of node 1's volume taken; k deleted. ``old``: the
    collectors then run, grace respected, until k's row is gone everywhere (a floor is all
    that is left of it), and the rebuild comes after (the copy older than the grace).
    ``young``: the rebuild comes a tenth of the grace after the delete."""
    sim = await _cluster(11, identity_rules=identity_rules)
    await _node(sim, 3).execute("k", Set(b"old"), forward=False)
    await asyncio.sleep(1.0)  # the accept reaches every acceptor
    copies = {1: await _copy_of(sim, 1)}
    deleted_at = asyncio.get_running_loop().time()
    await _node(sim, 3).execute("k", Delete(), forward=False)
    if age == "old":
        while _has_row(sim, "k"):
            await asyncio.sleep(10.0)
            assert asyncio.get_running_loop().time() < deleted_at + 2 * GRACE_S, \
                "the collectors should remove k within the grace and a few sweeps"
        collected_after = asyncio.get_running_loop().time() - deleted_at
        assert collected_after >= GRACE_S, collected_after
    else:
        await asyncio.sleep(GRACE_S / 10)
        assert _has_row(sim, "k") == sim.ids, "not collected within the grace"
    try:
        return await _rebuild_and_read(sim, copies, accept_old_copy=accept_old_copy)
    except RebuildRefused as exc:
        return exc


def test_a_rebuild_from_a_copy_older_than_the_grace_is_refused() -> None:
    """Goal: after a majority loss whose volumes are replaced by old copies, the documented
    rebuild (``--rejoin --rejoin-after-quorum-loss``) must not bring back a key that was
    deleted and collected after the copy: its deletion is on the surviving acceptor, which
    holds only a bucket floor for it once collected.

    Method: k set on all three; a copy of node 1 taken; k deleted and, a grace (3600 s)
    later, collected by the nodes' own collectors; nodes 1 and 2 lose their volumes, node
    1 is rebuilt on its copy. The rebuild must refuse before it starts (the copy last served
    as a normal acceptor more than the grace less the clock margin ago), and say what to
    do. Without the check (mutant ``rebuild-ignores-copy-age``, below) node 1's stale row
    is the value of the highest accepted ballot and ``old`` comes back."""
    result = run_virtual(_deleted_after_copies("old"))
    assert isinstance(result, RebuildRefused), result
    assert "--rejoin-accept-old-copy" in str(result) and "empty data directory" in str(result)


def test_a_rebuild_from_a_copy_younger_than_the_grace_runs_and_keeps_the_delete() -> None:
    """Goal: the check lets a rebuild from a recent copy run, and that is safe: a key
    deleted after the copy cannot have been collected yet.

    Method: as above, but the rebuild comes a tenth of the grace after the delete: it runs
    to ``normal``, and k reads absent (node 3's tombstone is the highest accepted value)."""
    result = run_virtual(_deleted_after_copies("young"))
    assert isinstance(result, Outcome), result
    assert not result.value.exists, result


def test_the_override_rebuilds_from_an_old_copy_and_may_bring_a_collected_key_back() -> None:
    """Goal: ``--rejoin-accept-old-copy`` lets the operator rebuild on a copy older than
    the grace (better than nothing when no newer copy exists), and this is the risk it
    takes, as documented (docs/recovery.md).

    Method: the refused scenario above with the flag: the rebuild runs to ``normal``, and
    the collected key k is back with its value from before the delete."""
    result = run_virtual(_deleted_after_copies("old", accept_old_copy=True))
    assert isinstance(result, Outcome), result
    assert result.value.exists and result.value.data == b"old", result


def test_mutant_rebuild_ignores_copy_age_is_caught() -> None:
    """Goal: the refusal above is what keeps the collected key dead (the mutant
    ``rebuild-ignores-copy-age``, paxoskv/sim/mutants.py, removes the check).

    Method: the refused scenario with the mutant's identity rules: the rebuild runs, and k
    is read back as ``old``: the hole the check closes."""
    assert "rebuild-ignores-copy-age" in SCRIPTED_MUTANTS
    result = run_virtual(_deleted_after_copies(
        "old", identity_rules=IDENTITY_MUTANT_RULES["rebuild-ignores-copy-age"]))
    assert isinstance(result, Outcome), result
    assert result.value.exists and result.value.data == b"old", result


async def _lagging_copy(proposer_rules: ProposerRules | None) -> tuple[list[int], Outcome]:
    """A key set everywhere; deleted while node 1 is cut off from node 3 (the proposer), so
    node 1 keeps ``old``; it is not repaired (no background repair). Near the end of the
    grace a copy of node 1 is taken (fresh ``alive_at``: it served as a normal acceptor);
    past the grace, the majority is lost and node 1 rebuilt on that copy. Returns the nodes
    that still held a row of the key before the loss, and the key read after the rebuild.
    The key is one node 3 sweeps: node 1, holding a value, would never collect it."""
    sim = await _cluster(13, proposer_rules=proposer_rules)
    key = next(k for k in (f"k{i}" for i in range(100)) if _node(sim, 3).sweeps(k))
    await _node(sim, 3).execute(key, Set(b"old"), forward=False)
    await asyncio.sleep(1.0)
    links = [(1, 3), (3, 1)]
    sim.network.block(links)
    await _node(sim, 3).execute(key, Delete(), forward=False)
    await asyncio.sleep(1.0)
    sim.network.unblock(links)
    assert _node(sim, 1).storage.load(key).value.data == b"old"
    await asyncio.sleep(GRACE_S - 300.0)
    copies = {1: await _copy_of(sim, 1)}
    await asyncio.sleep(600.0)
    rows = _has_row(sim, key)
    return rows, await _rebuild_and_read(sim, copies, key)


def test_the_grace_counts_from_when_every_acceptor_holds_the_tombstone() -> None:
    """Goal: a copy younger than the grace is trusted by the rebuild, so no key may be
    collected while a copy of some acceptor taken less than a grace before still holds its
    old value: the grace must count from when every acceptor held the tombstone (the pin),
    not from when the collector first saw its own.

    Method: node 1 misses k's delete (cut off from the proposer) and is not repaired; a
    copy of it is taken near the end of the grace, and a little past the grace the
    majority is lost and node 1 rebuilt on that copy (young: the check lets it run). With
    the pin, k is never pinned (node 1 reports ``old``), so not collected, and reads
    absent after the rebuild. With the grace counted from the collector's first sight
    (mutant ``gc-grace-from-first-sight``) k is collected everywhere once the grace is
    over (the collection round itself brings node 1 the tombstone), and the rebuild on
    node 1's copy brings ``old`` back."""
    rows, outcome = run_virtual(_lagging_copy(None))
    assert rows == [1, 2, 3], rows
    assert not outcome.value.exists, outcome
    assert "gc-grace-from-first-sight" in SCRIPTED_MUTANTS
    rows, outcome = run_virtual(_lagging_copy(
        PROPOSER_MUTANT_RULES["gc-grace-from-first-sight"]))
    assert rows == [], rows
    assert outcome.value.exists and outcome.value.data == b"old", outcome
