"""paxoskv/bench_gc.py: argument checks, the table, the breakdown and the JSON (no timed
assertion: the run itself is ``make bench-gc``)."""

from __future__ import annotations

import json
import math
import re
import sqlite3
from pathlib import Path

import pytest

from paxoskv import bench_gc
from paxoskv.bench_gc import (
    Collection,
    NodeFigures,
    Phase,
    Sample,
    db_tables,
    format_breakdown,
    format_table,
    metric_value,
    parse_args,
    to_json,
)


def test_defaults_are_the_claim_s_run() -> None:
    args = parse_args([])
    assert (args.keys, args.value_bytes, args.grace) == (100_000, 100, 10.0)
    assert args.json == "reports/bench-gc.json"


@pytest.mark.parametrize("argv", [
    ["--keys", "0"], ["--value-bytes", "0"], ["--clients", "0"], ["--clients", "5000"],
    ["--grace", "0"], ["--grace", "-1"], ["--grace", "7200"], ["--wait-seconds", "0"],
    ["--settle-seconds", "-5"],
])
def test_bad_arguments_are_refused(argv: list[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        parse_args(argv)
    assert exc.value.code == 2


def _figures() -> list[NodeFigures]:
    a = NodeFigures(1, Sample(50_000_000, 140_000), Sample(90_000_000, 40_000_000),
                    Sample(53_000_000, 2_000_000, {"paxoskv.sqlite3": 1_990_000,
                                                   "paxoskv.sqlite3-wal": 0}),
                    {"bytes:gc_floors": 1_900_000, "rows:gc_floors": 51_000,
                     "rows:registers": 0, "bytes:registers": 4096, "bytes:free pages": 0})
    b = NodeFigures(2, Sample(50_000_000, 140_000), Sample(90_000_000, 40_000_000))
    return [a, b]


def test_ratios_and_verdicts() -> None:
    a, b = _figures()
    assert a.ratio("rss") == pytest.approx(1.06)
    assert a.ratio("dir_bytes") == pytest.approx(2_000_000 / 140_000)
    assert not a.within()
    assert a.within(tolerance=20.0)
    assert math.isnan(b.ratio("rss"))  # not measured: collection did not end


def test_table_has_every_phase_and_flags_what_is_not_within() -> None:
    table = format_table(_figures())
    head = table.splitlines()[0]
    for column in ("node", "empty MB", "full MB", "after MB", "after/empty", "within 10%"):
        assert column in head
    assert re.search(r"1 \| RSS +\| +50\.00 \| +90\.00 \| +53\.00 \| +1\.06 \| yes", table)
    assert re.search(r"1 \| data dir +\| +0\.14 \| +40\.00 \| +2\.00 \| +14\.29 \| NO", table)
    assert re.search(r"2 \| RSS +\| +50\.00 \| +90\.00 \| +- \| +- \| -", table)


def test_breakdown_separates_the_floors() -> None:
    text = format_breakdown(_figures())
    assert "paxoskv.sqlite3-wal 0 kB" in text
    assert "gc_floors 51,000 rows, 1,900 kB" in text
    assert "data dir without the floors: 0.10 MB (0.71 x empty)" in text
    assert "node 2" not in text  # no "after" for it


def test_json_has_no_nan_and_keeps_everything() -> None:
    text = to_json(_figures(), [Phase("write", 10, 0, 1.5, 2)],
                   Collection(12.0, 40.0, [5, 5], [0, 0], True), {"loadavg_before": "1 2 3"})
    assert "NaN" not in text
    data = json.loads(text)
    assert data["meta"] == {"loadavg_before": "1 2 3", "tolerance": 0.1}
    first, second = data["nodes"]
    assert first["after"]["files"]["paxoskv.sqlite3-wal"] == 0
    assert first["within"] is False and second["within"] is None
    assert second["ratio_rss"] is None
    assert data["phases"][0] == {"name": "write", "ok": 10, "failed": 0, "seconds": 1.5,
                                 "retries": 2}
    assert data["collection"]["complete"] is True


def test_metric_value_reads_an_unlabelled_sample() -> None:
    text = ("# HELP paxoskv_tombstones_collected_total x\n"
            "paxoskv_tombstones_collected_total 123.0\n"
            "paxoskv_tombstones_pending 7.0\n")
    assert metric_value(text, "paxoskv_tombstones_collected_total") == 123.0
    assert metric_value(text, "paxoskv_tombstones_pending") == 7.0
    assert metric_value(text, "paxoskv_missing") is None


def test_db_tables_reads_a_database_and_tolerates_a_missing_one(tmp_path: Path) -> None:
    db = tmp_path / "paxoskv.sqlite3"
    conn = sqlite3.connect(db)
    conn.executescript("CREATE TABLE registers (key TEXT); CREATE TABLE gc_floors (b INT);"
                       "INSERT INTO gc_floors VALUES (1), (2);")
    conn.commit()
    conn.close()
    tables = db_tables(db)
    assert tables["rows:gc_floors"] == 2 and tables["rows:registers"] == 0
    assert tables["bytes:gc_floors"] > 0
    assert db_tables(tmp_path / "missing.sqlite3") == {}


def test_a_warm_baseline_adds_columns_but_the_verdict_stays_against_empty() -> None:
    a, b = _figures()
    a.warm = Sample(52_000_000, 150_000)
    assert a.ratio_warm("rss") == pytest.approx(53 / 52)
    assert math.isnan(b.ratio_warm("rss"))  # no warm sample, no "after" either
    table = format_table([a, b])
    assert "warm MB" in table.splitlines()[0] and "after/warm" in table.splitlines()[0]
    assert re.search(r"1 \| RSS +\| +50\.00 \| +90\.00 \| +53\.00 \| +1\.06 \| yes +\| "
                     r"+52\.00 \| +1\.02", table)
    assert re.search(r"1 \| data dir +\| +0\.14 \| +40\.00 \| +2\.00 \| +14\.29 \| NO +\| "
                     r"+0\.15 \| +13\.33", table)
    assert "warm MB" not in format_table(_figures())  # no warm-up: no such columns
    data = json.loads(to_json([a, b], [], Collection(), {}))
    assert data["nodes"][0]["warm"]["rss"] == 52_000_000
    assert data["nodes"][0]["ratio_rss_to_warm"] == pytest.approx(53 / 52)
    assert data["nodes"][0]["within"] is False  # judged against empty, as before
    assert data["nodes"][1]["warm"] is None


def test_warmup_argument() -> None:
    assert parse_args([]).warmup == 100
    assert parse_args(["--warmup", "0"]).warmup == 0
    with pytest.raises(SystemExit):
        parse_args(["--warmup", "-1"])


def test_key_rows_leaves_out_the_acceptor_set_record(tmp_path: Path) -> None:
    from paxoskv.bench_gc import key_rows
    from paxoskv.core.reconfig import CONFIG_KEY

    db = tmp_path / "paxoskv.sqlite3"
    conn = sqlite3.connect(db)
    conn.executescript("CREATE TABLE registers (key TEXT PRIMARY KEY);")
    conn.execute("INSERT INTO registers VALUES (?)", (CONFIG_KEY,))
    conn.commit()
    assert key_rows(db) == 0
    conn.execute("INSERT INTO registers VALUES ('gcbench/00000001')")
    conn.commit()
    conn.close()
    assert key_rows(db) == 1
    assert key_rows(tmp_path / "missing.sqlite3") == -1


def test_after_waits_out_the_forwarded_write_window(monkeypatch: pytest.MonkeyPatch) -> None:
    """Goal: "after" is sampled no sooner than the nodes' memory of forwarded writes runs
    out since the last request (what a node keeps on purpose for a minute is not what a
    deletion leaves behind), and no later than needed."""
    slept: list[float] = []
    monkeypatch.setattr(bench_gc.time, "sleep", slept.append)
    now = bench_gc.time.monotonic()
    bench_gc._wait_windows(now - bench_gc.WINDOWS_S - 1)
    assert slept == []
    bench_gc._wait_windows(now)
    assert len(slept) == 1
    assert bench_gc.FORWARD_MEMORY_S < slept[0] <= bench_gc.WINDOWS_S
