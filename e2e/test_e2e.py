"""End to end: the real image on a real Kubernetes cluster through the Helm chart.

The steps run in order against one release; each prints what it saw. Client traffic
runs inside the cluster (exec into pods, or pods of the paxoskv image running the chaos
workload), so the suite works the same on kind and on the host-process cluster of
`make cluster-up`.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shlex
import subprocess
import tempfile
import time
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any

import pytest
import yaml
from chart_queries import ALLOWED_EMPTY, dashboard_exprs, rule_exprs
from chart_values import (
    BACKUP_CLAIM,
    BACKUP_CRONJOB,
    RESTORE_JOB,
    backup_values,
    restore_values,
)
from kube import FULLNAME, METRICS_PORT, PORT, RELEASE, Kube
from kubernetes.client.rest import ApiException

from paxoskv.chaos.runner import acknowledged_read_back
from paxoskv.check import History, check, write_report

ROOT = Path(__file__).resolve().parents[1]
REPORTS = ROOT / "reports" / "e2e"

WORKLOAD = """
import asyncio, orjson, sys
from paxoskv.check import History
from paxoskv.chaos.workload import Workload, WorkloadOptions
url, duration, seed = {url!r}, {duration}, {seed}
history = History()
work = Workload({{1: url}}, history, seed, WorkloadOptions(clients={clients}, keys=20, hot_keys=5,
                                                          key_prefix={prefix!r}))
async def main():
    await work.run(duration)
    for key in work.all_keys():
        for _ in range(30):
            if (await work.call(100001, 1, "read", key, count=False)).status == "ok":
                break
            await asyncio.sleep(1)
    await work.close()
asyncio.run(main())
history.save("/tmp/history.jsonl")
print("COUNTS " + orjson.dumps({{f"{{k}}/{{s}}": n for (k, s), n in work.counts.items()}}).decode())
print("UNEXPECTED " + orjson.dumps(work.unexpected).decode())
print("HISTORY-BEGIN")
sys.stdout.write(open("/tmp/history.jsonl").read())
print("HISTORY-END")
"""

PROBER = """
import os, ssl, time, http.client, json
host, port, duration, https = {host!r}, {port}, {duration}, {https}
auth = {{"Authorization": "Bearer " + os.environ["PAXOSKV_TOKEN"]}}
ctx = ssl.create_default_context(cafile=os.environ["PAXOSKV_CACERT"]) if https else None
end = time.monotonic() + duration
samples = []
i = 0
while time.monotonic() < end:
    i += 1
    t = time.monotonic()
    try:
        if https:
            c = http.client.HTTPSConnection(host, port, timeout=3, context=ctx)
        else:
            c = http.client.HTTPConnection(host, port, timeout=3)
        c.request("PUT", f"/v1/kv/probe/{{i % 10}}", body=b"x", headers=auth)
        put = c.getresponse()
        put.read()
        ok = put.status == 200
        if ok and i % 25 == 0:  # the test writes probe/stop once its upgrades are done
            c.request("GET", "/v1/kv/probe/stop", headers=auth)
            stop = c.getresponse()
            stop.read()
            if stop.status == 200:
                samples.append([round(t, 3), ok])
                break
        c.close()
    except (OSError, http.client.HTTPException):
        ok = False
    samples.append([round(t, 3), ok])
    time.sleep(0.2)
