"""Membership (paxoskv/membership.py): peer-list acceptors that the held config does not
name, e.g. StatefulSet ordinals not scaled to, cost nothing. In-memory node as in
tests/test_node.py."""

from __future__ import annotations

import asyncio
from typing import Any

from test_node import _Storage, _Transport

from paxoskv.config import NodeConfig, PeerSpec
from paxoskv.metrics import Metrics
from paxoskv.node import Node
from paxoskv.storage.base import NodeIdentity
from paxoskv.transport.base import PeerNotReached

PEERS = {i: PeerSpec(i, f"http://127.0.0.1:{7000 + i}", initial=i <= 3) for i in range(1, 8)}
"""Epoch 0 is {1, 2, 3}; 4..7 wait (no pods)."""


class _NoPods(_Transport):
    """Peers 2 and 3 answer; 4..7 have no pod. Counts hellos per peer."""

    def __init__(self, fingerprint: str) -> None:
        super().__init__(fingerprint)
        self.hellos: dict[int, int] = {}
        self.absent = {4, 5, 6, 7}

    async def hello(self, peer: int, info: dict[str, Any]) -> dict[str, Any]:
        self.hellos[peer] = self.hellos.get(peer, 0) + 1
        if peer in self.absent:
            raise PeerNotReached("Name or service not known")
        return await super().hello(peer, info)


class _Metrics(Metrics):
    def __init__(self) -> None:
        self.up: dict[str, bool] = {}

    def peer(self, peer: str, up: bool, rtt_seconds: float | None) -> None:
        self.up[peer] = up

    def peer_absent(self, peer: str) -> None:
        self.up.pop(peer, None)


def test_acceptors_without_pods_are_quiet_and_change_nothing() -> None:
    """Goal: with 4 of 7 peer-list acceptors missing, the node confirms and
    reaches its quorum as with 3 peers; the missing ones get no down series (no alert) and
    are hello'd a few times, backed off, not at every heartbeat; one that starts answering
    is seen up at the next beat once it says hello itself."""
    async def run() -> None:
        config = NodeConfig(1, PEERS, cluster_id="c", heartbeat_interval_s=0.01)
        transport = _NoPods(config.fingerprint())
        metrics = _Metrics()
        node = Node(config, NodeIdentity("c", 1, "d1", 2, False), _Storage(), transport,
                    metrics)
        await node.start()
        for _ in range(20):
            await node.heartbeat_once()
        assert node.machine.may_propose and node.quorum_reachable()  # confirmed, quorum
        assert node.quorum.acceptors == {1, 2, 3}
        assert transport.hellos[2] == 20
        assert transport.hellos[4] <= 2, transport.hellos  # backed off (1 s, then 2 s ...)
        assert metrics.up == {"2": True, "3": True}
        # Pod 4 starts: its hello to us ends the wait; our next beat sees it up.
        transport.absent.discard(4)
        await node.on_hello({"cluster_id": "c", "node_id": 4, "data_id": "d4",
                             "incarnation": 1, "boot_id": "b4", "fingerprint": node.fingerprint,
                             "acceptor": True, "rejoin": False})
        await node.heartbeat_once()
        assert node.peer_health[4].up
        assert metrics.up["4"] is True
    asyncio.run(run())
