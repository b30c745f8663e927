"""Node readiness (paxoskv/node.py Node.ready): a quorum must be reachable both ways."""

from __future__ import annotations

import asyncio
from typing import Any

from paxoskv.core.acceptor import EMPTY_STATE, AcceptorState
from paxoskv.node import Node, NodeConfig, PeerSpec
from paxoskv.storage.base import NodeIdentity


class _Storage:
    def __init__(self) -> None:
        self.meta = {"verified": "1"}

    def load(self, key: str) -> AcceptorState:
        return EMPTY_STATE

    async def save(self, key: str, state: AcceptorState) -> None: ...

    def keys(self, prefix: str, limit: int) -> list[str]:
        return []

    def key_count(self) -> int:
        return 0

    def get_meta(self, name: str) -> str | None:
        return self.meta.get(name)

    async def set_meta(self, name: str, value: str) -> None:
        self.meta[name] = value

    async def close(self) -> None: ...


class _Transport:
    """Answers every heartbeat: this node reaches all its peers."""

    async def send(self, peer: int, msg: Any) -> Any:
        raise AssertionError("unused")

    async def hello(self, peer: int, info: dict[str, Any]) -> dict[str, Any]:
        return {"cluster_id": "c", "node_id": peer, "data_id": f"d{peer}", "version": "x"}

    async def list_keys(self, peer: int, prefix: str, limit: int) -> list[Any]:
        return []

    async def close(self) -> None: ...


def test_ready_needs_peers_that_reach_us_too() -> None:
    """Goal: a restarted pod that reaches its peers, while they cannot reach it yet (stale
    DNS), is not ready; once one peer's heartbeat arrives it is (quorum 2 of 3)."""
    async def run() -> None:
        peers = {i: PeerSpec(i, f"http://127.0.0.1:{7000 + i}") for i in (1, 2, 3)}
        node = Node(NodeConfig(1, peers, cluster_id="c"), NodeIdentity("c", 1, "d1", 2, False),
                    _Storage(), _Transport())
        await node.heartbeat_once()
        assert node.quorum_reachable()
        assert not node.ready()
        await node.on_hello({"cluster_id": "c", "node_id": 2, "data_id": "d2"})
        assert node.ready()
    asyncio.run(run())
