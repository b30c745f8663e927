"""Phase-1 skip, forwarding and shared rounds, seen from outside: real processes, metrics."""

from __future__ import annotations

import json
import re
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from procs import Cluster

from paxoskv.client import HttpClient as Client

pytestmark = pytest.mark.integration


def _counter(cluster: Cluster, family: str, labels: str) -> float:
    """The sum over every node of one labelled counter's value (0 when absent)."""
    total = 0.0
    pattern = re.compile(rf"^{family}\{{{labels}\}} ([0-9.e+]+)$", re.M)
    for node in cluster.nodes.values():
        with urllib.request.urlopen(node.url + "/metrics", timeout=10) as resp:
            text = resp.read().decode()
        total += sum(float(m) for m in pattern.findall(text))
    return total


def _all_peers_up(cluster: Cluster, timeout_s: float = 15.0) -> None:
    """Wait until every node's failure detector sees every peer up: until then nodes may
    disagree on a key's preferred proposer (correct, but not what this test measures)."""
    deadline = time.monotonic() + timeout_s
    while True:
        views = []
        for node in cluster.nodes.values():
            with urllib.request.urlopen(node.url + "/v1/status", timeout=10) as resp:
                views.append(all(p["up"] for p in json.loads(resp.read())["peers"].values()))
        if all(views):
            return
        assert time.monotonic() < deadline, "peers not all up"
        time.sleep(0.1)


def test_repeated_writes_to_a_key_skip_phase_one_wherever_they_arrive(
        shared_cluster: Cluster) -> None:
    """Goal: the second and later writes to a key take one round trip (no prepare), even
    when they reach different nodes: each is forwarded to the key's preferred proposer,
    which keeps the key's next ballot prepared; every write is still read back.

    Method: 10 writes to one key, through nodes 1, 2, 3 in turn. Across the cluster, at
    most 2 prepares may run (the first write's, and one more after a change of view), at
    least 8 rounds begin with their accept, and at least 5 writes are forwarded (two
    thirds arrive at a node that is not the preferred one). With ``--forward-writes off``
    every node's cached ballot is outbid by the others' writes, so nearly every write
    runs a prepare, and the test fails (tried: 10 prepares).
    """
    _all_peers_up(shared_cluster)
    skipped = 'outcome="skipped",phase="prepare"'
    prepared = 'outcome="ok",phase="prepare"'
    before = _counter(shared_cluster, "paxoskv_paxos_rounds_total", skipped)
    prepares = _counter(shared_cluster, "paxoskv_paxos_rounds_total", prepared)
    forwarded = _counter(shared_cluster, "paxoskv_forwarded_writes_total", 'result="ok"')
    urls = [shared_cluster.nodes[i].url for i in (1, 2, 3)]
    for i in range(10):
        res = Client(urls[i % 3]).put("fast/one-key", f"v{i}".encode())
        assert res.status == 200, res.body
    assert Client(urls[0]).get("fast/one-key").body == b"v9"
    assert _counter(shared_cluster, "paxoskv_paxos_rounds_total", prepared) - prepares <= 2
    assert _counter(shared_cluster, "paxoskv_paxos_rounds_total", skipped) - before >= 8
    assert _counter(shared_cluster, "paxoskv_forwarded_writes_total",
                    'result="ok"') - forwarded >= 5


def test_concurrent_compare_and_sets_on_one_version_have_one_winner(
        shared_cluster: Cluster) -> None:
    """Goal: 16 concurrent compare-and-sets on the same version of one key, through all
    nodes: exactly one wins, every other one is told the version changed (412), none is
    lost or answered twice, and the value read back is the winner's.

    Method: threads send the 16 If-Match PUTs at once; count 200s and 412s.
    """
    urls = [shared_cluster.nodes[i].url for i in (1, 2, 3)]
    first = Client(urls[0]).put("fast/hot", b"start")
    assert first.status == 200
    version = first.json()["version"]

    def cas(i: int) -> tuple[int, bytes]:
        res = Client(urls[i % 3]).put("fast/hot", f"w{i}".encode(), if_match=version)
        return res.status, f"w{i}".encode()

    with ThreadPoolExecutor(16) as pool:
        results = list(pool.map(cas, range(16)))
    winners = [value for status, value in results if status == 200]
    assert sorted(status for status, _ in results) == [200] + [412] * 15, results
    assert Client(urls[1]).get("fast/hot").body == winners[0]


def test_fast_paxos_writes_take_one_round_from_any_node_and_survive_a_stopped_node(
        tmp_path: Path) -> None:
    """Goal: with ``--fast-paxos on`` (forwarding off) writes of distinct keys through all
    three nodes are chosen by fast rounds (no prepare, no forward), and read back; with
    one node stopped, the fast quorum (3 of 3) is unreachable and writes still succeed,
    through classic rounds.

    Method: 12 keys, each written twice through two different nodes; the cluster's fast
    "chosen" counter must grow by at least 18 of those 24 writes (a first write may race a
    heartbeat), and every key reads back its second value through a third node. Then stop
    node 3: 6 writes through nodes 1 and 2 all answer 200 and read back, and prepares run.
    """
    cluster = Cluster(3, tmp_path, extra=["--fast-paxos", "on", "--forward-writes", "off"])
    cluster.start()
    try:
        _all_peers_up(cluster)
        chosen = 'outcome="chosen",phase="fast"'
        prepared = 'outcome="ok",phase="prepare"'
        before = _counter(cluster, "paxoskv_paxos_rounds_total", chosen)
        urls = [cluster.nodes[i].url for i in (1, 2, 3)]
        for k in range(12):
            for j in range(2):
                res = Client(urls[(k + j) % 3]).put(f"fastpaxos/{k}", f"v{k}.{j}".encode())
                assert res.status == 200, res.body
        for k in range(12):
            assert Client(urls[(k + 2) % 3]).get(f"fastpaxos/{k}").body == f"v{k}.1".encode()
        assert _counter(cluster, "paxoskv_paxos_rounds_total", chosen) - before >= 18
        assert _counter(cluster, "paxoskv_forwarded_writes_total", 'result="ok"') == 0

        cluster.nodes[3].terminate()
        del cluster.nodes[3]
        prepares = _counter(cluster, "paxoskv_paxos_rounds_total", prepared)
        for k in range(6):
            res = Client(urls[k % 2]).put(f"fastpaxos/{k}", f"w{k}".encode())
            assert res.status == 200, res.body
            assert Client(urls[(k + 1) % 2]).get(f"fastpaxos/{k}").body == f"w{k}".encode()
        assert _counter(cluster, "paxoskv_paxos_rounds_total", prepared) - prepares >= 6
    finally:
        cluster.stop()