print("SAMPLES " + json.dumps(samples))
"""


def section(log: str, begin: str, end: str) -> str:
    start = log.index(begin) + len(begin)
    return log[start:log.index(end, start)].strip("\n")


def line_value(log: str, prefix: str) -> str:
    for line in log.splitlines():
        if line.startswith(prefix):
            return line[len(prefix):]
    raise AssertionError(f"no {prefix!r} line in:\n{log[-2000:]}")


def check_history(log: str, name: str) -> None:
    """Run the project's linearizability checker over a workload pod's history."""
    print(f"e2e: workload counts {line_value(log, 'COUNTS ')}")
    unexpected = json.loads(line_value(log, "UNEXPECTED "))
    assert not unexpected, f"answers outside the HTTP contract: {unexpected[:5]}"
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "history.jsonl"
        path.write_text(section(log, "HISTORY-BEGIN\n", "HISTORY-END") + "\n")
        ops = History.load(path).ops()
    result = check(ops)
    checked, missing = acknowledged_read_back(ops)
    print(f"e2e: {name}: {len(ops)} ops, {result.keys_checked} keys, violations "
          f"{len(result.violations)}, inconclusive {len(result.inconclusive)}, "
          f"acknowledged writes read back {checked - len(missing)}/{checked}")
    if not result.ok:
        paths = write_report(result, ops, REPORTS / name)
        pytest.fail(f"{name}: linearizability violations; reports: {[str(p) for p in paths]}")
    assert not missing, f"acknowledged writes not read back: {missing[:10]}"


@pytest.fixture(scope="module")
def release(kube: Kube) -> Kube:
    return kube


def test_1_install_and_rollout(release: Kube) -> None:
    """Goal: `helm install` brings up 3 ready pods of the image with bound PVCs."""
    k = release
    k.helm("install", RELEASE, str(k.chart), *k.base_values(), "--timeout", "5m")
    k.wait_rollout(600)
    k.print_state("after install")
    pvcs = k.core.list_namespaced_persistent_volume_claim(k.ns).items
    assert len(pvcs) == 3
    assert all(p.status.phase == "Bound" for p in pvcs)
    status = json.loads(k.cli(f"{FULLNAME}-0", "status", "--url", k.local_url()))
    assert status["quorum"]["reachable"] is True
    assert status["quorum"]["size"] == 2
    # ordinals 0..2 of the 7 the peer list names (maxReplicas): the others have no pod
    assert all(status["peers"][str(i)]["up"] for i in (2, 3)), status["peers"]
    assert status["scaler"]["state"] == "in_sync", status["scaler"]


def test_2_put_get_via_service_and_every_pod(release: Kube) -> None:
    """Goal: a write through the client Service is read back from every pod by its headless
    DNS name (the peers found each other through DNS)."""
    k = release
    out = k.cli(f"{FULLNAME}-0", "put", "e2e/greeting", "hello-k8s", "--url", k.service_url())
    assert '"version": 1' in out, out
    for pod in k.pod_names():
        got = k.cli(f"{FULLNAME}-1", "get", "e2e/greeting", "--url", k.dns(pod))
        assert got == "hello-k8s", (pod, got)
        stale = k.cli(pod, "get", "e2e/greeting", "--stale", "--url", k.local_url())
        print(f"e2e: {pod} local replica: {stale!r}")
    # auth.mode=token is the chart's default: no token, no access (and nothing written)
    refused = k.exec(f"{FULLNAME}-0", ["sh", "-c", "paxoskv put e2e/greeting sneaky --url "
                                       f"{k.service_url()} 2>&1; echo rc=$?"])
    assert "401 unauthorized" in refused and "rc=1" in refused, refused
    assert k.cli(f"{FULLNAME}-1", "get", "e2e/greeting", "--url", k.service_url()) == "hello-k8s"
    print("e2e: a put without a token: 401, nothing written")


def test_3_deleted_pod_comes_back_with_its_data(release: Kube) -> None:
    """Goal: a deleted pod is recreated on the same PVC and still holds its acceptor state."""
    k = release
    victim = f"{FULLNAME}-2"
    k.cli(f"{FULLNAME}-0", "put", "e2e/durable", "on-disk", "--url", k.service_url())
    # every acceptor holds it once the repair/accept reaches it; read it on the victim first
    k.wait("victim holds the key locally", lambda: (
        k.cli(victim, "get", "e2e/durable", "--stale", "--url",
              k.local_url()) == "on-disk", "stale read"), 60)
    pvc_uid = k.core.read_namespaced_persistent_volume_claim(f"data-{victim}", k.ns).metadata.uid
    old_uid = k.core.read_namespaced_pod(victim, k.ns).metadata.uid
    k.core.delete_namespaced_pod(victim, k.ns)
    k.wait(f"{victim} recreated and ready", lambda: k.pod_ready(victim, uid_not=old_uid), 300)
    assert k.core.read_namespaced_persistent_volume_claim(
        f"data-{victim}", k.ns).metadata.uid == pvc_uid
    local = k.cli(victim, "get", "e2e/durable", "--stale", "--url", k.local_url())
    assert local == "on-disk", local
    status = json.loads(k.cli(victim, "status", "--url", k.local_url()))
    assert status["acceptor_mode"] == "normal"
    assert status["incarnation"] >= 2


def _start_workload(k: Kube, name: str, duration: int, *, seed: int, clients: int,
                    prefix: str) -> str:
    """Start the WORKLOAD pod ``name`` (``clients`` clients for ``duration`` s on keys under
    ``prefix``), wait until it runs and give it 5 s of load; its pod name."""
    script = WORKLOAD.format(url=k.service_url(), duration=duration, seed=seed,
                             clients=clients, prefix=prefix)
    pod = k.run_pod(name, script, duration + 300)
    k.wait("workload running", lambda: (
        k.core.read_namespaced_pod(pod, k.ns).status.phase in ("Running", "Succeeded"),
        "phase"), 120)
    time.sleep(5)
    return pod


def test_4_rolling_pod_deletes_under_load_lose_nothing(release: Kube) -> None:
    """Goal: pods deleted one at a time while 6 clients write and read: the history is
    linearizable (project checker) and every acknowledged write is read back."""
    k = release
    duration = int(os.environ.get("PAXOSKV_E2E_LOAD_SECONDS", "75"))
    pod = _start_workload(k, "e2e-workload", duration, seed=4, clients=6, prefix="e2e4-")
    for victim in k.pod_names():
        old = k.core.read_namespaced_pod(victim, k.ns).metadata.uid
        k.core.delete_namespaced_pod(victim, k.ns)
        k.wait(f"{victim} back", lambda v=victim, o=old: k.pod_ready(v, uid_not=o), 300)
        k.wait_rollout(300)
        time.sleep(3)
    log = k.wait_pod_done(pod, duration + 400)
    check_history(log, "rolling-deletes")


def _start_prober(k: Kube, name: str, duration: int, https: bool) -> None:
    """A pod writing through the client Service every 0.2 s until ``_stop_prober`` (or
    ``duration`` seconds), running once this returns."""
    host = f"{FULLNAME}.{k.ns}.svc.cluster.local"
    k.run_pod(name, PROBER.format(host=host, port=PORT, duration=duration, https=https),
              duration)
    k.wait("prober running", lambda: (
        k.core.read_namespaced_pod(name, k.ns).status.phase == "Running", "phase"), 120)
    time.sleep(5)


def _stop_prober(k: Kube, name: str, duration: int) -> tuple[int, int, float]:
    """Tell the prober to end (it reads probe/stop now and then); its figures."""
    k.cli(k.pod_names()[0], "put", "probe/stop", "1", "--url", k.service_url())
    return _probe_outage(k.wait_pod_done(name, duration + 120))


def _upgrade_rolls_every_pod(k: Kube, *args: str) -> float:
    """``helm upgrade`` with the base values and ``args``; waits for the rollout and checks
    that every pod was replaced. The rollout's seconds."""
    before = k.pod_uids()
    k.helm("upgrade", RELEASE, str(k.chart), *k.base_values(), *args, "--timeout", "5m")
    rollout_s = k.wait_rollout(600)
    after = k.pod_uids()
    assert all(after[name] != uid for name, uid in before.items()), \
        f"upgrade {' '.join(args)}: not every pod rolled"
    return rollout_s


