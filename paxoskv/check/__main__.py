"""``python -m paxoskv.check HISTORY.jsonl [--report-dir DIR]``.

Prints a summary. Exit status: 0 linearizable, 1 a violation, 3 no violation but some key
was inconclusive (its search ran out of budget), 2 a bad command line or history file.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Sequence

from paxoskv.check.history import load_ops
from paxoskv.check.linearizability import STEPS_MAX_PER_KEY, check
from paxoskv.check.report import render_text, write_report

EXIT_OK = 0
EXIT_VIOLATION = 1
EXIT_USAGE = 2
EXIT_INCONCLUSIVE = 3


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m paxoskv.check",
        description="Check a per-key register history (JSON lines) for linearizability.",
    )
    parser.add_argument("history", help="JSON lines written by History.save / dump_ops")
    parser.add_argument("--report-dir", help="write a .txt and an .html per violating key")
    parser.add_argument(
        "--steps-max-per-key",
        type=int,
        default=STEPS_MAX_PER_KEY,
        help=f"search budget per key (default {STEPS_MAX_PER_KEY})",
    )
    parser.add_argument("--no-shrink", action="store_true", help="report violations unshrunk")
    args = parser.parse_args(argv)
    if args.steps_max_per_key < 1:
        parser.error("--steps-max-per-key must be positive")

    try:
        ops = load_ops(args.history)
    except (OSError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    started = time.perf_counter()
    try:
        result = check(ops, steps_max_per_key=args.steps_max_per_key, shrink=not args.no_shrink)
    except ValueError as exc:
        print(f"error: malformed history: {exc}", file=sys.stderr)
        return EXIT_USAGE
    elapsed = time.perf_counter() - started

    print(result.summary())
    print(f"checked in {elapsed:.2f} s")
    for violation in result.violations[:3]:
        print()
        print(f"{violation.explanation}:")
        print(render_text(violation.key, violation.ops), end="")
    if args.report_dir and result.violations:
        paths = write_report(result, ops, args.report_dir)
        print(f"\nwrote {len(paths)} report files to {args.report_dir}")
    if result.violations:
        return EXIT_VIOLATION
    if result.inconclusive:
        return EXIT_INCONCLUSIVE
    return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
