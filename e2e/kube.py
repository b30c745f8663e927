"""A small driver for the end-to-end suite: the kubernetes client, helm, exec, and waits.

Every wait is bounded and prints progress; every failure message says what was seen.
"""

from __future__ import annotations

import base64
import os
import shlex
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from chart_values import FULLNAME, base_values
from kubernetes import client, config
from kubernetes.client.rest import ApiException
from kubernetes.stream import stream

RELEASE = "kv"
HEADLESS = f"{FULLNAME}-headless"
AUTH_SECRET = f"{FULLNAME}-auth"  # the chart's generated token Secret (auth.mode=token)
TLS_SECRET = f"{FULLNAME}-tls"  # the chart's generated CA and certificate (tls.enabled)
PORT = 7000
METRICS_PORT = 7002
"""The chart's metrics.port: /metrics is served there only."""
CA_DIR = "/etc/paxoskv/ca"
"""Where client pods of the suite mount the cluster CA (``ca.crt`` of the TLS Secret)."""


class Kube:
    def __init__(self, kubeconfig: str, helm: str, namespace: str, image: str,
                 chart: Path) -> None:
        self.kubeconfig, self.helm_bin, self.ns, self.chart = kubeconfig, helm, namespace, chart
        self.repository, _, self.tag = image.rpartition(":")
        config.load_kube_config(config_file=kubeconfig)
        self.core = client.CoreV1Api()
        self.apps = client.AppsV1Api()
        self.batch = client.BatchV1Api()
        self.volume_permissions = os.environ.get("PAXOSKV_E2E_VOLUME_PERMISSIONS", "true")
        self.scheme = "https"
        """The chart's default (tls.enabled); the 0.1.x-layout release of test 9 is http."""

    # ------------------------------------------------------------------ basics

    def create_namespace(self) -> None:
        self.core.create_namespace(client.V1Namespace(metadata=client.V1ObjectMeta(
            name=self.ns, labels={"paxoskv.io/e2e": "true"})))
        print(f"e2e: namespace {self.ns}")

    def teardown(self) -> None:
        subprocess.run([self.helm_bin, "uninstall", RELEASE, "-n", self.ns, "--wait",
                        "--timeout", "2m"], env=self.env(), capture_output=True, timeout=180)
        try:
            self.core.delete_namespace(self.ns)
        except ApiException as exc:
            print(f"e2e: namespace delete: {exc.reason}")

    def env(self) -> dict[str, str]:
        return {**os.environ, "KUBECONFIG": self.kubeconfig}

    def helm(self, *args: str, check: bool = True, timeout_s: float = 600
             ) -> subprocess.CompletedProcess[str]:
        cmd = [self.helm_bin, *args, "-n", self.ns]
        print("e2e: $ helm " + " ".join(args))
        res = subprocess.run(cmd, env=self.env(), capture_output=True, text=True,
                             timeout=timeout_s)
        if check and res.returncode != 0:
            raise AssertionError(f"helm {' '.join(args)} failed ({res.returncode}):\n"
                                 f"{res.stdout}\n{res.stderr}")
        return res

    def base_values(self) -> list[str]:
        return base_values(self.repository, self.tag, self.volume_permissions)

    def pod_uids(self) -> dict[str, str]:
        """The uid of each of the release's server pods (a restarted pod has a new one)."""
        pods = self.core.list_namespaced_pod(
            self.ns, label_selector=f"app.kubernetes.io/instance={RELEASE}").items
        return {p.metadata.name: p.metadata.uid for p in pods
                if p.metadata.name in self.pod_names()}

    def pod_names(self) -> list[str]:
        return [f"{FULLNAME}-{i}" for i in range(3)]

    def dns(self, pod: str) -> str:
        return f"{self.scheme}://{pod}.{HEADLESS}.{self.ns}.svc.cluster.local:{PORT}"

    def service_url(self) -> str:
        return f"{self.scheme}://{FULLNAME}.{self.ns}.svc.cluster.local:{PORT}"

    def local_url(self) -> str:
        """The client port of the pod a command runs in (the certificate names 127.0.0.1)."""
        return f"{self.scheme}://127.0.0.1:{PORT}"

    def tls_secret_data(self) -> dict[str, str]:
        return dict(self.core.read_namespaced_secret(TLS_SECRET, self.ns).data)

    # ------------------------------------------------------------------ waits

    def wait(self, what: str, check: Callable[[], tuple[bool, str]], timeout_s: float,
             interval_s: float = 2.0) -> float:
        started = time.monotonic()
        last_print = 0.0
        detail = ""
        while True:
            try:
                ok, detail = check()
            except ApiException as exc:
                ok, detail = False, f"API: {exc.reason}"
            elapsed = time.monotonic() - started
            if ok:
                print(f"e2e: {what}: done in {elapsed:.0f}s ({detail})")
                return elapsed
            if elapsed > timeout_s:
                self.print_state(f"timeout waiting for {what}")
                raise AssertionError(f"{what}: not done after {timeout_s:.0f}s: {detail}")
            if elapsed - last_print >= 15:
                print(f"e2e: waiting for {what} ({elapsed:.0f}/{timeout_s:.0f}s): {detail}")
                last_print = elapsed
            time.sleep(interval_s)

    def statefulset_ready(self) -> tuple[bool, str]:
        sts = self.apps.read_namespaced_stateful_set(FULLNAME, self.ns)
        st = sts.status
        want = sts.spec.replicas
        ok = ((st.ready_replicas or 0) == want and (st.updated_replicas or 0) == want
              and st.current_revision == st.update_revision
              and (st.observed_generation or 0) >= sts.metadata.generation)
        return ok, (f"ready {st.ready_replicas}/{want}, updated {st.updated_replicas}, "
                    f"revision {st.current_revision} -> {st.update_revision}")

    def wait_rollout(self, timeout_s: float = 300) -> float:
        return self.wait("rollout", self.statefulset_ready, timeout_s)

    def pod_ready(self, name: str, uid_not: str | None = None) -> tuple[bool, str]:
        pod = self.core.read_namespaced_pod(name, self.ns)
        if uid_not is not None and pod.metadata.uid == uid_not:
            return False, "old pod still there"
        conds = {c.type: c.status for c in (pod.status.conditions or [])}
        return conds.get("Ready") == "True", f"phase {pod.status.phase}, ready {conds.get('Ready')}"

    # ------------------------------------------------------------------ exec

    def exec(self, pod: str, command: list[str], check: bool = True) -> str:
        out: str = stream(self.core.connect_get_namespaced_pod_exec, pod, self.ns,
                          command=command, container="paxoskv", stderr=True, stdin=False,
                          stdout=True, tty=False, _preload_content=True)
        return out

    def admin_token(self) -> str:
        """The bootstrap admin token the chart generated (read fresh: upgrades must keep
        it, and a test checks that they do)."""
        secret = self.core.read_namespaced_secret(AUTH_SECRET, self.ns)
        return base64.b64decode(secret.data["admin-token"]).decode()

    def cli(self, pod: str, *args: str, token: str | None = None) -> str:
        """Run the paxoskv CLI inside ``pod`` with the admin token (``token=""``: none);
        returns its stdout (stderr, where `get` puts the version, would interleave
        unpredictably with the value). Under TLS the chart sets PAXOSKV_CACERT in the
        server container, so the CLI there trusts the cluster CA."""
        token = self.admin_token() if token is None else token
        return self.exec(pod, ["sh", "-c", f"PAXOSKV_TOKEN={shlex.quote(token)} "
                               + shlex.join(["paxoskv", *args]) + " 2>/dev/null"])

    # ------------------------------------------------------------------ pods that run Python

    def run_pod(self, name: str, script: str, timeout_s: float) -> str:
        """Run ``python -c script`` in a pod of the paxoskv image; return its log. Under TLS
        the pod gets the cluster CA (only ``ca.crt``) and PAXOSKV_CACERT pointing at it."""
        env = [client.V1EnvVar(name="PAXOSKV_TOKEN", value_from=client.V1EnvVarSource(
            secret_key_ref=client.V1SecretKeySelector(name=AUTH_SECRET, key="admin-token")))]
        volumes, mounts = [], []
        if self.scheme == "https":
            env.append(client.V1EnvVar(name="PAXOSKV_CACERT", value=f"{CA_DIR}/ca.crt"))
            volumes.append(client.V1Volume(name="ca", secret=client.V1SecretVolumeSource(
                secret_name=TLS_SECRET, items=[client.V1KeyToPath(key="ca.crt",
                                                                  path="ca.crt")])))
            mounts.append(client.V1VolumeMount(name="ca", mount_path=CA_DIR, read_only=True))
        pod = client.V1Pod(
            metadata=client.V1ObjectMeta(name=name, labels={
                f"{FULLNAME}-client": "true", "paxoskv.io/e2e-client": "true"}),
            spec=client.V1PodSpec(
                restart_policy="Never",
                automount_service_account_token=False,
                volumes=volumes,
                containers=[client.V1Container(
                    name="paxoskv", image=f"{self.repository}:{self.tag}",
                    image_pull_policy="IfNotPresent",
                    # paxoskv.client sends the token as Authorization: Bearer
                    env=env, volume_mounts=mounts,
                    command=["python", "-c", script])]))
        self.core.create_namespaced_pod(self.ns, pod)
        return name

    def wait_pod_done(self, name: str, timeout_s: float) -> str:
        def done() -> tuple[bool, str]:
            phase = self.core.read_namespaced_pod(name, self.ns).status.phase
            return phase in ("Succeeded", "Failed"), f"phase {phase}"
        self.wait(f"pod {name} to finish", done, timeout_s)
        log: str = self.core.read_namespaced_pod_log(name, self.ns, container="paxoskv")
        phase = self.core.read_namespaced_pod(name, self.ns).status.phase
        if phase != "Succeeded":
            raise AssertionError(f"pod {name} {phase}; log tail:\n{log[-3000:]}")
        return log

    # ------------------------------------------------------------------ jobs

    def job_from_cronjob(self, cronjob: str, name: str) -> str:
        """What `kubectl create job --from=cronjob/<cronjob> <name>` does: a Job of the
        CronJob's template, owned by it (so it goes with the release)."""
        cj = self.batch.read_namespaced_cron_job(cronjob, self.ns)
        template = cj.spec.job_template
        job = client.V1Job(
            metadata=client.V1ObjectMeta(
                name=name, labels=template.metadata.labels if template.metadata else None,
                annotations={"cronjob.kubernetes.io/instantiate": "manual"},
                owner_references=[client.V1OwnerReference(
                    api_version="batch/v1", kind="CronJob", name=cronjob,
                    uid=cj.metadata.uid, controller=True)]),
            spec=template.spec)
        self.batch.create_namespaced_job(self.ns, job)
        print(f"e2e: job {name} from cronjob/{cronjob}")
        return name

    def job_log(self, name: str) -> str:
        """The logs of every pod of Job ``name``, oldest pod first."""
        pods = sorted(self.core.list_namespaced_pod(
            self.ns, label_selector=f"job-name={name}").items,
            key=lambda p: p.metadata.creation_timestamp)
        logs = []
        for pod in pods:
            try:
                logs.append(self.core.read_namespaced_pod_log(
                    pod.metadata.name, self.ns, container=pod.spec.containers[0].name))
            except ApiException as exc:
                logs.append(f"(no log of {pod.metadata.name}: {exc.reason})")
        return "\n".join(logs)

    def wait_job_done(self, name: str, timeout_s: float) -> str:
        """Wait for Job ``name`` to succeed; its log (the failure says what it logged)."""
        def done() -> tuple[bool, str]:
            st = self.batch.read_namespaced_job(name, self.ns).status
            return bool(st.succeeded or st.failed), (
                f"active {st.active}, succeeded {st.succeeded}, failed {st.failed}")
        self.wait(f"job {name}", done, timeout_s)
        log = self.job_log(name)
        if not self.batch.read_namespaced_job(name, self.ns).status.succeeded:
            raise AssertionError(f"job {name} failed; log tail:\n{log[-3000:]}")
        return log

    # ------------------------------------------------------------------ printing

    def print_state(self, title: str) -> None:
        print(f"\n=== kubectl get pods,pvc -n {self.ns} ({title})")
        try:
            for pod in self.core.list_namespaced_pod(self.ns).items:
                conds = {c.type: c.status for c in (pod.status.conditions or [])}
                restarts = sum(cs.restart_count for cs in (pod.status.container_statuses or []))
                print(f"pod/{pod.metadata.name:28} {pod.status.phase:10} "
                      f"ready={conds.get('Ready', '-'):5} restarts={restarts} "
                      f"node={pod.spec.node_name} ip={pod.status.pod_ip}")
            for pvc in self.core.list_namespaced_persistent_volume_claim(self.ns).items:
                print(f"pvc/{pvc.metadata.name:28} {pvc.status.phase:10} "
                      f"volume={pvc.spec.volume_name} class={pvc.spec.storage_class_name}")
        except ApiException as exc:
            print(f"(cannot list: {exc.reason})")
        print()

    def pod_ips(self) -> dict[str, str]:
        return {p.metadata.name: p.status.pod_ip
                for p in self.core.list_namespaced_pod(
                    self.ns, label_selector="app.kubernetes.io/instance=kv").items
                if p.status.pod_ip and not p.metadata.name.startswith("kv-test")}

    def raw(self) -> Any:
        return client
