"""What a node keeps per key and per request once writes stop (paxoskv/node.py).

Before: the prepared keys of the phase-1 skip (up to 32 MiB of them, values included) and
the ids of forwarded writes (up to 200,000) were only trimmed when the next entry came
in, so a node that wrote 100,000 keys, deleted them and had them collected kept their
entries, and the tables that held them, for as long as it ran.
"""

from __future__ import annotations

import asyncio

from paxoskv.config import NodeConfig, PeerSpec
from paxoskv.core.ballot import Ballot
from paxoskv.core.proposer import Prepared
from paxoskv.core.register import Value
from paxoskv.node import Node, _PreparedKeys, _SeenIds
from paxoskv.packedmap import SEGMENT_BYTES
from paxoskv.storage.base import NodeIdentity
from tests.test_node import PEERS, _node, _Storage, _Transport


def _fill(prepared: _PreparedKeys, n: int, at: float) -> None:
    for i in range(n):
        prepared.put(f"k{i:06d}", Prepared(Ballot(2, 1, 1), Value(1, b"v" * 100)), at)


def test_prepared_keys_past_their_lifetime_are_dropped_and_the_table_shrinks() -> None:
    prepared = _PreparedKeys(bytes_max=1 << 30, lifetime_s=2.0)
    _fill(prepared, 5000, at=0.0)
    prepared.put("fresh", Prepared(Ballot(3, 1, 1), Value(1, b"f")), 1.5)
    table = prepared._entries.table_bytes
    assert prepared._entries.mapped_bytes > 500_000
    prepared.expire(1.9)
    assert len(prepared) == 5001  # none has outlived its lifetime yet
    prepared.expire(2.5)
    assert len(prepared) == 1
    assert prepared.pop("fresh", 2.5) is not None
    assert len(prepared) == 0
    assert prepared._entries.table_bytes < table // 20
    assert prepared._entries.mapped_bytes <= SEGMENT_BYTES  # at most the emptied newest


def test_forwarded_ids_past_their_window_are_forgotten_without_a_new_one() -> None:
    seen = _SeenIds(window_s=60.0, count_max=200_000)
    for i in range(5000):
        assert seen.admit(f"r{i}", float(i) / 1000)
    table = seen._seen.table_bytes
    seen.expire(61.0)
    assert len(seen) == 4000  # those seen after second 1 are still in the window
    seen.expire(70.0)
    assert len(seen) == 0
    assert seen._seen.table_bytes < table // 20
    assert seen._seen.mapped_bytes <= SEGMENT_BYTES
    assert seen.admit("r1", 70.0)  # forgotten: admitted again


def test_the_heartbeat_loop_expires_them() -> None:
    """Goal: nothing has to come in for the entries to go: the heartbeat loop expires
    them on its own (every heartbeat interval)."""
    async def main() -> tuple[int, int]:
        node, _, _ = _node()
        loop = asyncio.get_running_loop()
        old = loop.time() - 10 * node.config.message_lifetime_s - 120
        _fill(node._prepared, 2000, at=old)
        for i in range(2000):
            node._forwards_seen.admit(f"r{i}", old)
        task = asyncio.create_task(node.heartbeat_loop())
        for _ in range(100):
            if not len(node._prepared) and not len(node._forwards_seen):
                break
            await asyncio.sleep(0.02)
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        return len(node._prepared), len(node._forwards_seen)

    assert asyncio.run(main()) == (0, 0)


def test_cached_ballots_live_only_as_long_as_every_peer_s_fence_covers() -> None:
    """Goal: a cached next ballot may be used for ``--phase1-skip-lifetime`` (60 s) only
    while every other acceptor answered its last heartbeat with a rejoin fence that
    outlasts it by a message lifetime (7 s). One not heard yet or unanswered, one on a
    release that announces no fence (a rolling upgrade: it fences for twice its message
    lifetime), or one whose flag is shorter, cuts it down to what that fence covers."""
    node, _, _ = _node()
    peers = node.peer_health
    assert set(peers) == {2, 3}
    assert node.skip_lifetime_s() == 7.0  # nothing heard: twice our message lifetime
    assert node._prepared.lifetime_s == 7.0  # and so before the first heartbeat
    for h in peers.values():
        h.lifetime_s, h.fence_s = 7.0, 67.0
    assert node.skip_lifetime_s() == 7.0  # announced, but no heartbeat answered since
    for h in peers.values():
        h.up = True
    assert node.skip_lifetime_s() == 60.0
    peers[3].misses = 1  # its last heartbeat went unanswered: it may be rejoining by now
    assert node.skip_lifetime_s() == 7.0
    peers[3].misses = 0
    peers[3].fence_s = None  # an older release: 2 x 7 s
    assert node.skip_lifetime_s() == 7.0
    peers[3].fence_s, peers[3].lifetime_s = None, 3.0  # older, with shorter timeouts
    assert node.skip_lifetime_s() == 0.0  # (2 x 3 s covers no ballot of 7 s messages)
    peers[3].fence_s = 17.0  # a member with --phase1-skip-lifetime 10
    assert node.skip_lifetime_s() == 10.0

    async def heartbeat_sets_it() -> float:
        node.expire_memory()
        return node._prepared.lifetime_s

    assert asyncio.run(heartbeat_sets_it()) == 10.0


def test_peers_announce_their_fences_in_hellos() -> None:
    """Goal: the fence a peer's hello announces reaches ``skip_lifetime_s``; a hello
    without one (an older release) is taken for twice its message lifetime, also after a
    hello that had one."""
    async def run() -> list[float]:
        seen = []
        for extra in ({"lifetime_s": 7.0, "fence_s": 67.0}, {"lifetime_s": 7.0}):
            node, _, transport = _node(**extra)
            await node.start()
            await node.heartbeat_once()
            seen.append(node.skip_lifetime_s())
            transport.extra = {"lifetime_s": 7.0}  # the same peers, downgraded
            await node.heartbeat_once()
            seen.append(node.skip_lifetime_s())
            await node.stop()
        return seen

    assert asyncio.run(run()) == [60.0, 7.0, 7.0, 7.0]


def test_spare_ordinals_that_are_no_acceptor_do_not_cut_the_lifetime() -> None:
    """Goal: a peer the config held does not name (a spare StatefulSet ordinal with no
    pod, ``initial: false``) never answers a heartbeat, and never takes an accept of
    this epoch either: it leaves the lifetime alone."""
    peers = {**PEERS, 4: PeerSpec(4, "http://127.0.0.1:7004", initial=False)}
    config = NodeConfig(1, peers, cluster_id="c")
    transport = _Transport(config.fingerprint())
    node = Node(config, NodeIdentity("c", 1, "d1", 2, False), _Storage(None), transport)
    assert set(node.peer_health) == {2, 3, 4}
    for pid in (2, 3):
        h = node.peer_health[pid]
        h.up, h.lifetime_s, h.fence_s = True, 7.0, 67.0
    assert node.skip_lifetime_s() == 60.0
