"""Discovery (paxoskv/discovery/peers.py): --peers, hosts files, StatefulSet names."""

from __future__ import annotations

from pathlib import Path

import pytest

from paxoskv.config import PeerSpec
from paxoskv.discovery.peers import (
    DiscoveryError,
    parse_hosts_file,
    parse_peers,
    statefulset_name,
    statefulset_peers,
)


def test_parse_peers() -> None:
    """Goal: ID=URL pairs, this node included; bad entries are named in the error."""
    peers = parse_peers("1=http://127.0.0.1:7001, 2=http://127.0.0.1:7002/")
    assert {p: s.url for p, s in peers.items()} == {1: "http://127.0.0.1:7001",
                                                   2: "http://127.0.0.1:7002"}
    for bad in ("", "1", "x=http://a:1", "1=ftp://a:1", "1=http://a", "1=http://a:1,1=http://b:2",
                "0=http://a:1"):
        with pytest.raises(DiscoveryError):
            parse_peers(bad)


def test_hosts_file_yaml_and_toml_with_roles(tmp_path: Path) -> None:
    """Goal: a hosts file names ids, URLs and roles; roles default to all three."""
    y = tmp_path / "hosts.yaml"
    y.write_text("nodes:\n  - {id: 1, url: 'http://10.0.0.1:7000'}\n"
                 "  - {id: 9, url: 'http://10.0.0.9:7000', roles: [proposer]}\n")
    peers = parse_hosts_file(y)
    assert peers[1].roles == frozenset({"proposer", "acceptor", "learner"})
    assert peers[9].roles == frozenset({"proposer"})
    t = tmp_path / "hosts.toml"
    t.write_text('[[nodes]]\nid = 1\nurl = "http://a:1"\nroles = ["acceptor", "learner"]\n')
    assert parse_hosts_file(t)[1].roles == frozenset({"acceptor", "learner"})
    bad = tmp_path / "bad.yaml"
    bad.write_text("nodes:\n  - {id: 1, url: 'http://a:1', roles: [king]}\n")
    with pytest.raises(DiscoveryError, match="unknown role"):
        parse_hosts_file(bad)
    with pytest.raises(DiscoveryError):
        parse_hosts_file(tmp_path / "missing.yaml")


def test_statefulset_peers() -> None:
    """Goal: node id = ordinal + 1, every member named by the headless Service's DNS."""
    node_id, peers = statefulset_peers("kv-paxoskv-2", 3, "kv-paxoskv-headless", "prod",
                                       "cluster.local", 7000)
    assert node_id == 3
    assert peers[1].url == "http://kv-paxoskv-0.kv-paxoskv-headless.prod.svc.cluster.local:7000"
    assert sorted(peers) == [1, 2, 3]
    with pytest.raises(DiscoveryError, match="outside"):
        statefulset_peers("kv-3", 3, "s", "n", "d", 1)
    with pytest.raises(DiscoveryError):
        statefulset_peers("no_ordinal", 3, "s", "n", "d", 1)


def test_statefulset_peers_name_the_ordinals_up_to_max_replicas_as_later_acceptors() -> None:
    """Goal: with --max-replicas the peer list names ordinals 0..max-1; those from
    --replicas on are acceptors marked initial: false (epoch 0 is ordinals 0..replicas-1),
    a pod of such an ordinal starts, and one beyond max is refused."""
    node_id, peers = statefulset_peers("kv-4", 3, "h", "ns", "cluster.local", 7001,
                                       max_replicas=7)
    assert node_id == 5
    assert sorted(peers) == [1, 2, 3, 4, 5, 6, 7]
    assert [p.initial for _, p in sorted(peers.items())] == [True] * 3 + [False] * 4
    assert peers[7].url == "http://kv-6.h.ns.svc.cluster.local:7001"
    with pytest.raises(DiscoveryError, match="outside the 7"):
        statefulset_peers("kv-7", 3, "h", "ns", "cluster.local", 7001, max_replicas=7)
    with pytest.raises(DiscoveryError, match="below"):
        statefulset_peers("kv-0", 3, "h", "ns", "cluster.local", 7001, max_replicas=2)
    assert statefulset_name("kv-paxoskv-12") == "kv-paxoskv"


def test_the_fingerprint_leaves_out_acceptors_that_wait() -> None:
    """Goal: a pod whose peer list names more ordinals (a higher --max-replicas, or the
    release of the one-list layout) agrees with the others: only epoch 0's members and the
    roles count, so a rolling restart never splits the cluster in two fingerprints."""
    from paxoskv.config import NodeConfig

    _, three = statefulset_peers("kv-0", 3, "h", "ns", "d", 1)
    _, seven = statefulset_peers("kv-0", 3, "h", "ns", "d", 1, max_replicas=7)
    _, five = statefulset_peers("kv-0", 5, "h", "ns", "d", 1, max_replicas=7)
    fp = NodeConfig(1, three).fingerprint()
    assert NodeConfig(1, seven).fingerprint() == fp
    assert NodeConfig(1, five).fingerprint() != fp  # another epoch-0 set: refused


def test_dns_wait_covers_only_the_acceptors_named() -> None:
    """Goal: names outside ``only`` (pods the StatefulSet does not have) never hold the
    start up: the wait returns at once though they cannot resolve."""
    import asyncio
    import time

    from paxoskv.discovery.peers import wait_for_dns

    peers = {1: PeerSpec(1, "http://127.0.0.1:1"), 2: PeerSpec(2, "http://localhost:1"),
             3: PeerSpec(3, "http://no-such-pod.invalid:1", initial=False)}
    started = time.monotonic()
    asyncio.run(wait_for_dns(peers, 1, 30.0, interval_s=0.1, only={1, 2}))
    assert time.monotonic() - started < 5.0


def test_dns_wait_needs_only_a_majority_of_the_held_config() -> None:
    """Goal: a member restarting during a scale-down (the held config still names pods just
    deleted, whose names no longer resolve) starts once a majority of the held acceptors
    resolves, this node counted, not after the whole --dns-timeout; without a majority it
    still waits."""
    import asyncio
    import time

    from paxoskv.discovery.peers import wait_for_dns

    gone = "http://no-such-pod.invalid:1"
    peers = {1: PeerSpec(1, "http://127.0.0.1:1"), 2: PeerSpec(2, "http://localhost:1"),
             3: PeerSpec(3, gone), 4: PeerSpec(4, gone), 5: PeerSpec(5, gone)}
    started = time.monotonic()
    asyncio.run(wait_for_dns(peers, 1, 20.0, interval_s=0.1, only={1, 2, 3}))
    assert time.monotonic() - started < 5.0
    started = time.monotonic()
    asyncio.run(wait_for_dns(peers, 1, 1.0, interval_s=0.1, only={1, 2, 3, 4, 5}))
    assert time.monotonic() - started >= 0.9  # 2 of 5: no majority, the timeout runs out
