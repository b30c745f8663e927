"""Real ``paxoskv serve`` processes on loopback, for the chaos runner and the tests."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path

__all__ = ["Cluster", "ServerProcess", "free_ports"]

SECRET = "test-peer-secret"


# Ports handed out come from below the kernel's ephemeral range (32768-60999 by default on
# Linux), so no outgoing connection and no bind to port 0 elsewhere can take one between the
# moment it is picked and the moment a server binds it. The range is cut into slices, one
# per pytest-xdist worker (others by process id), and each process walks its own slice, so
# two workers never pick the same port and one process does not hand a port out twice
# until it has gone round its slice.
_PORT_LOW, _PORT_HIGH = 10_000, 32_000
_SLICES = 16
_SLICE = (_PORT_HIGH - _PORT_LOW) // _SLICES
_next_port: int | None = None


def _slice_index() -> int:
    worker = os.environ.get("PYTEST_XDIST_WORKER", "")
    if worker.startswith("gw") and worker[2:].isdigit():
        return int(worker[2:]) % _SLICES
    return os.getpid() % _SLICES


def _bindable(port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def free_ports(count: int) -> list[int]:
    """``count`` distinct loopback ports that were free a moment ago and that no other
    caller of this function in another test worker can be given."""
    global _next_port
    low = _PORT_LOW + _slice_index() * _SLICE
    if _next_port is None:  # start somewhere in the slice so back-to-back runs differ
        _next_port = low + (os.getpid() * 7919) % _SLICE
    ports: list[int] = []
    for _ in range(_SLICE):
        port = _next_port
        _next_port = low + (port - low + 1) % _SLICE
        if _bindable(port):
            ports.append(port)
            if len(ports) == count:
                return ports
    raise OSError(f"no {count} free ports left in {low}-{low + _SLICE - 1}")


class ServerProcess:
    def __init__(self, node_id: int, port: int, peers: str, data_dir: Path, log_path: Path,
                 extra: list[str] | None = None) -> None:
        self.node_id, self.port, self.peers = node_id, port, peers
        self.data_dir, self.log_path = data_dir, log_path
        self.extra = extra or []
        self.proc: subprocess.Popen[bytes] | None = None
        self.url = f"http://127.0.0.1:{port}"

    def start(self) -> None:
        assert self.proc is None or self.proc.poll() is not None
        env = dict(os.environ, PAXOSKV_PEER_SECRET=SECRET)
        # ``peers`` is an ID=URL list, or "@" + the path of a hosts file
        where = (["--hosts", self.peers[1:]] if self.peers.startswith("@")
                 else ["--peers", self.peers])
        cmd = [sys.executable, "-m", "paxoskv", "serve", "--node-id", str(self.node_id),
               "--listen", f"127.0.0.1:{self.port}", *where,
               "--data-dir", str(self.data_dir), "--heartbeat-interval", "0.2",
               "--request-timeout", "4", "--phase-timeout", "0.8", "--peer-timeout", "1",
               # A cached ballot lives a message lifetime (5 s), so a rejoin's fence
               # stays at 10 s, as the tests that wait one out expect.
               "--phase1-skip-lifetime", "5", *self.extra]
        log = open(self.log_path, "ab")  # noqa: SIM115 - owned by the child
        self.proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env)
        log.close()

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def kill9(self) -> None:
        if self.alive():
            assert self.proc is not None
            self.proc.kill()
            self.proc.wait(10)

    def terminate(self, timeout_s: float = 15) -> int | None:
        if not self.alive():
            return None if self.proc is None else self.proc.returncode
        assert self.proc is not None
        self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout_s)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(10)
            raise

    def pause(self) -> None:
        if self.alive():
            assert self.proc is not None
            self.proc.send_signal(signal.SIGSTOP)

    def resume(self) -> None:
        if self.alive():
            assert self.proc is not None
            self.proc.send_signal(signal.SIGCONT)

    def get(self, path: str, timeout: float = 2.0) -> tuple[int, bytes]:
        try:
            with urllib.request.urlopen(self.url + path, timeout=timeout) as resp:
                return resp.status, resp.read()
        except urllib.error.HTTPError as err:
            return err.code, err.read()
        except OSError:
            return 0, b""

    def wait_ready(self, timeout_s: float = 20.0) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.get("/readyz")[0] == 200:
                return
            if not self.alive():
                raise RuntimeError(f"node {self.node_id} exited; log: {self.log_path}")
            time.sleep(0.1)
        raise TimeoutError(f"node {self.node_id} not ready after {timeout_s}s; "
                           f"log: {self.log_path}")


class Cluster:
    """N nodes; ``peer_url(i, j)`` is the URL node i uses to reach node j (a proxy can sit
    in between)."""

    def __init__(self, n: int, base_dir: Path,
                 peer_url: Callable[[int, int, int], str] | None = None,
                 extra: list[str] | None = None) -> None:
        self.ports = dict(zip(range(1, n + 1), free_ports(n), strict=True))
        self.base_dir = base_dir
        self.nodes: dict[int, ServerProcess] = {}
        for i, port in self.ports.items():
            def url(j: int, i: int = i) -> str:
                if peer_url is None or j == i:
                    return f"http://127.0.0.1:{self.ports[j]}"
                return peer_url(i, j, self.ports[j])
            peers = ",".join(f"{j}={url(j)}" for j in self.ports)
            self.nodes[i] = ServerProcess(i, port, peers, base_dir / f"node{i}",
                                          base_dir / f"node{i}.log", extra)

    def start(self, wait: bool = True) -> None:
        for node in self.nodes.values():
            node.start()
        if wait:
            for node in self.nodes.values():
                node.wait_ready()

    def stop(self) -> None:
        for node in self.nodes.values():
            node.resume()
            if node.alive():
                with contextlib.suppress(subprocess.TimeoutExpired):
                    node.terminate()

    def urls(self) -> list[str]:
        return [n.url for n in self.nodes.values()]
