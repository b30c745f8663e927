"""Human-readable timelines of register histories: plain text and self-contained HTML.

`render_text` draws one line per op, with the op's invoke..complete interval as a bar on a
shared, scaled time axis. `render_html` draws one row per client, each op a box spanning its
interval, in the spirit of Porcupine's visualization; an unknown op is drawn open to the
right, since it may take effect at any time after it was sent. `write_report` writes both for
every violating key of a `CheckResult`.
"""

from __future__ import annotations

import hashlib
import html
import math
import re
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Final

from paxoskv.check.history import Op
from paxoskv.check.linearizability import CheckResult, Violation

__all__ = ["describe_op", "describe_result", "render_html", "render_text", "write_report"]

BAR_COLUMNS: Final = 60
"""Width of the text time axis."""

VALUE_CHARS_MAX: Final = 24
"""Longest rendering of one value before it is cut with an ellipsis."""

CONTEXT_OPS_MAX: Final = 400
"""Ops of a violating key shown around its counterexample in a report."""

CONTEXT_BEFORE: Final = 10
"""Ops of the key sent before the counterexample's window, shown with it."""

CONTEXT_AFTER: Final = 5
"""Ops of the key sent after the counterexample's window, shown with it."""


def _show(data: bytes | None) -> str:
    if data is None:
        return "absent"
    try:
        text: str | None = data.decode("utf-8")
    except UnicodeDecodeError:
        text = None
    shown = repr(text) if text is not None and text.isprintable() else "0x" + data.hex()
    if len(shown) > VALUE_CHARS_MAX:
        shown = shown[: VALUE_CHARS_MAX - 1] + "…"
    return shown


def describe_op(op: Op) -> str:
    """The call, e.g. ``cas(v3, 'x')``."""
    if op.kind == "set":
        return f"set({_show(op.value)})"
    if op.kind == "cas":
        return f"cas(v{op.expected_version}, {_show(op.value)})"
    if op.kind == "create":
        return f"create({_show(op.value)})"
    if op.kind == "delete":
        return "delete()" if op.expected_version is None else f"delete(v{op.expected_version})"
    return "read()"


def describe_result(op: Op) -> str:
    """What the client was told, e.g. ``ok v4``, ``'x' @v4``, ``rejected at v3``."""
    if op.status in ("failed", "unknown"):
        return op.status
    if op.kind == "read":
        seen = None if op.status == "rejected" else op.out_value
        return _show(seen) + ("" if op.out_version is None else f" @v{op.out_version}")
    if op.status == "ok":
        return "ok" + ("" if op.out_version is None else f" v{op.out_version}")
    if op.out_version is not None:
        return f"rejected at v{op.out_version}"
    return "rejected (absent)" if op.kind in ("cas", "delete") else "rejected"


def _span(ops: Sequence[Op]) -> tuple[float, float]:
    start = min((op.invoke for op in ops), default=0.0)
    ends = [op.complete for op in ops if not math.isinf(op.complete)]
    end = max([*ends, *(op.invoke for op in ops)], default=start)
    if end <= start:
        end = start + 1.0
    return start, end


def _fmt_time(t: float) -> str:
    return "inf" if math.isinf(t) else f"{t:.3f}"


def render_text(key: str, ops: Sequence[Op]) -> str:
    """One line per op (by invoke time): client, interval bar, times, call and result."""
    rows = sorted(ops, key=lambda op: (op.invoke, op.complete, op.client))
    start, end = _span(rows)
    scale = BAR_COLUMNS / (end - start)
    lines = [
        f"key {key!r}: {len(rows)} ops, t = {_fmt_time(start)} .. {_fmt_time(end)} "
        f"(one column = {(end - start) / BAR_COLUMNS:.4g})",
        f"{'client':>6}  {'timeline':<{BAR_COLUMNS + 2}}  {'invoke..complete':<19}  "
        f"{'op':<32}  result",
    ]
    for op in rows:
        left = min(BAR_COLUMNS - 2, int((op.invoke - start) * scale))
        if math.isinf(op.complete):
            bar = " " * left + "[" + "-" * (BAR_COLUMNS - left - 2) + ">"
        else:
            # At least "[]", so that every op shows where it starts and ends.
            right = min(BAR_COLUMNS - 1, max(left + 1, int((op.complete - start) * scale)))
            bar = " " * left + "[" + "=" * (right - left - 1) + "]"
        bar = bar[:BAR_COLUMNS].ljust(BAR_COLUMNS)
        times = f"{_fmt_time(op.invoke)}..{_fmt_time(op.complete)}"
        lines.append(
            f"{op.client:>6}  |{bar}|  {times:<19}  {describe_op(op):<32}  {describe_result(op)}"
        )
    return "\n".join(lines) + "\n"


