"""Separate listeners: peer traffic and metrics on ports of their own (real processes)."""

from __future__ import annotations

import json
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

from paxoskv.auth import token_entry
from paxoskv.client import HttpClient as Client

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


def _https_status(url: str, ca: Path, method: str = "GET", body: bytes | None = None,
                  token: str | None = None) -> tuple[int, bytes]:
    ctx = ssl.create_default_context(cafile=str(ca))
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    req = urllib.request.Request(url, method=method, data=body, headers=headers)
    try:
        with urllib.request.urlopen(req, timeout=5, context=ctx) as resp:
            return int(resp.status), resp.read()
    except urllib.error.HTTPError as err:
        return err.code, err.read()


def _plain_http_answer(port: int) -> bytes:
    """What a plain-HTTP request to ``port`` gets back: for a TLS port, no HTTP answer
    (a TLS alert, or nothing), whatever the path."""
    import socket

    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        sock.sendall(b"GET /readyz HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n")
        got = b""
        try:
            while chunk := sock.recv(4096):
                got += chunk
        except OSError:
            pass  # reset: no answer either
        return got


ADMIN = "listeners-admin-token-" + "a" * 30
READ = "listeners-read-token-" + "r" * 30
APP = "listeners-app-token-" + "p" * 30


def test_a_tls_cluster_with_tokens_refuses_every_way_around_them(tmp_path: Path) -> None:
    """Goal: a cluster with TLS, a peer port and tokens (the chart's defaults, less its
    plain-HTTP metrics port) answers only HTTPS with a valid token within its role and
    prefixes; peers talk over mutual TLS
    (the cluster works), and the peer port refuses a client without a certificate from the
    cluster CA before any HTTP.

    Method: a throw-away CA signs one certificate per node (127.0.0.1); three real nodes
    with https:// peer URLs and --auth token; a write through node 1 is read back through
    node 2 over HTTPS; then each way around: plain HTTP to the client and to the peer port
    gets no HTTP answer; no token is 401, a read token's PUT is 403, a token scoped to
    ``app/`` is 403 on ``other/x`` (and 200 on ``app/x``); /internal/ on the client port is
    404; an HTTPS client that trusts the CA but has no certificate of its own is refused by
    the peer port's handshake, and so is one whose certificate another CA signed; a client
    that does not trust the CA is refused by its own verification.
    """
    pki = Pki(tmp_path / "pki")
    tokens = tmp_path / "tokens.json"
    tokens.write_text(json.dumps({"tokens": [
        token_entry("ops", "admin", ADMIN), token_entry("viewer", "read", READ),
        token_entry("app", "write", APP, ["app/"])]}))
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
                              "--tls-ca-file", str(pki.ca),
                              "--auth", "token", "--token-file", str(tokens)])
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
        key_url = "/v1/kv/tls/k"
        assert _https_status(nodes[0].url + key_url, pki.ca, "PUT", b"v", ADMIN)[0] == 200
        assert _https_status(nodes[1].url + key_url, pki.ca, token=READ) == (200, b"v")
        # The Python client and the CLI, verifying the server against the CA.
        assert Client(nodes[2].url, ca_file=str(pki.ca), token=ADMIN).put(
            "tls/c", b"w").status == 200
        cli = subprocess.run([sys.executable, "-m", "paxoskv", "get", "tls/c", "--url",
                              nodes[0].url, "--cacert", str(pki.ca), "--token", READ],
                             capture_output=True, text=True, timeout=30)
        assert (cli.returncode, cli.stdout) == (0, "w"), cli
        # Around the tokens: none, the wrong role, outside the prefixes.
        assert _https_status(nodes[0].url + key_url, pki.ca)[0] == 401
        assert _https_status(nodes[0].url + key_url, pki.ca, "PUT", b"x", READ)[0] == 403
        assert _https_status(nodes[1].url + "/v1/kv/other/x", pki.ca, "PUT", b"x", APP)[0] == 403
        assert _https_status(nodes[1].url + "/v1/kv/other/x", pki.ca, token=APP)[0] == 403
        assert _https_status(nodes[1].url + "/v1/kv/app/x", pki.ca, "PUT", b"x", APP)[0] == 200
        assert _https_status(nodes[2].url + key_url, pki.ca, token=ADMIN) == (200, b"v")
        # The peer endpoints are not on the client port, even for an admin.
        assert _https_status(nodes[0].url + "/internal/hello", pki.ca, "POST", b"",
                             ADMIN)[0] == 404
        # Around TLS: plain HTTP to either port, a client without the CA, a peer without a
        # certificate of the cluster's.
        for port in (client[0], peer[0]):
            assert not _plain_http_answer(port).startswith(b"HTTP/"), port
        untrusted = subprocess.run([sys.executable, "-m", "paxoskv", "get", "tls/c", "--url",
                                    nodes[0].url, "--token", READ], capture_output=True,
                                   text=True, timeout=30,
                                   env={k: v for k, v in os.environ.items()
                                        if k != "PAXOSKV_CACERT"})
        assert untrusted.returncode == 3 and "CERTIFICATE_VERIFY_FAILED" in untrusted.stderr
        with pytest.raises((urllib.error.URLError, ssl.SSLError, ConnectionError)):
            _https_status(f"https://127.0.0.1:{peer[0]}/internal/hello", pki.ca, "POST", b"")
        # A certificate of another CA is no better than none on the peer port; the cluster's
        # own is let through to HTTP (the peer secret is then checked: 401 without it).
        stranger = Pki(tmp_path / "other-pki", name="other-ca")
        other_cert, other_key, _ = stranger.issue("intruder")
        own_cert, own_key, _ = pki.issue("operator")
        for cert, key, admitted in ((other_cert, other_key, False), (own_cert, own_key, True)):
            ctx = ssl.create_default_context(cafile=str(pki.ca))
            ctx.load_cert_chain(cert, key)
            req = urllib.request.Request(f"https://127.0.0.1:{peer[0]}/internal/hello",
                                         method="POST", data=b"")
            try:
                with urllib.request.urlopen(req, timeout=5, context=ctx) as resp:
                    code = int(resp.status)
            except urllib.error.HTTPError as err:
                code = err.code
            except (urllib.error.URLError, ssl.SSLError, ConnectionError):
                code = 0  # refused in the handshake
            assert code == (401 if admitted else 0), (admitted, code)
    finally:
        for proc in nodes:
            proc.terminate()


