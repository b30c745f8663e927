"""Discovery (paxoskv/discovery/peers.py): --peers, hosts files, StatefulSet names."""

from __future__ import annotations

from pathlib import Path

import pytest

from paxoskv.discovery.peers import (
    DiscoveryError,
    parse_hosts_file,
    parse_peers,
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
