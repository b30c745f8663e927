"""Tombstone collection with acceptor groups on the real node, scripted in the simulator:
a collected key's bucket floor must reach every acceptor that a later change can bring
into the key's group, or two of them read the key as never written (docs/groups.md,
"Floors and tombstone collection"). The ``group-floors-to-added-only`` mutant (the floors
go to added acceptors only, as without groups) must give the key's version back to 1."""

from __future__ import annotations

import asyncio
import dataclasses

import pytest
from scripted import QUIET

from paxoskv.core.acceptor import NO_FLOOR, Floor
from paxoskv.core.quorum import QuorumConfig
from paxoskv.core.reconfig import group
from paxoskv.core.register import Create, Delete, Set
from paxoskv.node import AcceptorRules
from paxoskv.sim.loop import run_virtual
from paxoskv.sim.runner import SimOptions, _Simulation

SET = frozenset({1, 2, 3, 4, 5})
R = 3


def _key() -> tuple[str, list[int], list[int]]:
    """A key, its group of ``SET`` (sorted) and the other two acceptors."""
    key = "k0"
    g = sorted(group(key, SET, R))
    return key, g, sorted(SET - set(g))


async def _grouped(seed: int, nodes: int = len(SET), r: int = R) -> _Simulation:
    """``nodes`` acceptors with ``--replication-factor r``, no faults, no repair sweeps, no
    sweep of the collector's own (the scenario collects by hand)."""
    sim = _Simulation(seed, SimOptions(nodes=nodes, ops=0, network=QUIET,
                                       mismatched_config_probability=0.0,
                                       replication_factor=r, tombstone_grace_s=1e6))
    sim.rules = AcceptorRules()
    sim.config = {i: dataclasses.replace(c, repair_interval_s=1e6)
                  for i, c in sim.config.items()}
    sim.quorum = QuorumConfig.of(range(1, nodes + 1))
    await asyncio.gather(*(sim.boot(i) for i in sim.ids))
    await sim.wait_ready(30.0)
    return sim


async def _collected_then_two_removes(every_member: bool
                                      ) -> tuple[int, dict[int, Floor], Floor]:
    """k (group {x, y, z} of the five) is written twice, deleted (version 3) and collected
    on its group; node z then drives the removal of x and of y, so the set is z and the
    two acceptors that never held k. With z down, node w creates k. Returns (the version
    of that create, the floors of k's bucket on w and u before it, z's floor)."""
    key, (x, y, z), (w, u) = _key()
    sim = await _grouped(21)
    try:
        nz, nw = sim.hosts[z].node, sim.hosts[w].node
        assert nz is not None and nw is not None
        nz.reconfigurer.floors_to_every_member = every_member
        await nz.execute(key, Set(b"a"), forward=False)
        await nz.execute(key, Set(b"b"), forward=False)
        await nz.execute(key, Delete(), forward=False)
        assert await nz.collector.collect(key)
        assert all(not sim.storages[i].has_row(key) for i in SET)
        await nz.reconfigurer.drive(SET - {x})
        await nz.reconfigurer.drive(SET - {x, y})
        assert nw.epoch_config.epoch == 4 and nw.epoch_config.members == {z, w, u}
        floors = {i: sim.storages[i].floor(key) for i in (w, u)}
        z_floor = sim.storages[z].floor(key)
        await sim.crash(z)
        outcome = await nw.execute(key, Create(b"c"), forward=False)
        return outcome.value.version, floors, z_floor
    finally:
        await sim.crash(*[i for i in sim.ids if sim.hosts[i].up])


def test_the_scenario_key_lives_on_three_of_five() -> None:
    key, g, others = _key()
    assert len(g) == 3 and len(others) == 2 and key


@pytest.mark.parametrize("every_member", [True, False], ids=["fixed", "group-floors-to-added-only"])
def test_a_collected_key_keeps_its_version_after_its_group_moves_away(
        every_member: bool) -> None:
    """Goal: after two removes take k's group away from the acceptors that collected it,
    a create of k through the two that never held it is version 4, above the tombstone's
    3: the install out of the grouped stable config gave them the floors. The mutant
    (floors only to added acceptors; a remove adds none) leaves them without, and the
    create is version 1: a compare-and-set holding version 1 from before the delete would
    then succeed on a different value."""
    version, floors, z_floor = run_virtual(_collected_then_two_removes(every_member))
    assert z_floor != NO_FLOOR and z_floor.version == 3
    if every_member:
        assert floors == {i: z_floor for i in floors}
        assert version == 4
    else:
        assert all(f == NO_FLOOR for f in floors.values())
        assert version == 1


