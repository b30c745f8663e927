"""The fault schedule's disk_loss fault: generated, bounded to one node, never beside another
fault; and the runner's step for it (kill -9, delete the data directory, restart with
--rejoin, wait for the catch-up) on a fake cluster, so no server process is involved."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import pytest

from paxoskv.chaos.proxy import Network
from paxoskv.chaos.runner import ChaosOptions, ChaosResult, _Faults, repro_command
from paxoskv.chaos.schedule import (
    _WEIGHTS,
    MINORITY_KINDS,
    Episode,
    make_schedule,
)


@pytest.mark.parametrize("nodes", [3, 5])
def test_disk_loss_is_scheduled_one_node_at_a_time(nodes: int) -> None:
    """Goal: every 120 s schedule holds a disk_loss (each kind appears once), and each one
    names exactly one node of the cluster, alone: no groups, no cut, no second target; a
    majority of disks survives because episodes never overlap."""
    ids = list(range(1, nodes + 1))
    total = disk = 0
    for seed in range(200):
        episodes = make_schedule(seed, ids, 120.0)
        losses = [e for e in episodes if e.kind == "disk_loss"]
        assert losses, f"seed {seed}: no disk_loss in {[e.kind for e in episodes]}"
        for ep in losses:
            assert len(ep.targets) == 1 and ep.targets[0] in ids, ep
            assert not ep.groups and not ep.cut and not ep.majority, ep
            assert "disk_loss nodes=" in ep.describe()
        total += len(episodes)
        disk += len(losses)
    # modest: the lowest weight, and about 1 in 10 episodes or fewer
    assert _WEIGHTS["disk_loss"] == min(_WEIGHTS.values())
    assert disk / total < 0.15, (disk, total)


def test_disk_loss_can_be_selected_alone() -> None:
    """Goal: --faults disk_loss gives only disk_loss episodes (and the repro says so)."""
    assert "disk_loss" in MINORITY_KINDS
    episodes = make_schedule(7, [1, 2, 3], 120.0, only=("disk_loss",))
    assert episodes and {e.kind for e in episodes} == {"disk_loss"}
    opts = ChaosOptions(seed=7, base_dir=Path("x"), fault_kinds=("disk_loss",))
    assert "--faults disk_loss" in repro_command(opts)


class FakeProc:
    """Stands in for tests/procs.py's ServerProcess: a rejoin finishes after a few status
    polls, or never (``stuck``)."""

    def __init__(self, node_id: int, base: Path, stuck: bool = False) -> None:
        self.node_id, self.stuck = node_id, stuck
        self.data_dir = base / f"node{node_id}"
        self.data_dir.mkdir(parents=True)
        (self.data_dir / "paxoskv.sqlite3").write_bytes(b"state")
        self.log_path = base / f"node{node_id}.log"
        self.extra: list[str] = ["--repair-interval", "2"]
        self.running = True
        self.starts: list[list[str]] = []
        self.polls = 0
        self.proc: Any = type("P", (), {"returncode": None, "pid": 0})()

    def alive(self) -> bool:
        return self.running

    def kill9(self) -> None:
        self.running = False

    def start(self) -> None:
        assert not self.running
        self.running = True
        self.starts.append(list(self.extra))
        self.polls = 0

    def wait_ready(self, timeout_s: float = 20.0) -> None:
        assert self.running

    def get(self, path: str, timeout: float = 2.0) -> tuple[int, bytes]:
        if path == "/healthz":
            return 200, b"{}"
        self.polls += 1
        rejoining = bool(self.starts) and "--rejoin" in self.starts[-1]
        mode = "normal"
        if rejoining and (self.stuck or self.polls < 3):
            mode = "rejoining"
        return 200, json.dumps({"acceptor_mode": mode}).encode()


class FakeCluster:
    def __init__(self, base: Path, stuck: int | None = None) -> None:
        self.nodes = {i: FakeProc(i, base, stuck=i == stuck) for i in (1, 2, 3)}


def _run_episode(cluster: FakeCluster, ep: Episode, monkeypatch: pytest.MonkeyPatch
                 ) -> ChaosResult:
    import paxoskv.chaos.runner as runner

    monkeypatch.setattr(runner, "REJOIN_TIMEOUT_S", 1.0)
    result = ChaosResult(ChaosOptions(seed=1, base_dir=Path("unused")))
    faults = _Faults(cluster, Network(1), result, lambda line: None, 0.0)
    asyncio.run(faults.apply(ep))
    return result


def test_disk_loss_wipes_restarts_with_rejoin_and_waits(tmp_path: Path,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    """Goal: the episode deletes exactly the target's data directory, restarts it with
    --rejoin, waits until it reports acceptor_mode normal, then drops --rejoin so later
    restarts are ordinary; the run report counts the fault and the rejoin."""
    cluster = FakeCluster(tmp_path)
    result = _run_episode(cluster, Episode("disk_loss", targets=(2,), hold_s=14), monkeypatch)
    node2 = cluster.nodes[2]
    assert node2.running and node2.starts == [["--repair-interval", "2", "--rejoin"]]
    assert not node2.data_dir.exists()
    assert node2.extra == ["--repair-interval", "2"]
    for other in (1, 3):
        assert (cluster.nodes[other].data_dir / "paxoskv.sqlite3").exists()
        assert cluster.nodes[other].starts == []
    assert result.faults["disk_loss"] == 1
    assert len(result.rejoins) == 1 and result.rejoins[0].startswith("node 2: rejoined")
    assert any("rm -rf" in line for line in result.fault_log)
    assert "rejoins=1" in result.summary()


def test_disk_loss_that_never_catches_up_fails_the_run(tmp_path: Path,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    """Goal: a rejoin that does not finish within the bound is a failure in the report, and
    the node keeps --rejoin so that a restart continues the rejoin."""
    cluster = FakeCluster(tmp_path, stuck=3)
    result = _run_episode(cluster, Episode("disk_loss", targets=(3,), hold_s=14), monkeypatch)
    assert result.rejoins and result.rejoins[0].startswith("FAILED node 3")
    assert "--rejoin" in cluster.nodes[3].extra
    assert not result.ok
    assert "rejoin_failed=1" in result.summary()


def test_disk_loss_refuses_to_run_while_a_node_is_down(tmp_path: Path,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    """Goal: never two disks at risk: with a node already killed the episode refuses."""
    cluster = FakeCluster(tmp_path)
    import paxoskv.chaos.runner as runner

    monkeypatch.setattr(runner, "REJOIN_TIMEOUT_S", 1.0)
    result = ChaosResult(ChaosOptions(seed=1, base_dir=Path("unused")))
    faults = _Faults(cluster, Network(1), result, lambda line: None, 0.0)
    faults.killed.add(1)
    with pytest.raises(RuntimeError, match="disk_loss with nodes down"):
        asyncio.run(faults.apply(Episode("disk_loss", targets=(2,))))
    assert (cluster.nodes[2].data_dir / "paxoskv.sqlite3").exists()