def _probe_outage(log: str) -> tuple[int, int, float]:
    """Probe writes, failed ones, and the longest run of failures in seconds."""
    samples = json.loads(line_value(log, "SAMPLES "))
    worst, start = 0.0, None
    for t, ok in samples:
        if not ok and start is None:
            start = t
        elif ok and start is not None:
            worst, start = max(worst, t - start), None
    if start is not None:
        worst = max(worst, samples[-1][0] - start)
    return len(samples), sum(1 for _, ok in samples if not ok), worst


READINESS_WINDOW_S = 5 * 2 + 10
"""How long the Service may route to a pod that stopped: readiness period x failureThreshold,
plus the probe's slack."""


def _https_code(k: Kube, pod: str, path: str, token: str) -> str:
    """POST ``path`` on the pod's own client port over HTTPS (CA from PAXOSKV_CACERT) with
    ``token``; the HTTP status, or the exception's name if no HTTP answer came."""
    return k.exec(pod, ["python3", "-c", (
        "import os, ssl, urllib.request as u, urllib.error as e\n"
        "ctx = ssl.create_default_context(cafile=os.environ['PAXOSKV_CACERT'])\n"
        "try:\n"
        f"    u.urlopen(u.Request('{k.local_url()}{path}', data=b'',\n"
        f"              headers={{'Authorization': 'Bearer {token}'}}), context=ctx)\n"
        "    print(200)\n"
        "except e.HTTPError as err:\n"
        "    print(err.code)")]).strip()


def test_5_upgrade_rolls_over_tls_without_losing_quorum(release: Kube) -> None:
    """Goal: `helm upgrade` of the default (TLS, tokens, peer port) release rolls every pod,
    and writes through the client Service over HTTPS fail for no longer than the readiness
    window while it does; the upgrade keeps the generated CA, certificate and admin token
    (looked up, not made anew: a new CA would cut the restarted pods off from the rest).
    The pods then answer only HTTPS, and their client port does not serve /internal/."""
    k = release
    duration = 150
    _start_prober(k, "e2e-prober", duration, https=True)
    token_before, tls_before = k.admin_token(), k.tls_secret_data()
    started = time.monotonic()
    rollout_s = _upgrade_rolls_every_pod(k, "--set-string", "podAnnotations.e2e-roll=1")
    print(f"e2e: upgrade rolled 3 pods in {rollout_s:.0f}s")
    assert time.monotonic() - started < duration, "the prober ended before the upgrade did"
    writes, failed, worst = _stop_prober(k, "e2e-prober", duration)
    assert k.admin_token() == token_before, "helm upgrade replaced the admin token"
    assert k.tls_secret_data() == tls_before, "helm upgrade replaced the CA or certificate"
    pod = k.pod_names()[0]
    # With the admin token an unknown route is 404; a peer endpoint still served on the
    # client port would answer 401 (the token is not the peer secret).
    assert _https_code(k, pod, "/internal/hello", token_before) == "404"
    plain = k.exec(pod, ["python3", "-c", (
        "import socket\n"
        f"s = socket.create_connection(('127.0.0.1', {PORT}), timeout=5)\n"
        "s.sendall(b'GET /healthz HTTP/1.1\\r\\nHost: t\\r\\nConnection: close\\r\\n\\r\\n')\n"
        "got = b''\n"
        "try:\n"
        "    while chunk := s.recv(4096):\n"
        "        got += chunk\n"
        "except OSError:\n"
        "    pass\n"
        "print('answered' if got.startswith(b'HTTP/') else 'no HTTP answer')")]).strip()
    assert plain == "no HTTP answer", f"the client port answered plain HTTP: {plain}"
    print(f"e2e: {writes} probe writes over HTTPS, {failed} failed, longest outage "
          f"{worst:.1f}s (allowed {READINESS_WINDOW_S}s); plain HTTP: {plain}")
    assert worst <= READINESS_WINDOW_S


