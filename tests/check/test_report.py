"""Tests of paxoskv.check.report and the ``python -m paxoskv.check`` command line."""

from __future__ import annotations

import dataclasses
import math
import random
import re
import subprocess
import sys
from html.parser import HTMLParser
from pathlib import Path

import pytest

from paxoskv.check import Op, check, dump_ops, render_html, render_text, write_report
from paxoskv.check.__main__ import main
from paxoskv.check.synth import SynthOptions, linearizable_history

STALE = [
    Op(1, "k", "set", 0.0, 1.0, "ok", b"a", out_version=1),
    Op(1, "k", "set", 2.0, 3.0, "ok", b"b", out_version=2),
    Op(2, "k", "read", 4.0, 5.0, "ok", out_version=1, out_value=b"a"),
    Op(3, "k", "cas", 0.5, math.inf, "unknown", b"c", expected_version=1),
    Op(3, "k", "delete", 6.0, 7.0, "rejected", out_version=None),
]


def test_render_text_draws_one_scaled_bar_per_op() -> None:
    """Goal: the text timeline is readable and faithful. Method: render five ops; check one
    line per op in invoke order, bars starting at the scaled invoke column, the unknown op's
    bar running to the right edge, and each op's call and result text."""
    text = render_text("k", STALE)
    lines = text.splitlines()
    assert lines[0].startswith("key 'k': 5 ops")
    rows = lines[2:]
    assert len(rows) == 5
    assert [r.split("|")[0].strip() for r in rows] == ["1", "3", "1", "2", "3"]
    bars = [r.split("|")[1] for r in rows]
    assert all(len(b) == len(bars[0]) for b in bars)
    starts = [b.index("[") for b in bars]
    assert starts == sorted(starts)
    assert starts[0] == 0
    assert bars[1].endswith(">")  # the unknown cas is open-ended
    assert bars[0].rstrip().endswith("]")
    assert "set('a')" in rows[0] and "ok v1" in rows[0]
    assert "cas(v1, 'c')" in rows[1] and "unknown" in rows[1]
    assert "read()" in rows[3] and "'a' @v1" in rows[3]
    assert "delete()" in rows[4] and "rejected (absent)" in rows[4]


def test_render_text_shows_binary_and_long_values_safely() -> None:
    """Goal: arbitrary bytes never break the layout. Method: a non-UTF-8 value and a long
    value render as hex and with an ellipsis, and the lines stay single lines."""
    ops = [
        Op(1, "k", "set", 0.0, 1.0, "ok", b"\xff\x00\n", out_version=1),
        Op(1, "k", "set", 2.0, 3.0, "ok", b"x" * 500, out_version=2),
    ]
    text = render_text("k", ops)
    assert "0xff000a" in text
    assert "…" in text
    assert len(text.splitlines()) == 4


class _Collector(HTMLParser):
    """Collects op boxes and checks that tags nest."""

    def __init__(self) -> None:
        super().__init__()
        self.stack: list[str] = []
        self.boxes: list[dict[str, str]] = []
        self.lanes = 0

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag not in ("meta", "br"):
            self.stack.append(tag)
        found = {k: v or "" for k, v in attrs}
        classes = found.get("class", "").split()
        if "op" in classes and "style" in found:
            self.boxes.append(found)
        if "lane" in classes:
            self.lanes += 1

    def handle_endtag(self, tag: str) -> None:
        assert self.stack and self.stack[-1] == tag, (self.stack, tag)
        self.stack.pop()


def _geometry(box: dict[str, str]) -> tuple[float, float]:
    match = re.search(r"left:([\d.]+)%;width:([\d.]+)%", box["style"])
    assert match is not None
    return float(match[1]), float(match[2])


def test_render_html_is_a_self_contained_timeline() -> None:
    """Goal: the HTML view is well formed, self-contained, and places boxes correctly.
    Method: parse it; tags nest; no external resources; one lane per client; one box per
    op; the first box starts at 0%, the unknown op's box runs to 100% and is dashed.
    Client 3's unknown op stays open, so its next op gets a second lane: 4 lanes."""
    page = render_html("k", STALE)
    parser = _Collector()
    parser.feed(page)
    parser.close()
    assert parser.stack == []
    assert "http" not in page and "<script" not in page
    assert parser.lanes == 4
    assert page.count("client 3 (2)") == 1
    assert len(parser.boxes) == 5
    unknown = [b for b in parser.boxes if "unknown" in b["class"].split()]
    assert len(unknown) == 1
    left, width = _geometry(unknown[0])
    assert left + width == pytest.approx(100.0)
    assert min(_geometry(b)[0] for b in parser.boxes) == 0.0


