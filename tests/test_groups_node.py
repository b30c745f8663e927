"""Acceptor groups on the node (docs/groups.md): R is pinned in the data directory, part of
the membership fingerprint, refused with the features that are not group-aware yet, and a
node's view gives each key its group's quorums (and costs nothing without groups)."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from paxoskv.config import NodeConfig, PeerSpec
from paxoskv.core.messages import config_from_wire
from paxoskv.core.quorum import QuorumConfig
from paxoskv.core.reconfig import Config, group
from paxoskv.node import ConfigView, pin_replication
from paxoskv.storage.sqlite import SqliteStorage


def _peers(n: int) -> dict[int, PeerSpec]:
    return {i: PeerSpec(i, f"http://127.0.0.1:{7000 + i}") for i in range(1, n + 1)}


def test_replication_factor_is_in_the_fingerprint_and_refused_where_not_group_aware() -> None:
    plain = NodeConfig(node_id=1, peers=_peers(5))
    grouped = NodeConfig(node_id=1, peers=_peers(5), replication_factor=3)
    assert plain.fingerprint() != grouped.fingerprint()
    assert NodeConfig(node_id=1, peers=_peers(5), replication_factor=3).fingerprint() == \
        grouped.fingerprint()
    for bad in ({"replication_factor": 2}, {"replication_factor": 3, "fast_paxos": True},
                {"replication_factor": 3, "rejoin": True}):
        with pytest.raises(ValueError, match="replication-factor"):
            NodeConfig(node_id=1, peers=_peers(5), **bad)  # type: ignore[arg-type]


def test_r_is_pinned_at_the_first_start(tmp_path: Path) -> None:
    asyncio.run(_pinned(tmp_path))


async def _pinned(tmp_path: Path) -> None:
    storage = SqliteStorage(tmp_path / "a")
    try:
        await pin_replication(storage, 3, fresh=True)
        await pin_replication(storage, 3, fresh=False)
        with pytest.raises(SystemExit, match="replication-factor 3"):
            await pin_replication(storage, None, fresh=False)
        with pytest.raises(SystemExit, match="replication-factor 3"):
            await pin_replication(storage, 5, fresh=False)
    finally:
        await storage.close()
    old = SqliteStorage(tmp_path / "b")
    try:
        # A directory from before groups holds every key on every acceptor.
        with pytest.raises(SystemExit, match="without --replication-factor"):
            await pin_replication(old, 3, fresh=False)
        await pin_replication(old, None, fresh=False)
        with pytest.raises(SystemExit):
            await pin_replication(old, 3, fresh=False)
    finally:
        await old.close()


def test_view_for_key() -> None:
    plain = Config.stable(0, range(1, 6))
    q = QuorumConfig.of(range(1, 6))
    view = ConfigView(plain, q, q)
    assert view.for_key("k") is view  # no groups: the same object, no cost
    not_grouped = Config.stable(0, range(1, 4), 3)
    q3 = QuorumConfig.of(range(1, 4))
    assert ConfigView(not_grouped, q3, q3).for_key("k").prepare is q3
    grouped = Config.stable(0, range(1, 6), 3)
    gview = ConfigView(grouped, q, q)
    kv = gview.for_key("k")
    assert kv.prepare is kv.accept
    assert kv.prepare.acceptors == group("k", range(1, 6), 3)
    assert kv.prepare.quorum == 2
    assert gview.every_group_reachable(frozenset({1, 2, 3, 4}))
    assert not gview.every_group_reachable(frozenset({1, 2, 3}))
    assert gview.every_group_met(frozenset({1, 2, 3, 4}))


def test_config_with_r_on_the_wire() -> None:
    cfg = Config.stable(4, range(1, 6), 3)
    assert config_from_wire(cfg.to_json()) == cfg
    plain = Config.stable(4, range(1, 4))
    assert config_from_wire(plain.to_json()) == plain