def test_6_helm_test(release: Kube) -> None:
    """Goal: the chart's own `helm test` hook (a put and a get) passes."""
    # (no --logs: the hook pod is deleted once it succeeds, so there are none to fetch)
    res = release.helm("test", RELEASE, "--timeout", "3m")
    suite = res.stdout[res.stdout.find("TEST SUITE"):res.stdout.find("NOTES")]
    print(suite)
    assert "Phase:          Succeeded" in suite


def _rule_exprs(k: Kube) -> list[str]:
    res = subprocess.run([k.helm_bin, "template", RELEASE, str(k.chart), "-n", k.ns,
                          "--set", "prometheusRule.enabled=true",
                          "--show-only", "templates/prometheusrule.yaml"],
                         capture_output=True, text=True, check=True, timeout=60)
    return rule_exprs(yaml.safe_load(res.stdout))


def _dashboard_exprs(k: Kube) -> list[str]:
    board = json.loads((k.chart / "dashboards" / "paxoskv.json").read_text())
    return dashboard_exprs(board, k.ns, RELEASE)


def _query(base: str, expr: str) -> dict[str, Any]:
    url = f"{base}/api/v1/query?" + urllib.parse.urlencode({"query": expr})
    with urllib.request.urlopen(url, timeout=10) as resp:
        doc: dict[str, Any] = json.loads(resp.read())
    return doc


def test_7_prometheus_scrapes_and_every_query_works(release: Kube, tmp_path: Path) -> None:
    """Goal: a real Prometheus server discovers the pods through the Kubernetes API, scrapes
    them, and every dashboard query returns data and every alert expression evaluates."""
    k = release
    if os.environ.get("PAXOSKV_CLUSTER_KIND") == "kind":
        pytest.skip("on kind, pods are not reachable from the host: install the chart with "
                    "serviceMonitor.enabled on a prometheus-operator instead")
    binary = os.environ.get("PAXOSKV_PROMETHEUS") or subprocess.run(
        [str(ROOT / "e2e" / "prometheus.sh")], capture_output=True, text=True, check=True,
        timeout=3600).stdout.strip()
    config = {
        "global": {"scrape_interval": "2s", "evaluation_interval": "2s"},
        "scrape_configs": [{
            "job_name": "paxoskv-pods",
            "kubernetes_sd_configs": [{"role": "pod", "kubeconfig_file": k.kubeconfig,
                                       "namespaces": {"names": [k.ns]}}],
            "relabel_configs": [
                {"source_labels": ["__meta_kubernetes_pod_label_app_kubernetes_io_name"],
                 "regex": "paxoskv", "action": "keep"},
                {"source_labels": ["__meta_kubernetes_pod_container_port_number"],
                 "regex": str(METRICS_PORT), "action": "keep"},
                {"source_labels": ["__meta_kubernetes_namespace"], "target_label": "namespace"},
                {"source_labels": ["__meta_kubernetes_pod_name"], "target_label": "pod"},
                {"source_labels": ["__meta_kubernetes_pod_label_app_kubernetes_io_instance"],
                 "target_label": "job"},
            ],
        }],
    }
    cfg = tmp_path / "prometheus.yml"
    cfg.write_text(yaml.safe_dump(config))
    import socket
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    log = open(tmp_path / "prometheus.log", "wb")  # noqa: SIM115 - closed below
    proc = subprocess.Popen([binary, f"--config.file={cfg}",
                             f"--storage.tsdb.path={tmp_path / 'tsdb'}",
                             f"--web.listen-address=127.0.0.1:{port}"],
                            stdout=log, stderr=subprocess.STDOUT)
    base = f"http://127.0.0.1:{port}"
    try:
        def targets_up() -> tuple[bool, str]:
            try:
                with urllib.request.urlopen(f"{base}/api/v1/targets", timeout=5) as r:
                    active = json.loads(r.read())["data"]["activeTargets"]
            except OSError as exc:
                return False, str(exc)
            up = [t for t in active if t["health"] == "up"]
            return len(up) >= 3, f"{len(up)}/{len(active)} targets up"
        k.wait("prometheus scraping 3 pods", targets_up, 180)
        # traffic for rates, then enough scrapes for a 1m rate window to hold two samples
        for i in range(20):
            k.cli(f"{FULLNAME}-0", "put", f"e2e/prom/{i}", "x", "--url", k.service_url())
        time.sleep(20)
        empty, errors = [], []
        for expr in _dashboard_exprs(k):
            doc = _query(base, expr)
            if doc.get("status") != "success":
                errors.append((expr, doc.get("error")))
            elif not doc["data"]["result"]:
                empty.append(expr)
        for expr in _rule_exprs(k):
            doc = _query(base, expr)
            if doc.get("status") != "success":
                errors.append((expr, doc.get("error")))
        print(f"e2e: prometheus: {len(_dashboard_exprs(k))} dashboard queries, "
              f"{len(_rule_exprs(k))} alert expressions; errors {len(errors)}, empty {len(empty)}")
        assert not errors, errors
        # series that only exist after an event (conflicts, repairs, restarts) may be empty
        unexplained = [e for e in empty if not any(a in e for a in ALLOWED_EMPTY)]
        assert not unexplained, unexplained
    finally:
        proc.terminate()
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()


