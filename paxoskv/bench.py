"""``python -m paxoskv.bench``: throughput and latency of a real local cluster.

Every figure is printed next to a baseline measured in the same invocation on the same
disk, so a ratio means something on any machine:

* ``fsync floor``: one SQLite row per fsync'd commit in a loop — what a store that
  fsyncs each write on its own could do at best on this disk.
* ``1 client``: sequential writes through the cluster (latency floor: 2 round trips and
  2 fsyncs per write).
* ``N clients``: concurrent writes and reads, where batching and group commit pay off.

Bounded: each phase runs for ``--seconds`` (default 4) and every node is stopped by PID.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import signal
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import aiohttp

from paxoskv.chaos.processes import free_ports

__all__ = ["main", "thread_cpu_s"]


@dataclass
class Result:
    name: str
    ops: int
    seconds: float
    latencies_s: list[float]
    errors: int

    @property
    def rate(self) -> float:
        return self.ops / self.seconds if self.seconds else 0.0

    def pct(self, q: float) -> float:
        if not self.latencies_s:
            return float("nan")
        data = sorted(self.latencies_s)
        return data[min(len(data) - 1, int(q * len(data)))] * 1000


def fsync_floor(directory: Path, seconds: float) -> Result:
    conn = sqlite3.connect(directory / "floor.sqlite3", isolation_level=None)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA synchronous=FULL")
    conn.execute("CREATE TABLE t (k TEXT PRIMARY KEY, v BLOB)")
    lat: list[float] = []
    end = time.perf_counter() + seconds
    i = 0
    while time.perf_counter() < end:
        t0 = time.perf_counter()
        conn.execute("BEGIN")
        conn.execute("INSERT OR REPLACE INTO t VALUES (?, ?)", (f"k{i % 1000}", b"x" * 256))
        conn.execute("COMMIT")
        lat.append(time.perf_counter() - t0)
        i += 1
    conn.close()
    return Result("fsync floor (1 row per commit)", i, seconds, lat, 0)


async def load(name: str, urls: list[str], clients: int, seconds: float, op: str,
               keys: int = 1000, own_keys: bool = False) -> Result:
    """``clients`` connections spread over ``urls``; with ``own_keys`` each client cycles
    over ``keys`` keys of its own (no two clients share a key), else all share ``keys``."""
    lat: list[float] = []
    errors = 0
    ops = 0
    value = b"v" * 256
    end = time.perf_counter() + seconds
    connector = aiohttp.TCPConnector(limit=clients * 2)
    async with aiohttp.ClientSession(connector=connector) as session:
        async def worker(w: int) -> None:
            nonlocal errors, ops
            i = 0
            url = urls[w % len(urls)]
            while time.perf_counter() < end:
                key = f"bench/w{w}/{i % keys}" if own_keys else \
                    f"bench/{(w * 7919 + i) % keys}"
                i += 1
                t0 = time.perf_counter()
                try:
                    if op == "put":
                        resp = await session.put(f"{url}/v1/kv/{key}", data=value)
                    else:
                        resp = await session.get(f"{url}/v1/kv/{key}")
                    await resp.read()
                    ok = resp.status in (200, 404)
                except aiohttp.ClientError:
                    ok = False
                if ok:
                    ops += 1
                    lat.append(time.perf_counter() - t0)
                else:
                    errors += 1
        started = time.perf_counter()
        await asyncio.gather(*(worker(w) for w in range(clients)))
        elapsed = time.perf_counter() - started
    return Result(name, ops, elapsed, lat, errors)


def thread_cpu_s(tid: int | str, pid: int | str = "self") -> float:
    """CPU seconds a thread has used, from the scheduler's nanosecond count (``schedstat``);
    from ``stat``'s 10 ms ticks, too coarse for a short run, only without one.
    FileNotFoundError once the thread has ended."""
    try:
        with open(f"/proc/{pid}/task/{tid}/schedstat") as f:
            return int(f.read().split()[0]) / 1e9
    except (FileNotFoundError, ValueError, IndexError):
        pass
    with open(f"/proc/{pid}/task/{tid}/stat") as f:  # (not found: the thread has ended)
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def wait_until_up(urls: list[str], probe: Callable[[str], bool], timeout_s: float
                  ) -> str | None:
    """Poll ``probe(url)`` for every url until each holds; the first url still not up
    after ``timeout_s`` (None when all are)."""
    deadline = time.monotonic() + timeout_s
    for url in urls:
        while True:
            try:
                if probe(url):
                    break
            except (OSError, ValueError):
                pass
            if time.monotonic() > deadline:
                return url
            time.sleep(0.2)
    return None


def _ready(url: str) -> bool:
    with urllib.request.urlopen(url + "/readyz", timeout=1) as r:
        return bool(r.status == 200)


def start_cluster(base: Path, n: int, data_dirs: list[Path] | None = None,
                  extra_args: tuple[str, ...] = (), ready_timeout_s: float = 30
                  ) -> tuple[list[subprocess.Popen[bytes]], list[str]]:
    """``n`` nodes on loopback over ``base/n<i>``, or over ``data_dirs`` (one per node)."""
    dirs = data_dirs or [base / f"n{i + 1}" for i in range(n)]
    ports = free_ports(n)
    peers = ",".join(f"{i + 1}=http://127.0.0.1:{p}" for i, p in enumerate(ports))
    env = dict(os.environ, PAXOSKV_PEER_SECRET="bench")
    procs: list[subprocess.Popen[bytes]] = []
    urls = [f"http://127.0.0.1:{p}" for p in ports]
    try:
        for i, port in enumerate(ports):
            cmd = [sys.executable, "-m", "paxoskv", "serve", "--node-id", str(i + 1),
                   "--listen", f"127.0.0.1:{port}", "--peers", peers, "--data-dir",
                   str(dirs[i]), "--log-level", "warning", *extra_args]
            procs.append(subprocess.Popen(cmd, env=env))
        late = wait_until_up(urls, _ready, ready_timeout_s)
    except BaseException:  # Ctrl-C or SIGTERM while starting: the caller has no PIDs yet
        stop_cluster(procs)
        raise
    if late is not None:
        stop_cluster(procs)
        raise SystemExit(f"bench: {late} did not become ready")
    return procs, urls


def stop_cluster(procs: list[subprocess.Popen[bytes]]) -> None:
    for p in procs:
        if p.poll() is None:
            p.send_signal(signal.SIGTERM)
    for p in procs:
        try:
            p.wait(15)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m paxoskv.bench", description=__doc__)
    ap.add_argument("--seconds", type=float, default=4.0, help="duration of each phase")
    ap.add_argument("--clients", type=int, default=32, help="concurrent clients")
    ap.add_argument("--nodes", type=int, default=3)
    args = ap.parse_args(argv)
    base = Path(tempfile.mkdtemp(prefix="paxoskv-bench-"))
    results: list[Result] = []
    try:
        print(f"bench: fsync floor ({args.seconds:.0f}s) ...", flush=True)
        floor = fsync_floor(base, args.seconds)
        results.append(floor)
        procs, urls = start_cluster(base, args.nodes)
        try:
            for name, clients, op in (
                ("1 client, put", 1, "put"),
                (f"{args.clients} clients, put", args.clients, "put"),
                ("1 client, get", 1, "get"),
                (f"{args.clients} clients, get", args.clients, "get"),
            ):
                print(f"bench: {name} ({args.seconds:.0f}s) ...", flush=True)
                results.append(asyncio.run(load(name, urls, clients, args.seconds, op)))
        finally:
            stop_cluster(procs)
    finally:
        shutil.rmtree(base, ignore_errors=True)
    print()
    print(f"{args.nodes} nodes on loopback, 256-byte values, {os.cpu_count()} cores; "
          "load generator in the same machine")
    print(f"{'phase':34} {'ops/s':>9} {'p50 ms':>8} {'p99 ms':>8} {'errors':>7} "
          f"{'vs fsync floor':>15}")
    for r in results:
        ratio = r.rate / floor.rate if floor.rate else float("nan")
        print(f"{r.name:34} {r.rate:9.0f} {r.pct(0.5):8.2f} {r.pct(0.99):8.2f} {r.errors:7d} "
              f"{ratio:14.2f}x")
    mean = statistics.fmean(floor.latencies_s) * 1000 if floor.latencies_s else float("nan")
    print(f"\nfsync floor: mean commit {mean:.2f} ms")
    return 0


if __name__ == "__main__":
    sys.exit(main())