_STYLE = """
body { font: 13px/1.4 system-ui, sans-serif; margin: 1.5em; color: #222; }
h1 { font-size: 17px; } h2 { font-size: 15px; margin-top: 1.5em; }
.timeline { position: relative; border-left: 1px solid #999; margin-left: 90px; }
.lane { position: relative; height: 30px; border-bottom: 1px dotted #ddd; }
.label { position: absolute; left: -88px; width: 80px; text-align: right; top: 7px;
  color: #555; }
.op { position: absolute; top: 3px; height: 22px; box-sizing: border-box; overflow: hidden;
  white-space: nowrap; font-size: 11px; padding: 1px 3px; border: 1px solid #555;
  border-radius: 3px; min-width: 3px; }
.op.ok { background: #c8ecc8; } .op.rejected { background: #fbe9a6; }
.op.failed { background: #ddd; color: #777; }
.op.unknown { background: linear-gradient(to right, #f8c99b, #fff); border-right: none;
  border-style: dashed; border-radius: 3px 0 0 3px; }
.op.mark { outline: 2px solid #c00; z-index: 2; }
.axis { position: relative; height: 18px; margin-left: 90px; color: #777; font-size: 11px; }
.tick { position: absolute; border-left: 1px solid #bbb; padding-left: 2px; height: 16px; }
.legend span { display: inline-block; padding: 1px 6px; margin-right: 6px;
  border: 1px solid #555; border-radius: 3px; font-size: 11px; }
"""


def _lanes(ops: Sequence[Op]) -> list[tuple[str, list[Op]]]:
    """One lane per client; a client with overlapping ops gets extra lanes."""
    by_client: dict[int, list[Op]] = {}
    for op in sorted(ops, key=lambda op: (op.invoke, op.complete)):
        by_client.setdefault(op.client, []).append(op)
    lanes: list[tuple[str, list[Op]]] = []
    for client in sorted(by_client):
        rows: list[list[Op]] = []
        for op in by_client[client]:
            for row in rows:
                if row[-1].complete < op.invoke:
                    row.append(op)
                    break
            else:
                rows.append([op])
        for n, row in enumerate(rows):
            lanes.append((f"client {client}" + (f" ({n + 1})" if n else ""), row))
    return lanes


def _html_timeline(ops: Sequence[Op], marked: frozenset[Op]) -> str:
    start, end = _span(ops)
    width = end - start

    def pct(t: float) -> float:
        return max(0.0, min(100.0, (t - start) / width * 100.0))

    parts = ['<div class="axis">']
    for k in range(6):
        t = start + width * k / 5
        parts.append(f'<div class="tick" style="left:{pct(t):.3f}%">{t:.3f}</div>')
    parts.append('</div><div class="timeline">')
    for label, row in _lanes(ops):
        parts.append(f'<div class="lane"><div class="label">{html.escape(label)}</div>')
        for op in row:
            left = pct(op.invoke)
            right = 100.0 if math.isinf(op.complete) else pct(op.complete)
            text = f"{describe_op(op)} → {describe_result(op)}"
            title = (
                f"client {op.client}, {op.kind}, {op.status}\n"
                f"invoke {_fmt_time(op.invoke)}, complete {_fmt_time(op.complete)}\n{text}"
            )
            classes = f"op {op.status}" + (" mark" if op in marked else "")
            parts.append(
                f'<div class="{classes}" style="left:{left:.3f}%;width:{right - left:.3f}%" '
                f'title="{html.escape(title)}">{html.escape(text)}</div>'
            )
        parts.append("</div>")
    parts.append("</div>")
    return "".join(parts)