FILL = """
import os
from paxoskv.client import Client
env = os.environ
client = Client({url!r}, token=env["PAXOSKV_TOKEN"], ca_file=env.get("PAXOSKV_CACERT"))
for i in range({n}):
    client.put(f"e2e/fill/{{i:04d}}", b"x" * 64)
print("FILLED {n}")
"""

FILL_KEYS = 500

FILL_CHECK = """
import os
from paxoskv.client import Client
env = os.environ
client = Client({url!r}, token=env["PAXOSKV_TOKEN"], ca_file=env.get("PAXOSKV_CACERT"))
bad = [i for i in range({n}) if client.get(f"e2e/fill/{{i:04d}}").body != b"x" * 64]
print("FILL ok=%d bad=%r" % ({n} - len(bad), bad[:10]))
"""


def _check_fill(k: Kube) -> None:
    """Every key FILL wrote reads back, through the client Service."""
    script = FILL_CHECK.format(url=k.service_url(), n=FILL_KEYS)
    out = k.exec(f"{FULLNAME}-0", ["sh", "-c", "PAXOSKV_TOKEN=" + shlex.quote(k.admin_token())
                                   + " python3 -c " + shlex.quote(script)])
    assert line_value(out, "FILL ") == f"ok={FILL_KEYS} bad=[]", out


def _follower(k: Kube, pod: str) -> dict[str, Any]:
    """What ``pod`` says of the acceptor set: its held config, its driver, its scaler (a
    pod that is restarting says nothing: state "unreachable")."""
    try:
        status = json.loads(k.cli(pod, "status", "--url", k.local_url()))
        return {"scaler": status["scaler"], "config": status["acceptor_config"],
                "driving": status["reconfiguration"]["running"]}
    except Exception as exc:  # exec into a pod being made again, or no answer yet
        return {"scaler": {"state": "unreachable", "detail": f"{type(exc).__name__}: "
                           f"{str(exc)[:120]}", "replicas": None},
                "config": {"epoch": None, "prepare": None, "accept": None}, "driving": False}


def _scale_to(k: Kube, replicas: int) -> None:
    """``kubectl scale`` through the API: the scale subresource of the StatefulSet."""
    print(f"e2e: scaling the StatefulSet to {replicas}")
    k.apps.patch_namespaced_stateful_set_scale(FULLNAME, k.ns, {"spec": {"replicas": replicas}})


def _wait_changing(k: Kube, replicas: int) -> None:
    """Until pod 0 (the driver: the lowest id of the config) is driving toward ``replicas``."""
    def check() -> tuple[bool, str]:
        f = _follower(k, f"{FULLNAME}-0")
        seen = f["scaler"]["replicas"] == replicas and (
            f["scaler"]["state"] == "changing" or f["driving"])
        return seen, f"scaler {f['scaler']['state']} ({f['scaler']['detail']})"
    k.wait(f"a change toward {replicas} acceptors running", check, 300, interval_s=0.5)


def _wait_acceptors(k: Kube, replicas: int, timeout_s: float = 420) -> float:
    """Until the driver read the record by a round and found it STABLE with ordinals
    0..replicas-1 (scaler in_sync), and holds that config itself."""
    want = list(range(1, replicas + 1))

    def check() -> tuple[bool, str]:
        f = _follower(k, f"{FULLNAME}-0")
        cfg, sc = f["config"], f["scaler"]
        ok = (sc["state"] == "in_sync" and sc["replicas"] == replicas
              and cfg["prepare"] == want and cfg["accept"] == want)
        return ok, (f"scaler {sc['state']} ({sc['detail']}), epoch {cfg['epoch']} prepare "
                    f"{cfg['prepare']} accept {cfg['accept']}")
    return k.wait(f"acceptor set = ordinals 0..{replicas - 1}", check, timeout_s)


def _kill(k: Kube, pod: str) -> None:
    """kill -9 of a pod: deleted with no grace period (`kubectl delete --force
    --grace-period=0`); the StatefulSet makes it again on the same volume."""
    print(f"e2e: killing {pod} (grace period 0)")
    k.core.delete_namespaced_pod(pod, k.ns, grace_period_seconds=0)


