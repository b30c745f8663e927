"""Chaos on real ``paxoskv serve`` processes: kill -9 and restart, SIGSTOP/SIGCONT, partitions
through the link proxies, concurrent clients; the history must be linearizable and every
acknowledged write must be read back after healing.

Seeds: ``PAXOSKV_CHAOS_SEED`` fixes one (the schedule is derived from it); otherwise each run
draws a fresh seed and prints it with the command that replays its fault schedule.
``PAXOSKV_CHAOS_DURATION`` overrides the faulty phase's length (seconds) of both tests.
A failing run writes its report (checker timelines, history, fault log) under
``reports/chaos-<seed>/`` at the repository root and prints the path.
"""

from __future__ import annotations

import asyncio
import os
import random
from pathlib import Path

import pytest

from paxoskv.chaos.runner import ChaosOptions, ChaosResult, repro_command, run_chaos

pytestmark = pytest.mark.chaos


def _seed() -> int:
    raw = os.environ.get("PAXOSKV_CHAOS_SEED")
    return int(raw) if raw else random.SystemRandom().randrange(2**32)


def _duration(default_s: float) -> float:
    raw = os.environ.get("PAXOSKV_CHAOS_DURATION")
    return float(raw) if raw else default_s


def _chaos(nodes: int, duration_s: float, tmp_path: Path, request: pytest.FixtureRequest,
           capsys: pytest.CaptureFixture[str]) -> ChaosResult:
    seed = _seed()
    opts = ChaosOptions(seed=seed, base_dir=tmp_path / "cluster", nodes=nodes,
                        duration_s=duration_s,
                        report_dir=request.config.rootpath / "reports" / f"chaos-{seed}")

    def log(line: str) -> None:
        with capsys.disabled():
            print(line, flush=True)

    log(f"\n[chaos] {nodes} nodes, seed {seed}: {repro_command(opts)}")
    result = asyncio.run(run_chaos(opts, log=log))
    return result


def _assert_honest(result: ChaosResult, nodes: int, min_ops: int) -> None:
    where = (f"report: {result.report_paths[0].parent}" if result.report_paths else
             "no report written")
    repro = repro_command(result.options)
    assert result.error is None, f"{result.error}; {where}; repro: {repro}"
    assert not result.leftover_pids, f"processes survived the stop: {result.leftover_pids}"
    assert result.check is not None
    assert not result.check.violations, (
        f"{result.check.summary()}\n{where}\nrepro: {repro}")
    assert not result.check.inconclusive, f"{result.check.summary()}\n{where}"
    assert not result.lost, "acknowledged writes not read back:\n" + "\n".join(result.lost[:20])
    assert not result.unreadable, "\n".join(result.unreadable[:20])
    assert not result.unexpected, "answers outside the HTTP contract:\n" + "\n".join(
        result.unexpected[:20])
    # The run did what it claims: load, faults, and a read of every key from every node.
    ops = sum(result.counts.values())
    assert ops >= min_ops, f"only {ops} client ops"
    assert sum(result.faults.values()) >= 5, result.faults
    assert {"kill", "pause"} <= set(result.faults), result.faults
    keys = {op.key for op in result.ops}
    assert result.final_reads >= len(keys) * nodes
    assert result.read_back_keys > 0


def test_chaos_3_nodes(tmp_path: Path, request: pytest.FixtureRequest,
                       capsys: pytest.CaptureFixture[str]) -> None:
    result = _chaos(3, _duration(120.0), tmp_path, request, capsys)
    _assert_honest(result, 3, min_ops=600)


@pytest.mark.slow
def test_chaos_5_nodes(tmp_path: Path, request: pytest.FixtureRequest,
                       capsys: pytest.CaptureFixture[str]) -> None:
    result = _chaos(5, _duration(60.0), tmp_path, request, capsys)
    _assert_honest(result, 5, min_ops=250)
