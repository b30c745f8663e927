"""The storage benchmarks run end to end on a tiny scale (their figures are in
docs/storage.md; here only that they work and report what they claim)."""

from __future__ import annotations

import pytest

from paxoskv import bench_memory, bench_storage


def test_bench_storage_reports_every_cell(capsys: pytest.CaptureFixture[str]) -> None:
    """Goal: each engine, value size and batch size gets a row, and point reads a line."""
    assert bench_storage.main(["--seconds", "0.05", "--rounds", "1", "--batches", "1,4",
                               "--values", "100", "--keys", "50"]) == 0
    out = capsys.readouterr().out
    rows = [line.split() for line in out.splitlines() if line.strip().startswith("100 ")]
    engines = {row[2] for row in rows}
    assert "sqlite" in engines
    assert len(rows) == 2 * len(engines)
    assert "sqlite: random point read" in out


@pytest.mark.integration
def test_bench_memory_measures_three_real_nodes(capsys: pytest.CaptureFixture[str]) -> None:
    """Goal: the memory benchmark builds the directories, serves them from 3 real nodes
    under load without errors, and prints RSS and bytes per key for each."""
    assert bench_memory.main(["--keys", "300", "--seconds", "2", "--clients", "4"]) == 0
    out = capsys.readouterr().out
    assert ", 0 errors in" in out
    node_rows = [line.split() for line in out.splitlines()
                 if line.split() and line.split()[0] in ("1", "2", "3")]
    assert [row[0] for row in node_rows] == ["1", "2", "3"]
    assert "highest peak RSS" in out
