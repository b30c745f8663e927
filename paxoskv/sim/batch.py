"""Many seeds at once: worker processes, per-seed summaries, reports of failing seeds."""

from __future__ import annotations

import multiprocessing
import time
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final

from paxoskv.check import dump_ops, write_report
from paxoskv.sim.runner import RunResult, SimOptions, run_seed

__all__ = ["DEFAULT_SEEDS", "SEED_ENV", "Summary", "repro_command", "run_many"]

SEED_ENV: Final = "PAXOSKV_SIM_SEED"
DEFAULT_SEEDS: Final = 100
"""The default budget: every mutant must be caught within it (tests/sim/test_sim.py)."""


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
    invariant_failures: list[str]
    check_summary: str
    digest: str
    virtual_s: float
    wall_s: float
    report_files: list[str] = field(default_factory=list)

    @property
    def violated(self) -> bool:
        return self.violations > 0 or bool(self.node_errors) or bool(self.invariant_failures)

    @property
    def caught_by(self) -> list[str]:
        """Which detectors saw a safety violation in this run."""
        found = []
        if self.violations:
            found.append("checker")
        if self.invariant_failures:
            found.append("state checker")
        if self.node_errors:
            found.append("node assertion")
        return found

    @property
    def failed(self) -> bool:
        return self.violated or self.inconclusive > 0 or bool(self.liveness_failures)


def repro_command(seed: int, options: SimOptions) -> str:
    """The one-line command that replays ``seed`` with ``options``."""
    default = SimOptions()
    parts = [f"--ops {options.ops}"]
    if options.nodes != default.nodes:
        parts.append(f"--nodes {options.nodes}")
    if options.proposers != default.proposers:
        parts.append(f"--proposers {options.proposers}")
    if options.clients != default.clients:
        parts.append(f"--clients {options.clients}")
    if options.keys != default.keys:
        parts.append(f"--keys {options.keys}")
    if options.fast_paxos:
        parts.append("--fast-paxos")
    if options.ttl:
        parts.append("--ttl")
    if options.spares != default.spares:
        parts.append(f"--spares {options.spares}")
    if options.replication_factor is not None:
        parts.append(f"--replication-factor {options.replication_factor}")
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
        *(f"state checker: {e}" for e in result.invariant_failures),
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
        invariant_failures=result.invariant_failures,
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


