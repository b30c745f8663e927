"""Separate listeners: peer traffic and metrics on ports of their own (real processes)."""

from __future__ import annotations

import os
import ssl
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from procs import ServerProcess, free_ports
from tlsutil import Pki

from paxoskv.client import Client

pytestmark = pytest.mark.integration


def _status(url: str, method: str = "GET") -> int:
    req = urllib.request.Request(url, method=method, data=b"" if method == "POST" else None)
    try:
        with urllib.request.urlopen(req, timeout=5) as resp:
            return int(resp.status)
    except urllib.error.HTTPError as err:
        return err.code


@pytest.fixture
def split_cluster(tmp_path: Path) -> Iterator[dict[int, tuple[ServerProcess, int, int]]]:
    """Three nodes, each with a client, a peer and a metrics port; peers name peer ports."""
    ports = free_ports(9)
    client, peer, metrics = ports[0:3], ports[3:6], ports[6:9]
    peers = ",".join(f"{i + 1}=http://127.0.0.1:{peer[i]}" for i in range(3))
    nodes = {}
    for i in range(3):
        proc = ServerProcess(i + 1, client[i], peers, tmp_path / f"node{i + 1}",
                             tmp_path / f"node{i + 1}.log",
                             ["--peer-listen", f"127.0.0.1:{peer[i]}",
                              "--metrics-listen", f"127.0.0.1:{metrics[i]}"])
        nodes[i + 1] = (proc, peer[i], metrics[i])
    for proc, _, _ in nodes.values():
        proc.start()
    try:
        for proc, _, _ in nodes.values():
            proc.wait_ready()
        yield nodes
    finally:
        for proc, _, _ in nodes.values():
            proc.terminate()


def test_each_port_serves_only_its_part(
        split_cluster: dict[int, tuple[ServerProcess, int, int]]) -> None:
    """Goal: with --peer-listen and --metrics-listen, the client port serves no peer
    endpoint and no metrics, the peer port nothing but /internal/, the metrics port only
    /metrics; and the cluster works over the peer ports (writes through one node are read
    back through another).

    Method: three real nodes whose peer URLs name the peer ports; a write and a
    linearizable read through different nodes; then 404s for every endpoint on the wrong
    port, and 401 (not 404) for /internal/ on the peer port without the peer secret.
    """
    (n1, peer1, metrics1), (n2, _, _) = split_cluster[1], split_cluster[2]
    assert Client(n1.url).put("split/k", b"v").status == 200
    assert Client(n2.url).get("split/k").body == b"v"
    # The client port: API and probes, nothing else.
    assert _status(n1.url + "/readyz") == 200
    for path, method in (("/internal/hello", "POST"), ("/internal/batch", "POST"),
                         ("/internal/channel", "GET"), ("/internal/keys", "GET"),
                         ("/metrics", "GET")):
        assert _status(n1.url + path, method) == 404, path
    # The peer port: /internal/ only, and only with the peer secret.
    peer_url = f"http://127.0.0.1:{peer1}"
    assert _status(peer_url + "/internal/hello", "POST") == 401
    for path in ("/v1/kv/split/k", "/v1/status", "/readyz", "/metrics"):
        assert _status(peer_url + path) == 404, path
    # The metrics port: /metrics only, and it counts the write above.
    metrics_url = f"http://127.0.0.1:{metrics1}"
    with urllib.request.urlopen(metrics_url + "/metrics", timeout=5) as resp:
        assert b"paxoskv_paxos_rounds_total" in resp.read()
    for path in ("/v1/kv/split/k", "/internal/keys"):
        assert _status(metrics_url + path) == 404, path


def test_peer_on_client_port_serves_peers_on_both_ports(tmp_path: Path) -> None:
    """Goal: while a cluster moves to a peer port (the chart's ``both-*`` modes), a node
    with --peer-on-client-port answers peers on both ports; without the flag only on the
    peer port (the other test).

    Method: one real node with both listeners and the flag: /internal/hello without the
    peer secret is 401 (served, refused) on both ports, not 404.
    """
    client, peer = free_ports(2)
    proc = ServerProcess(1, client, f"1=http://127.0.0.1:{peer}", tmp_path / "node1",
                         tmp_path / "node1.log",
                         ["--peer-listen", f"127.0.0.1:{peer}", "--peer-on-client-port"])
    proc.start()
    try:
        proc.wait_ready()
        assert _status(f"http://127.0.0.1:{client}/internal/hello", "POST") == 401
        assert _status(f"http://127.0.0.1:{peer}/internal/hello", "POST") == 401
        assert Client(proc.url).put("both/k", b"v").status == 200
    finally:
        proc.terminate()


