#!/usr/bin/env python3
"""Run the chart's StatefulSet pods as plain Docker containers: an offline smoke test of the
image together with the chart's env contract, without Kubernetes.

Goal: prove, before any cluster exists, that the image started exactly as the chart starts it
(command, args, env, read-only root, uid 10001, no capabilities, secret as a read-only file,
/data volume, /tmp tmpfs) forms a cluster through StatefulSet-mode DNS discovery, becomes
ready, answers the chart's own `helm test` script, and survives losing one node.

Method: `helm template` renders the chart; each pod's container spec is translated to
`docker run` (fieldRefs resolved to the pod's name and namespace). A user-defined Docker
network gives every container the DNS alias the headless Service would give the pod
(`<sts>-<i>.<sts>-headless.<ns>.svc.cluster.local`) and a shared alias for the client Service.
Everything created is named with this run's prefix and removed at the end.

    .venv/bin/python deploy/scripts/docker_smoke.py [--image paxoskv:dev] [--replicas 3]
Needs a docker daemon (e2e/docker.sh up; eval "$(e2e/docker.sh env)") and helm
(make chart-tools).
"""

from __future__ import annotations

import argparse
import base64
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "deploy" / "helm" / "paxoskv"
RELEASE, NAMESPACE, DOMAIN = "t", "pkv", "cluster.local"
READY_TIMEOUT_S = 150.0


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


