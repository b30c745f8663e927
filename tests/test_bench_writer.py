"""``python -m paxoskv.bench_writer``: a short real run, and its refusals."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from paxoskv import bench_writer


def test_a_short_run_counts_every_batch_and_both_threads(tmp_path: Path) -> None:
    """Goal: the writer's commits hold every save (its own count, not the driver's), and
    the CPU of the writer thread and of the busy loop is read (neither is zero)."""
    r = asyncio.run(bench_writer.measure(tmp_path, keys=200, batch=4, writers=2,
                                         batches=40, value_bytes=10, work_us=20,
                                         gap_every=10, gap_us=100))
    assert r.saves == 160
    assert 1 <= r.batches <= 40  # two loops' saves share a batch when they meet
    assert r.writer_cpu_us > 0 and r.loop_cpu_us > 0 and r.wall_us > 0
    assert r.work_callbacks > 0


def test_an_idle_loop_runs_no_busy_callback(tmp_path: Path) -> None:
    r = asyncio.run(bench_writer.measure(tmp_path, keys=50, batch=2, writers=1,
                                         batches=10, value_bytes=10, work_us=0,
                                         gap_every=10, gap_us=100))
    assert r.saves == 20 and r.batches == 10
    assert r.work_callbacks == 0


def test_the_command_prints_its_result(tmp_path: Path, capsys: pytest.CaptureFixture[str]
                                       ) -> None:
    assert bench_writer.main(["--keys", "100", "--batches", "20", "--dir", str(tmp_path),
                              "--event-loop", "asyncio"]) == 0
    out = capsys.readouterr().out
    assert "80 saves in" in out and "writer CPU" in out


@pytest.mark.parametrize("args", [["--batch", "0"], ["--work-us", "-1"]])
def test_bad_arguments_are_refused_with_a_message(args: list[str],
                                                  capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        bench_writer.main(args)
    assert exc.value.code == 2
    assert "must" in capsys.readouterr().err