def test_the_metrics_port_closes_idle_connections_and_caps_them(tmp_path: Path) -> None:
    """Goal: the metrics port, where the chart's probes go, is guarded like the client port:
    connections beyond --max-connections are answered 503 and closed, and one that sends no
    request within --header-timeout is closed, so a pile of idle connections cannot starve
    the probes. Method: a real node; 30 raw connections that send nothing, with a cap of 10
    and a 1 s header timeout."""
    import socket

    client, metrics = free_ports(2)
    proc = ServerProcess(1, client, f"1=http://127.0.0.1:{client}", tmp_path / "n1",
                         tmp_path / "n1.log", ["--metrics-listen", f"127.0.0.1:{metrics}",
                                               "--max-connections", "10",
                                               "--header-timeout", "1"])
    proc.start()
    socks: list[socket.socket] = []
    try:
        proc.wait_ready()
        for _ in range(30):
            socks.append(socket.create_connection(("127.0.0.1", metrics), timeout=5))
        time.sleep(2.0)  # past the header timeout
        answers = []
        for s in socks:
            s.settimeout(3)
            try:
                answers.append(s.recv(4096))
            except OSError as exc:  # a reset also means closed
                answers.append(type(exc).__name__.encode())
        refused = sum(1 for a in answers if a.startswith(b"HTTP/1.1 503"))
        assert refused >= 15, answers  # 30 against a cap of 10
        # the rest were closed by the server (end of stream or reset), none left waiting
        assert all(a in (b"", b"ConnectionResetError") or a.startswith(b"HTTP/1.1 503")
                   for a in answers), answers
        assert _status(f"http://127.0.0.1:{metrics}/healthz") == 200
    finally:
        for s in socks:
            s.close()
        proc.terminate()
