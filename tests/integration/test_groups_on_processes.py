"""Acceptor groups on real processes (docs/groups.md): five nodes with
``--replication-factor 3`` under a client workload, kill -9 of one node; linearizable,
every acknowledged write read back, and a key's row exists only on its group's acceptors.

Every wait is bounded; every process is stopped by PID in a ``finally``.
"""

from __future__ import annotations

import json
import sqlite3
import time
from pathlib import Path
from typing import Any

import pytest
from background_load import BackgroundLoad
from procs import Cluster, ServerProcess, post_change, post_json, waiting_members

from paxoskv.chaos.workload import Workload, WorkloadOptions
from paxoskv.check import History
from paxoskv.core.reconfig import group

pytestmark = pytest.mark.integration

NODES = (1, 2, 3, 4, 5)
R = 3


def _rows(nodes: dict[int, ServerProcess]) -> dict[int, set[str]]:
    """The keys each stopped node holds a row of, read from its database."""
    rows: dict[int, set[str]] = {}
    for nid, node in nodes.items():
        db = sqlite3.connect(f"file:{node.data_dir / 'paxoskv.sqlite3'}?mode=ro", uri=True)
        try:
            rows[nid] = {k for (k,) in db.execute("SELECT key FROM registers")}
        finally:
            db.close()
    return rows


def _five_grouped_under_load(tmp_path: Path, through: tuple[int, ...], seed: int,
                             keys: int, slices: int
                             ) -> tuple[Cluster, Workload, BackgroundLoad]:
    """Five processes with R = 3 (not started) and the chaos workload's clients over
    ``keys`` keys through the nodes ``through`` (not started either)."""
    c = Cluster(len(NODES), tmp_path, extra=["--replication-factor", str(R),
                                             "--repair-interval", "3600"])
    workload = Workload({i: c.nodes[i].url for i in through}, History(), seed=seed,
                        options=WorkloadOptions(clients=4, keys=keys, hot_keys=5,
                                                think_s_max=0.05))
    return c, workload, BackgroundLoad(workload, through, slices=slices, slice_s=1.0)


def test_five_nodes_replication_factor_three_with_kill9(tmp_path: Path) -> None:
    """Goal: with R = 3 of 5, writes and linearizable reads through any node stay correct
    through kill -9 of a node, and each key is stored on its group only.

    Method: five processes with --replication-factor 3; the chaos workload (sets, CASes,
    creates, deletes, reads over 20 keys, through any node) for ~12 s, during which node 4
    is killed -9 and restarted; then every key is read from every node. The history must be
    linearizable and each acknowledged last write read back. Status shows R and the groups.
    Then, from each stopped node's database: every key's rows are on acceptors of its
    group only, and on at least two of them."""
    c, workload, load = _five_grouped_under_load(tmp_path, NODES, seed=11, keys=20, slices=40)
    started = time.monotonic()
    try:
        c.start()
        load.start()
        time.sleep(4.0)
        c.nodes[4].kill9()
        time.sleep(3.0)
        c.nodes[4].start()
        c.nodes[4].wait_ready(30)
        time.sleep(4.0)
        load.finish()
        code, body = c.nodes[1].get("/v1/status")
        assert code == 200, body
        status = json.loads(body)
        assert status["groups"]["replication_factor"] == R
        assert status["groups"]["grouped"] is True
        assert status["groups"]["copies_per_key"] == R
        assert status["groups"]["acceptors_down_tolerated"] == 1
    finally:
        load.stop()
        c.stop()
    # Rows, read from each stopped node's database: a key is stored on its group only,
    # and on at least a quorum of it.
    rows = _rows(c.nodes)
    members = frozenset(NODES)
    rows_checked = 0
    for key in workload.all_keys():
        holders = {nid for nid in NODES if key in rows[nid]}
        g = group(key, members, R)
        assert holders <= g, (key, sorted(holders), sorted(g))
        if holders:
            assert len(holders) >= 2, (key, sorted(holders), sorted(g))
            rows_checked += 1
    assert rows_checked >= 10
    ops, ok_writes, checked = load.checked()
    print(f"groups: {ops} ops, {ok_writes} acknowledged writes, {checked} keys read "
          f"back, {load.finals['reads']} final reads, {time.monotonic() - started:.1f}s")
    assert ok_writes >= 50, workload.counts
    assert checked >= 10
    assert load.finals["unreadable"] == 0