def test_8_scaling_follows_the_replica_count_under_load_and_kills(release: Kube) -> None:
    """Goal: `kubectl scale` 3 -> 5 -> 3 changes the acceptor set to match, one acceptor at
    a time, while clients write and read and one pod is killed (grace period 0) during each
    change: the history is linearizable and every acknowledged write reads back. Then
    `helm upgrade --set replicas=5` and back to 3 do the same without rolling a pod (the
    pod template does not depend on the count)."""
    k = release
    try:
        _scale_3_5_3(k)
    finally:
        # The later steps start from three pods and three volumes, whatever happened here.
        k.apps.patch_namespaced_stateful_set_scale(FULLNAME, k.ns, {"spec": {"replicas": 3}})
        for ordinal in (3, 4):
            with contextlib.suppress(ApiException):
                k.core.delete_namespaced_persistent_volume_claim(f"data-{FULLNAME}-{ordinal}",
                                                                 k.ns)
        k.wait("volumes of ordinals 3 and 4 gone", lambda: (
            len(k.core.list_namespaced_persistent_volume_claim(k.ns).items) == 3, "pvcs"), 300)
    k.print_state("after scaling 3 -> 5 -> 3 twice")


def _scale_3_5_3(k: Kube) -> None:
    """Step 8's body (the step itself cleans up after it, passed or not)."""
    started = time.monotonic()
    # Some keys, so each change's catch-up has work to do (a window to kill a pod in).
    k.exec(f"{FULLNAME}-0", ["sh", "-c", "PAXOSKV_TOKEN=" + shlex.quote(k.admin_token())
                             + " python3 -c " + shlex.quote(FILL.format(
                                 url=k.service_url(), n=FILL_KEYS))])
    duration = int(os.environ.get("PAXOSKV_E2E_SCALE_SECONDS", "180"))
    # Keys of their own: step 4's workload wrote k000... and once-c... (the checker starts
    # each key from absent).
    pod = _start_workload(k, "e2e-workload-8", duration, seed=8, clients=4, prefix="e2e8-")
    # Grow: pods 3 and 4 start, and are added once they answer; the driver is killed.
    _scale_to(k, 5)
    _wait_changing(k, 5)
    _kill(k, f"{FULLNAME}-0")
    grow_s = _wait_acceptors(k, 5)
    k.wait_rollout(300)
    # Shrink: the StatefulSet deletes pods 4 and 3 at once; the driver removes them from the
    # config (the quorum of the rest holds); another pod is killed meanwhile.
    _scale_to(k, 3)
    _wait_changing(k, 3)
    _kill(k, f"{FULLNAME}-2")
    shrink_s = _wait_acceptors(k, 3)
    k.wait_rollout(300)
    in_time = time.monotonic() - started < duration
    _check_fill(k)
    log = k.wait_pod_done(pod, duration + 400)
    check_history(log, "scale-3-5-3")
    print(f"e2e: kubectl scale 3 -> 5 in {grow_s:.0f}s, 5 -> 3 in {shrink_s:.0f}s "
          f"({'within' if in_time else 'partly after'} the {duration}s of load)")
    assert in_time, f"the changes outlasted the {duration}s of load"
    # The same through helm: only spec.replicas changes, no pod rolls.
    uids = k.pod_uids()
    # --reuse-values, as the chart README says: step 5 left a pod annotation that the base
    # values alone would take away (and roll the pods for).
    k.helm("upgrade", RELEASE, str(k.chart), "--reuse-values", "--set", "replicas=5",
           "--timeout", "5m")
    k.wait_rollout(300)
    helm_grow_s = _wait_acceptors(k, 5)
    k.cli(f"{FULLNAME}-4", "put", "e2e/five", "5", "--url", k.dns(f"{FULLNAME}-4"))
    k.helm("upgrade", RELEASE, str(k.chart), "--reuse-values", "--set", "replicas=3",
           "--timeout", "5m")
    helm_shrink_s = _wait_acceptors(k, 3)
    k.wait_rollout(300)
    assert k.pod_uids() == uids, "helm upgrade --set replicas rolled a pod"
    _check_fill(k)
    for key, value in (("e2e/five", "5"), ("e2e/greeting", "hello-k8s")):
        got = k.cli(f"{FULLNAME}-2", "get", key, "--url", k.service_url())
        assert got == value, (key, got)
    print(f"e2e: helm upgrade replicas=5 in {helm_grow_s:.0f}s, back to 3 in "
          f"{helm_shrink_s:.0f}s, no pod rolled; step took {time.monotonic() - started:.0f}s")


def _put_acknowledged(k: Kube, key: str, value: str, within_s: float = 60) -> None:
    """Put through the Service until acknowledged. Right after a fresh install a put can
    fail before it reaches a node (the new Service's name or endpoints are not there yet);
    a failed put is retried and its error printed, and the step then checks that every
    acknowledged put survives, which is its point."""
    deadline = time.monotonic() + within_s
    cmd = shlex.join(["paxoskv", "put", key, value, "--url", k.service_url()])
    while True:
        out = k.exec(f"{FULLNAME}-0", ["sh", "-c", f"PAXOSKV_TOKEN={shlex.quote(k.admin_token())} "
                                       f"{cmd} 2>&1"])
        if '"version"' in out:
            return
        print(f"e2e: put {key} not acknowledged, retrying: {out.strip()[-200:]}")
        if time.monotonic() > deadline:
            _explain_missing_read(k, key)
            raise AssertionError(f"put {key} not acknowledged in {within_s:.0f}s: {out}")
        time.sleep(2)


