"""Who sweeps a key (TTL sweeper, tombstone collector) when a proposer-only node is up.

Method: node 1 (every role) of a config whose node 2 is a proposer-only node, reported
up; node 1's rounds need only itself (the only acceptor). Keys whose rendezvous hash
picks node 2 are the ones at stake: node 2 holds no acceptor rows, so it can sweep none.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

from paxoskv.core.register import Delete, Set
from paxoskv.node import Node, NodeConfig, PeerSpec
from paxoskv.storage.base import NodeIdentity
from paxoskv.storage.sqlite import SqliteStorage
from tests.api.test_app import NoPeers

T0 = 1_700_000_000_000


def test_keys_preferred_by_a_proposer_only_node_are_still_swept_and_collected(
        tmp_path: Path) -> None:
    """Goal: an expired key, and a tombstone past its grace, are reclaimed whatever node
    the key's writes are forwarded to. Before, both sweeps ran only on the key's
    preferred proposer; with a proposer-only node up, its share of the keyspace (it has no
    rows to sweep) was never expired by the sweeper nor collected."""
    async def main() -> None:
        now = [T0]
        config = NodeConfig(1, {1: PeerSpec(1, "http://127.0.0.1:1"),
                                2: PeerSpec(2, "http://127.0.0.1:2",
                                            frozenset({"proposer"}))},
                            tombstone_grace_s=0.001)
        node = Node(config, NodeIdentity("c", 1, "d", 1, False), SqliteStorage(tmp_path), NoPeers(),
                    clock_ms=lambda: now[0])
        await node.start()
        node.peer_health[2].up = True
        keys = [k for k in (f"k{i}" for i in range(50)) if node.preferred_proposer(k) == 2]
        assert keys, "some keys hash to node 2"
        ttl_key, dead_key = keys[0], keys[1]
        await node.execute(ttl_key, Set(b"x", 1000), forward=False)
        await node.execute(dead_key, Set(b"y"), forward=False)
        await node.execute(dead_key, Delete(), forward=False)
        now[0] = T0 + 5000
        assert await node.sweeper.sweep_once() == 1
        assert not node.storage.load(ttl_key).value.exists
        await node.collector.sweep()
        await asyncio.sleep(0.01)
        await node.collector.sweep()
        assert node.storage.keys("", None, 100) == []
    asyncio.run(main())
