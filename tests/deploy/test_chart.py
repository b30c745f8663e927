"""Static tests of the Helm chart (deploy/helm/paxoskv): render with `helm template` under
several value sets and assert the properties the design depends on.

Method: no cluster. helm renders the manifests; the tests parse them and check fields. Schema
validity of the same renders is `make chart-check` (kubeconform); this file checks meaning.
Skips (with the reason) when helm is absent; `make chart-tools` installs it.
"""

from __future__ import annotations

import base64
import json
import math
import re
import subprocess
import sys
from typing import Any

import pytest
import yaml
from chart_helpers import (
    CHART,
    HELM,
    KUBECONFORM,
    NAMESPACE,
    RELEASE,
    ROOT,
    SKIP_REASON,
    helm_template,
    kinds,
    kubeconform,
    only,
    render,
)

pytestmark = pytest.mark.skipif(HELM is None, reason=SKIP_REASON)

FULLNAME = f"{RELEASE}-paxoskv"
HEADLESS = f"{FULLNAME}-headless"


@pytest.fixture(scope="module")
def default_docs() -> list[dict[str, Any]]:
    return render()


def pod_spec(docs: list[dict[str, Any]]) -> dict[str, Any]:
    return only(docs, "StatefulSet")["spec"]["template"]["spec"]


def container(docs: list[dict[str, Any]]) -> dict[str, Any]:
    (c,) = pod_spec(docs)["containers"]
    return c


def env_of(c: dict[str, Any]) -> dict[str, Any]:
    return {e["name"]: e.get("value", e.get("valueFrom")) for e in c["env"]}


# ---- what is rendered -------------------------------------------------------------------


def test_default_render_kinds(default_docs: list[dict[str, Any]]) -> None:
    """Defaults: the core objects, and none of the opt-in monitoring or policy objects."""
    assert kinds(default_docs) == sorted(
        [
            "ConfigMap",
            "Pod",
            "PodDisruptionBudget",
            "Role",
            "RoleBinding",
            "Secret",
            "Secret",
            "Secret",
            "Service",
            "Service",
            "ServiceAccount",
            "StatefulSet",
        ]
    )
    secrets = sorted(d["metadata"]["name"] for d in default_docs if d["kind"] == "Secret")
    assert secrets == [f"{FULLNAME}-auth", f"{FULLNAME}-peer", f"{FULLNAME}-tls"]


def test_all_features_render_kinds() -> None:
    docs = render(yaml.safe_load((CHART / "ci" / "all-features-values.yaml").read_text()))
    assert kinds(docs) == sorted(
        [
            "ConfigMap",
            "NetworkPolicy",
            "Pod",
            "PodDisruptionBudget",
            "PodMonitor",
            "PrometheusRule",
            "Role",
            "RoleBinding",
            "Service",
            "Service",
            "ServiceAccount",
            "ServiceMonitor",
            "StatefulSet",
        ]
    )
    assert "Secret" not in kinds(docs)  # existingSecrets replace the generated ones


# ---- StatefulSet and Services -----------------------------------------------------------


def test_statefulset_parallel_and_headless(default_docs: list[dict[str, Any]]) -> None:
    sts = only(default_docs, "StatefulSet")
    assert sts["metadata"]["name"] == FULLNAME
    assert sts["spec"]["podManagementPolicy"] == "Parallel"
    assert sts["spec"]["serviceName"] == HEADLESS
    assert sts["spec"]["replicas"] == 3
    assert sts["spec"]["updateStrategy"]["type"] == "RollingUpdate"


def test_headless_service_publishes_not_ready(default_docs: list[dict[str, Any]]) -> None:
    svc = only(default_docs, "Service", "-headless")
    assert svc["spec"]["clusterIP"] == "None"
    assert svc["spec"]["publishNotReadyAddresses"] is True
    client = only(default_docs, "Service", FULLNAME)
    assert client["metadata"]["name"] == FULLNAME
    assert "publishNotReadyAddresses" not in client["spec"]  # clients only reach ready pods
    sel = only(default_docs, "StatefulSet")["spec"]["selector"]["matchLabels"]
    assert svc["spec"]["selector"] == sel
    assert client["spec"]["selector"] == sel


def test_env_contract(default_docs: list[dict[str, Any]]) -> None:
    """Every setting of the server contract is passed, with the chart's values."""
    c = container(default_docs)
    assert c["command"] == ["paxoskv"]
    assert c["args"][0] == "serve"
    env = env_of(c)
    assert env["POD_NAME"] == {"fieldRef": {"fieldPath": "metadata.name"}}
    assert env["POD_NAMESPACE"] == {"fieldRef": {"fieldPath": "metadata.namespace"}}
    assert env["PAXOSKV_STATEFULSET"] == "true"
    assert env["PAXOSKV_REPLICAS"] == "3"
    assert env["PAXOSKV_MAX_REPLICAS"] == "7"
    assert env["PAXOSKV_FOLLOW_REPLICAS"] == "true"
    assert env["PAXOSKV_SERVICE"] == HEADLESS
    assert env["PAXOSKV_CLUSTER_DOMAIN"] == "cluster.local"
    assert env["PAXOSKV_LISTEN"] == "0.0.0.0:7000"
    assert env["PAXOSKV_DATA_DIR"] == "/data"
    assert env["PAXOSKV_PEER_SECRET_FILE"] == "/etc/paxoskv/peer/peer-secret"
    assert env["PAXOSKV_CLUSTER_ID"] == f"{NAMESPACE}-{FULLNAME}"
    assert env["PAXOSKV_MAX_VALUE_BYTES"] == "1048576"
    assert env["PAXOSKV_LOG_FORMAT"] == "json"
    assert env["PAXOSKV_LOG_LEVEL"] == "info"
    assert "PAXOSKV_PEER_SECRET" not in env  # the secret is a file, not an env var
    # Service links would add PAXOSKV_PORT & co. for a Service named "paxoskv".
    assert pod_spec(default_docs)["enableServiceLinks"] is False


def test_env_follows_values() -> None:
    docs = render(
        {
            "replicas": 5,
            "port": 7100,
            "peerPort": 7101,
            "metrics": {"port": 7102},
            "clusterDomain": "example.internal",
            "clusterId": "prod-a",
            "maxValueBytes": 4194304,
            "log": {"format": "text", "level": "debug"},
        }
    )
    env = env_of(container(docs))
    assert env["PAXOSKV_REPLICAS"] == "5"
    assert env["PAXOSKV_LISTEN"] == "0.0.0.0:7100"
    assert env["PAXOSKV_PEER_LISTEN"] == "0.0.0.0:7101"
    assert env["PAXOSKV_METRICS_LISTEN"] == "0.0.0.0:7102"
    assert env["PAXOSKV_CLUSTER_DOMAIN"] == "example.internal"
    assert env["PAXOSKV_CLUSTER_ID"] == "prod-a"
    assert env["PAXOSKV_MAX_VALUE_BYTES"] == "4194304"
    assert env["PAXOSKV_LOG_FORMAT"] == "text"
    assert env["PAXOSKV_LOG_LEVEL"] == "debug"
    assert container(docs)["ports"] == [
        {"name": "http", "containerPort": 7100, "protocol": "TCP"},
        {"name": "peer", "containerPort": 7101, "protocol": "TCP"},
        {"name": "metrics", "containerPort": 7102, "protocol": "TCP"},
    ]
    headless = only(docs, "Service", "-headless")
    assert {p["name"]: p["port"] for p in headless["spec"]["ports"]} == {
        "http": 7100, "peer": 7101, "metrics": 7102}
    # The client Service exposes the client port only.
    assert [p["name"] for p in only(docs, "Service", FULLNAME)["spec"]["ports"]] == ["http"]
    assert only(docs, "StatefulSet")["spec"]["replicas"] == 5


@pytest.mark.parametrize(("mode", "listen", "both", "dial"), [
    ("separate", "0.0.0.0:7001", None, None),
    ("shared", None, None, None),
    ("both-dial-port", "0.0.0.0:7001", "true", "7000"),
    ("both-dial-peer-port", "0.0.0.0:7001", "true", None),
])
def test_peer_port_modes(mode: str, listen: str | None, both: str | None,
                         dial: str | None) -> None:
    """The three-step move from one port to a peer port (chart README): what each mode
    serves (--peer-listen, --peer-on-client-port) and dials (--peer-port, else the peer
    listen port, else the client port), and which ports egress admits to the peers."""
    # (TLS, on by default, needs a peer port of its own: a release on one port runs without)
    docs = render({"peerPortMode": mode, "networkPolicy": {"enabled": True},
                   "tls": {"enabled": mode != "shared"}})
    env = env_of(container(docs))
    assert env.get("PAXOSKV_PEER_LISTEN") == listen
    assert env.get("PAXOSKV_PEER_ON_CLIENT_PORT") == both
    assert env.get("PAXOSKV_PEER_PORT") == dial
    np = only(docs, "NetworkPolicy")
    *_, peers = np["spec"]["egress"]
    expected = {"separate": {7001}, "shared": {7000}}.get(mode, {7000, 7001})
    assert {p["port"] for p in peers["ports"]} == expected