def _wait_stable(nodes: dict[int, ServerProcess], target: set[int], timeout_s: float
                 ) -> None:
    """Until node 1's record is STABLE on ``target`` and installed there; re-POST the
    change whenever no live node runs it (its driver may have been killed)."""
    deadline = time.monotonic() + timeout_s
    last: Any = None
    while time.monotonic() < deadline:
        code, body = nodes[1].get("/admin/acceptors", timeout=6)
        if code == 200:
            last = json.loads(body)
            record = last["record"]
            if record["phase"] == "stable" and set(record["config"][1]) == target \
                    and last["held"][0] == record["config"][0]:
                return
        running = False
        for n in nodes.values():
            if n.alive():
                scode, sbody = n.get("/v1/status", timeout=3)
                if scode == 200 and json.loads(sbody)["reconfiguration"]["running"]:
                    running = True
        if not running and nodes[1].alive():
            post_json(nodes[1], "/admin/acceptors", {"acceptors": sorted(target)})
        time.sleep(0.3)
    pytest.fail(f"acceptor set never became {sorted(target)}: {last}")


def _change_killing(nodes: dict[int, ServerProcess], target: list[int], victim: int) -> None:
    """POST the change to ``target`` to node 1 (once the previous change lets it), kill -9
    ``victim`` shortly after and restart it, and wait until the change is STABLE."""
    code, body = post_change(nodes[1], target, 50)
    assert code == 202, body
    time.sleep(0.5)
    nodes[victim].kill9()
    time.sleep(2.0)
    nodes[victim].start()
    nodes[victim].wait_ready(30)
    _wait_stable(nodes, set(target), 90.0)


def test_grow_five_to_six_and_back_with_replication_factor_three_under_load(
        tmp_path: Path) -> None:
    """Goal: adding a sixth acceptor with R = 3 moves keys between groups through the
    change procedure (joint mid quorums, group fence, catch-up), and removing it again
    moves them back (the acceptors a key returns to drop the rows they kept of it), while
    clients write and read, through kill -9 of an acceptor during each change.

    Method: six processes, --replication-factor 3, node 6 "initial: false"; the chaos
    workload over 30 keys throughout; POST {1..6} to node 1, kill -9 node 2 shortly after
    and restart it; wait until the record is STABLE on {1..6}; check from node 6's status;
    then POST {1..5}, kill -9 node 3, wait until STABLE on {1..5}; then final reads of every
    key from every node. Linearizable, every acknowledged write read back; some acceptor
    logged rows dropped on joining a group; and from the databases: every key's rows on
    nodes 1-5 lie in its group of {1..5} or of {1..6}, with at least two in the first, and
    node 6 holds rows of keys that had moved to it."""
    ids = (1, 2, 3, 4, 5, 6)
    nodes = waiting_members(tmp_path, ids, (1, 2, 3, 4, 5),
                            ["--replication-factor", str(R), "--repair-interval", "3600"])
    history = History()
    workload = Workload({i: n.url for i, n in nodes.items()}, history, seed=5,
                        options=WorkloadOptions(clients=4, keys=30, hot_keys=5,
                                                think_s_max=0.05))
    load = BackgroundLoad(workload, ids, slices=120, slice_s=1.0)
    started = time.monotonic()
    try:
        for n in nodes.values():
            n.start()
        for i in (1, 2, 3, 4, 5):
            nodes[i].wait_ready(30)
        load.start()
        time.sleep(3.0)
        _change_killing(nodes, list(ids), victim=2)
        code, body = nodes[6].get("/v1/status")
        assert code == 200, body
        status = json.loads(body)
        assert status["acceptor_config"]["prepare"] == list(ids), status["acceptor_config"]
        assert status["groups"]["acceptors"] == 6 and status["groups"]["grouped"]
        time.sleep(2.0)
        five = [1, 2, 3, 4, 5]
        _change_killing(nodes, five, victim=3)
        time.sleep(3.0)
        load.finish()
        code, body = nodes[1].get("/v1/status")
        assert code == 200, body
        status = json.loads(body)
        assert status["acceptor_config"]["prepare"] == five, status["acceptor_config"]
        assert status["groups"]["acceptors"] == 5
    finally:
        load.stop()
        for n in nodes.values():
            if n.alive():
                n.terminate()
    rows = _rows(nodes)
    moved = 0
    for key in workload.all_keys():
        holders = {nid for nid in ids if key in rows[nid]} - {6}
        g5, g6 = group(key, range(1, 6), R), group(key, ids, R)
        assert holders <= g5 | g6, (key, sorted(holders), sorted(g5), sorted(g6))
        if holders:
            assert len(holders & g5) >= 2, (key, sorted(holders), sorted(g5))
        if 6 in g6 and key in rows[6]:
            moved += 1
    logs = "".join(n.log_path.read_text() for n in nodes.values())
    assert "rows of keys whose group this acceptor joins" in logs
    ops, ok_writes, checked = load.checked()
    print(f"groups grow 5->6->5: {ops} ops, {ok_writes} acknowledged writes, {checked} "
          f"keys read back, {moved} keys moved to node 6, {load.finals['reads']} final reads, "
          f"{time.monotonic() - started:.1f}s")
    assert ok_writes >= 50, workload.counts
    assert moved >= 3
    assert load.finals["unreadable"] == 0