async def _remove_a_dead_acceptor(nodes: int, r: int) -> tuple[int, bool, list[bytes | None]]:
    """``nodes`` acceptors with ``--replication-factor r``; k is written, deleted and
    collected (on its group); keys m0..m19 are written; the last node is stopped for good
    and node 1 drives its removal. Returns (the epoch node 1 ends at, whether node 2 then
    holds the floor of k's bucket, what node 2 reads of each m key whose group held the
    dead node)."""
    sim = await _grouped(22, nodes=nodes, r=r)
    try:
        n1, n2 = sim.hosts[1].node, sim.hosts[2].node
        assert n1 is not None and n2 is not None
        await n1.execute("k", Set(b"a"), forward=False)
        await n1.execute("k", Delete(), forward=False)
        assert await n1.collector.collect("k")
        moved = [f"m{i}" for i in range(20) if nodes in group(f"m{i}", range(1, nodes + 1), r)]
        for key in moved:  # their groups lose the dead node: without joint quorums their
            await n1.execute(key, Set(key.encode()), forward=False)  # catch-up needs it
        await sim.crash(nodes)
        await asyncio.wait_for(n1.reconfigurer.drive(frozenset(range(1, nodes))), 120.0)
        reads = [(await n2.read(key)).value.data for key in moved]
        assert reads and len(reads) == len(moved)
        return n1.epoch_config.epoch, sim.storages[2].floor("k") != NO_FLOOR, reads
    finally:
        await sim.crash(*[i for i in sim.ids if sim.hosts[i].up])


@pytest.mark.parametrize(("nodes", "r"), [(6, 5), (5, 3)])
def test_a_dead_acceptor_is_removed(nodes: int, r: int) -> None:
    """Goal: a change removes an acceptor that is down. The floors go to the acceptors a
    change keeps or adds, not to the one it removes; and a key whose group swaps the dead
    acceptor for another is caught up through a joint quorum (a majority of its old group
    and of its new one), which the live acceptors form. Fails if the install waits for the
    removed acceptor (R = 5 and R = 3), or with the grown quorums of before, 3 of 3 of the
    old group (R = 3): the drive times out."""
    epoch, floored, reads = run_virtual(_remove_a_dead_acceptor(nodes, r))
    assert epoch == 2 and floored
    assert reads == [f"m{i}".encode() for i in range(20)
                     if nodes in group(f"m{i}", range(1, nodes + 1), r)]


async def _pins_with_an_acceptor_down() -> tuple[set[str], set[str], set[str]]:
    """Five acceptors with R = 3; 200 keys written and deleted, then node 5 is stopped and
    every other node sweeps once. Returns (the keys pinned, those whose group holds node 5,
    all keys)."""
    sim = await _grouped(23)
    try:
        n1 = sim.hosts[1].node
        assert n1 is not None
        keys = [f"t{i:03d}" for i in range(200)]
        for key in keys:
            await n1.execute(key, Set(b"x"), forward=False)
            await n1.execute(key, Delete(), forward=False)
        await sim.crash(5)
        await asyncio.sleep(10.0)  # (virtual) long enough for every node to see it down
        pinned: set[str] = set()
        for i in (1, 2, 3, 4):
            node = sim.hosts[i].node
            assert node is not None and not node.membership.usable(5)
            await node.collector.sweep()
            pinned |= {k for k, n in node.collector._pending.items() if n.pinned_at is not None}
        held = {k for k in keys if 5 in group(k, SET, R)}
        return pinned, held, set(keys)
    finally:
        await sim.crash(*[i for i in sim.ids if sim.hosts[i].up])


def test_an_acceptor_down_holds_back_only_the_tombstones_of_its_groups() -> None:
    """Goal: with groups and one acceptor down, one sweep on each live node pins every
    tombstone whose group is whole, and none of the down acceptor's groups. Before, a
    sweep stopped at its first batch of pins with an unanswered one, and most batches hold
    a key of the down acceptor's groups: the other groups' tombstones waited too."""
    pinned, held, keys = run_virtual(_pins_with_an_acceptor_down())
    assert held and keys - held
    assert pinned == keys - held
