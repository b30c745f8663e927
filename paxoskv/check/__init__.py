"""Linearizability checking of per-key register histories.

Record with `History`, check with `check`, and render violations with `render_text`,
`render_html` or `write_report`. ``python -m paxoskv.check HISTORY.jsonl`` does all three.
"""

from paxoskv.check.history import History, Op, OpKind, Status, dump_ops, load_ops
from paxoskv.check.linearizability import (
    STEPS_MAX_PER_KEY,
    CheckResult,
    Verdict,
    Violation,
    check,
    check_key,
)
from paxoskv.check.report import render_html, render_text, write_report

__all__ = [
    "STEPS_MAX_PER_KEY",
    "CheckResult",
    "History",
    "Op",
    "OpKind",
    "Status",
    "Verdict",
    "Violation",
    "check",
    "check_key",
    "dump_ops",
    "load_ops",
    "render_html",
    "render_text",
    "write_report",
]
