"""``python -m paxoskv.chaos``: one chaos run outside pytest (exit 0 = no violation)."""

from __future__ import annotations

import argparse
import asyncio
import random
import shutil
import sys
import tempfile
from pathlib import Path

from paxoskv.chaos.runner import ChaosOptions, run_chaos
from paxoskv.chaos.schedule import MAJORITY_KINDS, MINORITY_KINDS


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m paxoskv.chaos", description=__doc__)
    p.add_argument("--seed", type=int, default=None, help="default: random (printed)")
    p.add_argument("--nodes", type=int, default=3)
    p.add_argument("--duration", type=float, default=120.0,
                   help="seconds of faults and client load (default 120)")
    p.add_argument("--clients", type=int, default=10)
    p.add_argument("--keys", type=int, default=50)
    p.add_argument("--hot-keys", type=int, default=10,
                   help="half the ops go to this many keys (default 10)")
    p.add_argument("--server-arg", action="append", default=[],
                   help="extra flag for every paxoskv serve, repeatable, e.g. "
                        "--server-arg=--repair-interval --server-arg=2")
    p.add_argument("--no-faults", action="store_true",
                   help="run the workload without any fault (baseline)")
    p.add_argument("--faults", default=None,
                   help="comma-separated fault kinds to draw from (default all): "
                        + ",".join(MINORITY_KINDS + MAJORITY_KINDS))
    p.add_argument("--base-dir", type=Path, default=None,
                   help="data dirs and node logs (default: a temporary dir, removed on "
                        "success)")
    p.add_argument("--report-dir", type=Path, default=None,
                   help="default reports/chaos-<seed>")
    p.add_argument("--save-history", action="store_true",
                   help="write history and fault log even when the run passes")
    args = p.parse_args(argv)
    if args.nodes < 3:
        p.error("--nodes must be at least 3")
    if args.clients < 1 or args.keys < 1 or args.hot_keys < 1 or args.duration <= 0:
        p.error("--clients, --keys, --hot-keys and --duration must be positive")
    kinds = None
    if args.faults is not None:
        kinds = tuple(k.strip() for k in args.faults.split(",") if k.strip())
        bad = set(kinds) - set(MINORITY_KINDS) - set(MAJORITY_KINDS)
        if bad or not kinds:
            p.error(f"--faults: unknown kinds {sorted(bad)}")
    seed = args.seed if args.seed is not None else random.SystemRandom().randrange(2**32)
    base = args.base_dir or Path(tempfile.mkdtemp(prefix=f"paxoskv-chaos-{seed}-"))
    opts = ChaosOptions(seed=seed, base_dir=base, nodes=args.nodes, duration_s=args.duration,
                        clients=args.clients, keys=args.keys, hot_keys=args.hot_keys,
                        server_args=tuple(args.server_arg), faults=not args.no_faults,
                        fault_kinds=kinds,
                        report_dir=args.report_dir,
                        save_history=args.save_history)
    result = asyncio.run(run_chaos(opts))
    if result.ok and args.base_dir is None:
        shutil.rmtree(base, ignore_errors=True)
    else:
        print(f"chaos: node data and logs kept in {base}", file=sys.stderr)
    return 0 if result.ok else 1


if __name__ == "__main__":
    sys.exit(main())
