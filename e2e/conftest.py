"""Fixtures for the end-to-end suite: a real Kubernetes cluster reached by a kubeconfig.

Environment:
  KUBECONFIG_E2E / KUBECONFIG   cluster to use (`make cluster-up` writes KUBECONFIG_E2E)
  PAXOSKV_E2E_IMAGE             image to deploy, repository:tag (default paxoskv:dev)
  PAXOSKV_HELM                  helm binary (default: helm on PATH, else the chart tools cache)
  PAXOSKV_PROMETHEUS            prometheus binary for step 7 (default: e2e/prometheus.sh builds it)
  PAXOSKV_E2E_KEEP=1            keep the namespace after the run (for debugging)
"""

from __future__ import annotations

import os
import shutil
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))

from kube import Kube

ROOT = Path(__file__).resolve().parents[1]


def _kubeconfig() -> str:
    for name in ("KUBECONFIG_E2E", "KUBECONFIG"):
        value = os.environ.get(name)
        if value and Path(value).exists():
            return value
    default = Path("/var/lib/paxoskv-e2e/kubeconfig")
    if default.exists():
        return str(default)
    pytest.skip("no kubeconfig: run `make cluster-up` (or set KUBECONFIG_E2E)")


def _helm() -> str:
    for candidate in (os.environ.get("PAXOSKV_HELM"), shutil.which("helm"),
                      "/var/cache/paxoskv-tools/bin/helm"):
        if candidate and Path(candidate).exists():
            return candidate
    pytest.fail("helm not found: run `make chart-tools` or set PAXOSKV_HELM")


@pytest.fixture(scope="session")
def kube() -> Iterator[Kube]:
    namespace = f"paxoskv-e2e-{uuid.uuid4().hex[:6]}"
    image = os.environ.get("PAXOSKV_E2E_IMAGE", "paxoskv:dev")
    k = Kube(_kubeconfig(), _helm(), namespace, image, ROOT / "deploy/helm/paxoskv")
    k.create_namespace()
    started = time.monotonic()
    try:
        yield k
    finally:
        k.print_state("final state")
        if os.environ.get("PAXOSKV_E2E_KEEP") != "1":
            k.teardown()
        print(f"e2e: session took {time.monotonic() - started:.0f}s")
