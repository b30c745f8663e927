"""The chart's backup CronJob and restore Job (values `backup.*`, `restore.*`; chart README
"Backup and restore"): what they render, that their pods are clients like any other (TLS CA,
token, NetworkPolicy) and never look like nodes, that their shell scripts do what the README
says (run here with a stand-in `paxoskv`), and that the exact values e2e step 10 installs
render and pass kubeconform.
"""

from __future__ import annotations

import importlib.util
import os
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml
from chart_helpers import (
    CHART,
    HELM,
    KUBE_VERSION,
    KUBECONFORM,
    NAMESPACE,
    RELEASE,
    ROOT,
    SKIP_REASON,
    helm_template,
    kubeconform,
    kubeconform_manifests,
    only,
    render,
)
from test_chart import _restricted_violations

pytestmark = pytest.mark.skipif(HELM is None, reason=SKIP_REASON)
requires_kubeconform = pytest.mark.skipif(
    KUBECONFORM is None, reason="kubeconform is not installed: run `make chart-tools`"
)

FULLNAME = f"{RELEASE}-paxoskv"
BACKUP = {"backup": {"enabled": True}}
RESTORE = {"restore": {"enabled": True, "claimName": "old-backups",
                       "file": "paxoskv-20261201T030000Z.backup"}}


def cronjob_pod(docs: list[dict[str, Any]]) -> dict[str, Any]:
    pod: dict[str, Any] = only(docs, "CronJob")["spec"]["jobTemplate"]["spec"]["template"]
    return pod


def restore_pod(docs: list[dict[str, Any]]) -> dict[str, Any]:
    pod: dict[str, Any] = only(docs, "Job")["spec"]["template"]
    return pod


def env_of(c: dict[str, Any]) -> dict[str, Any]:
    return {e["name"]: e.get("value", e.get("valueFrom")) for e in c["env"]}


def volumes_of(spec: dict[str, Any]) -> dict[str, Any]:
    return {v["name"]: v for v in spec["volumes"]}


def selects(selector: dict[str, str], labels: dict[str, str]) -> bool:
    return all(labels.get(k) == v for k, v in selector.items())


# ---- off by default -----------------------------------------------------------------------


def test_off_by_default() -> None:
    docs = render()
    assert not [d for d in docs if d["kind"] in ("CronJob", "Job", "PersistentVolumeClaim")]
    values = yaml.safe_load((CHART / "values.yaml").read_text())
    assert values["backup"]["enabled"] is False
    assert values["restore"]["enabled"] is False


# ---- backup CronJob -----------------------------------------------------------------------


def test_backup_cronjob_is_a_tls_client_with_the_admin_token() -> None:
    docs = render(BACKUP)
    cj = only(docs, "CronJob")
    assert cj["metadata"]["name"] == f"{FULLNAME}-backup"
    assert cj["spec"]["concurrencyPolicy"] == "Forbid"
    assert cj["spec"]["schedule"] == "0 3 * * *"
    pod = cronjob_pod(docs)["spec"]
    (c,) = pod["containers"]
    env = env_of(c)
    assert env["PAXOSKV_URL"] == f"https://{FULLNAME}.{NAMESPACE}.svc.cluster.local:7000"
    assert env["PAXOSKV_TOKEN"] == {"secretKeyRef": {"name": f"{FULLNAME}-auth",
                                                     "key": "admin-token"}}
    assert env["PAXOSKV_CACERT"] == "/etc/paxoskv/ca/ca.crt"
    assert env["BACKUP_KEEP"] == "7"
    vols = volumes_of(pod)
    # only the CA of the TLS Secret, never the nodes' key
    assert vols["ca"]["secret"] == {"secretName": f"{FULLNAME}-tls",
                                    "items": [{"key": "ca.crt", "path": "ca.crt"}]}
    assert vols["backup"]["persistentVolumeClaim"]["claimName"] == f"{FULLNAME}-backup"
    mounts = {m["name"]: m["mountPath"] for m in c["volumeMounts"]}
    assert mounts == {"tmp": "/tmp", "ca": "/etc/paxoskv/ca", "backup": "/backup"}
    assert c["command"][:2] == ["/bin/sh", "-ec"]
    assert "paxoskv backup --out" in c["command"][2]
    assert pod["restartPolicy"] == "Never"
    assert pod["automountServiceAccountToken"] is False
    assert _restricted_violations(pod) == []