def _https_status(url: str, ca: Path, method: str = "GET", body: bytes | None = None
                  ) -> tuple[int, bytes]:
    ctx = ssl.create_default_context(cafile=str(ca))
    req = urllib.request.Request(url, method=method, data=body)
    try:
        with urllib.request.urlopen(req, timeout=5, context=ctx) as resp:
            return int(resp.status), resp.read()
    except urllib.error.HTTPError as err:
        return err.code, err.read()


def test_a_tls_cluster_serves_https_and_peers_need_a_certificate_from_the_ca(
        tmp_path: Path) -> None:
    """Goal: with --tls-cert-file/--tls-key-file/--tls-ca-file and a peer port, the client
    port speaks HTTPS only, peers talk over mutual TLS (the cluster works), and the peer
    port refuses a client without a certificate from the cluster CA before any HTTP.

    Method: a throw-away CA signs one certificate per node (127.0.0.1); three real nodes
    with https:// peer URLs; a write through node 1 is read back through node 2 over
    HTTPS; plain HTTP to the client port gets no HTTP answer; an HTTPS client that trusts
    the CA but has no certificate of its own is refused by the peer port's handshake.
    """
    pki = Pki(tmp_path / "pki")
    ports = free_ports(6)
    client, peer = ports[0:3], ports[3:6]
    peers = ",".join(f"{i + 1}=https://127.0.0.1:{peer[i]}" for i in range(3))
    nodes = []
    for i in range(3):
        cert, key, _ = pki.issue(f"node{i + 1}")
        proc = ServerProcess(i + 1, client[i], peers, tmp_path / f"node{i + 1}",
                             tmp_path / f"node{i + 1}.log",
                             ["--peer-listen", f"127.0.0.1:{peer[i]}",
                              "--tls-cert-file", str(cert), "--tls-key-file", str(key),
                              "--tls-ca-file", str(pki.ca)])
        proc.url = f"https://127.0.0.1:{client[i]}"
        nodes.append(proc)
        proc.start()
    try:
        def ready(node: ServerProcess) -> bool:
            try:
                return _https_status(node.url + "/readyz", pki.ca)[0] == 200
            except urllib.error.URLError:
                return False  # not listening yet
        deadline = time.monotonic() + 30
        while not all(ready(n) for n in nodes):
            assert time.monotonic() < deadline, "TLS cluster not ready"
            assert all(n.alive() for n in nodes), "a node exited"
            time.sleep(0.2)
        assert _https_status(nodes[0].url + "/v1/kv/tls/k", pki.ca, "PUT", b"v")[0] == 200
        assert _https_status(nodes[1].url + "/v1/kv/tls/k", pki.ca) == (200, b"v")
        # The Python client and the CLI, verifying the server against the CA.
        assert Client(nodes[2].url, ca_file=str(pki.ca)).put("tls/c", b"w").status == 200
        cli = subprocess.run([sys.executable, "-m", "paxoskv", "get", "tls/c", "--url",
                              nodes[0].url, "--cacert", str(pki.ca)],
                             capture_output=True, text=True, timeout=30)
        assert (cli.returncode, cli.stdout) == (0, "w"), cli
        untrusted = subprocess.run([sys.executable, "-m", "paxoskv", "get", "tls/c", "--url",
                                    nodes[0].url], capture_output=True, text=True, timeout=30,
                                   env={k: v for k, v in os.environ.items()
                                        if k != "PAXOSKV_CACERT"})
        assert untrusted.returncode == 3 and "CERTIFICATE_VERIFY_FAILED" in untrusted.stderr
        with pytest.raises((urllib.error.URLError, ConnectionError)):
            urllib.request.urlopen(f"http://127.0.0.1:{client[0]}/readyz", timeout=5)
        with pytest.raises((urllib.error.URLError, ssl.SSLError, ConnectionError)):
            _https_status(f"https://127.0.0.1:{peer[0]}/internal/hello", pki.ca, "POST", b"")
    finally:
        for proc in nodes:
            proc.terminate()
