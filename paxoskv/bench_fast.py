"""``python -m paxoskv.bench_fast``: Fast Paxos against the default fast path, same load.

The workload Fast Paxos is for: many proposers writing distinct keys. Clients are spread
over all nodes, and each client writes keys of its own (no two share a key), so fast rounds
never collide. Two clusters run it in turn, in one invocation on the same disk:

* ``fast``: ``--fast-paxos on --forward-writes off``: every node runs the writes it gets,
  each a single accept round trip to all three acceptors (a fast quorum is 3 of 3).
* ``default``: ``--fast-paxos off --forward-writes on``: a write goes to its key's
  preferred proposer (a forward hop for two thirds of them), which skips phase 1 for a key
  it wrote before (an accept round trip to a majority).

Bounded: each phase runs ``--seconds`` after a ``--warmup`` and every node is stopped by PID.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import sys
import tempfile
from pathlib import Path

from paxoskv.bench import Result, load, start_cluster, stop_cluster

__all__ = ["CONFIGS", "main"]

CONFIGS: dict[str, tuple[str, ...]] = {
    "fast": ("--fast-paxos", "on", "--forward-writes", "off"),
    "default": ("--fast-paxos", "off", "--forward-writes", "on"),
}
"""Each configuration's ``serve`` flags."""


def _run(base: Path, name: str, flags: tuple[str, ...], clients: int, seconds: float,
         warmup: float, keys: int) -> Result:
    procs, urls = start_cluster(base / name, 3, extra_args=flags)
    try:
        label = f"{name}: {clients} clients, own keys"
        if warmup > 0:
            asyncio.run(load(label, urls, clients, warmup, "put", keys, own_keys=True))
        return asyncio.run(load(label, urls, clients, seconds, "put", keys, own_keys=True))
    finally:
        stop_cluster(procs)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m paxoskv.bench_fast", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seconds", type=float, default=8.0, help="measured time per cluster")
    ap.add_argument("--warmup", type=float, default=2.0, help="unmeasured time first")
    ap.add_argument("--clients", type=int, default=24,
                    help="client connections, spread over the 3 nodes")
    ap.add_argument("--keys", type=int, default=50, help="keys per client")
    args = ap.parse_args(argv)
    base = Path(tempfile.mkdtemp(prefix="paxoskv-bench-fast-"))
    results: dict[str, Result] = {}
    try:
        for name, flags in CONFIGS.items():
            print(f"bench-fast: {name} ({' '.join(flags)}), {args.warmup:.0f}s warmup + "
                  f"{args.seconds:.0f}s ...", flush=True)
            results[name] = _run(base, name, flags, args.clients, args.seconds, args.warmup,
                                 args.keys)
    finally:
        shutil.rmtree(base, ignore_errors=True)
    print()
    print(f"3 nodes on loopback, 256-byte puts, {args.clients} clients over all nodes, "
          f"{args.keys} keys of their own each; {os.cpu_count()} cores, load generator on "
          "the same machine")
    print(f"{'cluster':40} {'ops/s':>9} {'p50 ms':>8} {'p99 ms':>8} {'errors':>7}")
    for r in results.values():
        print(f"{r.name:40} {r.rate:9.0f} {r.pct(0.5):8.2f} {r.pct(0.99):8.2f} {r.errors:7d}")
    fast, default = results["fast"], results["default"]
    ratio = fast.rate / default.rate if default.rate else float("nan")
    print(f"\nfast / default: throughput {ratio:.2f}x, p50 "
          f"{fast.pct(0.5) / default.pct(0.5):.2f}x, p99 {fast.pct(0.99) / default.pct(0.99):.2f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
