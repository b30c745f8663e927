"""``python -m paxoskv.sim``: run many seeded simulations and check every history.

    python -m paxoskv.sim --seeds 1000 --ops 500
    python -m paxoskv.sim --seed 123 --ops 500          # replay one seed bit for bit
    PAXOSKV_SIM_SEED=123 python -m paxoskv.sim          # the same
    python -m paxoskv.sim --mutant no-fsync             # must be caught: exit 0 if it is
    python -m paxoskv.sim --reconf --seeds 300          # acceptor-set changes (core-level)
    python -m paxoskv.sim --spares 2 --seeds 100        # ... driven through the real node
    python -m paxoskv.sim --mutant reconf-no-epoch-fence
    python -m paxoskv.sim --reconf --replication-factor 3   # ... with acceptor groups

Exit status: 0 when every run passed (or, with ``--mutant``, when the mutant was caught);
1 otherwise; 2 on bad arguments. Three detectors can catch a run: the linearizability
checker (damage that reached clients), the state checker on acceptor replies
(`paxoskv.sim.invariants`), and the node's own assertions. A mutant counts as caught by the
first run any of them flags; the summary says which, and ``--require-checker`` counts only
the linearizability checker.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections import Counter
from collections.abc import Sequence
from typing import Any

from paxoskv.sim.batch import DEFAULT_SEEDS, SEED_ENV, Summary, repro_command, run_many
from paxoskv.sim.mutants import MUTANTS, NODE_RECONF_MUTANTS
from paxoskv.sim.reconf import RECONF_MUTANTS, ReconfOptions, run_reconf_seed
from paxoskv.sim.runner import SimOptions

PROGRESS_EVERY_S = 10.0


def _parse(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m paxoskv.sim", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, default=DEFAULT_SEEDS,
                        help=f"how many seeds to run (default {DEFAULT_SEEDS})")
    parser.add_argument("--start", type=int, default=0, help="first seed (default 0)")
    parser.add_argument("--seed", type=int, default=None,
                        help=f"run this one seed only (or set {SEED_ENV})")
    default = SimOptions()
    parser.add_argument("--ops", type=int, default=default.ops, help="client ops per run")
    parser.add_argument("--nodes", type=int, default=default.nodes)
    parser.add_argument("--proposers", type=int, default=default.proposers,
                        help="extra proposer-only nodes (default 0)")
    parser.add_argument("--clients", type=int, default=default.clients)
    parser.add_argument("--keys", type=int, default=default.keys)
    parser.add_argument("--fast-paxos", action="store_true",
                        help="nodes run with --fast-paxos on and --forward-writes off")
    parser.add_argument("--ttl", action="store_true",
                        help="add the TTL workload and its invariants (paxoskv/sim/ttl.py)")
    parser.add_argument("--reconf", action="store_true",
                        help="simulate acceptor-set changes (add, remove, replace) on the "
                             "protocol core instead of the real node (paxoskv.sim.reconf)")
    parser.add_argument("--replication-factor", type=int, default=None, metavar="R",
                        help="each key lives on R acceptors (docs/groups.md); with --reconf "
                             "the set starts at max(5, R + 2) and stays between 3 and that "
                             "plus 2; on the real node, every node runs with it (use "
                             "--nodes above R)")
    parser.add_argument("--spares", type=int, default=default.spares,
                        help="acceptor-role nodes outside the first acceptor set, and random "
                             "acceptor-set changes driven through the real node (default 0)")
    parser.add_argument("--mutant", choices=sorted([*MUTANTS, *RECONF_MUTANTS,
                                                    *NODE_RECONF_MUTANTS]), default=None,
                        help="run a deliberately broken variant, which must be caught")
    parser.add_argument("--require-checker", action="store_true",
                        help="with --mutant, count only linearizability checker violations")
    parser.add_argument("--keep-going", action="store_true",
                        help="with --mutant, run every seed instead of stopping at the first catch")
    parser.add_argument("--report-dir", default="sim-reports",
                        help="where failing seeds' histories and reports go (default sim-reports)")
    parser.add_argument("--jobs", type=int, default=min(2, os.cpu_count() or 1),
                        help="worker processes (default: up to 2)")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = _parse(argv)
    env_seed = os.environ.get(SEED_ENV)
    single = args.seed
    if single is None and env_seed:
        try:
            single = int(env_seed)
        except ValueError:
            print(f"{SEED_ENV}={env_seed!r} is not an integer", file=sys.stderr)
            return 2
    seeds_wanted = [single] if single is not None else list(
        range(args.start, args.start + args.seeds))
    if args.reconf or args.mutant in RECONF_MUTANTS:
        return _main_reconf(args, seeds_wanted)
    try:
        options = SimOptions(nodes=args.nodes, proposers=args.proposers,
                             clients=args.clients, ops=args.ops,
                             keys=args.keys, fast_paxos=args.fast_paxos,
                             ttl=args.ttl, spares=args.spares, mutant=args.mutant,
                             replication_factor=args.replication_factor)
    except ValueError as exc:
        print(f"bad options: {exc}", file=sys.stderr)
        return 2
    seeds = [single] if single is not None else list(range(args.start, args.start + args.seeds))
    if not seeds:
        print("no seeds to run", file=sys.stderr)
        return 2
    described = {**MUTANTS, **NODE_RECONF_MUTANTS}
    what = f"mutant {args.mutant!r} ({described[args.mutant]})" if args.mutant \
        else "the real node"
    print(f"simulating {what}: {len(seeds)} seed(s) from {seeds[0]}, {options.nodes} nodes "
          f"(+{options.proposers} proposer-only, +{options.spares} spare acceptors), "
          f"{options.clients} clients, {options.ops} ops over {options.keys} keys, "
          f"{args.jobs} job(s)", flush=True)

    started = time.perf_counter()
    last_progress = started
    runs = ops = 0
    faults: Counter[str] = Counter()
    statuses: Counter[str] = Counter()
    failures: list[Summary] = []
    caught: Summary | None = None
    for summary in run_many(seeds, options, args.report_dir, args.jobs):
        runs += 1
        ops += summary.ops
        faults.update(summary.faults)
        statuses.update(summary.statuses)
        if single is not None:
            print(f"seed {summary.seed}: history digest {summary.digest}, "
                  f"{summary.virtual_s:.1f}s virtual, {summary.wall_s:.2f}s wall")
            print("  " + summary.check_summary.replace("\n", "\n  "))
        if summary.failed:
            failures.append(summary)
            _print_failure(summary, options)
            counts = bool(summary.violations) if args.require_checker else summary.violated
            if args.mutant and counts and caught is None:
                caught = summary
                if not args.keep_going:
                    break
        now = time.perf_counter()
        if now - last_progress >= PROGRESS_EVERY_S:
            last_progress = now
            print(f"progress: {runs}/{len(seeds)} runs, {ops} ops, {len(failures)} failing, "
                  f"{now - started:.0f}s", flush=True)

    wall_s = time.perf_counter() - started
    print(f"runs: {runs}   operations: {ops}   wall: {wall_s:.1f}s "
          f"({wall_s / max(runs, 1):.3f}s per run)")
    print("faults injected: " + ", ".join(f"{k}={v}" for k, v in sorted(faults.items())))
    by_status: Counter[str] = Counter()
    for name, count in statuses.items():
        by_status[name.split(":")[1]] += count
    print("client outcomes: " + ", ".join(f"{k}={v}" for k, v in sorted(by_status.items())))
    violating = [s for s in failures if s.violated]
    print(f"violations: {len(violating)} run(s)   other failures (liveness, inconclusive): "
          f"{len(failures) - len(violating)} run(s)")
    if args.mutant:
        if caught is not None:
            print(f"mutant {args.mutant!r} CAUGHT at seed {caught.seed} by: "
                  f"{', '.join(caught.caught_by)}")
            return 0
        print(f"mutant {args.mutant!r} NOT caught in {runs} seed(s)")
        return 1
    return 1 if failures else 0


def _print_failure(summary: Summary, options: SimOptions) -> None:
    kind = f"VIOLATION ({', '.join(summary.caught_by)})" if summary.violated else "FAILURE"
    print(f"{kind} seed {summary.seed}: {summary.check_summary.splitlines()[0]}")
    for line in summary.check_summary.splitlines()[1:]:
        print(f"  {line}")
    for error in summary.node_errors[:5]:
        print(f"  node error: {error}")
    for error in summary.invariant_failures[:5]:
        print(f"  state checker: {error}")
    for failure in summary.liveness_failures[:5]:
        print(f"  liveness: {failure}")
    print(f"  repro: {repro_command(summary.seed, options)}")
    if summary.report_files:
        print(f"  report: {summary.report_files[0]}")
    sys.stdout.flush()


def reconf_sizes(replication_factor: int | None) -> dict[str, Any]:
    """The reconfiguration simulator's set sizes for ``--replication-factor``: without it
    the defaults (3 to 5 acceptors); with R, sets from 3 (every key everywhere when R >= 3)
    to R + 4 at least, starting at max(5, R + 2)."""
    if replication_factor is None:
        return {}
    start = max(5, replication_factor + 2)
    return {"replication_factor": replication_factor, "acceptors": start,
            "min_acceptors": 3, "max_acceptors": start + 2}


def _main_reconf(args: argparse.Namespace, seeds: list[int]) -> int:
    """The reconfiguration simulator: one process (``--jobs`` is ignored), same exit codes."""
    from paxoskv.check import write_report

    if args.mutant is not None and args.mutant not in RECONF_MUTANTS:
        print(f"--reconf runs only the reconf-* mutants, not {args.mutant!r}", file=sys.stderr)
        return 2
    try:
        options = ReconfOptions(clients=args.clients, ops=args.ops, keys=args.keys,
                                mutant=args.mutant, **reconf_sizes(args.replication_factor))
    except ValueError as exc:
        print(f"bad options: {exc}", file=sys.stderr)
        return 2
    if not seeds:
        print("no seeds to run", file=sys.stderr)
        return 2
    what = f"mutant {args.mutant!r} ({RECONF_MUTANTS[args.mutant]})" if args.mutant \
        else "acceptor-set changes"
    print(f"simulating {what}: {len(seeds)} seed(s) from {seeds[0]}, "
          f"{options.acceptors} acceptors at first ({options.min_acceptors} to "
          f"{options.max_acceptors}), replication factor "
          f"{options.replication_factor or 'all'}, {options.proposers} proposers, "
          f"{options.clients} clients, {options.ops} ops over {options.keys} keys, "
          f"up to {options.changes_max} changes per run", flush=True)
    started = time.perf_counter()
    runs = ops = 0
    faults: Counter[str] = Counter()
    failing: list[int] = []
    caught: int | None = None
    caught_by = ""
    last_progress = started
    for seed in seeds:
        result = run_reconf_seed(seed, options)
        runs += 1
        if time.perf_counter() - last_progress >= PROGRESS_EVERY_S:
            last_progress = time.perf_counter()
            print(f"progress: {runs}/{len(seeds)} runs, {len(failing)} failing, "
                  f"{last_progress - started:.0f}s", flush=True)
        ops += len(result.ops)
        faults.update(result.faults)
        if result.failed:
            failing.append(seed)
            kind = "VIOLATION" if result.violated else "FAILURE"
            print(f"{kind} seed {seed}: {result.check.summary().splitlines()[0]}")
            for line in [*result.errors, *result.liveness_failures][:5]:
                print(f"  {line}")
            repro = f"python -m paxoskv.sim --reconf --seed {seed} --ops {options.ops}"
            if options.replication_factor is not None:
                repro += f" --replication-factor {options.replication_factor}"
            if args.mutant:
                repro += f" --mutant {args.mutant}"
            print(f"  repro: {repro}")
            if result.check.violations:
                paths = write_report(result.check, result.ops, f"{args.report_dir}/reconf-{seed}")
                print(f"  report: {paths[0]}")
            if args.mutant and result.violated and caught is None:
                caught = seed
                caught_by = "checker" if result.check.violations else "assertion"
                if not args.keep_going:
                    break
    wall_s = time.perf_counter() - started
    print(f"runs: {runs}   operations: {ops}   wall: {wall_s:.1f}s "
          f"({wall_s / max(runs, 1):.3f}s per run)")
    print("events: " + ", ".join(f"{k}={v}" for k, v in sorted(faults.items())))
    print(f"failing runs: {len(failing)}")
    if args.mutant:
        if caught is not None:
            print(f"mutant {args.mutant!r} CAUGHT at seed {caught} by: {caught_by}")
            return 0
        print(f"mutant {args.mutant!r} NOT caught in {runs} seed(s)")
        return 1
    return 1 if failing else 0


if __name__ == "__main__":
    sys.exit(main())
