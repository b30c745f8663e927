"""Reviewer's scenarios (review of branch reconf): each test states a safety property the
acceptor-set change must keep; a failing test is a finding."""

from __future__ import annotations

import asyncio

from scripted import four_nodes_one_waiting

from paxoskv.core.register import Delete, Read, Set
from paxoskv.sim.loop import run_virtual


async def _readd_removed_acceptor() -> tuple[bytes | None, int, int]:
    """Epoch 0 {1,2,3}, 4 waits. k=x is written on {1,2,3}. Node 1 drives +4 then -3
    (3 keeps its data, it is only retired). k is deleted and its tombstone collected on
    {1,2,4}. Node 1 then drives +3 again. A read of k whose prepare quorum holds 3
    (4 cut off from node 1) must see k deleted. Returns (value read, version read,
    version of the tombstone)."""
    sim = await four_nodes_one_waiting(21, tombstone_grace_s=1e6)
    try:
        n1, n3 = sim.hosts[1].node, sim.hosts[3].node
        assert n1 is not None and n3 is not None
        await n1.execute("k", Set(b"x"), forward=False)
        await asyncio.sleep(1.0)
        assert n3.storage.load("k").value.data == b"x"
        await n1.reconfigurer.drive(frozenset({1, 2, 3, 4}))
        await n1.reconfigurer.drive(frozenset({1, 2, 4}))
        assert n1.epoch_config.epoch == 4
        deleted = await n1.execute("k", Delete(), forward=False)
        assert await n1.collector.collect("k")
        assert n3.storage.load("k").value.data == b"x"  # the retired acceptor's old row
        await n1.reconfigurer.drive(frozenset({1, 2, 3, 4}))
        assert n1.epoch_config.epoch == 6
        sim.network.block([(1, 4), (4, 1)])
        outcome = await n1.execute("k", Read(), forward=False)
        return outcome.value.data, outcome.value.version, deleted.value.version
    finally:
        await sim.crash(*[i for i in sim.ids if sim.hosts[i].up])


def test_readding_a_removed_acceptor_does_not_resurrect_a_collected_key() -> None:
    """Goal: k was deleted (and its tombstone collected) while 3 was out of the set; once 3
    is back, k must still read as deleted, at a version no lower than its tombstone's."""
    data, version, tomb_version = run_virtual(_readd_removed_acceptor())
    assert data is None, f"deleted value {data!r} came back (version {version})"
    assert version >= tomb_version


async def _rejoin_after_a_change(acceptor_only: bool = False
                                  ) -> tuple[bytes | None, int, str]:
    """Epoch 0 {1,2,3}, 4 waits. Node 1 drives +4 then -3: {1,2,4} at epoch 4; node 3 is
    retired but keeps running. With node 2 down, k=new is written on {1,4}. Node 1 loses
    its disk and rejoins (``--rejoin``, as its AMNESIA log line tells the operator). Once
    it is back, with node 4 down, node 2 reads k through {1, 2}: it must read "new".
    Returns (value read, node 1's epoch after its rejoin, node 1's mode)."""
    from scripted import wait_mode
    # acceptor_only: no proposer role, so no start-up read of the record teaches node 1
    sim = await four_nodes_one_waiting(
        22, acceptor_only=frozenset({1}) if acceptor_only else frozenset())
    try:
        n4 = sim.hosts[4].node
        n2 = sim.hosts[2].node
        assert n4 is not None and n2 is not None
        await n2.reconfigurer.drive(frozenset({1, 2, 3, 4}))
        await n2.reconfigurer.drive(frozenset({1, 2, 4}))
        assert n2.epoch_config.epoch == 4
        await sim.crash(2)
        await n4.execute("k", Set(b"new"), forward=False)
        await asyncio.sleep(1.0)
        await sim.crash(1)
        sim.storages[1].wipe()
        await sim.boot(2)
        await asyncio.sleep(30.0)  # node 2's start-up read of the record is over
        await sim.boot(1, rejoin=True)
        mode = await wait_mode(sim, 1, ("normal",), 300.0)
        n1 = sim.hosts[1].node
        assert n1 is not None
        epoch = n1.epoch_config.epoch
        await sim.crash(4)
        n2 = sim.hosts[2].node
        assert n2 is not None
        outcome = await n2.execute("k", Read(), forward=False)
        return outcome.value.data, epoch, mode
    finally:
        await sim.crash(*[i for i in sim.ids if sim.hosts[i].up])


def test_a_rejoin_after_a_change_catches_up_from_the_current_set() -> None:
    """Goal: an acceptor that lost its disk rejoins against the acceptors of the config in
    force, not the --peers set of epoch 0 (which holds a retired acceptor): an
    acknowledged write survives."""
    data, epoch, _mode = run_virtual(_rejoin_after_a_change())
    assert data == b"new", f"acknowledged write lost: read {data!r} (node 1 at epoch {epoch})"