def test_backup_claim_is_kept_by_uninstall_and_sized_by_values() -> None:
    docs = render({"backup": {"enabled": True, "persistence": {
        "size": "5Gi", "storageClass": "fast", "annotations": {"team": "db"}}}})
    pvc = only(docs, "PersistentVolumeClaim")
    assert pvc["metadata"]["name"] == f"{FULLNAME}-backup"
    assert pvc["metadata"]["annotations"] == {"helm.sh/resource-policy": "keep", "team": "db"}
    assert pvc["spec"]["resources"]["requests"]["storage"] == "5Gi"
    assert pvc["spec"]["storageClassName"] == "fast"
    assert pvc["spec"]["accessModes"] == ["ReadWriteOnce"]


def test_backup_values_reach_the_job() -> None:
    docs = render({
        "backup": {"enabled": True, "schedule": "*/5 * * * *", "timeZone": "Europe/Paris",
                   "prefix": "app/", "keep": 3, "extraArgs": ["--retries", "20"],
                   "persistence": {"existingClaim": "mine"},
                   "tokenSecret": {"name": "backup-token", "key": "token"},
                   "resources": {"requests": {"cpu": "10m"}},
                   "activeDeadlineSeconds": 600},
        "tls": {"enabled": False},
    })
    assert not [d for d in docs if d["kind"] == "PersistentVolumeClaim"]
    cj = only(docs, "CronJob")
    assert cj["spec"]["schedule"] == "*/5 * * * *"
    assert cj["spec"]["timeZone"] == "Europe/Paris"
    assert cj["spec"]["jobTemplate"]["spec"]["activeDeadlineSeconds"] == 600
    pod = cronjob_pod(docs)["spec"]
    (c,) = pod["containers"]
    env = env_of(c)
    assert env["PAXOSKV_URL"].startswith("http://")
    assert "PAXOSKV_CACERT" not in env and "ca" not in volumes_of(pod)
    assert env["PAXOSKV_TOKEN"] == {"secretKeyRef": {"name": "backup-token", "key": "token"}}
    assert env["BACKUP_PREFIX"] == "app/" and env["BACKUP_KEEP"] == "3"
    assert c["command"][3:] == ["backup", "--retries", "20"]
    assert c["resources"]["requests"]["cpu"] == "10m"
    assert volumes_of(pod)["backup"]["persistentVolumeClaim"]["claimName"] == "mine"
    assert "-mmin +11 " in c["command"][2]  # partial files older than the deadline


def test_no_token_without_auth() -> None:
    docs = render({**BACKUP, **RESTORE, "auth": {"mode": "none"}})
    for pod in (cronjob_pod(docs), restore_pod(docs)):
        assert "PAXOSKV_TOKEN" not in env_of(pod["spec"]["containers"][0])


