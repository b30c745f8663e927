"""Tombstone collection on real processes (docs/gc.md): three ``paxoskv serve`` nodes on
loopback with a one-second grace, and five with ``--replication-factor 3`` (each key
collected on its group; docs/groups.md). Every wait is bounded; processes are stopped by
PID."""

from __future__ import annotations

import json
import sqlite3
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from procs import Cluster

from paxoskv.client import HttpClient as Client
from paxoskv.core.idempotency import record_key
from paxoskv.core.reconfig import group

pytestmark = pytest.mark.integration

KEYS = [f"gc/key{i}" for i in range(12)]


R = 3


@pytest.fixture(params=[None, R], ids=["every-acceptor", "replication-factor-3"])
def gc_cluster(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Cluster]:
    """Three nodes, every key on each; or five with R = 3 (``_holders``)."""
    if request.param is None:
        c = Cluster(3, tmp_path, extra=["--tombstone-grace", "1"])
    else:
        c = Cluster(5, tmp_path, extra=["--tombstone-grace", "1",
                                        "--replication-factor", str(request.param)])
    c.start()
    try:
        yield c
    finally:
        c.stop()


def _holders(cluster: Cluster, key: str) -> frozenset[int]:
    """The nodes that store ``key``: all three, or its group of three of the five."""
    return group(key, frozenset(cluster.nodes), None if len(cluster.nodes) == 3 else R)


def _rows(cluster: Cluster, node_id: int, keys: list[str]) -> set[str]:
    """The keys of ``keys`` that node ``node_id``'s storage still has a row of (read from
    its SQLite file beside the running process: WAL lets another reader in)."""
    path = cluster.nodes[node_id].data_dir / "paxoskv.sqlite3"
    conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=5.0)
    try:
        marks = ",".join("?" * len(keys))
        found = conn.execute(f"SELECT key FROM registers WHERE key IN ({marks})", keys)
        return {k for (k,) in found.fetchall()}
    finally:
        conn.close()


def test_deleted_keys_are_collected_everywhere_and_come_back_above_their_versions(
        gc_cluster: Cluster) -> None:
    """Goal: after the grace, a deleted key's row is gone from every node storing it, the
    rows of live keys stay, and a key written again takes a version above every version it
    had, with If-Match refusing the versions of before.

    Method: write 12 keys twice (version 2) and one live key; delete the 12 (tombstones at
    version 3) through node 1; poll every node's SQLite file until none holds their rows
    (at most 40 s); check the live key's row is there, the collection metric and status;
    then re-PUT one key (version > 3), refuse If-Match on its old versions, accept If-Match
    on the new one, and check a collected key reads 404 and refuses If-Match 3."""
    c1 = Client(gc_cluster.nodes[1].url)
    for key in KEYS:
        assert c1.put(key, b"first").status in (200, 201)
        assert c1.put(key, b"second").version == 2
    assert c1.put("gc/live", b"stays").status in (200, 201)
    deleted_at = time.monotonic()
    for key in KEYS:
        r = c1.delete(key)
        assert r.status in (200, 204), r
    rows_now = {i: _rows(gc_cluster, i, KEYS) for i in gc_cluster.nodes}
    if time.monotonic() - deleted_at < 0.9:  # not before the grace (unless this box is slow)
        assert rows_now == {i: {k for k in KEYS if i in _holders(gc_cluster, k)}
                            for i in gc_cluster.nodes}, rows_now

    deadline = time.monotonic() + 40.0
    left: dict[int, set[str]] = {}
    for _ in range(400):
        left = {i: _rows(gc_cluster, i, KEYS) for i in gc_cluster.nodes}
        if not any(left.values()) or time.monotonic() > deadline:
            break
        time.sleep(0.1)
    assert not any(left.values()), f"rows left after 40 s: {left}"
    for node_id in gc_cluster.nodes:
        live = {"gc/live"} if node_id in _holders(gc_cluster, "gc/live") else set()
        assert _rows(gc_cluster, node_id, ["gc/live"]) == live

    collected = 0
    for node in gc_cluster.nodes.values():
        code, body = node.get("/metrics")
        assert code == 200
        for line in body.decode().splitlines():
            if line.startswith("paxoskv_tombstones_collected_total "):
                collected += int(float(line.split()[1]))
        assert b"paxoskv_tombstones_pending " in body
        code, body = node.get("/v1/status")
        assert json.loads(body)["tombstone_collection"]["grace_seconds"] == 1.0
    assert collected == 3 * len(KEYS)  # every row on every node holding it, once

    key = KEYS[0]
    c2 = Client(gc_cluster.nodes[2].url)
    assert c2.get(key).status == 404
    again = c2.put(key, b"third")
    assert again.status in (200, 201), again
    assert again.version is not None and again.version > 3, again
    for old in (1, 2, 3):
        assert c1.put(key, b"stale", if_match=old).status == 412
    assert c1.put(key, b"fourth", if_match=again.version).version == again.version + 1
    assert c1.get(key).body == b"fourth"
    other = KEYS[1]
    assert c1.get(other).status == 404
    assert c1.put(other, b"x", if_match=3).status == 412
    created = c1.put(other, b"created", if_none_match=True)
    assert created.status in (200, 201) and created.version is not None \
        and created.version > 3, created


def test_idempotency_records_go_away_after_their_window(tmp_path: Path) -> None:
    """Goal: an Idempotency-Key's record is kept for the window (a retry inside it replays
    the first outcome), then expires like a TTL key: the sweeper deletes it and collection
    removes its row from every node, while the data key stays; the same key then runs
    afresh.

    Method: three nodes with a 3 s window and a 1 s grace; PUT with Idempotency-Key, retry
    at once (replayed, version 1); poll every node's SQLite file until none holds the
    record's row (at most 40 s); the data row is still there; the same request again is
    applied anew (version 2, not replayed)."""
    record = record_key("gc-idem")
    cluster = Cluster(3, tmp_path, extra=["--tombstone-grace", "1",
                                          "--idempotency-window", "3"])
    cluster.start()
    try:
        c1 = Client(cluster.nodes[1].url)
        first = c1.put("gc/idem-data", b"once", idempotency_key="gc-idem")
        assert (first.status, first.version, first.replayed) == (200, 1, False), first
        again = c1.put("gc/idem-data", b"once", idempotency_key="gc-idem")
        assert (again.version, again.replayed) == (1, True), again
        assert any(_rows(cluster, i, [record]) for i in cluster.nodes)

        deadline = time.monotonic() + 40.0
        left: dict[int, set[str]] = {}
        while time.monotonic() < deadline:
            left = {i: _rows(cluster, i, [record]) for i in cluster.nodes}
            if not any(left.values()):
                break
            time.sleep(0.2)
        assert not any(left.values()), f"record rows left after 40 s: {left}"
        for node_id in cluster.nodes:
            assert _rows(cluster, node_id, ["gc/idem-data"]) == {"gc/idem-data"}

        fresh = c1.put("gc/idem-data", b"once", idempotency_key="gc-idem")
        assert (fresh.status, fresh.version, fresh.replayed) == (200, 2, False), fresh
    finally:
        cluster.stop()
