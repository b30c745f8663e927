"""``python -m paxoskv.sim``: run many seeded simulations and check every history.

    python -m paxoskv.sim --seeds 1000 --ops 500
    python -m paxoskv.sim --seed 123 --ops 500          # replay one seed bit for bit
    PAXOSKV_SIM_SEED=123 python -m paxoskv.sim          # the same
    python -m paxoskv.sim --mutant no-fsync             # must be caught: exit 0 if it is

Exit status: 0 when every run passed (or, with ``--mutant``, when the mutant was caught);
1 otherwise; 2 on bad arguments.
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import sys
import time
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from paxoskv.check import dump_ops, write_report
from paxoskv.sim.mutants import MUTANTS
from paxoskv.sim.runner import RunResult, SimOptions, run_seed

SEED_ENV = "PAXOSKV_SIM_SEED"
DEFAULT_SEEDS = 100
"""The default budget: every mutant must be caught within it (tests/sim/test_sim.py)."""
PROGRESS_EVERY_S = 10.0


@dataclass(slots=True)
class Summary:
    """What a worker sends back for one seed (a whole history stays in the worker)."""

    seed: int
    ops: int
    faults: Counter[str]
    statuses: Counter[str]
    violations: int
    inconclusive: int
    liveness_failures: list[str]
    node_errors: list[str]
    check_summary: str
    digest: str
    virtual_s: float
    wall_s: float
    report_files: list[str] = field(default_factory=list)

    @property
    def violated(self) -> bool:
        return self.violations > 0 or bool(self.node_errors)

    @property
    def failed(self) -> bool:
        return self.violated or self.inconclusive > 0 or bool(self.liveness_failures)


def repro_command(seed: int, options: SimOptions) -> str:
    """The one-line command that replays ``seed`` with ``options``."""
    default = SimOptions()
    parts = [f"--ops {options.ops}"]
    if options.nodes != default.nodes:
        parts.append(f"--nodes {options.nodes}")
    if options.clients != default.clients:
        parts.append(f"--clients {options.clients}")
    if options.keys != default.keys:
        parts.append(f"--keys {options.keys}")
    if options.mutant is not None:
        parts.append(f"--mutant {options.mutant}")
    rest = " ".join(parts)
    return f"python -m paxoskv.sim --seed {seed} {rest}   (or {SEED_ENV}={seed} " \
        f"python -m paxoskv.sim {rest})"


def _write_failure(result: RunResult, directory: Path) -> list[str]:
    out = directory / f"seed-{result.seed}"
    out.mkdir(parents=True, exist_ok=True)
    dump_ops(result.ops, out / "history.jsonl")
    files = [str(p) for p in write_report(result.check, result.ops, out)]
    lines = [
        f"seed {result.seed}: {result.check.summary()}",
        f"repro: {repro_command(result.seed, result.options)}",
        f"history digest: {result.digest()}",
        *(f"node error: {e}" for e in result.node_errors),
        *(f"liveness: {e}" for e in result.liveness_failures),
    ]
    (out / "summary.txt").write_text("\n".join(lines) + "\n", encoding="utf-8")
    return [str(out / "summary.txt"), str(out / "history.jsonl"), *files]


def _run_one(job: tuple[int, SimOptions, str | None]) -> Summary:
    seed, options, report_dir = job
    started = time.perf_counter()
    result = run_seed(seed, options)
    files: list[str] = []
    if result.failed and report_dir is not None:
        files = _write_failure(result, Path(report_dir))
    return Summary(
        seed=seed,
        ops=len(result.ops),
        faults=result.faults,
        statuses=result.statuses,
        violations=len(result.check.violations),
        inconclusive=len(result.check.inconclusive),
        liveness_failures=result.liveness_failures,
        node_errors=result.node_errors,
        check_summary=result.check.summary(),
        digest=result.digest(),
        virtual_s=result.virtual_s,
        wall_s=time.perf_counter() - started,
        report_files=files,
    )


def run_many(seeds: Sequence[int], options: SimOptions, report_dir: str | None,
             jobs: int) -> Iterator[Summary]:
    """Summaries in seed order; runs ``jobs`` seeds at once in worker processes."""
    work = [(seed, options, report_dir) for seed in seeds]
    if jobs <= 1 or len(work) <= 1:
        for job in work:
            yield _run_one(job)
        return
    with multiprocessing.get_context("fork").Pool(jobs) as pool:
        yield from pool.imap(_run_one, work, chunksize=1)


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
    parser.add_argument("--clients", type=int, default=default.clients)
    parser.add_argument("--keys", type=int, default=default.keys)
    parser.add_argument("--mutant", choices=sorted(MUTANTS), default=None,
                        help="run a deliberately broken variant, which must be caught")
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
    try:
        options = SimOptions(nodes=args.nodes, clients=args.clients, ops=args.ops,
                             keys=args.keys, mutant=args.mutant)
    except ValueError as exc:
        print(f"bad options: {exc}", file=sys.stderr)
        return 2
    seeds = [single] if single is not None else list(range(args.start, args.start + args.seeds))
    if not seeds:
        print("no seeds to run", file=sys.stderr)
        return 2
    what = f"mutant {args.mutant!r} ({MUTANTS[args.mutant]})" if args.mutant else "the real node"
    print(f"simulating {what}: {len(seeds)} seed(s) from {seeds[0]}, {options.nodes} nodes, "
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
            if args.mutant and summary.violated and caught is None:
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
            how = "checker violation" if caught.violations else "node assertion"
            print(f"mutant {args.mutant!r} CAUGHT at seed {caught.seed} ({how})")
            return 0
        print(f"mutant {args.mutant!r} NOT caught in {runs} seed(s)")
        return 1
    return 1 if failures else 0


def _print_failure(summary: Summary, options: SimOptions) -> None:
    kind = "VIOLATION" if summary.violated else "FAILURE"
    print(f"{kind} seed {summary.seed}: {summary.check_summary.splitlines()[0]}")
    for line in summary.check_summary.splitlines()[1:]:
        print(f"  {line}")
    for error in summary.node_errors[:5]:
        print(f"  node error: {error}")
    for failure in summary.liveness_failures[:5]:
        print(f"  liveness: {failure}")
    print(f"  repro: {repro_command(summary.seed, options)}")
    if summary.report_files:
        print(f"  report: {summary.report_files[0]}")
    sys.stdout.flush()


if __name__ == "__main__":
    sys.exit(main())