def test_9_a_release_of_the_one_port_layout_moves_to_the_peer_port_and_tls(
        release: Kube) -> None:
    """Goal: a release installed the 0.1.x way (one port for everything, no TLS) follows
    the chart README to the defaults without losing a write: three rolling upgrades move
    the peers to their own port under a write load (probe writes fail no longer than the
    readiness window), then the chart refuses to switch TLS on in a rolling upgrade, and
    the documented switch (allowSwitchOnRunningRelease, then every pod restarted at once)
    brings the release up over TLS with every key written before it."""
    k = release
    k.helm("uninstall", RELEASE, "--wait", "--timeout", "3m")
    for pod in k.pod_names():
        k.core.delete_namespaced_persistent_volume_claim(f"data-{pod}", k.ns)
    k.wait("old release and its volumes gone", lambda: (
        not k.core.list_namespaced_persistent_volume_claim(k.ns).items
        and not [p for p in k.core.list_namespaced_pod(k.ns).items
                 if p.metadata.name in k.pod_names()], "pods and pvcs"), 300)
    k.scheme = "http"
    one_port = ["--set", "tls.enabled=false", "--set", "peerPortMode=shared"]
    k.helm("install", RELEASE, str(k.chart), *k.base_values(), *one_port, "--timeout", "5m")
    k.wait_rollout(600)
    for i in range(10):
        _put_acknowledged(k, f"e2e/old/{i}", f"v{i}")
    steps = ["both-dial-port", "both-dial-peer-port", "separate"]
    duration = 130 * len(steps)
    _start_prober(k, "e2e-prober-9", duration, https=False)
    started = time.monotonic()
    for mode in steps:
        rollout_s = _upgrade_rolls_every_pod(k, "--set", "tls.enabled=false",
                                             "--set", f"peerPortMode={mode}")
        print(f"e2e: upgrade to peerPortMode={mode} rolled 3 pods in {rollout_s:.0f}s")
    assert time.monotonic() - started < duration, "the prober ended before the upgrades did"
    writes, failed, worst = _stop_prober(k, "e2e-prober-9", duration)
    print(f"e2e: {len(steps)} upgrades; {writes} probe writes, {failed} failed, longest "
          f"outage {worst:.1f}s (allowed {READINESS_WINDOW_S}s)")
    assert worst <= READINESS_WINDOW_S
    # TLS: refused as a rolling upgrade, then the documented switch.
    refused = k.helm("upgrade", RELEASE, str(k.chart), *k.base_values(), check=False)
    assert refused.returncode != 0 and "tls.allowSwitchOnRunningRelease" in refused.stderr, \
        refused.stderr
    print(f"e2e: helm refused to switch TLS pod by pod: {refused.stderr.strip()[-160:]}")
    k.helm("upgrade", RELEASE, str(k.chart), *k.base_values(), "--set",
           "tls.allowSwitchOnRunningRelease=true", "--timeout", "5m")
    switch_started = time.monotonic()
    for pod in k.pod_names():
        k.core.delete_namespaced_pod(pod, k.ns)
    k.scheme = "https"
    k.wait_rollout(600)
    print(f"e2e: every pod restarted with TLS; ready again in "
          f"{time.monotonic() - switch_started:.0f}s")
    status = json.loads(k.cli(f"{FULLNAME}-1", "status", "--url", k.local_url()))
    assert all(status["peers"][str(i)]["up"] for i in (1, 3)), status["peers"]
    for i in range(10):
        got = k.cli(f"{FULLNAME}-2", "get", f"e2e/old/{i}", "--url", k.service_url())
        if got != f"v{i}":
            _explain_missing_read(k, f"e2e/old/{i}")
        assert got == f"v{i}", (i, got)
    out = k.cli(f"{FULLNAME}-0", "put", "e2e/after-tls", "yes", "--url", k.service_url())
    assert '"version": 1' in out, out
    print("e2e: 10 keys written before the move read back over TLS; a new write succeeds")


def _explain_missing_read(k: Kube, key: str) -> None:
    """Print what a failed read-back said and what each pod logged, for the report."""
    token = shlex.quote(k.admin_token())
    for pod in k.pod_names():
        said = k.exec(pod, ["sh", "-c", f"PAXOSKV_TOKEN={token} paxoskv get {shlex.quote(key)} "
                             f"--url {shlex.quote(k.local_url())} 2>&1; echo rc=$?"])
        print(f"e2e: {pod} reading {key} locally: {said.strip()[-400:]}")
        try:
            log = k.core.read_namespaced_pod_log(pod, k.ns, container="paxoskv")
        except ApiException as exc:
            log = f"(no log: {exc.reason})"
        print(f"e2e: {pod} log tail:\n{log[-6000:]}")