def test_job_pods_are_admitted_clients_and_never_taken_for_nodes() -> None:
    """Labelled as clients, so the NetworkPolicy admits them; without the nodes' selector
    labels, so no Service routes to them, the PDB does not count them and the NetworkPolicy
    does not treat them as peers."""
    docs = render({**BACKUP, **RESTORE, "networkPolicy": {"enabled": True}})
    policy = only(docs, "NetworkPolicy")["spec"]
    client_rule = [r for r in policy["ingress"] if r["ports"] == [{"port": "http",
                                                                  "protocol": "TCP"}]]
    (client_sources,) = [r["from"] for r in client_rule]
    selectors = [s["podSelector"]["matchLabels"] for s in client_sources if "podSelector" in s]
    node_selectors = [policy["podSelector"]["matchLabels"]]
    node_selectors += [d["spec"]["selector"] for d in docs if d["kind"] == "Service"]
    node_selectors.append(only(docs, "PodDisruptionBudget")["spec"]["selector"]["matchLabels"])
    for pod in (cronjob_pod(docs), restore_pod(docs)):
        labels = pod["metadata"]["labels"]
        assert labels[f"{FULLNAME}-client"] == "true"
        assert any(selects(s, labels) for s in selectors), (selectors, labels)
        assert not any(selects(s, labels) for s in node_selectors), labels


def test_volume_permissions_adds_the_chown_init_container() -> None:
    docs = render({**BACKUP, **RESTORE, "volumePermissions": {"enabled": True}})
    for pod in (cronjob_pod(docs), restore_pod(docs)):
        (init,) = pod["spec"]["initContainers"]
        assert init["command"][-1] == "chown 10001:10001 /backup"
        assert init["securityContext"]["capabilities"] == {"drop": ["ALL"], "add": ["CHOWN"]}
        assert init["volumeMounts"] == [{"name": "backup", "mountPath": "/backup"}]
    docs = render({**BACKUP, **RESTORE})
    for pod in (cronjob_pod(docs), restore_pod(docs)):
        assert "initContainers" not in pod["spec"]


# ---- restore Job -----------------------------------------------------------------------------


def test_restore_job_is_a_bounded_post_install_hook() -> None:
    docs = render(RESTORE)
    job = only(docs, "Job")
    assert job["metadata"]["name"] == f"{FULLNAME}-restore"
    annotations = job["metadata"]["annotations"]
    assert annotations["helm.sh/hook"] == "post-install"  # never on upgrade
    assert annotations["helm.sh/hook-delete-policy"] == "before-hook-creation"
    assert job["spec"]["backoffLimit"] == 0
    assert job["spec"]["activeDeadlineSeconds"] == 900
    pod = restore_pod(docs)["spec"]
    (c,) = pod["containers"]
    env = env_of(c)
    assert env["RESTORE_FILE"] == "paxoskv-20261201T030000Z.backup"
    assert env["RESTORE_FORCE"] == ""
    assert env["PAXOSKV_CACERT"] == "/etc/paxoskv/ca/ca.crt"
    assert env["PAXOSKV_TOKEN"]["secretKeyRef"]["name"] == f"{FULLNAME}-auth"
    assert volumes_of(pod)["backup"]["persistentVolumeClaim"]["claimName"] == "old-backups"
    (mount,) = [m for m in c["volumeMounts"] if m["name"] == "backup"]
    assert mount == {"name": "backup", "mountPath": "/backup", "readOnly": True}
    assert _restricted_violations(pod) == []
    forced = render({"restore": {**RESTORE["restore"], "force": True}})
    assert env_of(restore_pod(forced)["spec"]["containers"][0])["RESTORE_FORCE"] == "--force"


@pytest.mark.parametrize(("restore", "message"), [
    ({"enabled": True, "file": "f.backup"}, "restore.enabled needs restore.claimName"),
    ({"enabled": True, "claimName": "c"}, "restore.enabled needs restore.file"),
    ({"enabled": True, "claimName": "c", "file": "/abs.backup"}, "/restore/file"),
    ({"enabled": True, "claimName": "c", "file": "f", "timeoutSeconds": 5},
     "/restore/timeoutSeconds"),
])
def test_restore_refuses_incomplete_values(restore: dict[str, Any], message: str) -> None:
    res = helm_template({"restore": restore}, check=False)
    assert res.returncode != 0
    assert message in res.stderr, res.stderr


