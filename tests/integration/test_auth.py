"""Token auth on three real ``paxoskv serve --auth token`` processes on loopback."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from procs import Cluster

from paxoskv.auth import token_entry
from paxoskv.client import HttpClient as Client

pytestmark = pytest.mark.integration

WRITE = "integration-write-token-" + "w" * 30
READ = "integration-read-token-" + "r" * 30


def test_a_write_needs_a_write_token_and_an_unauthenticated_one_writes_nothing(
        tmp_path: Path) -> None:
    """Goal: with --auth token a write token's write is readable with a read token (on
    another node: the token file is per node, the data is the cluster's); the same write
    without a token is 401 and leaves the key as it was; the CLI sends --token."""
    tokens = tmp_path / "tokens.json"
    tokens.write_text(json.dumps({"tokens": [token_entry("app", "write", WRITE),
                                             token_entry("viewer", "read", READ)]}))
    cluster = Cluster(3, tmp_path, extra=["--auth", "token", "--token-file", str(tokens)])
    cluster.start()
    try:
        first, second = cluster.urls()[0], cluster.urls()[1]
        writer, reader, anonymous = (Client(first, token=WRITE), Client(second, token=READ),
                                     Client(second, token=""))
        r = writer.put("auth/k", b"v1")
        assert r.status == 200, r.body
        r = reader.get("auth/k")
        assert (r.status, r.body) == (200, b"v1")
        r = anonymous.put("auth/k", b"sneaky")
        assert r.status == 401 and r.json()["error"] == "unauthorized"
        assert r.headers["WWW-Authenticate"].startswith("Bearer")
        assert reader.put("auth/k", b"sneaky").status == 403
        r = reader.get("auth/k")
        assert (r.status, r.body, r.version) == (200, b"v1", 1)
        assert anonymous.get("auth/k").status == 401
        assert anonymous.request("GET", "/readyz").status == 200
        cli = subprocess.run([sys.executable, "-m", "paxoskv", "get", "auth/k", "--url", first,
                              "--token", READ], capture_output=True, text=True, timeout=30)
        assert (cli.returncode, cli.stdout) == (0, "v1"), cli.stderr
        cli = subprocess.run([sys.executable, "-m", "paxoskv", "get", "auth/k", "--url", first],
                             capture_output=True, text=True, timeout=30)
        assert cli.returncode == 1 and "401 unauthorized" in cli.stderr
        metrics = anonymous.request("GET", "/metrics").body.decode()
        assert 'paxoskv_auth_failures_total{reason="missing"}' in metrics
        for c in (writer, reader, anonymous):
            c.close()
    finally:
        cluster.stop()