def _html_page(title: str, body: str) -> str:
    return (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        f"<title>{html.escape(title)}</title><style>{_STYLE}</style></head>"
        f"<body>{body}</body></html>\n"
    )


_LEGEND = (
    '<p class="legend"><span class="op ok">ok</span><span class="op rejected">rejected</span>'
    '<span class="op failed">failed</span><span class="op unknown">unknown: open-ended</span>'
    "</p>"
)


def render_html(key: str, ops: Sequence[Op], marked: Iterable[Op] = ()) -> str:
    """A self-contained HTML page: one row per client, one box per op over its interval.

    ``marked`` ops (compared by value) are outlined, e.g. a counterexample within its context.
    """
    heading = f"<h1>key {html.escape(repr(key))}: {len(ops)} ops</h1>{_LEGEND}"
    return _html_page(f"paxoskv history: {key}", heading + _html_timeline(ops, frozenset(marked)))


def _context(violation: Violation, ops: Sequence[Op]) -> list[Op]:
    """The key's ops overlapping the counterexample's time window, with CONTEXT_BEFORE ops
    sent before it and CONTEXT_AFTER after, at most CONTEXT_OPS_MAX in all."""
    start, end = _span(violation.ops)
    key_ops = sorted(
        (op for op in ops if op.key == violation.key), key=lambda op: (op.invoke, op.complete)
    )
    inside = [n for n, op in enumerate(key_ops) if op.invoke <= end and op.complete >= start]
    if not inside:
        return []
    first = max(0, inside[0] - CONTEXT_BEFORE)
    last = min(len(key_ops), inside[-1] + 1 + CONTEXT_AFTER)
    return key_ops[first:last][:CONTEXT_OPS_MAX]


def _file_stem(index: int, key: str) -> str:
    safe = re.sub(r"[^A-Za-z0-9._-]+", "_", key)[:60]
    digest = hashlib.sha256(key.encode("utf-8")).hexdigest()[:8]
    return f"violation-{index:03d}-{safe}-{digest}"


def write_report(result: CheckResult, ops: Sequence[Op], directory: str | Path) -> list[Path]:
    """Write ``<stem>.txt`` and ``<stem>.html`` per violating key; returns the paths written.

    ``ops`` is the checked history; each report shows the counterexample and, below it, the
    key's ops that overlap the counterexample in time and a few sent just before and after.
    """
    out = Path(directory)
    out.mkdir(parents=True, exist_ok=True)
    written: list[Path] = []
    for index, violation in enumerate(result.violations, start=1):
        context = _context(violation, ops)
        stem = _file_stem(index, violation.key)
        note = "" if violation.minimal else " (not minimal: shrinking hit its budget)"
        text = (
            f"linearizability violation on key {violation.key!r}{note}\n"
            f"{violation.explanation}.\n\n"
            f"counterexample ({len(violation.ops)} of {violation.key_ops} ops):\n"
            + render_text(violation.key, violation.ops)
            + f"\ncontext: the key's ops around that window ({len(context)} shown):\n"
            + render_text(violation.key, context)
        )
        txt_path = out / f"{stem}.txt"
        txt_path.write_text(text, encoding="utf-8")
        body = (
            f"<h1>Linearizability violation on key {html.escape(repr(violation.key))}"
            f"{html.escape(note)}</h1><p>{html.escape(violation.explanation)}.</p>{_LEGEND}"
            f"<h2>Counterexample: {len(violation.ops)} of {violation.key_ops} ops</h2>"
            + _html_timeline(violation.ops, frozenset())
            + f"<h2>Context: the key's ops around that window ({len(context)} shown; "
            "counterexample outlined)</h2>" + _html_timeline(context, frozenset(violation.ops))
        )
        html_path = out / f"{stem}.html"
        html_path.write_text(_html_page(f"violation: {violation.key}", body), encoding="utf-8")
        written += [txt_path, html_path]
    return written