@pytest.mark.parametrize(("backup", "message"), [
    ({"keep": 0}, "/backup/keep"),
    ({"schedule": ""}, "/backup/schedule"),
    ({"persistence": {"size": "lots"}}, "/backup/persistence/size"),
    ({"retention": 3}, "retention"),
])
def test_backup_schema_rejects(backup: dict[str, Any], message: str) -> None:
    res = helm_template({"backup": {"enabled": True, **backup}}, check=False)
    assert res.returncode != 0
    assert message in res.stderr, res.stderr


# ---- the scripts, run with a stand-in paxoskv ----------------------------------------------

FAKE_PAXOSKV = """#!/bin/sh
# Stand-in for the CLI: logs its arguments, then does what $FAKE_DIR/plan says for this
# call (one line a call: "ok", "fail", "unreachable", "notempty", "failedwrites").
echo "$*" >> "$FAKE_DIR/calls"
n=$(wc -l < "$FAKE_DIR/calls")
what=$(sed -n "${n}p" "$FAKE_DIR/plan")
case "$1" in
  backup)
    while [ "$1" != "--out" ]; do shift; done
    out="$2"
    echo '{"format":"paxoskv-backup"}' > "$out"
    [ "$what" = fail ] && { echo "paxoskv: cannot reach" >&2; exit 3; }
    echo '{"records": 2}'
    exit 0 ;;
  status)
    [ "$what" = unreachable ] && { echo "paxoskv: cannot reach x" >&2; exit 3; }
    exit 0 ;;
  restore)
    case "$what" in
      ok) echo '{"written": 2, "failed": 0}'; exit 0 ;;
      unreachable) echo "paxoskv: cannot reach x" >&2; exit 3 ;;
      notempty) echo "paxoskv: the cluster is not empty: it holds keys" >&2; exit 1 ;;
      failedwrites) echo '{"written": 1, "failed": 1}'; exit 1 ;;
      corrupt) echo "paxoskv: f: checksum mismatch" >&2; exit 1 ;;
    esac ;;
esac
exit 9
"""


def _fake_env(tmp_path: Path, plan: list[str]) -> dict[str, str]:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    fake = bin_dir / "paxoskv"
    fake.write_text(FAKE_PAXOSKV)
    fake.chmod(0o755)
    (bin_dir / "sleep").write_text("#!/bin/sh\nexit 0\n")  # the scripts' waits, skipped
    (bin_dir / "sleep").chmod(0o755)
    (tmp_path / "plan").write_text("\n".join(plan) + "\n")
    (tmp_path / "calls").write_text("")
    return {**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}",
            "FAKE_DIR": str(tmp_path), "PAXOSKV_URL": "https://kv:7000"}


def _script(c: dict[str, Any], tmp_path: Path, volume: Path) -> list[str]:
    """The container's command, its paths moved under tmp_path."""
    text = c["command"][2]
    assert "/backup" in text
    text = text.replace("/tmp/", f"{tmp_path}/t-").replace("/backup", str(volume))
    return [*c["command"][:2], text, *c["command"][3:]]


def _calls(tmp_path: Path) -> list[str]:
    return (tmp_path / "calls").read_text().splitlines()


