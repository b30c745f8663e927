"""Roles from a hosts file: a stateless proposer-only front end beside three acceptors."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from procs import ServerProcess, free_ports

from paxoskv.client import HttpClient as Client

pytestmark = pytest.mark.integration


def test_proposer_only_front_end_serves_without_holding_data(tmp_path: Path) -> None:
    """Goal: a node with roles [proposer] serves the API through the acceptors' quorum,
    holds no keys, and does not count towards the quorum (3 acceptors: quorum 2)."""
    ports = free_ports(4)
    hosts = tmp_path / "hosts.yaml"
    lines = ["nodes:"]
    for i, port in enumerate(ports, 1):
        roles = ", roles: [proposer]" if i == 4 else ""
        lines.append(f"  - {{id: {i}, url: 'http://127.0.0.1:{port}'{roles}}}")
    hosts.write_text("\n".join(lines) + "\n")
    nodes = [ServerProcess(i, port, f"@{hosts}", tmp_path / f"n{i}", tmp_path / f"n{i}.log")
             for i, port in enumerate(ports, 1)]
    try:
        for n in nodes:
            n.start()
        for n in nodes:
            n.wait_ready()
        front = Client(nodes[3].url)
        assert front.put("roles/a", b"via-front").status == 200
        assert front.get("roles/a").body == b"via-front"
        assert Client(nodes[0].url).get("roles/a").body == b"via-front"
        status = json.loads(nodes[3].get("/v1/status")[1])
        assert status["roles"] == ["proposer"]
        assert status["acceptor_mode"] == "none"
        assert status["quorum"]["acceptors"] == [1, 2, 3]
        assert status["keys"] == 0
        # one acceptor down: still a quorum of acceptors; the front end is no acceptor
        nodes[2].kill9()
        assert front.put("roles/b", b"two-acceptors").status == 200
    finally:
        for n in nodes:
            n.kill9()