def test_pod_name_leaves_room_for_ordinal() -> None:
    """The StatefulSet name (peers are derived from it) is capped at 52 characters."""
    docs = render(release="r" * 53)  # helm allows release names up to 53
    name = only(docs, "StatefulSet")["metadata"]["name"]
    assert len(name) <= 52
    assert env_of(container(docs))["PAXOSKV_SERVICE"] == f"{name}-headless"


# ---- probes -----------------------------------------------------------------------------


def test_probes(default_docs: list[dict[str, Any]]) -> None:
    c = container(default_docs)
    # On the metrics port: plain HTTP whatever tls says, and outside the client port's
    # flood limits (a flood of clients must not fail the probes and restart the pod).
    assert c["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "metrics"}
    assert c["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "metrics"}
    assert c["startupProbe"]["httpGet"] == {"path": "/healthz", "port": "metrics"}
    # The startup budget outlasts the server's 120 s bounded DNS wait.
    sp = c["startupProbe"]
    assert sp["periodSeconds"] * sp["failureThreshold"] > 120


def test_liveness_never_checks_quorum() -> None:
    """Whatever the values, liveness stays on /healthz (never quorum: see values.yaml)."""
    docs = render({"livenessProbe": {"periodSeconds": 30}, "readinessProbe": {"enabled": False}})
    c = container(docs)
    assert c["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert "readinessProbe" not in c


# ---- PodDisruptionBudget ------------------------------------------------------------------


@pytest.mark.parametrize("replicas", [1, 3, 4, 5, 7])
def test_pdb_keeps_quorum_for_any_replica_count(replicas: int) -> None:
    """Goal: the budget follows `kubectl scale` (no value computed at render time):
    minAvailable 51%, which Kubernetes rounds up to a majority of the current replicas."""
    pdb = only(render({"replicas": replicas}), "PodDisruptionBudget")
    assert pdb["spec"]["minAvailable"] == "51%"
    assert "maxUnavailable" not in pdb["spec"]
    for current in range(1, 16):  # whatever the StatefulSet is scaled to
        kept = math.ceil(current * 51 / 100)
        assert kept == current // 2 + 1, current


def test_pdb_refuses_unsafe_override() -> None:
    res = helm_template({"replicas": 3, "podDisruptionBudget": {"maxUnavailable": 2}}, check=False)
    assert res.returncode != 0
    assert "the most that keeps quorum is 1" in res.stderr
    lower = only(
        render({"replicas": 5, "podDisruptionBudget": {"maxUnavailable": 1}}), "PodDisruptionBudget"
    )
    assert lower["spec"]["maxUnavailable"] == 1


# ---- security -----------------------------------------------------------------------------


def test_security_context(default_docs: list[dict[str, Any]]) -> None:
    spec = pod_spec(default_docs)
    psc = spec["securityContext"]
    assert psc["runAsNonRoot"] is True
    assert psc["runAsUser"] != 0
    assert psc["seccompProfile"] == {"type": "RuntimeDefault"}
    csc = container(default_docs)["securityContext"]
    assert csc["runAsNonRoot"] is True
    assert csc["readOnlyRootFilesystem"] is True
    assert csc["allowPrivilegeEscalation"] is False
    assert csc["capabilities"] == {"drop": ["ALL"]}
    assert csc["seccompProfile"] == {"type": "RuntimeDefault"}
    # followReplicas (on by default) reads the StatefulSet: the pods get the token, the
    # ServiceAccount keeps automount off for anything else that uses it.
    assert spec["automountServiceAccountToken"] is True
    sa = only(default_docs, "ServiceAccount")
    assert sa["automountServiceAccountToken"] is False
    assert spec["serviceAccountName"] == sa["metadata"]["name"]
    off = pod_spec(render({"followReplicas": False}))
    assert off["automountServiceAccountToken"] is False


def test_only_data_and_tmp_writable(default_docs: list[dict[str, Any]]) -> None:
    mounts = {m["mountPath"]: m for m in container(default_docs)["volumeMounts"]}
    writable = sorted(p for p, m in mounts.items() if not m.get("readOnly"))
    assert writable == ["/data", "/tmp"]
    assert mounts["/etc/paxoskv/peer"]["readOnly"] is True


def test_test_pod_is_hardened_too(default_docs: list[dict[str, Any]]) -> None:
    pod = only(default_docs, "Pod")
    csc = pod["spec"]["containers"][0]["securityContext"]
    assert csc["readOnlyRootFilesystem"] is True
    assert csc["capabilities"] == {"drop": ["ALL"]}
    assert pod["spec"]["automountServiceAccountToken"] is False


# ---- peer secret --------------------------------------------------------------------------


def test_secret_generated_once_and_kept() -> None:
    """The template looks up the existing Secret before generating one (kept on upgrade)."""
    src = (CHART / "templates" / "secret.yaml").read_text()
    assert re.search(r'lookup\s+"v1"\s+"Secret"\s+\.Release\.Namespace\s+\$name', src)
    assert "randAlphaNum" in src
    # The generated branch: one key, 48 random characters by default.
    secret = only(render(), "Secret", "-peer")
    raw = base64.b64decode(secret["data"]["peer-secret"]).decode()
    assert len(raw) == 48
    assert raw.isalnum()
    # Two renders without a cluster to look up differ: the value is random, not derived.
    again = only(render(), "Secret", "-peer")
    assert again["data"]["peer-secret"] != secret["data"]["peer-secret"]


def test_existing_secret() -> None:
    docs = render({"peerSecret": {"existingSecret": "mine", "existingSecretKey": "tok"}})
    assert [d["metadata"]["name"] for d in docs if d["kind"] == "Secret"] == [
        f"{FULLNAME}-auth", f"{FULLNAME}-tls"]
    vols = {v["name"]: v for v in pod_spec(docs)["volumes"]}
    assert vols["peer-secret"]["secret"]["secretName"] == "mine"
    assert vols["peer-secret"]["secret"]["items"] == [{"key": "tok", "path": "tok"}]
    assert env_of(container(docs))["PAXOSKV_PEER_SECRET_FILE"] == "/etc/paxoskv/peer/tok"


def test_secret_volume_matches_generated_secret(default_docs: list[dict[str, Any]]) -> None:
    secret = only(default_docs, "Secret", "-peer")
    vols = {v["name"]: v for v in pod_spec(default_docs)["volumes"]}
    assert vols["peer-secret"]["secret"]["secretName"] == secret["metadata"]["name"]


# ---- client tokens (auth) -----------------------------------------------------------------


def test_auth_token_by_default(default_docs: list[dict[str, Any]]) -> None:
    """Token auth is on by default: a generated admin token, a token file holding only its
    hash mounted read-only (the plain token is not), and the server pointed at it."""
    secret = only(default_docs, "Secret", "-auth")
    token = base64.b64decode(secret["data"]["admin-token"]).decode()
    assert len(token) == 48 and token.isalnum()
    tokens_json = base64.b64decode(secret["data"]["tokens.json"])
    from paxoskv.auth import hash_token, parse_token_file

    (entry,) = parse_token_file(tokens_json)
    assert (entry.name, entry.role, entry.sha256) == ("bootstrap-admin", "admin",
                                                      hash_token(token))
    env = env_of(container(default_docs))
    assert env["PAXOSKV_AUTH"] == "token"
    assert env["PAXOSKV_TOKEN_FILE"] == "/etc/paxoskv/auth/tokens.json"
    assert "PAXOSKV_METRICS_AUTH" not in env
    mounts = {m["mountPath"]: m for m in container(default_docs)["volumeMounts"]}
    assert mounts["/etc/paxoskv/auth"]["readOnly"] is True
    assert "subPath" not in mounts["/etc/paxoskv/auth"]  # so Secret updates reach the file
    vols = {v["name"]: v for v in pod_spec(default_docs)["volumes"]}
    assert vols["auth-tokens"]["secret"] == {
        "secretName": f"{FULLNAME}-auth", "defaultMode": 0o440,
        "items": [{"key": "tokens.json", "path": "tokens.json"}]}
    src = (CHART / "templates" / "auth-secret.yaml").read_text()
    assert re.search(r'lookup\s+"v1"\s+"Secret"\s+\.Release\.Namespace\s+\$name', src)


def test_auth_rate_limit_follows_the_value() -> None:
    """auth.rateLimit sets the servers' default per-token rate (--token-rate-limit); unset,
    or with auth.mode=none, there is none; a malformed value is refused by the schema."""
    assert "PAXOSKV_TOKEN_RATE_LIMIT" not in env_of(container(render()))
    env = env_of(container(render({"auth": {"rateLimit": "50/100"}})))
    assert env["PAXOSKV_TOKEN_RATE_LIMIT"] == "50/100"
    off = env_of(container(render({"auth": {"mode": "none", "rateLimit": "50"}})))
    assert "PAXOSKV_TOKEN_RATE_LIMIT" not in off
    for bad in ("fast", "0", "0/5", "5/0", "1000000"):  # the server would refuse to start
        res = helm_template({"auth": {"rateLimit": bad}}, check=False)
        assert res.returncode != 0 and "rateLimit" in res.stderr, bad
    assert env_of(container(render({"auth": {"rateLimit": "0.5"}})))[
        "PAXOSKV_TOKEN_RATE_LIMIT"] == "0.5"


def test_auth_existing_secret_none_and_metrics() -> None:
    docs = render({"auth": {"existingSecret": "my-tokens", "tokenFileKey": "file.json",
                            "metricsAuth": True}})
    assert "-auth" not in " ".join(d["metadata"]["name"] for d in docs if d["kind"] == "Secret")
    env = env_of(container(docs))
    assert env["PAXOSKV_TOKEN_FILE"] == "/etc/paxoskv/auth/file.json"
    assert env["PAXOSKV_METRICS_AUTH"] == "true"
    vols = {v["name"]: v for v in pod_spec(docs)["volumes"]}
    assert vols["auth-tokens"]["secret"]["secretName"] == "my-tokens"
    test_env = {e["name"]: e for e in only(docs, "Pod")["spec"]["containers"][0]["env"]}
    assert test_env["PAXOSKV_TOKEN"]["valueFrom"]["secretKeyRef"] == {
        "name": "my-tokens", "key": "admin-token", "optional": True}

    open_docs = render({"auth": {"mode": "none"}})
    assert [d["metadata"]["name"] for d in open_docs if d["kind"] == "Secret"] == [
        f"{FULLNAME}-peer", f"{FULLNAME}-tls"]
    env = env_of(container(open_docs))
    assert env["PAXOSKV_AUTH"] == "none"
    assert "PAXOSKV_TOKEN_FILE" not in env
    assert "auth-tokens" not in {v["name"] for v in pod_spec(open_docs)["volumes"]}
    test_env = {e["name"] for e in only(open_docs, "Pod")["spec"]["containers"][0]["env"]}
    assert "PAXOSKV_TOKEN" not in test_env

    res = helm_template({"auth": {"mode": "none", "metricsAuth": True}}, check=False)
    assert res.returncode != 0 and "auth.metricsAuth needs auth.mode=token" in res.stderr


# ---- scheduling ---------------------------------------------------------------------------


def test_anti_affinity_soft_by_default(default_docs: list[dict[str, Any]]) -> None:
    aa = pod_spec(default_docs)["affinity"]["podAntiAffinity"]
    assert "requiredDuringSchedulingIgnoredDuringExecution" not in aa
    (term,) = aa["preferredDuringSchedulingIgnoredDuringExecution"]
    assert term["podAffinityTerm"]["topologyKey"] == "kubernetes.io/hostname"


def test_anti_affinity_hard_and_none() -> None:
    aa = pod_spec(render({"podAntiAffinity": "hard"}))["affinity"]["podAntiAffinity"]
    assert "preferredDuringSchedulingIgnoredDuringExecution" not in aa
    (term,) = aa["requiredDuringSchedulingIgnoredDuringExecution"]
    assert term["labelSelector"]["matchLabels"]["app.kubernetes.io/instance"] == RELEASE
    assert "affinity" not in pod_spec(render({"podAntiAffinity": "none"}))


def test_topology_spread_gets_selector() -> None:
    tsc = {
        "maxSkew": 1,
        "topologyKey": "topology.kubernetes.io/zone",
        "whenUnsatisfiable": "DoNotSchedule",
    }
    (got,) = pod_spec(render({"topologySpreadConstraints": [tsc]}))["topologySpreadConstraints"]
    assert got["labelSelector"]["matchLabels"]["app.kubernetes.io/name"] == "paxoskv"
    assert got["topologyKey"] == "topology.kubernetes.io/zone"


# ---- storage ------------------------------------------------------------------------------


def test_volume_claims_and_retention(default_docs: list[dict[str, Any]]) -> None:
    sts = only(default_docs, "StatefulSet")
    assert sts["spec"]["persistentVolumeClaimRetentionPolicy"] == {
        "whenDeleted": "Retain",
        "whenScaled": "Retain",
    }
    (vct,) = sts["spec"]["volumeClaimTemplates"]
    assert vct["metadata"]["name"] == "data"
    assert vct["spec"]["resources"]["requests"]["storage"] == "1Gi"
    assert "storageClassName" not in vct["spec"]
    docs = render(
        {"persistence": {"retentionPolicy": {"whenDeleted": "Delete"}, "storageClass": "-"}}
    )
    sts = only(docs, "StatefulSet")
    assert sts["spec"]["persistentVolumeClaimRetentionPolicy"]["whenDeleted"] == "Delete"
    assert sts["spec"]["volumeClaimTemplates"][0]["spec"]["storageClassName"] == ""


def test_no_persistence_uses_emptydir() -> None:
    docs = render({"persistence": {"enabled": False}})
    sts = only(docs, "StatefulSet")
    assert "volumeClaimTemplates" not in sts["spec"]
    vols = {v["name"]: v for v in sts["spec"]["template"]["spec"]["volumes"]}
    assert vols["data"] == {"name": "data", "emptyDir": {}}


# ---- network policy -----------------------------------------------------------------------


def test_network_policy() -> None:
    """Each port from its own sources: the peer port from the release's pods only, the
    client port from the client label, the metrics port from ``metricsFrom`` only."""
    scrapers = [{"namespaceSelector": {"matchLabels": {"name": "monitoring"}}}]
    docs = render({"networkPolicy": {"enabled": True, "metricsFrom": scrapers}})
    np = only(docs, "NetworkPolicy")
    own = only(docs, "StatefulSet")["spec"]["selector"]["matchLabels"]
    assert np["spec"]["podSelector"]["matchLabels"] == own
    peers, clients, metrics = np["spec"]["ingress"]
    assert peers["from"] == [{"podSelector": {"matchLabels": own}}]
    assert clients["from"] == [{"podSelector": {"matchLabels": {f"{FULLNAME}-client": "true"}}}]
    assert metrics["from"] == scrapers
    ports_of = {name: {p["port"] for p in rule["ports"]}
                for name, rule in (("peers", peers), ("clients", clients), ("metrics", metrics))}
    assert ports_of == {"peers": {"peer", "http"}, "clients": {"http"}, "metrics": {"metrics"}}
    assert len(only(render({"networkPolicy": {"enabled": True}}),
                    "NetworkPolicy")["spec"]["ingress"]) == 2  # no scrapers: metrics closed
    # The helm test pod carries the client label, so `helm test` passes under the policy.
    assert only(docs, "Pod")["metadata"]["labels"][f"{FULLNAME}-client"] == "true"
    egress_ports = [p["port"] for rule in np["spec"]["egress"] for p in rule["ports"]]
    assert 53 in egress_ports and 7001 in egress_ports and 7000 not in egress_ports
    open_docs = render({"networkPolicy": {"enabled": True, "allowExternal": True}})
    _, open_clients = only(open_docs, "NetworkPolicy")["spec"]["ingress"]
    assert "from" not in open_clients  # any source may reach the client port


# ---- monitoring ---------------------------------------------------------------------------


def test_service_monitor_scrapes_all_pods() -> None:
    docs = render({"metrics": {"serviceMonitor": {"enabled": True}}})
    sm = only(docs, "ServiceMonitor")
    headless = only(docs, "Service", "-headless")
    client = only(docs, "Service", FULLNAME)
    sel = sm["spec"]["selector"]["matchLabels"]
    # Selects the headless Service (lists not-ready pods too), not the client Service.
    assert all(headless["metadata"]["labels"].get(k) == v for k, v in sel.items())
    assert not all(client["metadata"]["labels"].get(k) == v for k, v in sel.items())
    (ep,) = sm["spec"]["endpoints"]
    assert ep["port"] == "metrics"
    assert ep["path"] == "/metrics"
    assert sm["spec"]["jobLabel"] == "app.kubernetes.io/instance"


def test_pod_monitor() -> None:
    pm = only(render({"metrics": {"podMonitor": {"enabled": True}}}), "PodMonitor")
    (ep,) = pm["spec"]["podMetricsEndpoints"]
    assert (ep["port"], ep["path"]) == ("metrics", "/metrics")
    assert pm["spec"]["jobLabel"] == "app.kubernetes.io/instance"


def test_prometheus_rule_alerts() -> None:
    docs = render({"prometheusRule": {"enabled": True, "additionalAlertLabels": {"team": "db"}}})
    (group,) = only(docs, "PrometheusRule")["spec"]["groups"]
    rules = group["rules"]
    names = {r["alert"] for r in rules}
    assert {
        "PaxosKVNoQuorum",
        "PaxosKVPeerDown",
        "PaxosKVFsyncSlow",
        "PaxosKVHighErrorRatio",
        "PaxosKVAmnesia",
    } <= names
    fsync = {r["labels"]["severity"]: r["expr"] for r in rules if r["alert"] == "PaxosKVFsyncSlow"}
    assert fsync["warning"].rstrip().endswith("> 0.5")
    assert fsync["critical"].rstrip().endswith("> 1")
    for r in rules:
        assert r["labels"]["team"] == "db"
        assert r["labels"]["severity"] in ("warning", "critical")
        assert r["annotations"]["summary"]
        # Scoped to this release's series, and Prometheus' own templates survived Helm.
        for selector in re.findall(r"paxoskv_\w+\{([^}]*)\}", r["expr"]):
            assert f'namespace="{NAMESPACE}"' in selector
            assert f'job="{RELEASE}"' in selector
        assert "{{" not in r["expr"]
    described = " ".join(r["annotations"]["description"] for r in rules)
    assert "{{ $labels.pod }}" in described
    # Quorum in the no-quorum rule follows replicas.
    no_quorum = next(r for r in rules if r["alert"] == "PaxosKVNoQuorum")
    assert "< 2" in no_quorum["expr"]
    docs5 = render({"replicas": 5, "prometheusRule": {"enabled": True}})
    rules5 = only(docs5, "PrometheusRule")["spec"]["groups"][0]["rules"]
    assert "< 3" in next(r for r in rules5 if r["alert"] == "PaxosKVNoQuorum")["expr"]


def test_dashboard_configmap(default_docs: list[dict[str, Any]]) -> None:
    cm = only(default_docs, "ConfigMap", "-dashboard")
    assert cm["metadata"]["labels"]["grafana_dashboard"] == "1"
    shipped = json.loads(cm["data"]["paxoskv.json"])
    on_disk = json.loads((CHART / "dashboards" / "paxoskv.json").read_text())
    assert shipped == on_disk
    titles = {p["title"] for p in shipped["panels"]}
    for needed in (
        "Request rate by op",
        "Errors by op and code",
        "Latency p50 by op",
        "Latency p99 by op",
        "Paxos rounds by phase and outcome",
        "Paxos conflicts",
        "fsync p99 by node",
        "Group commit batch size",
        "Peer up (seen from each node)",
        "Peer RTT",
        "Keys by node",
    ):
        assert needed in titles
    ids = [p["id"] for p in shipped["panels"]]
    assert len(ids) == len(set(ids))


def test_dashboard_json_is_generated() -> None:
    res = subprocess.run(
        [sys.executable, str(ROOT / "deploy" / "scripts" / "gen_dashboard.py"), "--check"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert res.returncode == 0, res.stderr


# ---- helm test ----------------------------------------------------------------------------


def test_helm_test_pod(default_docs: list[dict[str, Any]]) -> None:
    pod = only(default_docs, "Pod")
    assert pod["metadata"]["annotations"]["helm.sh/hook"] == "test"
    assert pod["spec"]["restartPolicy"] == "Never"
    assert 0 < pod["spec"]["activeDeadlineSeconds"] <= 300
    (c,) = pod["spec"]["containers"]
    assert c["image"] == container(default_docs)["image"]  # the paxoskv image itself
    script = c["args"][0]
    assert 'paxoskv put "$key" "$value" --url "$PAXOSKV_URL"' in script
    assert "a get without a token is refused" in script
    env = {e["name"]: e for e in c["env"]}
    assert env["PAXOSKV_TOKEN"]["valueFrom"]["secretKeyRef"] == {
        "name": f"{FULLNAME}-auth", "key": "admin-token", "optional": False}
    assert 'paxoskv get "$key" --url "$PAXOSKV_URL"' in script
    url = next(e["value"] for e in c["env"] if e["name"] == "PAXOSKV_URL")
    assert url == f"https://{FULLNAME}.{NAMESPACE}.svc.cluster.local:7000"
    # TLS by default: the CLI trusts the cluster CA, and only the CA is mounted (no key)
    assert env["PAXOSKV_CACERT"]["value"] == "/etc/paxoskv/ca/ca.crt"
    (ca,) = [v for v in pod["spec"]["volumes"] if v["name"] == "ca"]
    assert ca["secret"] == {"secretName": f"{FULLNAME}-tls",
                            "items": [{"key": "ca.crt", "path": "ca.crt"}]}
    assert {"name": "ca", "mountPath": "/etc/paxoskv/ca", "readOnly": True} in c["volumeMounts"]
    clear = only(render({"tls": {"enabled": False}}), "Pod")["spec"]
    assert "ca" not in {v["name"] for v in clear["volumes"]}
    assert next(e["value"] for e in clear["containers"][0]["env"]
                if e["name"] == "PAXOSKV_URL").startswith("http://")
    assert "helmTest" in (CHART / "values.yaml").read_text()
    assert "Pod" not in kinds(render({"helmTest": {"enabled": False}}))


# ---- image --------------------------------------------------------------------------------


def test_image_defaults_and_override(default_docs: list[dict[str, Any]]) -> None:
    app_version = yaml.safe_load((CHART / "Chart.yaml").read_text())["appVersion"]
    c = container(default_docs)
    assert c["image"] == f"paxoskv:{app_version}"
    assert c["imagePullPolicy"] == "IfNotPresent"
    c2 = container(render({"image": {"repository": "reg.example/pkv", "tag": "dev"}}))
    assert c2["image"] == "reg.example/pkv:dev"


# ---- values schema and README ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"replicas": 0}, "/replicas"),
        ({"podAntiAffinity": "sometimes"}, "/podAntiAffinity"),
        ({"image": {"pullPolicy": "Sometimes"}}, "/image/pullPolicy"),
        ({"replica": 3}, "replica"),
        ({"log": {"format": "xml"}}, "/log/format"),
        ({"persistence": {"retentionPolicy": {"whenScaled": "Keep"}}}, "whenScaled"),
        ({"prometheusRule": {"noQuorumFor": "one minute"}}, "/prometheusRule/noQuorumFor"),
        ({"image": {"digest": "latest"}}, "/image/digest"),
        ({"service": {"externalTrafficPolicy": "Nearest"}}, "/service/externalTrafficPolicy"),
        ({"diagnosticMode": {"command": []}}, "/diagnosticMode/command"),
        ({"lifecycleHooks": {"onStart": {}}}, "onStart"),
        ({"initContainers": [{"name": "no-image"}]}, "/initContainers/0"),
    ],
)
def test_values_schema_rejects(values: dict[str, Any], message: str) -> None:
    res = helm_template(values, check=False)
    assert res.returncode != 0
    assert message in res.stderr


def _leaf_paths(node: Any, prefix: str = "") -> list[str]:
    if isinstance(node, dict) and node:
        out = []
        for k, v in node.items():
            out += _leaf_paths(v, f"{prefix}.{k}" if prefix else k)
        return out
    return [prefix]


def test_readme_values_table_is_generated() -> None:
    script = ROOT / "deploy" / "scripts" / "gen_values_table.py"
    res = subprocess.run(
        [sys.executable, str(script), "--check"], capture_output=True, text=True, timeout=60
    )
    assert res.returncode == 0, res.stderr


def test_readme_documents_every_value() -> None:
    """Each value (or an ancestor documented as a whole, e.g. securityContext) has a README row."""
    readme = (CHART / "README.md").read_text().split("\n## Values\n", 1)[1]
    documented = set(re.findall(r"^\| `([^`]+)` \|", readme, flags=re.M))
    values = yaml.safe_load((CHART / "values.yaml").read_text())
    missing = []
    for path in _leaf_paths(values):
        parts = path.split(".")
        if not any(".".join(parts[:i]) in documented for i in range(1, len(parts) + 1)):
            missing.append(path)
    assert not missing, f"values missing from the README table: {missing}"
    stale = [d for d in documented if _lookup(values, d) is _MISSING]
    assert not stale, f"README rows for values that do not exist: {stale}"


_MISSING = object()


def _lookup(values: dict[str, Any], path: str) -> Any:
    node: Any = values
    for part in path.split("."):
        if not isinstance(node, dict) or part not in node:
            return _MISSING
        node = node[part]
    return node


def test_schema_covers_every_top_level_value() -> None:
    schema = json.loads((CHART / "values.schema.json").read_text())
    values = yaml.safe_load((CHART / "values.yaml").read_text())
    assert set(values) <= set(schema["properties"])


# ---- acceptor-set guards and rejoin -------------------------------------------------------


def test_replica_changes_are_not_refused_and_epoch_0_is_pinned_from_the_live_object() -> None:
    """On upgrade PAXOSKV_REPLICAS (epoch 0's set) comes from the live StatefulSet's env
    (lookup), never from `replicas`, so a scale rolls no pod; only TLS switches and a lower
    maxReplicas are refused."""
    src = (CHART / "templates" / "statefulset.yaml").read_text()
    assert re.search(r'lookup\s+"apps/v1"\s+"StatefulSet"\s+\.Release\.Namespace\s+\$fullname', src)
    assert "allowReplicaChange" not in src
    assert re.search(r'eq \.name "PAXOSKV_REPLICAS" -}}{{- \$liveInitial = int \.value', src)
    assert "{{- $initial = $liveInitial -}}" in src
    assert re.search(r"name: PAXOSKV_REPLICAS\n\s+value: {{ \$initial \| quote }}", src)
    assert "allowReplicaChange" not in (CHART / "values.yaml").read_text()


def test_replicas_change_only_the_replica_count_not_the_pod_template() -> None:
    """Without a live object (helm template) the epoch-0 set is `initialReplicas` when set,
    else `replicas` (an install); with it set, another `replicas` leaves the pod template
    as it is, so a GitOps render never tells the pods another epoch-0 set."""
    five = only(render({"replicas": 5}), "StatefulSet")
    assert env_of(container([five]))["PAXOSKV_REPLICAS"] == "5"  # install: the count
    three = only(render({"replicas": 3, "initialReplicas": 3}), "StatefulSet")
    five = only(render({"replicas": 5, "initialReplicas": 3}), "StatefulSet")
    assert (three["spec"]["replicas"], five["spec"]["replicas"]) == (3, 5)
    env3, env5 = env_of(container([three])), env_of(container([five]))
    assert env5["PAXOSKV_REPLICAS"] == "3"
    assert env3 == env5


def test_an_upgrade_that_cannot_read_the_live_statefulset_needs_initial_replicas() -> None:
    """Goal: an upgrade render without the live object (client-side --dry-run, a StatefulSet
    deleted with --cascade=orphan, `helm template --is-upgrade`) would take epoch 0 from
    `replicas`: refused unless initialReplicas names it."""
    res = helm_template({"replicas": 5}, check=False, extra_args=("--is-upgrade",))
    assert res.returncode != 0
    assert "set initialReplicas to the replica count the release was installed with" in (
        res.stderr)
    ok = helm_template({"replicas": 5, "initialReplicas": 3}, extra_args=("--is-upgrade",))
    docs = [d for d in yaml.safe_load_all(ok.stdout) if d]
    assert env_of(container(docs))["PAXOSKV_REPLICAS"] == "3"


@pytest.mark.parametrize(("values", "message"), [
    ({"initialReplicas": 8}, "initialReplicas=8 must be between 1 and maxReplicas=7"),
    ({"initialReplicas": 5, "maxReplicas": 4, "replicas": 3},
     "initialReplicas=5 must be between 1 and maxReplicas=4"),
    ({"initialReplicas": -1}, "initialReplicas"),
    ({"initialReplicas": 16}, "initialReplicas"),
])
def test_initial_replicas_is_bounded(values: dict[str, Any], message: str) -> None:
    res = helm_template(values, check=False)
    assert res.returncode != 0 and message in res.stderr, res.stderr


@pytest.mark.parametrize(("live", "asked", "refused", "hint"), [
    (5, 3, False, ""), (5, 4, False, ""), (5, 7, False, ""), (3, 2, False, ""),
    (4, 3, False, ""),
    (5, 2, True, "The largest safe step is 5 -> 3"),
    (3, 1, True, "The largest safe step is 3 -> 2"),
    (4, 2, True, "The largest safe step is 4 -> 3"),
    (7, 3, True, "The largest safe step is 7 -> 4"),
    (2, 1, True, "a release of 2 replicas cannot be scaled down by deleting pods"),
])
def test_a_scale_down_by_a_majority_is_refused(tmp_path: Any, live: int, asked: int,
                                               refused: bool, hint: str) -> None:
    """Goal: on upgrade (the live StatefulSet read) a `replicas` below live/2+1 is refused
    with the largest safe step: the pods are deleted first and no change could complete.
    lookup answers nothing under helm template, so the check (the helper the StatefulSet
    template calls with the live count) is rendered from a copy of the chart."""
    import shutil

    chart = tmp_path / "paxoskv"
    shutil.copytree(CHART, chart)
    (chart / "templates" / "zz-check.yaml").write_text(
        f'{{{{- include "paxoskv.checkScaleDown" (dict "live" {live} "replicas" {asked}) }}}}\n')
    res = helm_template(check=False, chart=chart)
    assert (res.returncode != 0) is refused, res.stderr
    assert hint in res.stderr
    src = (CHART / "templates" / "statefulset.yaml").read_text()
    assert re.search(r'include "paxoskv.checkScaleDown" \(dict "live" \(int '
                     r'\$live.spec.replicas\) "replicas" \(int .Values.replicas\)\)', src)


def test_when_scaled_delete_with_follow_replicas_is_refused() -> None:
    """Goal: claims of pods a scale-down deletes belong to acceptors still in the set until
    the change removes them: whenScaled=Delete is refused while the pods follow replicas."""
    values: dict[str, Any] = {"persistence": {"retentionPolicy": {"whenScaled": "Delete"}}}
    res = helm_template(values, check=False)
    assert res.returncode != 0
    assert "whenScaled=Delete with followReplicas" in res.stderr
    assert "Retain" in res.stderr
    sts = only(render({**values, "followReplicas": False}), "StatefulSet")
    assert sts["spec"]["persistentVolumeClaimRetentionPolicy"]["whenScaled"] == "Delete"


def test_values_of_the_previous_chart_render_reuse_values() -> None:
    """Goal: `helm upgrade --reuse-values` from the chart before followReplicas keeps the old
    values, which lack maxReplicas, followReplicas, rbac and initialReplicas (a null in the
    values drops the key, as there): the chart's defaults apply instead of maxReplicas=0 or
    a nil dereference."""
    docs = render({"maxReplicas": None, "followReplicas": None, "rbac": None,
                   "initialReplicas": None})
    env = env_of(container(docs))
    assert env["PAXOSKV_MAX_REPLICAS"] == "7"
    assert env["PAXOSKV_FOLLOW_REPLICAS"] == "true"
    assert only(docs, "Role")["rules"][0]["verbs"] == ["get"]
    assert pod_spec(docs)["automountServiceAccountToken"] is True


@pytest.mark.parametrize(("values", "message"), [
    ({"replicas": 9}, "maxReplicas=7 is below replicas=9"),
    ({"replicas": 3, "maxReplicas": 2}, "maxReplicas=2 is below replicas=3"),
])
def test_max_replicas_below_replicas_is_refused(values: dict[str, Any], message: str) -> None:
    res = helm_template(values, check=False)
    assert res.returncode != 0
    assert message in res.stderr


def test_schema_bounds_max_replicas() -> None:
    res = helm_template({"maxReplicas": 0}, check=False)
    assert res.returncode != 0 and "maxReplicas" in res.stderr


def test_rbac_grants_only_reading_the_own_statefulset() -> None:
    """Goal: the Role names the release's StatefulSet alone, read verbs only, bound to the
    pods' ServiceAccount; none without followReplicas or with rbac.create=false."""
    docs = render()
    role, binding = only(docs, "Role"), only(docs, "RoleBinding")
    assert role["rules"] == [{"apiGroups": ["apps"], "resources": ["statefulsets"],
                              "resourceNames": [FULLNAME], "verbs": ["get"]}]
    assert binding["roleRef"]["name"] == role["metadata"]["name"]
    sa = only(docs, "ServiceAccount")["metadata"]["name"]
    assert binding["subjects"] == [{"kind": "ServiceAccount", "name": sa,
                                    "namespace": NAMESPACE}]
    for values in ({"followReplicas": False}, {"rbac": {"create": False}}):
        assert not {"Role", "RoleBinding"} & set(kinds(render(values)))
    off = env_of(container(render({"followReplicas": False})))
    assert "PAXOSKV_FOLLOW_REPLICAS" not in off


def test_network_policy_lets_the_follower_reach_the_api() -> None:
    docs = render({"networkPolicy": {"enabled": True}})
    ports = [{p["port"] for p in rule["ports"]} for rule in only(docs, "NetworkPolicy")[
        "spec"]["egress"]]
    assert {443, 6443} in ports
    docs = render({"networkPolicy": {"enabled": True}, "followReplicas": False})
    ports = [{p["port"] for p in rule["ports"]} for rule in only(docs, "NetworkPolicy")[
        "spec"]["egress"]]
    assert {443, 6443} not in ports


def test_rejoin_wrapper_sets_flag_only_for_listed_ordinals(tmp_path: Any) -> None:
    """Run the rendered wrapper script with a stand-in `paxoskv` that prints what it got."""
    docs = render({"rejoinOrdinals": [2, 4], "extraArgs": ["--log-level", "debug"]})
    c = container(docs)
    assert env_of(c)["REJOIN_ORDINALS"] == "2 4"
    shell, flag, script, argv0 = c["command"]
    assert (shell, flag, argv0) == ("/bin/sh", "-ec", "paxoskv")
    fake = tmp_path / "paxoskv"
    fake.write_text('#!/bin/sh\necho "rejoin=${PAXOSKV_REJOIN:-unset} args=$*"\n')
    fake.chmod(0o755)
    for pod, expected in (
        ("t-paxoskv-2", "true"),
        ("t-paxoskv-3", "unset"),
        ("t-paxoskv-4", "true"),
        ("t-paxoskv-12", "unset"),
    ):
        env = {
            "PATH": f"{tmp_path}:/usr/bin:/bin",
            "POD_NAME": pod,
            "REJOIN_ORDINALS": env_of(c)["REJOIN_ORDINALS"],
        }
        res = subprocess.run(
            ["/bin/sh", flag, script, argv0, *c["args"]],
            env=env,
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        )
        assert res.stdout.strip() == f"rejoin={expected} args=serve --log-level debug", pod
    # Without rejoinOrdinals the container runs paxoskv directly.
    assert container(render())["command"] == ["paxoskv"]


# ---- Pod Security Standard "restricted" ---------------------------------------------------

RESTRICTED_VOLUME_TYPES = {
    "configMap",
    "csi",
    "downwardAPI",
    "emptyDir",
    "ephemeral",
    "persistentVolumeClaim",
    "projected",
    "secret",
}


def _restricted_violations(spec: dict[str, Any]) -> list[str]:
    """The checks of the Kubernetes Pod Security Standard `restricted` (v1.34 policy)."""
    bad = []
    psc = spec.get("securityContext", {})
    for flag in ("hostNetwork", "hostPID", "hostIPC"):
        if spec.get(flag):
            bad.append(flag)
    for v in spec.get("volumes", []):
        kinds_ = set(v) - {"name"}
        if not kinds_ <= RESTRICTED_VOLUME_TYPES:
            bad.append(f"volume {v['name']}: {kinds_}")
    for c in spec.get("initContainers", []) + spec["containers"]:
        sc = c.get("securityContext", {})
        name = c["name"]
        if sc.get("privileged"):
            bad.append(f"{name}: privileged")
        if sc.get("allowPrivilegeEscalation") is not False:
            bad.append(f"{name}: allowPrivilegeEscalation must be false")
        if "ALL" not in sc.get("capabilities", {}).get("drop", []):
            bad.append(f"{name}: must drop ALL capabilities")
        if set(sc.get("capabilities", {}).get("add", [])) - {"NET_BIND_SERVICE"}:
            bad.append(f"{name}: adds capabilities")
        if not sc.get("runAsNonRoot", psc.get("runAsNonRoot")):
            bad.append(f"{name}: runAsNonRoot")
        if sc.get("runAsUser", psc.get("runAsUser")) == 0:
            bad.append(f"{name}: runAsUser 0")
        seccomp = sc.get("seccompProfile", psc.get("seccompProfile", {})).get("type")
        if seccomp not in ("RuntimeDefault", "Localhost"):
            bad.append(f"{name}: seccompProfile {seccomp}")
        for p in c.get("ports", []):
            if p.get("hostPort"):
                bad.append(f"{name}: hostPort")
    return bad


@pytest.mark.parametrize(
    "values_file",
    ["default-values.yaml", "all-features-values.yaml", "minimal-values.yaml",
     "extras-values.yaml"],
)
def test_pods_meet_restricted_pod_security(values_file: str) -> None:
    docs = render(yaml.safe_load((CHART / "ci" / values_file).read_text()))
    specs = [d["spec"]["template"]["spec"] for d in docs if d["kind"] == "StatefulSet"]
    specs += [d["spec"] for d in docs if d["kind"] == "Pod"]
    assert specs
    for spec in specs:
        assert _restricted_violations(spec) == []


def test_chart_upgrade_does_not_roll_pods() -> None:
    """Pod template labels carry no chart or app version (a roll costs fault tolerance)."""
    labels = only(render(), "StatefulSet")["spec"]["template"]["metadata"]["labels"]
    assert "helm.sh/chart" not in labels
    assert "app.kubernetes.io/version" not in labels


def test_restricted_check_can_fail() -> None:
    bad = {
        "hostNetwork": True,
        "volumes": [{"name": "h", "hostPath": {"path": "/"}}],
        "containers": [{"name": "c", "securityContext": {"privileged": True}}],
    }
    found = " ".join(_restricted_violations(bad))
    for word in (
        "hostNetwork",
        "hostPath",
        "privileged",
        "allowPrivilegeEscalation",
        "drop ALL",
        "runAsNonRoot",
        "seccompProfile",
    ):
        assert word in found


# ---- NOTES.txt ----------------------------------------------------------------------------


def render_notes(tmp_path: Any, values: dict[str, Any]) -> str:
    """helm template never prints NOTES.txt; render it from a copy of the chart in which it
    is wrapped into a named template and emitted as a string."""
    import shutil

    chart = tmp_path / "paxoskv"
    shutil.copytree(CHART, chart)
    notes = (chart / "templates" / "NOTES.txt").read_text()
    (chart / "templates" / "NOTES.txt").unlink()
    (chart / "templates" / "zz-notes.yaml").write_text(
        '{{- define "test.notes" -}}\n' + notes + "\n{{- end -}}\n"
        'notes: {{ include "test.notes" . | toJson }}\n'
    )
    assert HELM is not None
    out = subprocess.run(
        [
            HELM,
            "template",
            RELEASE,
            str(chart),
            "--namespace",
            NAMESPACE,
            "--kube-version",
            "1.34.4",
            "--show-only",
            "templates/zz-notes.yaml",
            "-f",
            "-",
        ],
        input=yaml.safe_dump(values),
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    ).stdout
    return str(yaml.safe_load(out)["notes"])


def test_notes(tmp_path: Any) -> None:
    plain = render_notes(tmp_path / "a", {})
    assert "Quorum: 2 of 3; up to 1 node(s) may fail." in plain
    assert f"rollout status statefulset/{FULLNAME}" in plain
    assert f"helm test {RELEASE} -n {NAMESPACE}" in plain
    assert "WARNING" not in plain
    assert (f"kubectl -n {NAMESPACE} get secret {FULLNAME}-auth -o "
            "jsonpath='{.data.admin-token}' | base64 -d") in plain
    # TLS by default: the CA to fetch, and https with --cacert in every example
    assert (f"get secret {FULLNAME}-tls -o jsonpath='{{.data.ca\\.crt}}' | base64 -d > "
            f"{FULLNAME}-ca.crt") in plain
    assert f"--url https://{FULLNAME}:7000" in plain
    assert f"--cacert {FULLNAME}-ca.crt -H \"Authorization: Bearer $PAXOSKV_TOKEN\"" in plain
    assert "http://" not in plain
    # the token reaches the pod on stdin, never on a command line
    assert "| kubectl -n" in plain and "read -r PAXOSKV_TOKEN" in plain
    assert "PAXOSKV_TOKEN=$PAXOSKV_TOKEN" not in plain
    clear = render_notes(tmp_path / "d", {"tls": {"enabled": False}})
    assert "WARNING: tls.enabled=false" in clear and "--env=PAXOSKV_TOKEN=$PAXOSKV_TOKEN" in clear
    assert "https://" not in clear
    assert "auth.mode=none: anyone" in render_notes(tmp_path / "c", {"auth": {"mode": "none"}})
    risky = render_notes(
        tmp_path / "b",
        {
            "replicas": 4,
            "persistence": {"enabled": False},
            "networkPolicy": {"enabled": True},
            "metrics": {"serviceMonitor": {"enabled": True}, "podMonitor": {"enabled": True}},
            "tls": {"enabled": False},
        },
    )
    assert "replicas=4 is even" in risky
    assert "persistence is disabled" in risky
    assert "scraped twice" in risky
    assert f"--labels={FULLNAME}-client=true" in risky


# ---- volume permissions (host-path provisioner) -------------------------------------------


def test_volume_permissions_init_container() -> None:
    assert "initContainers" not in pod_spec(render())
    spec = pod_spec(render({"volumePermissions": {"enabled": True}}))
    (init,) = spec["initContainers"]
    assert init["command"] == ["/bin/sh", "-ec", "chown 10001:10001 /data"]
    sc = init["securityContext"]
    assert sc["runAsUser"] == 0
    assert sc["capabilities"] == {"drop": ["ALL"], "add": ["CHOWN"]}
    assert sc["allowPrivilegeEscalation"] is False
    assert sc["readOnlyRootFilesystem"] is True
    assert init["volumeMounts"] == [{"name": "data", "mountPath": "/data"}]
    # Only the init container departs from "restricted", and only by running as root with CHOWN.
    problems = _restricted_violations(spec)
    assert problems
    assert all(p.startswith("volume-permissions: ") for p in problems)
    custom = pod_spec(
        render(
            {
                "volumePermissions": {"enabled": True},
                "securityContext": {"runAsUser": 2000, "runAsGroup": 2000},
                "podSecurityContext": {"fsGroup": 3000},
            }
        )
    )
    assert custom["initContainers"][0]["command"][2] == "chown 2000:3000 /data"
    # Without a volume there is nothing to fix.
    no_pvc = pod_spec(
        render({"volumePermissions": {"enabled": True}, "persistence": {"enabled": False}})
    )
    assert "initContainers" not in no_pvc


# ---- TLS --------------------------------------------------------------------------------


def test_tls_generated_certificate_serves_every_name_peers_and_clients_use() -> None:
    """With ``tls.enabled`` and the default source, the chart makes a CA and one certificate
    (kept across upgrades by lookup), valid for every pod's headless name, the client
    Service and loopback, for server and client authentication; the pods mount it, point
    the server's TLS flags at it, and probe the plain metrics port."""
    docs = render({"tls": {"enabled": True}})
    secret = only(docs, "Secret", "-tls")
    assert secret["type"] == "kubernetes.io/tls"
    pem = {k: base64.b64decode(v) for k, v in secret["data"].items()}
    assert set(pem) == {"tls.crt", "tls.key", "ca.crt"}
    x509 = pytest.importorskip("cryptography.x509")
    cert = x509.load_pem_x509_certificate(pem["tls.crt"])
    ca = x509.load_pem_x509_certificate(pem["ca.crt"])
    assert cert.issuer == ca.subject
    sans = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    names = set(sans.get_values_for_type(x509.DNSName))
    assert f"*.{FULLNAME}-headless.{NAMESPACE}.svc.cluster.local" in names
    assert f"{FULLNAME}.{NAMESPACE}.svc.cluster.local" in names
    assert [str(ip) for ip in sans.get_values_for_type(x509.IPAddress)] == ["127.0.0.1"]
    usages = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert {u.dotted_string for u in usages} == {"1.3.6.1.5.5.7.3.1", "1.3.6.1.5.5.7.3.2"}
    c = container(docs)
    env = env_of(c)
    assert env["PAXOSKV_TLS_CERT_FILE"] == "/etc/paxoskv/tls/tls.crt"
    assert env["PAXOSKV_TLS_CA_FILE"] == "/etc/paxoskv/tls/ca.crt"
    for probe in ("livenessProbe", "readinessProbe", "startupProbe"):
        assert c[probe]["httpGet"]["port"] == "metrics" and "scheme" not in c[probe]["httpGet"]
    vols = {v["name"]: v for v in only(docs, "StatefulSet")["spec"]["template"]["spec"]["volumes"]}
    assert vols["tls"]["secret"]["secretName"] == f"{FULLNAME}-tls"
    mount = next(m for m in c["volumeMounts"] if m["name"] == "tls")
    assert "subPath" not in mount  # a renewed Secret must reach the files
    assert env["PAXOSKV_CACERT"] == "/etc/paxoskv/tls/ca.crt"  # `kubectl exec ... paxoskv`
    assert env_of(container(render())) == env  # on by default
    off = env_of(container(render({"tls": {"enabled": False}})))
    assert not {"PAXOSKV_TLS_CERT_FILE", "PAXOSKV_CACERT"} & set(off)


def test_tls_from_cert_manager_or_an_existing_secret() -> None:
    """cert-manager: a Certificate for the same names into the Secret the pods mount, and no
    generated Secret; an existing Secret: mounted as given, nothing generated."""
    docs = render({"tls": {"enabled": True, "source": "certManager",
                           "certManager": {"issuerRef": {"name": "ca-issuer"}}}})
    cert = only(docs, "Certificate")
    assert cert["spec"]["secretName"] == f"{FULLNAME}-tls"
    assert cert["spec"]["issuerRef"]["name"] == "ca-issuer"
    assert f"*.{FULLNAME}-headless.{NAMESPACE}.svc.cluster.local" in cert["spec"]["dnsNames"]
    assert {"server auth", "client auth"} <= set(cert["spec"]["usages"])
    assert not [d for d in docs if d["kind"] == "Secret" and d["metadata"]["name"].endswith("-tls")]
    docs = render({"tls": {"enabled": True, "source": "existingSecret", "existingSecret": "mine"}})
    vols = {v["name"]: v for v in only(docs, "StatefulSet")["spec"]["template"]["spec"]["volumes"]}
    assert vols["tls"]["secret"]["secretName"] == "mine"
    assert "Certificate" not in kinds(docs)


@pytest.mark.parametrize(("values", "message"), [
    ({"tls": {"enabled": True, "source": "existingSecret"}}, "needs tls.existingSecret"),
    ({"tls": {"enabled": True, "source": "certManager"}}, "needs tls.certManager.issuerRef"),
    ({"tls": {"enabled": True}, "peerPortMode": "shared"}, "needs a peer port of its own"),
])
def test_tls_misconfiguration_fails_with_a_clear_message(values: dict[str, Any],
                                                         message: str) -> None:
    res = helm_template(values, check=False)
    assert res.returncode != 0
    assert message in res.stderr


# ---- knobs of other database charts (chart README, "Customising the pods") -----------------

requires_kubeconform = pytest.mark.skipif(
    KUBECONFORM is None, reason="kubeconform is not installed: run `make chart-tools`"
)


def named(items: list[dict[str, Any]], name: str) -> dict[str, Any]:
    (found,) = [i for i in items if i["name"] == name]
    return found


def paxoskv_container(docs: list[dict[str, Any]]) -> dict[str, Any]:
    return named(pod_spec(docs)["containers"], "paxoskv")


def assert_valid(values: dict[str, Any]) -> None:
    res = kubeconform(values)
    assert res.returncode == 0, res.stdout + res.stderr
    assert "Invalid: 0, Errors: 0, Skipped: 0" in res.stdout, res.stdout


def extras_values() -> dict[str, Any]:
    values: dict[str, Any] = yaml.safe_load((CHART / "ci" / "extras-values.yaml").read_text())
    return values


def test_new_knobs_leave_the_default_render_alone(default_docs: list[dict[str, Any]]) -> None:
    """Off by default: no annotations but the chart's own, no extra containers, volumes,
    environment or hooks, the server with its probes, the image by tag, a plain ClusterIP."""
    annotated = {d["kind"]: d["metadata"].get("annotations") for d in default_docs
                 if d["metadata"].get("annotations")}
    assert annotated == {"Pod": {
        "helm.sh/hook": "test",
        "helm.sh/hook-delete-policy": "before-hook-creation,hook-succeeded"}}
    spec = pod_spec(default_docs)
    assert "initContainers" not in spec
    assert [c["name"] for c in spec["containers"]] == ["paxoskv"]
    assert [v["name"] for v in spec["volumes"]] == ["tmp", "peer-secret", "tls", "auth-tokens"]
    c = container(default_docs)
    assert [m["name"] for m in c["volumeMounts"]] == ["data", "tmp", "peer-secret", "tls",
                                                      "auth-tokens"]
    assert c["command"] == ["paxoskv"] and c["args"] == ["serve"]
    assert {"startupProbe", "livenessProbe", "readinessProbe"} <= set(c)
    assert "envFrom" not in c and "lifecycle" not in c
    assert "@" not in c["image"]
    svc = only(default_docs, "Service", FULLNAME)["spec"]
    assert "loadBalancerSourceRanges" not in svc and "externalTrafficPolicy" not in svc
    assert list(only(default_docs, "StatefulSet")["spec"]["template"]["metadata"]["annotations"]) \
        == ["kubectl.kubernetes.io/default-container"]
    values = yaml.safe_load((CHART / "values.yaml").read_text())
    assert values["diagnosticMode"]["enabled"] is False


ALL_OBJECTS = {
    "networkPolicy": {"enabled": True},
    "metrics": {"serviceMonitor": {"enabled": True}, "podMonitor": {"enabled": True}},
    "prometheusRule": {"enabled": True},
    "tls": {"source": "certManager", "certManager": {"issuerRef": {"name": "ca"}}},
}


@requires_kubeconform
def test_common_annotations_on_every_object() -> None:
    values = {
        **ALL_OBJECTS,
        "commonAnnotations": {"example.com/owner": "storage", "example.com/tier": "common"},
        "service": {"annotations": {"example.com/tier": "client"}},
        "grafanaDashboard": {"annotations": {"grafana_folder": "Databases"}},
    }
    docs = render(values)
    assert {"Certificate", "NetworkPolicy", "PodMonitor", "PrometheusRule", "ServiceMonitor",
            "ConfigMap", "Secret", "PodDisruptionBudget", "ServiceAccount", "StatefulSet",
            "Service", "Pod", "Role", "RoleBinding"} == set(kinds(docs))
    for d in docs:
        ann = d["metadata"].get("annotations", {})
        assert ann.get("example.com/owner") == "storage", (d["kind"], d["metadata"]["name"])
    # An object's own annotations are kept and win on a clash.
    client = only(docs, "Service", FULLNAME)["metadata"]["annotations"]
    assert client["example.com/tier"] == "client"
    assert only(docs, "Service", "-headless")["metadata"]["annotations"]["example.com/tier"] \
        == "common"
    assert only(docs, "ConfigMap")["metadata"]["annotations"]["grafana_folder"] == "Databases"
    assert only(docs, "Pod")["metadata"]["annotations"]["helm.sh/hook"] == "test"
    # Not on the pods (a change would roll them) nor on the immutable claim templates.
    sts = only(docs, "StatefulSet")["spec"]
    assert "example.com/owner" not in sts["template"]["metadata"]["annotations"]
    assert "annotations" not in sts["volumeClaimTemplates"][0]["metadata"]
    # (no cert-manager schema is vendored: validate with the generated certificate instead)
    assert_valid({k: v for k, v in values.items() if k != "tls"})


def test_common_labels_on_every_object() -> None:
    docs = render({**ALL_OBJECTS, "commonLabels": {"env": "test"}})
    for d in docs:
        assert d["metadata"]["labels"]["env"] == "test", (d["kind"], d["metadata"]["name"])
    assert only(docs, "StatefulSet")["spec"]["template"]["metadata"]["labels"]["env"] == "test"


@requires_kubeconform
def test_image_digest_takes_precedence_over_the_tag() -> None:
    digest = "sha256:" + "ab" * 32
    values = {"image": {"repository": "reg.example/pkv", "tag": "dev", "digest": digest},
              "volumePermissions": {"enabled": True}}
    docs = render(values)
    images = [c["image"] for c in pod_spec(docs)["initContainers"] + pod_spec(docs)["containers"]]
    images += [c["image"] for c in only(docs, "Pod")["spec"]["containers"]]
    assert images == [f"reg.example/pkv@{digest}"] * 3
    assert_valid(values)


@requires_kubeconform
def test_extra_volumes_env_init_containers_and_sidecars() -> None:
    values = extras_values()
    docs = render(values)
    spec = pod_spec(docs)
    c = paxoskv_container(docs)
    # tpl: the chart's templates work inside the values
    assert c["envFrom"] == [{"configMapRef": {"name": f"{FULLNAME}-env", "optional": True}}]
    assert env_of(c)["PAXOSKV_CACHE_BYTES"] == "33554432"
    assert named(spec["volumes"], "scratch") == {"name": "scratch",
                                                 "emptyDir": {"sizeLimit": "16Mi"}}
    assert named(c["volumeMounts"], "scratch") == {"name": "scratch", "mountPath": "/scratch"}
    assert named(c["volumeMounts"], "data")["mountPath"] == "/data"  # the chart's own stay
    assert [i["name"] for i in spec["initContainers"]] == ["wait-a-moment"]
    assert [x["name"] for x in spec["containers"]] == ["paxoskv", "log-shipper"]
    assert named(spec["containers"], "log-shipper")["args"] == ["sleep", "infinity"]
    # with volumePermissions, the chart's init container runs first
    both = pod_spec(render({**values, "volumePermissions": {"enabled": True}}))
    assert [i["name"] for i in both["initContainers"]] == ["volume-permissions", "wait-a-moment"]
    assert _restricted_violations(spec) == []
    assert_valid(values)


@requires_kubeconform
def test_lifecycle_hooks() -> None:
    values = {"lifecycleHooks": {"preStop": {"exec": {"command": ["sleep", "5"]}},
                                 "postStart": {"exec": {"command": ["true"]}}}}
    c = container(render(values))
    assert c["lifecycle"] == values["lifecycleHooks"]
    assert_valid(values)


@requires_kubeconform
def test_service_load_balancer_knobs() -> None:
    values = {"service": {"type": "LoadBalancer", "loadBalancerSourceRanges": ["10.0.0.0/8"],
                          "externalTrafficPolicy": "Local"}}
    svc = only(render(values), "Service", FULLNAME)["spec"]
    assert svc["type"] == "LoadBalancer"
    assert svc["loadBalancerSourceRanges"] == ["10.0.0.0/8"]
    assert svc["externalTrafficPolicy"] == "Local"
    # the headless peer Service is not exposed
    headless = only(render(values), "Service", "-headless")["spec"]
    assert "loadBalancerSourceRanges" not in headless and headless["type"] == "ClusterIP"
    node_port = {"service": {"type": "NodePort", "externalTrafficPolicy": "Cluster"}}
    np_svc = only(render(node_port), "Service", FULLNAME)["spec"]
    assert np_svc["externalTrafficPolicy"] == "Cluster"
    assert_valid(values)
    assert_valid(node_port)


@pytest.mark.parametrize(("values", "message"), [
    ({"service": {"loadBalancerSourceRanges": ["10.0.0.0/8"]}},
     "service.loadBalancerSourceRanges only applies to service.type=LoadBalancer"),
    ({"service": {"type": "NodePort", "loadBalancerSourceRanges": ["10.0.0.0/8"]}},
     "service.loadBalancerSourceRanges only applies to service.type=LoadBalancer"),
    ({"service": {"externalTrafficPolicy": "Local"}},
     "service.externalTrafficPolicy only applies to service.type NodePort or LoadBalancer"),
])
def test_service_knobs_refused_where_they_do_nothing(values: dict[str, Any], message: str) -> None:
    res = helm_template(values, check=False)
    assert res.returncode != 0
    assert message in res.stderr


@requires_kubeconform
def test_diagnostic_mode_sleeps_without_probes() -> None:
    values = {"diagnosticMode": {"enabled": True}, "rejoinOrdinals": [2],
              "extraArgs": ["--log-level", "debug"],
              "lifecycleHooks": {"preStop": {"exec": {"command": ["sleep", "5"]}}}}
    docs = render(values)
    c = container(docs)
    assert c["command"] == ["sleep"] and c["args"] == ["infinity"]
    assert not {"startupProbe", "livenessProbe", "readinessProbe", "lifecycle"} & set(c)
    # Same environment and volumes, so `kubectl exec ... paxoskv serve` runs the real thing.
    assert env_of(c) == env_of(container(render({k: v for k, v in values.items()
                                                  if k != "diagnosticMode"})))
    assert named(c["volumeMounts"], "data")["mountPath"] == "/data"
    custom = {"diagnosticMode": {"enabled": True, "command": ["/bin/sh", "-c"],
                                 "args": ["sleep 3600"]}}
    c2 = container(render(custom))
    assert (c2["command"], c2["args"]) == (["/bin/sh", "-c"], ["sleep 3600"])
    # staged: with a partition only the pods from that ordinal up are switched
    staged = render({"diagnosticMode": {"enabled": True}, "updateStrategy": {"partition": 2}})
    assert only(staged, "StatefulSet")["spec"]["updateStrategy"]["rollingUpdate"]["partition"] == 2
    assert_valid(values)
    assert_valid(custom)


@requires_kubeconform
def test_kubeconform_check_can_fail() -> None:
    """The validation above would catch a bad object: an extra volume without a source."""
    res = kubeconform({"extraVolumes": [{"name": "x", "emptyDir": {}, "bogusField": 1}]})
    assert res.returncode != 0
    assert "bogusField" in res.stdout + res.stderr