def test_backup_script_keeps_the_newest_and_never_a_failed_run(tmp_path: Path) -> None:
    (c,) = cronjob_pod(render({"backup": {"enabled": True, "keep": 2,
                                          "prefix": "app/"}}))["spec"]["containers"]
    volume = tmp_path / "volume"
    volume.mkdir()
    for stamp in ("20261101T030000Z", "20261102T030000Z", "20261103T030000Z"):
        (volume / f"paxoskv-{stamp}.backup").write_text("old")
    (volume / "paxoskv-20261001T030000Z.backup.partial").write_text("stale")
    os.utime(volume / "paxoskv-20261001T030000Z.backup.partial", (0, 0))
    (volume / "other-file").write_text("not ours")
    env = {**_fake_env(tmp_path, ["ok"]), "BACKUP_PREFIX": "app/", "BACKUP_KEEP": "2"}
    res = subprocess.run(_script(c, tmp_path, volume), env=env, capture_output=True,
                         text=True, timeout=30)
    assert res.returncode == 0, res.stderr
    (call,) = _calls(tmp_path)
    assert call.startswith(f"backup --out {volume}/paxoskv-")
    assert call.endswith(".backup.partial --prefix app/")
    files = sorted(p.name for p in volume.iterdir())
    assert len(files) == 3 and files[0] == "other-file", files
    assert files[1] == "paxoskv-20261103T030000Z.backup"
    new = files[2]
    assert new.startswith("paxoskv-2") and new.endswith("Z.backup") and new > files[1]
    assert f"backup: wrote {volume}/{new}" in res.stdout
    assert "pruned paxoskv-20261102T030000Z.backup" in res.stdout
    assert "removed the unfinished" in res.stdout  # the stale .partial, gone from files

    # a failed run: non-zero, nothing pruned, its file stays .partial
    (tmp_path / "bin").rename(tmp_path / "bin-ok")
    env = {**_fake_env(tmp_path, ["fail"]), "BACKUP_PREFIX": "", "BACKUP_KEEP": "1"}
    res = subprocess.run(_script(c, tmp_path, volume), env=env, capture_output=True,
                         text=True, timeout=30)
    assert res.returncode == 3
    after = sorted(p.name for p in volume.iterdir())
    assert [f for f in after if f.endswith(".backup")] == files[1:]
    assert len([f for f in after if f.endswith(".partial")]) == 1


@pytest.mark.parametrize(("plan", "rc", "restores"), [
    # not answering yet, then a clean restore: one run, not forced
    (["unreachable", "unreachable", "ok", "ok"], 0, ["restore --in F"]),
    # a release that already holds keys is refused, once
    (["ok", "notempty"], 1, ["restore --in F"]),
    # a corrupt or truncated file is refused, once
    (["ok", "corrupt"], 1, ["restore --in F"]),
    # cut off part way: run again with --force (its own keys are there now)
    (["ok", "unreachable", "ok"], 0, ["restore --in F", "restore --in F --force"]),
    (["ok", "failedwrites", "unreachable", "ok"], 0,
     ["restore --in F", "restore --in F --force", "restore --in F --force"]),
])
def test_restore_script(tmp_path: Path, plan: list[str], rc: int, restores: list[str]) -> None:
    (c,) = restore_pod(render(RESTORE))["spec"]["containers"]
    volume = tmp_path / "volume"
    volume.mkdir()
    (volume / "paxoskv-20261201T030000Z.backup").write_text("{}")
    env = {**_fake_env(tmp_path, plan), "RESTORE_FILE": "paxoskv-20261201T030000Z.backup",
           "RESTORE_CLAIM": "old-backups", "RESTORE_FORCE": ""}
    res = subprocess.run(_script(c, tmp_path, volume), env=env, capture_output=True,
                         text=True, timeout=30)
    assert res.returncode == rc, res.stdout + res.stderr
    file = f"{volume}/paxoskv-20261201T030000Z.backup"
    got = [call.replace(file, "F") for call in _calls(tmp_path) if call.startswith("restore")]
    assert got == restores, res.stdout + res.stderr
    assert all(call.startswith("status ") for call in _calls(tmp_path)
               if not call.startswith("restore"))


def test_restore_script_names_a_missing_file(tmp_path: Path) -> None:
    (c,) = restore_pod(render(RESTORE))["spec"]["containers"]
    volume = tmp_path / "volume"
    volume.mkdir()
    env = {**_fake_env(tmp_path, ["ok"]), "RESTORE_FILE": "nope.backup",
           "RESTORE_CLAIM": "old-backups", "RESTORE_FORCE": ""}
    res = subprocess.run(_script(c, tmp_path, volume), env=env, capture_output=True,
                         text=True, timeout=30)
    assert res.returncode == 1
    assert "no file nope.backup on the claim old-backups" in res.stderr
    assert _calls(tmp_path) == []