BACKUP_KEYS = 200

BACKUP_DATA = """
import hashlib, os, sys
from paxoskv.client import Client
def value(i):
    # binary (not UTF-8) values of 0 to ~200 bytes; key 0 holds the empty value
    if i == 0:
        return b""
    return hashlib.sha256(str(i).encode()).digest() * (1 + i % 6) + bytes([i % 256, 0, 255])
client = Client({url!r}, token={token!r}, ca_file=os.environ["PAXOSKV_CACERT"])
bad = []
for i in range({n}):
    key = f"e2e/backup/{{i:03d}}"
    if {write}:
        client.put(key, value(i))
    else:
        got = client.get(key).body
        if got != value(i):
            bad.append((key, len(got), len(value(i))))
print("DATA ok=%d bad=%r" % ({n} - len(bad), bad[:10]))
"""


def _backup_data(k: Kube, pod: str, write: bool) -> str:
    """Write (or read back and compare byte for byte) the step's keys from inside ``pod``,
    through the client Service."""
    script = BACKUP_DATA.format(url=k.service_url(), token=k.admin_token(), n=BACKUP_KEYS,
                                write=write)
    return line_value(k.exec(pod, ["python3", "-c", script]), "DATA ")


def test_10_backup_cronjob_and_restore_into_a_new_release(release: Kube) -> None:
    """Goal: the chart's backup CronJob writes a complete backup file to its volume, and the
    chart's restore Job brings every key back, byte for byte, into a new release installed
    after the old one and its data volumes were deleted."""
    k = release
    k.scheme = "https"
    started = time.monotonic()
    # The backup claim belongs to the test, not to the release: it outlives both.
    k.core.create_namespaced_persistent_volume_claim(k.ns, k.raw().V1PersistentVolumeClaim(
        metadata=k.raw().V1ObjectMeta(name=BACKUP_CLAIM),
        spec=k.raw().V1PersistentVolumeClaimSpec(
            access_modes=["ReadWriteOnce"],
            resources=k.raw().V1VolumeResourceRequirements(requests={"storage": "64Mi"}))))
    # The release of step 9 gains the CronJob (no pod rolls); installed here if run alone.
    k.helm("upgrade", "--install", RELEASE, str(k.chart), *k.base_values(), *backup_values(),
           "--timeout", "5m")
    k.wait_rollout(600)
    assert _backup_data(k, f"{FULLNAME}-0", write=True) == f"ok={BACKUP_KEYS} bad=[]"
    log = k.wait_job_done(k.job_from_cronjob(BACKUP_CRONJOB, "e2e-backup-now"), 240)
    print(f"e2e: backup job log:\n{log}")
    file = line_value(log, "backup: wrote /backup/")
    assert re.fullmatch(r"paxoskv-[0-9]{8}T[0-9]{6}Z\.backup", file), file
    records = int(re.findall(r'"records": ([0-9]+)', log)[-1])
    assert records >= BACKUP_KEYS, records
    listing = log[log.index("backup: files on the volume:"):]
    assert file in listing and ".partial" not in listing, listing
    # The old release and its data volumes go; the backup claim stays.
    k.helm("uninstall", RELEASE, "--wait", "--timeout", "3m")
    for pod in k.pod_names():
        k.core.delete_namespaced_persistent_volume_claim(f"data-{pod}", k.ns)
    k.wait("old release and its volumes gone", lambda: (
        not [p for p in k.core.list_namespaced_persistent_volume_claim(k.ns).items
             if p.metadata.name.startswith("data-")]
        and not [p for p in k.core.list_namespaced_pod(k.ns).items
                 if p.metadata.name in k.pod_names()], "pods and pvcs"), 300)
    claim = k.core.read_namespaced_persistent_volume_claim(BACKUP_CLAIM, k.ns)
    assert claim.status.phase == "Bound", claim.status.phase
    # A new release restores the file at install (post-install hook; helm waits for it).
    # (helm's timeout above restore.timeoutSeconds: the hook's own deadline fails first)
    res = k.helm("install", RELEASE, str(k.chart), *k.base_values(), *restore_values(file),
                 "--timeout", "8m", check=False)
    restore_log = k.job_log(RESTORE_JOB)
    print(f"e2e: restore job log:\n{restore_log}")
    assert res.returncode == 0, f"helm install with restore failed:\n{res.stdout}\n{res.stderr}"
    k.wait_rollout(600)
    assert k.batch.read_namespaced_job(RESTORE_JOB, k.ns).status.succeeded == 1
    assert f'"written": {records}' in restore_log and '"failed": 0' in restore_log, restore_log
    assert _backup_data(k, f"{FULLNAME}-1", write=False) == f"ok={BACKUP_KEYS} bad=[]"
    print(f"e2e: {records} keys backed up by the CronJob's job and restored by the new "
          f"release's hook; {BACKUP_KEYS} read back byte for byte; step took "
          f"{time.monotonic() - started:.0f}s")
