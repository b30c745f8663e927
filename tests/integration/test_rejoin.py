"""Rejoin on real processes: the fence refuses accepts, and the procedure for two disks
lost at once (README: "Two disks lost at once") brings every acknowledged write back.

Every wait is bounded; every process is stopped by PID in a ``finally``.
"""

from __future__ import annotations

import json
import shutil
import time
import urllib.request
from pathlib import Path
from typing import Any

import orjson
import pytest
from procs import SECRET, Cluster, ServerProcess, free_ports

from paxoskv.client import HttpClient as Client

pytestmark = pytest.mark.integration


def _status(node: ServerProcess) -> dict[str, Any]:
    code, body = node.get("/v1/status")
    assert code == 200, (code, body)
    result: dict[str, Any] = json.loads(body)
    return result


def _wait_mode(node: ServerProcess, modes: set[str], timeout_s: float) -> dict[str, Any]:
    last: dict[str, Any] = {}
    for _ in range(int(timeout_s / 0.2) + 1):
        code, body = node.get("/v1/status")
        if code == 200:
            last = json.loads(body)
            if last["acceptor_mode"] in modes:
                return last
        time.sleep(0.2)
    pytest.fail(f"node {node.node_id} never reached {modes}: {last}; log {node.log_path}")


def _post(node: ServerProcess, path: str, body: bytes) -> tuple[int, Any]:
    req = urllib.request.Request(node.url + path, data=body, method="POST", headers={
        "Authorization": f"Bearer {SECRET}", "Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=5) as resp:
            return resp.status, orjson.loads(resp.read())
    except urllib.error.HTTPError as err:
        return err.code, orjson.loads(err.read())


def test_rejoining_node_refuses_accepts_until_its_fence_ends(tmp_path: Path) -> None:
    """Goal: scenario "a rejoining node takes accepts during its fence": an authenticated
    accept reaching a node that just started with --rejoin is refused, and the same kind of
    accept is answered once the fence is over.

    Method: a hosts file names acceptors 1-3 and a proposer-only node 9 that never runs;
    the test speaks as node 9 (hello, then an accept frame). Node 3 loses its disk and
    starts with --rejoin; within a second of its first answer it gets the accept."""
    ports = free_ports(4)
    hosts = tmp_path / "hosts.yaml"
    lines = [f'  - {{id: {i}, url: "http://127.0.0.1:{ports[i - 1]}"}}' for i in (1, 2, 3)]
    lines.append(f'  - {{id: 9, url: "http://127.0.0.1:{ports[3]}", roles: [proposer]}}')
    hosts.write_text("nodes:\n" + "\n".join(lines) + "\n")
    nodes = {i: ServerProcess(i, ports[i - 1], f"@{hosts}", tmp_path / f"n{i}",
                              tmp_path / f"n{i}.log", ["--repair-interval", "3600"])
             for i in (1, 2, 3)}
    try:
        for n in nodes.values():
            n.start()
        for n in nodes.values():
            n.wait_ready(30)
        assert Client(nodes[1].url).put("fence/k", b"v").status == 200
        fingerprint = _status(nodes[1])["fingerprint"]
        node3 = nodes[3]
        node3.kill9()
        shutil.rmtree(node3.data_dir)
        node3.extra = [*node3.extra, "--rejoin"]
        node3.start()
        for _ in range(100):
            if node3.get("/healthz")[0] == 200:
                break
            time.sleep(0.05)
        started = time.monotonic()
        hello = {"cluster_id": "paxoskv", "node_id": 9, "data_id": "testdata", "incarnation": 1,
                 "boot_id": "testboot", "fingerprint": fingerprint, "acceptor": False,
                 "rejoin": False}
        code, reply = _post(node3, "/internal/hello", orjson.dumps(hello))
        assert (code, reply["verdict"]) == (200, "ok"), reply
        header = {"from": 9, "data": "testdata", "inc": 1, "boot": "testboot",
                  "fp": fingerprint}

        def accept(counter: int) -> dict[str, Any]:
            frame = {"h": header, "m": [{"t": "accept", "k": "fence/x", "b": [counter, 9, 1],
                                         "v": [1, "eA==", []], "ttl": 3000}]}
            code, reply = _post(node3, "/internal/batch", orjson.dumps(frame))
            assert code == 200, reply
            result: dict[str, Any] = reply["r"][0]
            return result

        early = accept(1)
        assert time.monotonic() - started < 1.0, "too slow to test the fence"
        assert early["t"] == "unavailable", early
        assert "fencing" in early["r"], early
        assert _status(node3)["acceptor_mode"] == "fencing"
        _wait_mode(node3, {"catching_up", "normal"}, 60)
        late = accept(10**6)
        assert late["t"] == "accepted", late
        _wait_mode(node3, {"normal"}, 60)
        nodes[1].kill9()
        got = Client(node3.url).get("fence/k")
        assert (got.status, got.body) == (200, b"v")
    finally:
        for n in nodes.values():
            n.kill9()


def test_two_disks_lost_at_once_procedure(tmp_path: Path) -> None:
    """Goal: the documented procedure for two of three disks lost at once works: node 2
    rejoins with --rejoin-after-quorum-loss while node 3 stays down, then node 3 rejoins
    normally; every write that reached the surviving node reads back through the rejoined
    two after the survivor stops.

    Method: 20 keys written through node 1 (whose own acceptor holds each once its accept
    lands); nodes 2 and 3 are killed and wiped; the plain --rejoin alone would wait forever
    (one surviving acceptor can neither vouch for its identity nor list for a quorum), which
    the test shows first."""
    cluster = Cluster(3, tmp_path, extra=["--repair-interval", "3600"])
    cluster.start()
    try:
        c = Client(cluster.nodes[1].url)
        for i in range(20):
            assert c.put(f"two/{i}", f"v{i}".encode()).status == 200
        time.sleep(1.0)  # accepts still in flight reach node 1's own acceptor
        n2, n3 = cluster.nodes[2], cluster.nodes[3]
        for n in (n2, n3):
            n.kill9()
            shutil.rmtree(n.data_dir)
        n2.extra = [*n2.extra, "--rejoin"]
        n2.start()
        stuck = _wait_mode(n2, {"fencing", "catching_up"}, 40)
        time.sleep(14)  # past the fence: still not serving (no second survivor to vouch)
        mode = _status(n2)["acceptor_mode"]
        assert mode in ("fencing", "catching_up"), (mode, stuck)
        n2.kill9()
        n2.extra = [*n2.extra, "--rejoin-after-quorum-loss"]
        n2.start()
        _wait_mode(n2, {"normal"}, 60)
        n3.extra = [*n3.extra, "--rejoin"]
        n3.start()
        _wait_mode(n3, {"normal"}, 60)
        cluster.nodes[1].kill9()
        for reader in (Client(n2.url), Client(n3.url)):
            for i in range(20):
                got = reader.get(f"two/{i}")
                assert (got.status, got.body) == (200, f"v{i}".encode()), (i, got)
    finally:
        cluster.stop()