def test_remove_a_dead_acceptor_with_replication_factor_three_under_load(
        tmp_path: Path) -> None:
    """Goal: with R = 3 of 5, an acceptor that died for good (kill -9, never restarted) is
    removed by the change procedure while clients write and read: the keys whose group held
    it are caught up through joint quorums of their old and new groups, which the four live
    acceptors form (docs/groups.md, "The rule").

    Method: five processes, --replication-factor 3; the chaos workload over 30 keys through
    nodes 1-4; after 3 s node 5 is killed -9 and stays down; POST {1..4} to node 1 and wait
    until the record is STABLE there; final reads of every key from nodes 1-4. Linearizable,
    every acknowledged write read back; status then shows four acceptors. Before joint
    quorums the change never finished (the mid prepare of a moving key needed all three of
    its old group)."""
    live = (1, 2, 3, 4)
    c, workload, load = _five_grouped_under_load(tmp_path, live, seed=17, keys=30, slices=90)
    started = time.monotonic()
    try:
        c.start()
        load.start()
        time.sleep(3.0)
        c.nodes[5].kill9()
        code, body = post_change(c.nodes[1], list(live), 50)
        assert code == 202, body
        _wait_stable(c.nodes, set(live), 90.0)
        time.sleep(2.0)
        load.finish()
        code, body = c.nodes[2].get("/v1/status")
        assert code == 200, body
        status = json.loads(body)
        assert status["acceptor_config"]["prepare"] == list(live), status["acceptor_config"]
        assert status["groups"]["acceptors"] == 4 and status["groups"]["grouped"]
    finally:
        load.stop()
        c.stop()
    ops, ok_writes, checked = load.checked()
    print(f"dead acceptor removed: {ops} ops, {ok_writes} acknowledged writes, {checked} "
          f"keys read back, {time.monotonic() - started:.1f}s")
    assert ok_writes >= 50, workload.counts
    assert checked >= 10
    assert load.finals["unreadable"] == 0
    moved = [k for k in workload.all_keys() if 5 in group(k, NODES, R)]
    assert moved  # some key's group held the dead acceptor and had to move
