"""The image's own files: license, OCI labels and the HEALTHCHECK command (run for real)."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
from procs import ServerProcess, free_ports
from tlsutil import Pki

ROOT = Path(__file__).resolve().parents[2]
DOCKERFILE = (ROOT / "Dockerfile").read_text()


def _labels() -> dict[str, str]:
    block = DOCKERFILE[DOCKERFILE.index("\nLABEL "):]
    return dict(re.findall(r'(org\.opencontainers\.image\.[a-z.]+)="([^"]*)"', block))


def test_license_file_matches_the_package_metadata_and_the_image_label() -> None:
    meta = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert meta["license"]["text"] == "Apache-2.0"
    text = (ROOT / "LICENSE").read_text()
    assert "Apache License" in text and "Version 2.0, January 2004" in text
    assert _labels()["org.opencontainers.image.licenses"] == "Apache-2.0"


def test_image_installs_the_kubernetes_client_pinned() -> None:
    """The chart turns --follow-replicas on, which needs the `kubernetes` package: the image
    installs the k8s extra, and constraints.txt pins it and what it pulls in."""
    assert "-c constraints.txt '.[k8s]'" in DOCKERFILE
    extras = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"][
        "optional-dependencies"]["k8s"]
    pins = {line.split("==")[0].lower() for line in
            (ROOT / "constraints.txt").read_text().splitlines() if "==" in line}
    for req in extras:
        assert re.split(r"[<>=\[; ]", req)[0].lower() in pins, req


def test_image_carries_the_oci_labels() -> None:
    labels = _labels()
    for name in ("title", "description", "licenses", "version", "revision"):
        assert labels.get(f"org.opencontainers.image.{name}"), name
    meta = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert labels["org.opencontainers.image.description"] == meta["description"]
    # the build script fills in version and revision
    script = (ROOT / "deploy/scripts/build-image.sh").read_text()
    assert '--build-arg "VERSION=' in script and '--build-arg "REVISION=' in script


def _healthcheck_script() -> str:
    line = next(ln for ln in DOCKERFILE.splitlines() if ln.strip().startswith("CMD [\"python3\""))
    argv = json.loads(line.strip()[len("CMD "):])
    assert argv[:2] == ["python3", "-c"]
    return str(argv[2])


def _health(env: dict[str, str]) -> int:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("PAXOSKV_")}
    return subprocess.run([sys.executable, "-c", _healthcheck_script()], env={**clean, **env},
                          capture_output=True, timeout=30).returncode


@pytest.mark.integration
def test_healthcheck_follows_the_ports_and_tls_the_container_runs_with(tmp_path: Path) -> None:
    """Goal: the HEALTHCHECK (for plain `docker run`) passes against a live node whether it
    serves a plain metrics port, or only a client port in plain HTTP or in TLS, and fails
    when nothing answers. Method: the command taken from the Dockerfile, run against a real
    one-node server with the env the container would have."""
    client, metrics, tls_client = free_ports(3)
    node = ServerProcess(1, client, f"1=http://127.0.0.1:{client}", tmp_path / "plain",
                         tmp_path / "plain.log", ["--metrics-listen", f"127.0.0.1:{metrics}"])
    node.start()
    try:
        node.wait_ready()
        assert _health({"PAXOSKV_LISTEN": f"0.0.0.0:{client}"}) == 0
        assert _health({"PAXOSKV_LISTEN": "0.0.0.0:1",
                        "PAXOSKV_METRICS_LISTEN": f"0.0.0.0:{metrics}"}) == 0
    finally:
        node.terminate()
    assert _health({"PAXOSKV_LISTEN": f"0.0.0.0:{client}"}) != 0  # nothing listens now
    pki = Pki(tmp_path / "pki")
    cert, key, _ = pki.issue("node1")
    node = ServerProcess(1, tls_client, f"1=https://127.0.0.1:{tls_client}", tmp_path / "tls",
                         tmp_path / "tls.log", ["--tls-cert-file", str(cert), "--tls-key-file",
                                                str(key), "--tls-ca-file", str(pki.ca)])
    node.start()
    try:
        tls_env = {"PAXOSKV_LISTEN": f"0.0.0.0:{tls_client}", "PAXOSKV_TLS_CERT_FILE": str(cert)}
        deadline = 100
        while _health(tls_env) != 0:
            deadline -= 1
            assert deadline > 0 and node.alive(), f"TLS node never healthy; {node.log_path}"
        # Speaking plain HTTP to the TLS port (the check before TLS support) fails.
        assert _health({"PAXOSKV_LISTEN": f"0.0.0.0:{tls_client}"}) != 0
    finally:
        node.terminate()