# ---- kubeconform ------------------------------------------------------------------------------


@requires_kubeconform
@pytest.mark.parametrize("values", [
    {**BACKUP, **RESTORE, "networkPolicy": {"enabled": True}},
    {"backup": {"enabled": True, "persistence": {"existingClaim": "mine"}},
     "tls": {"enabled": False}, "auth": {"mode": "none"}, "volumePermissions": {"enabled": True}},
    yaml.safe_load((CHART / "ci" / "backup-values.yaml").read_text()),
], ids=["backup-restore-networkpolicy", "existing-claim-plain", "ci-backup-values"])
def test_backup_and_restore_pass_kubeconform(values: dict[str, Any]) -> None:
    res = kubeconform(values)
    assert res.returncode == 0, res.stdout + res.stderr
    assert "Invalid: 0, Errors: 0, Skipped: 0" in res.stdout, res.stdout


def _e2e_module(name: str) -> Any:
    spec = importlib.util.spec_from_file_location(f"e2e_{name}", ROOT / "e2e" / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _render_e2e(args: list[str]) -> str:
    assert HELM is not None
    res = subprocess.run([HELM, "template", "kv", str(CHART), "--namespace", "paxoskv-e2e",
                          "--kube-version", KUBE_VERSION, *args],
                         capture_output=True, text=True, timeout=60)
    assert res.returncode == 0, res.stderr
    return res.stdout


@requires_kubeconform
def test_e2e_step_10_values_render_and_pass_kubeconform() -> None:
    """The exact `--set` arguments of e2e step 10 (e2e/chart_values.py): the backup
    release and the restoring release render, pass kubeconform, and name the objects the
    step reads (CronJob, restore Job, the test's claim)."""
    values = _e2e_module("chart_values")
    base = values.base_values("paxoskv", "dev", "true")
    backup_out = _render_e2e([*base, *values.backup_values()])
    restore_out = _render_e2e([*base, *values.restore_values("paxoskv-20261201T030000Z.backup")])
    for out in (backup_out, restore_out):
        res = kubeconform_manifests(out)
        assert res.returncode == 0, res.stdout + res.stderr
        assert "Invalid: 0, Errors: 0, Skipped: 0" in res.stdout, res.stdout
    docs = [d for d in yaml.safe_load_all(backup_out) if d]
    cj = only(docs, "CronJob")
    assert cj["metadata"]["name"] == values.BACKUP_CRONJOB
    pod = cj["spec"]["jobTemplate"]["spec"]["template"]["spec"]
    assert volumes_of(pod)["backup"]["persistentVolumeClaim"]["claimName"] == values.BACKUP_CLAIM
    assert not [d for d in docs if d["kind"] == "PersistentVolumeClaim"]  # the test makes it
    assert pod["containers"][0]["image"] == "paxoskv:dev"
    docs = [d for d in yaml.safe_load_all(restore_out) if d]
    job = only(docs, "Job")
    assert job["metadata"]["name"] == values.RESTORE_JOB
    assert job["metadata"]["annotations"]["helm.sh/hook"] == "post-install"
    pod = job["spec"]["template"]["spec"]
    assert volumes_of(pod)["backup"]["persistentVolumeClaim"]["claimName"] == values.BACKUP_CLAIM
    assert env_of(pod["containers"][0])["RESTORE_FILE"] == "paxoskv-20261201T030000Z.backup"
    # the release the step restores into is a plain new one: no CronJob
    assert not [d for d in docs if d["kind"] == "CronJob"]


def test_ci_backup_values_meet_restricted_pod_security() -> None:
    docs = render(yaml.safe_load((CHART / "ci" / "backup-values.yaml").read_text()))
    assert _restricted_violations(cronjob_pod(docs)["spec"]) == []
    assert _restricted_violations(restore_pod(docs)["spec"]) == []