def sh(*cmd: str, check: bool = True, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    if check and res.returncode != 0:
        raise RuntimeError(
            f"{' '.join(cmd[:4])}... failed ({res.returncode}): {res.stderr.strip()}"
        )
    return res


def use_docker_daemon() -> None:
    """Like scripts/build-image.sh: fall back to the private daemon of e2e/docker.sh."""
    if sh("docker", "version", check=False).returncode == 0:
        return
    helper = ROOT / "e2e" / "docker.sh"
    if "DOCKER_HOST" not in os.environ and helper.exists():
        line = sh(str(helper), "env").stdout.strip()  # export DOCKER_HOST=unix://...
        os.environ["DOCKER_HOST"] = line.split("=", 1)[1]
    if sh("docker", "version", check=False).returncode != 0:
        sys.exit('no docker daemon: e2e/docker.sh up && eval "$(e2e/docker.sh env)"')


def helm() -> str:
    found = shutil.which("helm")
    cached = Path(os.environ.get("PAXOSKV_TOOLS", "/var/cache/paxoskv-tools")) / "bin" / "helm"
    if found:
        return found
    if cached.is_file():
        return str(cached)
    sys.exit("helm not found: make chart-tools")


def render(image: str, replicas: int) -> list[dict[str, Any]]:
    repo, _, tag = image.rpartition(":")
    out = sh(
        helm(),
        "template",
        RELEASE,
        str(CHART),
        "--namespace",
        NAMESPACE,
        "--kube-version",
        "1.34.4",
        "--set",
        f"image.repository={repo}",
        "--set",
        f"image.tag={tag}",
        "--set",
        f"replicas={replicas}",
    ).stdout
    return [d for d in yaml.safe_load_all(out) if d]


def docker_args_for(
    pod: str, c: dict[str, Any], spec: dict[str, Any], secrets: dict[str, dict[str, str]]
) -> list[str]:
    """The container's security settings and env, as docker run flags; ``secrets`` maps a
    Secret's name to its decoded data, for env from a secretKeyRef."""
    sc = c.get("securityContext", {})
    args = ["--user", f"{sc['runAsUser']}:{sc['runAsGroup']}"]
    if sc.get("readOnlyRootFilesystem"):
        args.append("--read-only")
    if "ALL" in sc.get("capabilities", {}).get("drop", []):
        args += ["--cap-drop", "ALL"]
    if sc.get("allowPrivilegeEscalation") is False:
        args += ["--security-opt", "no-new-privileges"]
    for e in c.get("env", []):
        if "value" in e:
            value = e["value"]
        elif "secretKeyRef" in e["valueFrom"]:
            ref = e["valueFrom"]["secretKeyRef"]
            value = secrets.get(ref["name"], {}).get(ref["key"], "")
        else:
            field = e["valueFrom"]["fieldRef"]["fieldPath"]
            value = {"metadata.name": pod, "metadata.namespace": NAMESPACE}[field]
        args += ["-e", f"{e['name']}={value}"]
    return args


def wait_ready(names: list[str], deadline: float) -> dict[str, bool]:
    probe = (
        "import urllib.request as u,sys\n"
        "try: sys.exit(0 if u.urlopen('http://127.0.0.1:7000/readyz', timeout=2).status"
        " == 200 else 1)\nexcept Exception: sys.exit(1)"
    )
    ready = dict.fromkeys(names, False)
    while time.monotonic() < deadline and not all(ready.values()):
        for n in names:
            if not ready[n]:
                ready[n] = (
                    sh(
                        "docker", "exec", n, "python3", "-c", probe, check=False, timeout=15
                    ).returncode
                    == 0
                )
        if not all(ready.values()):
            time.sleep(1)
    return ready


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--image", default="paxoskv:dev")
    ap.add_argument("--replicas", type=int, default=3)
    ap.add_argument("--keep", action="store_true", help="leave containers for inspection")
    args = ap.parse_args()

    use_docker_daemon()
    docs = render(args.image, args.replicas)
    sts = next(d for d in docs if d["kind"] == "StatefulSet")
    test_pod = next(d for d in docs if d["kind"] == "Pod")
    secrets = {
        d["metadata"]["name"]: {k: base64.b64decode(v).decode() for k, v in d["data"].items()}
        for d in docs
        if d["kind"] == "Secret"
    }
    fullname = sts["metadata"]["name"]
    headless = sts["spec"]["serviceName"]
    spec = sts["spec"]["template"]["spec"]
    (c,) = spec["containers"]

    prefix = f"pkv-smoke-{os.getpid()}"
    network = prefix
    secret_dir = Path(tempfile.mkdtemp(prefix=f"{prefix}-secret-"))
    auth_dir = Path(tempfile.mkdtemp(prefix=f"{prefix}-auth-"))
    created: list[str] = []
    volumes: list[str] = []
    failures: list[str] = []
    try:
        # each Secret volume of the pod, as a read-only directory holding its items
        mounts: list[str] = []
        for vol in spec["volumes"]:
            if "secret" not in vol:
                continue
            where = secret_dir if vol["name"] == "peer-secret" else auth_dir
            data = secrets[vol["secret"]["secretName"]]
            for item in vol["secret"]["items"]:
                (where / item["path"]).write_text(data[item["key"]])
                os.chmod(where / item["path"], 0o444)
            os.chmod(where, 0o755)
            path = next(m["mountPath"] for m in c["volumeMounts"] if m["name"] == vol["name"])
            mounts += ["-v", f"{where}:{path}:ro"]
        sh("docker", "network", "create", network)
        start = time.monotonic()
        names = []
        for i in range(args.replicas):
            pod = f"{fullname}-{i}"
            name, vol = f"{prefix}-{i}", f"{prefix}-data-{i}"
            sh("docker", "volume", "create", vol)
            volumes.append(vol)
            run = [
                "docker",
                "run",
                "-d",
                "--name",
                name,
                "--hostname",
                pod,
                "--network",
                network,
                "--network-alias",
                f"{pod}.{headless}.{NAMESPACE}.svc.{DOMAIN}",
                "--network-alias",
                f"{fullname}.{NAMESPACE}.svc.{DOMAIN}",
                "--tmpfs",
                "/tmp",
                "-v",
                f"{vol}:/data",
                *mounts,
                *docker_args_for(pod, c, spec, secrets),
                "--entrypoint",
                c["command"][0],
                c["image"],
                *c["command"][1:],
                *c["args"],
            ]
            sh(*run)
            created.append(name)
            names.append(name)
        log(f"started {args.replicas} nodes from {c['image']}; waiting for /readyz")
        ready = wait_ready(names, time.monotonic() + READY_TIMEOUT_S)
        log(f"ready after {time.monotonic() - start:.1f}s: {ready}")
        if not all(ready.values()):
            failures.append(f"not all nodes ready within {READY_TIMEOUT_S:.0f}s: {ready}")

        # The chart's helm test script, as the test pod runs it.
        tc = test_pod["spec"]["containers"][0]
        test_name = f"{prefix}-helm-test"

        def helm_test() -> subprocess.CompletedProcess[str]:
            cmd = [
                "docker",
                "run",
                "--rm",
                "--name",
                test_name,
                "--network",
                network,
                "--tmpfs",
                "/tmp",
                *docker_args_for(test_pod["metadata"]["name"], tc, test_pod["spec"], secrets),
                "--entrypoint",
                tc["command"][0],
                tc["image"],
                *tc["command"][1:],
                *tc["args"],
            ]
            return sh(*cmd, check=False, timeout=120)

        res = helm_test()
        log(f"helm test script: exit {res.returncode}: {res.stdout.strip()} {res.stderr.strip()}")
        if res.returncode != 0:
            failures.append("helm test script failed with all nodes up")

        metrics = sh(
            "docker",
            "exec",
            names[0],
            "python3",
            "-c",
            "import urllib.request as u;"
            "print(u.urlopen('http://127.0.0.1:7000/metrics').read().decode())",
        ).stdout
        wanted = ["paxoskv_quorum_reachable 1.0"] + [
            f'paxoskv_peer_up{{peer="{i}"}} 1.0' for i in range(2, args.replicas + 1)
        ]
        for line in wanted:
            if line not in metrics:
                failures.append(f"node 0 /metrics lacks {line!r}")
        shown = [
            ln
            for ln in metrics.splitlines()
            if ln.startswith(("paxoskv_quorum", "paxoskv_peer_up"))
        ]
        log(f"node 0 metrics: {shown}")

        if args.replicas >= 3:
            victim = names[-1]
            sh("docker", "kill", victim)
            log(f"killed {victim} (SIGKILL); running the helm test script again")
            res = helm_test()
            log(f"helm test with one node down: exit {res.returncode}: {res.stdout.strip()}")
            if res.returncode != 0:
                failures.append("helm test script failed with one node down")
            sh("docker", "start", victim)
            t0 = time.monotonic()
            ready = wait_ready([victim], time.monotonic() + READY_TIMEOUT_S)
            log(
                f"{victim} restarted on its volume; ready again after "
                f"{time.monotonic() - t0:.1f}s: {ready[victim]}"
            )
            if not ready[victim]:
                failures.append("killed node did not become ready again")

        t0 = time.monotonic()
        stop = sh("docker", "stop", "-t", "30", names[0], timeout=60)
        code = sh("docker", "inspect", "-f", "{{.State.ExitCode}}", names[0]).stdout.strip()
        log(f"SIGTERM to {names[0]}: stopped in {time.monotonic() - t0:.1f}s, exit code {code}")
        if stop.returncode != 0 or code != "0":
            failures.append(f"graceful stop exit code {code}")
    finally:
        if failures or args.keep:
            for n in created:
                tail = sh("docker", "logs", "--tail", "15", n, check=False).stderr
                print(f"--- logs {n}\n{tail}")
        if not args.keep:
            for n in created:
                sh("docker", "rm", "-f", n, check=False)
            for v in volumes:
                sh("docker", "volume", "rm", v, check=False)
            sh("docker", "network", "rm", network, check=False)
        shutil.rmtree(secret_dir, ignore_errors=True)
        shutil.rmtree(auth_dir, ignore_errors=True)
    for f in failures:
        log(f"FAIL: {f}")
    log("docker smoke: " + ("FAILED" if failures else "ok"))
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
