"""Linearizability checking of per-key register histories.

Record with `History`, check with `check`, and render violations with `render_text`,
`render_html` or `write_report`. ``python -m paxoskv.check HISTORY.jsonl`` does all three::

    history = History()                      # one clock for the whole history
    op_id = history.invoke(client, key, "cas", value=b"x", expected_version=3)
    ...                                      # the call
    history.complete(op_id, "ok", out_version=4)   # or "rejected" / "failed";
                                                   # never completed = "unknown"
    result = check(history.ops())
    if not result.ok:
        print(result.summary())
        write_report(result, history.ops(), "reports/")

Record versions whenever the store reports them (ETags): they make the search near-linear
and the counterexamples sharper. Modules: `history` (Op, History, JSON lines), `model` (the
register rules), `linearizability` (the search and shrinking), `report` (timelines),
`synth` (linearizable histories by construction, to test the checker).
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