def test_render_html_escapes_keys_and_values() -> None:
    """Goal: hostile keys and values cannot inject markup. Method: a key and a value that
    contain a script tag appear only escaped."""
    ops = [Op(1, "<script>k", "set", 0.0, 1.0, "ok", b"<script>alert(1)</script>", None, 1)]
    page = render_html("<script>k", ops)
    assert "<script" not in page
    assert "&lt;script&gt;" in page


def test_write_report_writes_a_text_and_html_file_per_violating_key(tmp_path: Path) -> None:
    """Goal: reports land on disk, one pair per violating key. Method: two keys with stale
    reads and one clean key; two .txt and two .html files, naming the key, holding the
    explanation, the counterexample and the context with the counterexample outlined."""
    ops = [*STALE, *(dataclasses.replace(op, key="other/key") for op in STALE)]
    ops += [Op(1, "clean", "set", 0.0, 1.0, "ok", b"z", out_version=1)]
    result = check(ops)
    assert sorted(v.key for v in result.violations) == ["k", "other/key"]
    paths = write_report(result, ops, tmp_path / "report")
    assert sorted(p.suffix for p in paths) == [".html", ".html", ".txt", ".txt"]
    assert all(p.parent == tmp_path / "report" and p.exists() for p in paths)
    assert any("other_key" in p.name for p in paths)
    text = paths[0].read_text(encoding="utf-8")
    assert "linearizability violation on key 'k'" in text
    assert "cannot be linearized" in text
    assert "counterexample (" in text and "context:" in text
    html_page = paths[1].read_text(encoding="utf-8")
    assert 'class="op ok mark"' in html_page


def test_write_report_writes_nothing_for_a_clean_history(tmp_path: Path) -> None:
    """Goal: no noise when there is nothing to report. Method: a clean result writes none."""
    ops = STALE[:2]
    assert write_report(check(ops), ops, tmp_path) == []
    assert list(tmp_path.iterdir()) == []


def _histories(tmp_path: Path) -> tuple[Path, Path]:
    ops = linearizable_history(random.Random(11), SynthOptions(keys=5, ops=500))
    good = tmp_path / "good.jsonl"
    dump_ops(ops, good)
    i = next(i for i, op in enumerate(ops) if op.kind == "read" and op.key == "k2")
    ops[i] = dataclasses.replace(ops[i], out_value=b"never written")
    bad = tmp_path / "bad.jsonl"
    dump_ops(ops, bad)
    return good, bad


def test_cli_exit_codes_and_reports(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Goal: the command line is usable in scripts. Method: a clean file exits 0, a file with
    one bad read exits 1, prints the key and writes its report, a missing file exits 2, and
    a budget of one step makes keys inconclusive (exit 3)."""
    good, bad = _histories(tmp_path)
    assert main([str(good)]) == 0
    assert "OK: 500 ops over 5 keys" in capsys.readouterr().out
    assert main([str(bad), "--report-dir", str(tmp_path / "r")]) == 1
    out = capsys.readouterr().out
    assert "VIOLATION" in out and "key 'k2'" in out
    assert len(list((tmp_path / "r").iterdir())) == 2
    assert main([str(tmp_path / "missing.jsonl")]) == 2
    assert main([str(good), "--steps-max-per-key", "1"]) == 3


def test_python_dash_m_runs_the_checker(tmp_path: Path) -> None:
    """Goal: ``python -m paxoskv.check`` is wired. Method: run it in a subprocess on a file
    with a violation and check the exit status and summary."""
    _, bad = _histories(tmp_path)
    proc = subprocess.run(
        [sys.executable, "-m", "paxoskv.check", str(bad)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert proc.returncode == 1, proc.stderr
    assert proc.stdout.startswith("VIOLATION: 500 ops over 5 keys, 1 violating")
