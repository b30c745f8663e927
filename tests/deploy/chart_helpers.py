"""Shared helpers for the static chart tests: find helm, render the chart, pick objects."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "deploy" / "helm" / "paxoskv"
KUBE_VERSION = "1.34.4"  # = CHART_KUBE_VERSION in deploy/deploy.mk
NAMESPACE = "pkv"
RELEASE = "t"


def find_tool(name: str) -> str | None:
    """`name` from PATH, else from the tools cache `make chart-tools` fills."""
    found = shutil.which(name)
    if found:
        return found
    tools = os.environ.get("PAXOSKV_TOOLS", "/var/cache/paxoskv-tools")
    cached = Path(tools) / "bin" / name
    return str(cached) if cached.is_file() and os.access(cached, os.X_OK) else None


def find_helm() -> str | None:
    return find_tool("helm")


HELM = find_helm()
KUBECONFORM = find_tool("kubeconform")
SKIP_REASON = (
    "helm is not installed: run `make chart-tools` (installs the pinned helm into "
    "$PAXOSKV_TOOLS/bin, default /var/cache/paxoskv-tools/bin)"
)


def helm_template(
    values: dict[str, Any] | None = None,
    *,
    release: str = RELEASE,
    check: bool = True,
    extra_args: tuple[str, ...] = (),
    chart: Path = CHART,
) -> subprocess.CompletedProcess[str]:
    assert HELM is not None
    cmd = [
        HELM,
        "template",
        release,
        str(chart),
        *extra_args,
        "--namespace",
        NAMESPACE,
        "--kube-version",
        KUBE_VERSION,
        "-f",
        "-",
    ]
    return subprocess.run(
        cmd,
        input=yaml.safe_dump(values or {}),
        capture_output=True,
        text=True,
        check=check,
        timeout=60,
    )


def render(values: dict[str, Any] | None = None, *, release: str = RELEASE) -> list[dict[str, Any]]:
    out = helm_template(values, release=release).stdout
    return [d for d in yaml.safe_load_all(out) if d]


def only(docs: list[dict[str, Any]], kind: str, name_suffix: str = "") -> dict[str, Any]:
    found = [d for d in docs if d["kind"] == kind and d["metadata"]["name"].endswith(name_suffix)]
    assert len(found) == 1, (
        f"expected one {kind} *{name_suffix}, got {[d['metadata']['name'] for d in found]}"
    )
    return found[0]


def kinds(docs: list[dict[str, Any]]) -> list[str]:
    return sorted(d["kind"] for d in docs)


def kubeconform(values: dict[str, Any] | None = None) -> subprocess.CompletedProcess[str]:
    """`helm template` with `values`, piped through kubeconform -strict against the vendored
    schemas, exactly as `make chart-check` does for the ci/ value sets (deploy/deploy.mk)."""
    return kubeconform_manifests(helm_template(values).stdout)


def kubeconform_manifests(manifests: str) -> subprocess.CompletedProcess[str]:
    """kubeconform -strict over rendered ``manifests`` (see ``kubeconform``)."""
    assert KUBECONFORM is not None
    schemas = ROOT / "deploy" / "schemas"
    return subprocess.run(
        [
            KUBECONFORM,
            "-strict",
            "-summary",
            "-kubernetes-version",
            KUBE_VERSION,
            "-schema-location",
            str(schemas / "kubernetes" / "{{ .NormalizedKubernetesVersion }}-standalone"
                "{{ .StrictSuffix }}" / "{{ .ResourceKind }}{{ .KindSuffix }}.json"),
            "-schema-location",
            str(schemas / "crds" / "{{ .Group }}"
                / "{{ .ResourceKind }}_{{ .ResourceAPIVersion }}.json"),
            "-",
        ],
        input=manifests,
        capture_output=True,
        text=True,
        timeout=120,
    )
