"""``python -m paxoskv.bench_memory``: resident memory of nodes holding many keys.

1. Builds one data directory of ``--keys`` keys of ``--value-bytes`` through
   ``SqliteStorage`` itself, each key as an acceptor holds it after one accepted write,
   and file copies of it for nodes 2 and 3 (``paxoskv.bench_preload`` says how and why).
2. Starts 3 real ``paxoskv serve`` processes over those directories and records their
   RSS once ready, then drives linearizable GETs and PUTs of random keys through the
   HTTP API for ``--seconds`` so the state cache fills.
3. Reports per node: RSS (VmRSS) after the load, peak RSS (VmHWM), memory per key, and
   data directory bytes per key. A baseline of 3 nodes over empty directories (RSS once
   ready) is measured first, so "per key" can subtract what an idle node holds anyway.

Everything is real: fsync'd commits, real processes, stopped by PID. Directories go to
``--dir`` (default: a temporary directory) and are removed unless ``--keep``.
"""

from __future__ import annotations

import argparse
import asyncio
import random
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import aiohttp

from paxoskv.bench import start_cluster, stop_cluster
from paxoskv.bench_preload import build_replicas, dir_bytes, proc_status

__all__ = ["main"]


def _mb(n: float) -> str:
    return f"{n / 1e6:.1f} MB"


def _key(i: int) -> str:
    return f"bench/{i:08d}"


@dataclass
class _Load:
    ops: int = 0
    errors: int = 0


async def _drive(urls: list[str], keys: int, value_bytes: int, seconds: float, clients: int,
                 procs: list[subprocess.Popen[bytes]]) -> _Load:
    """GET (linearizable) and PUT of random keys, half each, from ``clients`` workers."""
    totals = _Load()
    end = time.monotonic() + seconds
    value = b"w" * value_bytes
    connector = aiohttp.TCPConnector(limit=clients * 2)
    timeout = aiohttp.ClientTimeout(total=30)
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
        async def worker(w: int) -> None:
            rng = random.Random(w)
            url = urls[w % len(urls)]
            while time.monotonic() < end:
                key = _key(rng.randrange(keys))
                try:
                    if rng.random() < 0.5:
                        resp = await session.get(f"{url}/v1/kv/{key}")
                    else:
                        resp = await session.put(f"{url}/v1/kv/{key}", data=value)
                    await resp.read()
                    ok = resp.status in (200, 204)
                except (TimeoutError, aiohttp.ClientError):
                    ok = False
                if ok:
                    totals.ops += 1
                else:
                    totals.errors += 1

        async def progress() -> None:
            started = time.monotonic()
            while time.monotonic() < end:
                await asyncio.sleep(min(10.0, max(0.1, end - time.monotonic())))
                dead = [i + 1 for i, p in enumerate(procs) if p.poll() is not None]
                if dead:
                    raise SystemExit(f"bench_memory: node(s) {dead} exited during the load")
                rss = ", ".join(_mb(proc_status(p.pid)["VmRSS"]) for p in procs)
                print(f"bench_memory: load {time.monotonic() - started:4.0f}s: "
                      f"{totals.ops:,} ok, {totals.errors:,} errors; RSS {rss}", flush=True)

        await asyncio.gather(progress(), *(worker(w) for w in range(clients)))
    return totals


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m paxoskv.bench_memory",
                                 description=__doc__.splitlines()[0] if __doc__ else None)
    ap.add_argument("--keys", type=int, default=1_000_000)
    ap.add_argument("--value-bytes", type=int, default=1024)
    ap.add_argument("--seconds", type=float, default=120.0, help="duration of the load")
    ap.add_argument("--clients", type=int, default=32, help="concurrent HTTP clients")
    ap.add_argument("--cache-bytes", type=int, default=None,
                    help="passed to each node's --cache-bytes (default: the node's default)")
    ap.add_argument("--dir", default=None, help="parent directory (default: temporary)")
    ap.add_argument("--keep", action="store_true", help="keep the data directories")
    args = ap.parse_args(argv)
    if args.keys < 1:
        ap.error("--keys must be positive")
    base = Path(tempfile.mkdtemp(prefix="paxoskv-bench-memory-", dir=args.dir))
    extra = () if args.cache_bytes is None else ("--cache-bytes", str(args.cache_bytes))
    try:
        print("bench_memory: baseline: 3 nodes over empty data directories", flush=True)
        empty = [base / f"empty{i}" for i in (1, 2, 3)]
        procs, _ = start_cluster(base, 3, empty, extra)
        try:
            time.sleep(2)
            baseline = [proc_status(p.pid)["VmRSS"] for p in procs]
        finally:
            stop_cluster(procs)
        dirs = [base / f"n{i}" for i in (1, 2, 3)]
        print(f"bench_memory: building {args.keys:,} keys of {args.value_bytes} bytes in "
              f"{dirs[0]}", flush=True)
        t0 = time.monotonic()
        build_replicas(dirs, args.keys, args.value_bytes, _key,
                       lambda line: print(f"bench_memory: {line}", flush=True))
        built_s = time.monotonic() - t0
        print(f"bench_memory: 3 directories ready in {built_s:.0f}s; starting 3 nodes",
              flush=True)
        t0 = time.monotonic()
        procs, urls = start_cluster(base, 3, dirs, extra, ready_timeout_s=300)
        try:
            ready_s = time.monotonic() - t0
            at_start = [proc_status(p.pid)["VmRSS"] for p in procs]
            print(f"bench_memory: ready in {ready_s:.1f}s; RSS "
                  f"{', '.join(_mb(r) for r in at_start)}; driving load for "
                  f"{args.seconds:.0f}s", flush=True)
            load = asyncio.run(_drive(urls, args.keys, args.value_bytes, args.seconds,
                                      args.clients, procs))
            final = [proc_status(p.pid) for p in procs]
        finally:
            stop_cluster(procs)
        disk = [dir_bytes(d) for d in dirs]
        print()
        print(f"{args.keys:,} keys of {args.value_bytes} B per node; cache-bytes "
              f"{args.cache_bytes if args.cache_bytes is not None else 'default'}; load "
              f"{load.ops:,} ok ({load.ops / args.seconds:,.0f}/s), {load.errors:,} errors "
              f"in {args.seconds:.0f}s, {args.clients} clients, half GET half PUT")
        print(f"{'node':>4} {'empty RSS':>10} {'RSS ready':>10} {'RSS after':>10} "
              f"{'peak RSS':>10} {'B/key RSS':>10} {'B/key over empty':>17} {'data dir':>10} "
              f"{'B/key disk':>11}")
        for i in range(3):
            rss, hwm = final[i]["VmRSS"], final[i]["VmHWM"]
            print(f"{i + 1:4d} {_mb(baseline[i]):>10} {_mb(at_start[i]):>10} {_mb(rss):>10} "
                  f"{_mb(hwm):>10} {rss / args.keys:10.1f} "
                  f"{(rss - baseline[i]) / args.keys:17.1f} {_mb(disk[i]):>10} "
                  f"{disk[i] / args.keys:11.1f}")
        worst = max(f["VmHWM"] for f in final)
        print(f"\nhighest peak RSS {_mb(worst)} "
              f"({'under' if worst < 300e6 else 'NOT under'} 300 MB)")
    finally:
        if args.keep:
            print(f"bench_memory: kept {base}")
        else:
            shutil.rmtree(base, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