def test_a_rejoin_of_an_acceptor_only_node_after_a_change() -> None:
    """The same with node 1 acceptor-only: nothing makes it adopt epoch 4 before its
    catch-up lists the acceptors of epoch 0 (3 is retired but still lists its keys)."""
    data, epoch, _mode = run_virtual(_rejoin_after_a_change(acceptor_only=True))
    assert data == b"new", f"acknowledged write lost: read {data!r} (node 1 at epoch {epoch})"


async def _old_version_acceptor() -> tuple[bool, bytes | None, int, bool]:
    """A rolling upgrade not finished: node 3 runs the previous release, which ignores the
    frame header's ``cfg`` (it never adopts, never refuses, and answers an install's query
    like any query). Epoch 0 {1,2,3}, 4 waits, 5 is a proposer only (cut off, it stays at
    epoch 0). With node 1 down, node 2 drives +4 then -1: {2,3,4} at epoch 4. k=new is then
    written on {2,4}. Node 1 comes back; node 5, which reaches only 1 and 3, reads k.
    Returns (linearizable, what node 5 read, node 3's epoch, whether the change went on).
    With node 1 down and node 3 unable to prove it holds epoch 1, nothing can fence epoch 0:
    the change must stop there (the driver gives up; the scenario ends)."""
    from paxoskv.check import History, check
    from paxoskv.reconfigure import ChangeFailed
    sim = await four_nodes_one_waiting(23, proposers=1)

    def old_release(node_id: int) -> None:
        node = sim.hosts[node_id].node
        assert node is not None
        handle_soon = node.handle_soon

        def ignore_cfg(msg, deadline, config=None):  # type: ignore[no-untyped-def]
            return handle_soon(msg, deadline)

        async def no_adopt(cfg):  # type: ignore[no-untyped-def]
            return False

        node.handle_soon = ignore_cfg  # type: ignore[method-assign]
        node.adopt_config = no_adopt  # type: ignore[method-assign]
        node.learn_config = lambda cfg: None  # type: ignore[method-assign]

    old_release(3)
    loop = asyncio.get_running_loop()
    history = History(clock=loop.time)
    try:
        await asyncio.sleep(5.0)
        cut = [(5, i) for i in sim.ids if i != 5] + [(i, 5) for i in sim.ids if i != 5]
        sim.network.block(cut)
        n2 = sim.hosts[2].node
        assert n2 is not None
        op = history.invoke(2, "k", "set", b"old")
        out = await n2.execute("k", Set(b"old"), forward=False)
        history.complete(op, "ok", out_version=out.value.version)
        await asyncio.sleep(1.0)
        await sim.crash(1)
        n3 = sim.hosts[3].node
        assert n3 is not None
        try:
            await n2.reconfigurer.drive(frozenset({1, 2, 3, 4}))
            await n2.reconfigurer.drive(frozenset({2, 3, 4}))
        except ChangeFailed:
            return check(history.ops()).ok, None, n3.epoch_config.epoch, False
        assert n2.epoch_config.epoch == 4
        sim.network.block([(2, 3), (3, 2), (4, 3), (3, 4)])
        op = history.invoke(2, "k", "set", b"new")
        out = await n2.execute("k", Set(b"new"), forward=False)
        history.complete(op, "ok", out_version=out.value.version)
        sim.network.unblock([(2, 3), (3, 2), (4, 3), (3, 4)])
        # Node 1 (removed while down) hears only from 3 and 5: nothing tells it of epoch 4.
        sim.network.block([(1, 2), (2, 1), (1, 4), (4, 1)])
        await sim.boot(1)
        await asyncio.sleep(10.0)
        sim.network.unblock(cut)
        sim.network.block([(5, 2), (2, 5), (5, 4), (4, 5)])
        await asyncio.sleep(5.0)
        n5 = sim.hosts[5].node
        n3 = sim.hosts[3].node
        assert n5 is not None and n3 is not None
        op = history.invoke(5, "k", "read")
        outcome = await n5.read("k")
        history.complete(op, "ok", out_version=outcome.value.version,
                         out_value=outcome.value.data)
        return check(history.ops()).ok, outcome.value.data, n3.epoch_config.epoch, True
    finally:
        await sim.crash(*[i for i in sim.ids if sim.hosts[i].up])


def test_an_install_is_not_acknowledged_by_an_acceptor_that_ignores_epochs() -> None:
    """Goal: the install must count only acceptors that hold the new config; one running a
    release without epochs answers the install's query all the same, so the change must
    not go on on its word (here node 5 reads "old" after "new" was acknowledged)."""
    ok, data, epoch3, went_on = run_virtual(_old_version_acceptor())
    assert not went_on, f"the change went on (node 5 then read {data!r}; node 3, old " \
                        f"release, at epoch {epoch3})"
    assert ok and epoch3 == 0
